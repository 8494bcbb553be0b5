-- The submission outbox: a job submitted through the API is committed with `published_at` NULL and marked
-- once the broker confirmed its publish; the hub's relay publishes the rows left unpublished (a hub that
-- died between the commit and the publish, a broker that was down).
ALTER TABLE jobs ADD COLUMN published_at TIMESTAMPTZ;
-- Rows from before the outbox: what a worker or an event has touched was published. A job still `queued`
-- may have been lost between insert and publish; the relay publishes it again (flagged as a replay, so a
-- copy that was in the queue after all is recognised by the worker's replay check).
UPDATE jobs SET published_at = updated_at WHERE spec IS NULL OR status <> 'queued';
CREATE INDEX jobs_unpublished_idx ON jobs (submitted_at) WHERE published_at IS NULL AND spec IS NOT NULL;
