//! The status store boundary: where the hub keeps jobs, their events, the worker registry and the policy's
//! decisions. Postgres in production (`pg`), SQLite for the one-command local mode (`sqlite`); the same
//! conformance suite (`tests/tests/status_store.rs`) runs against both.
//!
//! Which event moves which job is decided once, in memory, by `batch` (over the pure `status` machine);
//! the implementations only load and write rows. Nothing here knows the broker or HTTP.

mod batch;
pub mod pg;
mod rows;
pub mod sqlite;

use std::sync::Arc;

use ainern2d_contract::{Event, Heartbeat};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::status::JobStatus;

/// What a batch did, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    pub applied: u64,
    pub ignored: u64,
    pub duplicates: u64,
    pub heartbeats: u64,
}

/// A job that an event of the batch ended: what the caller may want to react to (policy, SSE).
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub job_id: String,
    pub status: JobStatus,
    pub e2e_s: Option<f64>,
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRow {
    pub job_id: String,
    pub kind: Option<String>,
    pub status: String,
    pub attempt: i32,
    pub worker_id: Option<String>,
    pub submitted_at: Option<DateTime<Utc>>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub progress: Option<serde_json::Value>,
    pub outputs: Option<serde_json::Value>,
    pub error: Option<serde_json::Value>,
    pub timings_ms: Option<serde_json::Value>,
    pub downgrade: Option<String>,
}

/// One recorded event of a job, as the SSE stream sends it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobEventRow {
    pub event_id: String,
    pub status: String,
    pub body: serde_json::Value,
    /// Whether the event moved the job (`false`: late, of an older attempt, or after the end).
    pub applied: bool,
}

/// A worker of the registry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerRow {
    pub worker_id: String,
    pub host: String,
    pub version: String,
    pub state: String,
    pub lost: bool,
    pub last_heartbeat_at: DateTime<Utc>,
    pub slots: serde_json::Value,
    pub models_loaded: serde_json::Value,
    pub gpus: serde_json::Value,
    pub downgrade: Option<String>,
}

/// A recorded fleet-policy decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionRow {
    pub decided_at: DateTime<Utc>,
    pub subject: String,
    pub decision: serde_json::Value,
    pub reason: String,
}

/// `GET /v1/jobs`: every filter is optional; jobs come in `job_id` order, after `after` (keyset pagination),
/// or with `recent` the most recently changed first (the status page; no pagination).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<String>,
    pub kind: Option<String>,
    pub after: Option<String>,
    pub limit: u32,
    pub recent: bool,
}

impl JobFilter {
    /// The `ORDER BY` of the listing.
    pub(crate) fn order_by(&self) -> &'static str {
        if self.recent { "updated_at DESC, job_id DESC" } else { "job_id" }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to the status store (database.url): {0}")]
    Connect(#[source] sqlx::Error),
    #[error("applying the status store migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("status store: {what} failed: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("database.url must start with postgres://, postgresql:// or sqlite: (got `{0}`)")]
    UnsupportedUrl(String),
}

impl StoreError {
    /// Whether trying the same operation again may succeed: the database was unreachable, busy or chose
    /// this transaction as a victim. Bad SQL, bad data and bad configuration are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Connect(e) | StoreError::Query { source: e, .. } => transient(e),
            StoreError::Migrate(_) | StoreError::UnsupportedUrl(_) => false,
        }
    }
}

fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // Postgres: serialization failure, deadlock, admin shutdown, connection exceptions (08xxx).
            // SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended codes.
            ["40001", "40P01", "57P01", "57P03"].contains(&code.as_ref())
                || code.starts_with("08")
                || code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
        }
        _ => false,
    }
}

