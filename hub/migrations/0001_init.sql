-- Jobs: one row per job, its current status and what the events told about it.
CREATE TABLE jobs (
    job_id            TEXT PRIMARY KEY,
    kind              TEXT,
    status            TEXT NOT NULL,
    attempt           INTEGER NOT NULL DEFAULT 1,
    worker_id         TEXT,
    submitted_at      TIMESTAMPTZ,
    accepted_at       TIMESTAMPTZ,
    started_at        TIMESTAMPTZ,
    finished_at       TIMESTAMPTZ,
    updated_at        TIMESTAMPTZ NOT NULL,
    progress          JSONB,
    outputs           JSONB,
    error             JSONB,
    timings_ms        JSONB,
    downgrade         TEXT,
    spec              JSONB
);
CREATE INDEX jobs_status_idx ON jobs (status, updated_at);
CREATE INDEX jobs_kind_idx ON jobs (kind, updated_at);

-- Every event received, once (event_id is the dedup key); `applied` says whether it moved the job.
CREATE TABLE job_events (
    event_id     TEXT PRIMARY KEY,
    job_id       TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    status       TEXT NOT NULL,
    worker_id    TEXT NOT NULL,
    emitted_at   TIMESTAMPTZ NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied      BOOLEAN NOT NULL,
    body         JSONB NOT NULL
);
CREATE INDEX job_events_job_idx ON job_events (job_id, attempt, seq);

-- The worker registry.
CREATE TABLE workers (
    worker_id          TEXT PRIMARY KEY,
    host               TEXT NOT NULL,
    version            TEXT NOT NULL,
    state              TEXT NOT NULL,
    admin_state        TEXT NOT NULL DEFAULT 'active',
    lost               BOOLEAN NOT NULL DEFAULT FALSE,
    last_heartbeat_at  TIMESTAMPTZ NOT NULL,
    first_seen_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    slots              JSONB NOT NULL,
    models_loaded      JSONB NOT NULL,
    gpus               JSONB NOT NULL,
    downgrade          TEXT
);

-- Every fleet-policy decision with its reason.
CREATE TABLE policy_decisions (
    id          BIGSERIAL PRIMARY KEY,
    decided_at  TIMESTAMPTZ NOT NULL,
    subject     TEXT NOT NULL,
    decision    JSONB NOT NULL,
    reason      TEXT NOT NULL
);
