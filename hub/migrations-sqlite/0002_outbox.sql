-- The SQLite twin of `hub/migrations/0002_outbox.sql`: `published_at` in microseconds since the epoch.
ALTER TABLE jobs ADD COLUMN published_at INTEGER;
UPDATE jobs SET published_at = updated_at WHERE spec IS NULL OR status <> 'queued';
CREATE INDEX jobs_unpublished_idx ON jobs (submitted_at) WHERE published_at IS NULL AND spec IS NOT NULL;
