-- The SQLite twin of `hub/migrations/0001_init.sql`, for the one-command local mode. Times are INTEGER
-- microseconds since the Unix epoch (Postgres keeps microseconds too), so they compare and sort as numbers;
-- JSON columns are TEXT.

CREATE TABLE jobs (
    job_id            TEXT PRIMARY KEY,
    kind              TEXT,
    status            TEXT NOT NULL,
    attempt           INTEGER NOT NULL DEFAULT 1,
    worker_id         TEXT,
    submitted_at      INTEGER,
    accepted_at       INTEGER,
    started_at        INTEGER,
    finished_at       INTEGER,
    updated_at        INTEGER NOT NULL,
    progress          TEXT,
    outputs           TEXT,
    error             TEXT,
    timings_ms        TEXT,
    downgrade         TEXT,
    spec              TEXT
);
CREATE INDEX jobs_status_idx ON jobs (status, updated_at);
CREATE INDEX jobs_kind_idx ON jobs (kind, updated_at);

CREATE TABLE job_events (
    event_id     TEXT PRIMARY KEY,
    job_id       TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    status       TEXT NOT NULL,
    worker_id    TEXT NOT NULL,
    emitted_at   INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    applied      INTEGER NOT NULL,
    body         TEXT NOT NULL
);
CREATE INDEX job_events_job_idx ON job_events (job_id, attempt, seq);

CREATE TABLE workers (
    worker_id          TEXT PRIMARY KEY,
    host               TEXT NOT NULL,
    version            TEXT NOT NULL,
    state              TEXT NOT NULL,
    admin_state        TEXT NOT NULL DEFAULT 'active',
    lost               INTEGER NOT NULL DEFAULT 0,
    last_heartbeat_at  INTEGER NOT NULL,
    first_seen_at      INTEGER NOT NULL,
    slots              TEXT NOT NULL,
    models_loaded      TEXT NOT NULL,
    gpus               TEXT NOT NULL,
    downgrade          TEXT
);

CREATE TABLE policy_decisions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    decided_at  INTEGER NOT NULL,
    subject     TEXT NOT NULL,
    decision    TEXT NOT NULL,
    reason      TEXT NOT NULL
);