/// Wraps a sqlx error with what the store was doing.
pub(crate) fn failed(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

#[async_trait]
pub trait StatusStore: Send + Sync {
    /// Creates or upgrades the tables.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Applies events and heartbeats in one transaction. An event id is applied at most once; events that
    /// would move a job backwards (late, older attempt, after the end) are recorded with `applied = false`;
    /// an older heartbeat never overwrites a newer one.
    async fn apply_batch(
        &self,
        events: &[Event],
        heartbeats: &[Heartbeat],
    ) -> Result<(BatchStats, Vec<Finished>), StoreError>;

    /// Marks workers whose last heartbeat is older than `stale_before` as lost; returns their ids.
    async fn mark_lost(&self, stale_before: DateTime<Utc>) -> Result<Vec<String>, StoreError>;

    async fn record_decision(
        &self,
        at: DateTime<Utc>,
        subject: &str,
        decision: &serde_json::Value,
        reason: &str,
    ) -> Result<(), StoreError>;

    /// Records a submitted job as `queued` and not yet published (the outbox row); `false` when a job with
    /// this id already exists.
    async fn insert_submitted(&self, job_id: &str, kind: &str, spec: &serde_json::Value) -> Result<bool, StoreError>;

    /// Marks a submitted job as published (the broker confirmed it); marking it again is a no-op.
    async fn mark_published(&self, job_id: &str) -> Result<(), StoreError>;

    /// What the job was submitted with and whether that was published; `None` when the job is unknown or
    /// known only from events.
    async fn submission(&self, job_id: &str) -> Result<Option<Submission>, StoreError>;

    /// Submitted jobs still `queued` and never published, submitted before `submitted_before`, oldest
    /// first, at most `limit`: what the outbox relay publishes.
    async fn unpublished_jobs(
        &self,
        submitted_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<UnfinishedJob>, StoreError>;

    /// Jobs submitted through the API and not finished (queued, accepted, running, retrying), oldest
    /// first, with the attempt their next delivery is: what the local mode enqueues again at start.
    async fn unfinished_jobs(&self) -> Result<Vec<UnfinishedJob>, StoreError>;

    async fn get_job(&self, job_id: &str) -> Result<Option<JobRow>, StoreError>;

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRow>, StoreError>;

    async fn job_status(&self, job_id: &str) -> Result<Option<String>, StoreError>;

    /// Every recorded event of the job (applied or not), by attempt, then sequence, then arrival.
    async fn job_events(&self, job_id: &str) -> Result<Vec<JobEventRow>, StoreError>;

    async fn list_workers(&self) -> Result<Vec<WorkerRow>, StoreError>;

    async fn worker_exists(&self, worker_id: &str) -> Result<bool, StoreError>;

    /// The latest `limit` decisions, newest first.
    async fn recent_decisions(&self, limit: u32) -> Result<Vec<DecisionRow>, StoreError>;

    /// Workers whose last heartbeat reported a downgrade profile in force.
    async fn downgraded_workers(&self) -> Result<Vec<String>, StoreError>;

    /// Jobs of this kind that a worker has accepted or is running.
    async fn in_flight(&self, kind: &str) -> Result<u64, StoreError>;

    /// Workers not lost that have slots for this kind.
    async fn replicas(&self, kind: &str) -> Result<u64, StoreError>;

    /// Closes the connections; later calls fail.
    async fn close(&self);
}

/// The `[database]` section of the hub's config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The status store: `postgres://…` (or `postgresql://…`), `sqlite://PATH` (the file is created when
    /// missing) or `sqlite::memory:` (gone when the hub stops).
    pub url: String,
    /// Postgres schema for the hub's tables (created when missing); SQLite ignores it.
    pub schema: String,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            schema: "public".into(),
            max_connections: 8,
        }
    }
}

/// The implementation a `database.url` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else if url.starts_with("sqlite://") || url == "sqlite::memory:" {
            Some(Backend::Sqlite)
        } else {
            None
        }
    }
}

/// Connects to the store `database.url` names (`postgres://`, `postgresql://`, `sqlite://PATH` created when
/// missing, `sqlite::memory:`). Does not migrate.
pub async fn open(config: &DatabaseConfig) -> Result<Arc<dyn StatusStore>, StoreError> {
    match Backend::of_url(&config.url) {
        Some(Backend::Postgres) => {
            Ok(Arc::new(pg::PgStore::connect(&config.url, &config.schema, config.max_connections).await?))
        }
        Some(Backend::Sqlite) => Ok(Arc::new(sqlite::SqliteStore::connect(&config.url, config.max_connections).await?)),
        None => Err(StoreError::UnsupportedUrl(config.url.split("://").next().unwrap_or_default().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_scheme_picks_the_backend() {
        for (url, backend) in [
            ("postgres://u@h/db", Some(Backend::Postgres)),
            ("postgresql://u@h/db", Some(Backend::Postgres)),
            ("sqlite:///var/lib/hub.db", Some(Backend::Sqlite)),
            ("sqlite://hub.db?mode=rwc", Some(Backend::Sqlite)),
            ("sqlite::memory:", Some(Backend::Sqlite)),
            ("mysql://u@h/db", None),
            ("hub.db", None),
        ] {
            assert_eq!(Backend::of_url(url), backend, "{url}");
        }
    }

    #[test]
    fn unreachable_and_busy_are_retryable_bad_config_is_not() {
        let io = StoreError::Query { what: "x", source: sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()) };
        assert!(io.is_retryable());
        assert!(StoreError::Connect(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(!StoreError::Query { what: "x", source: sqlx::Error::RowNotFound }.is_retryable());
        assert!(!StoreError::UnsupportedUrl("mysql".into()).is_retryable());
    }
}

/// A job as submitted (see `StatusStore::submission`).
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub spec: serde_json::Value,
    /// The broker confirmed a publish of it.
    pub published: bool,
}

/// A job to enqueue again (see `StatusStore::unfinished_jobs` and `StatusStore::unpublished_jobs`).
#[derive(Debug, Clone, PartialEq)]
pub struct UnfinishedJob {
    pub job_id: String,
    pub spec: serde_json::Value,
    pub attempt: u32,
}

/// The attempt a job's next delivery carries: a `retrying` job's copy is the next attempt.
pub(crate) fn next_attempt(status: &str, attempt: i32) -> u32 {
    let attempt = attempt.max(1) as u32;
    if status == "retrying" { attempt + 1 } else { attempt }
}
