-- `GET /v1/jobs?order=recent` (the status page's job list): the most recently changed jobs first.
CREATE INDEX jobs_updated_idx ON jobs (updated_at DESC, job_id DESC);
