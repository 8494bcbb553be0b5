-- The SQLite twin of `hub/migrations/0003_jobs_recent.sql`.
CREATE INDEX jobs_updated_idx ON jobs (updated_at DESC, job_id DESC);
