//! The Postgres status store: migrations from `hub/migrations/`, tables in the schema `database.schema`
//! (through `search_path`); batches of events are applied set-based (`apply`).

mod apply;

use ainern2d_contract::{Event, Heartbeat};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};

use super::rows::{self, Columns, columns_by_get};
use super::{
    BatchStats, DecisionRow, Finished, JobEventRow, JobFilter, JobRow, StatusStore, StoreError, Submission,
    UnfinishedJob, WorkerRow, failed,
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const JOB_COLUMNS: &str =
    "job_id, kind, status, attempt, worker_id, submitted_at, accepted_at, started_at, finished_at,
     updated_at, progress, outputs, error, timings_ms, downgrade";

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects with `search_path` set to `schema` (created if missing), so several hubs or tests can share one
    /// database without sharing tables.
    pub async fn connect(url: &str, schema: &str, max_connections: u32) -> Result<PgStore, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(StoreError::Connect)?;
        if schema != "public" {
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await
                .map_err(StoreError::Connect)?;
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .execute(&admin)
                .await
                .map_err(failed("creating the schema"))?;
            admin.close().await;
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options.options([("search_path", schema)]))
            .await
            .map_err(StoreError::Connect)?;
        Ok(PgStore { pool })
    }

    /// The pool, for tests and tools that read the tables directly.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl Columns for PgRow {
    columns_by_get!();

    fn int(&self, column: &str) -> i64 {
        i64::from(self.get::<i32, _>(column))
    }

    fn time_opt(&self, column: &str) -> Option<DateTime<Utc>> {
        self.get(column)
    }
}

#[async_trait]
impl StatusStore for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        Ok(MIGRATOR.run(&self.pool).await?)
    }

    async fn apply_batch(
        &self,
        events: &[Event],
        heartbeats: &[Heartbeat],
    ) -> Result<(BatchStats, Vec<Finished>), StoreError> {
        self.apply(events, heartbeats).await.map_err(failed("applying a batch of events"))
    }

    async fn mark_lost(&self, stale_before: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "UPDATE workers SET lost = TRUE WHERE NOT lost AND last_heartbeat_at < $1 RETURNING worker_id",
        )
        .bind(stale_before)
        .fetch_all(&self.pool)
        .await
        .map_err(failed("marking stale workers lost"))
    }

    async fn record_decision(
        &self,
        at: DateTime<Utc>,
        subject: &str,
        decision: &serde_json::Value,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO policy_decisions (decided_at, subject, decision, reason) VALUES ($1, $2, $3, $4)")
            .bind(at)
            .bind(subject)
            .bind(decision)
            .bind(reason)
            .execute(&self.pool)
            .await
            .map_err(failed("recording a policy decision"))?;
        Ok(())
    }

    async fn insert_submitted(&self, job_id: &str, kind: &str, spec: &serde_json::Value) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO jobs (job_id, kind, status, attempt, submitted_at, updated_at, spec)
             VALUES ($1, $2, 'queued', 1, now(), now(), $3) ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(job_id)
        .bind(kind)
        .bind(spec)
        .execute(&self.pool)
        .await
        .map_err(failed("recording a submitted job"))?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn unfinished_jobs(&self) -> Result<Vec<UnfinishedJob>, StoreError> {
        let rows: Vec<(String, String, i32, serde_json::Value)> = sqlx::query_as(
            "SELECT job_id, status, attempt, spec FROM jobs
             WHERE spec IS NOT NULL AND status IN ('queued', 'accepted', 'running', 'retrying')
             ORDER BY submitted_at, job_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(failed("listing unfinished jobs"))?;
        Ok(rows
            .into_iter()
            .map(|(job_id, status, attempt, spec)| UnfinishedJob {
                job_id,
                spec,
                attempt: super::next_attempt(&status, attempt),
            })
            .collect())
    }

    async fn mark_published(&self, job_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET published_at = now() WHERE job_id = $1 AND published_at IS NULL")
            .bind(job_id)
            .execute(&self.pool)
            .await
            .map_err(failed("marking a job published"))?;
        Ok(())
    }

    async fn submission(&self, job_id: &str) -> Result<Option<Submission>, StoreError> {
        let row: Option<(Option<serde_json::Value>, bool)> =
            sqlx::query_as("SELECT spec, published_at IS NOT NULL FROM jobs WHERE job_id = $1")
                .bind(job_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(failed("reading a job's submission"))?;
        Ok(row.and_then(|(spec, published)| Some(Submission { spec: spec?, published })))
    }

    async fn unpublished_jobs(
        &self,
        submitted_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<UnfinishedJob>, StoreError> {
        let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
            "SELECT job_id, spec FROM jobs
             WHERE published_at IS NULL AND spec IS NOT NULL AND status = 'queued' AND submitted_at < $1
             ORDER BY submitted_at, job_id LIMIT $2",
        )
        .bind(submitted_before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(failed("listing unpublished jobs"))?;
        Ok(rows.into_iter().map(|(job_id, spec)| UnfinishedJob { job_id, spec, attempt: 1 }).collect())
    }

    async fn get_job(&self, job_id: &str) -> Result<Option<JobRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1"))
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(failed("reading a job"))?;
        Ok(row.as_ref().map(rows::job_row))
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR kind = $2)
             AND ($3::text IS NULL OR job_id > $3) ORDER BY {} LIMIT $4",
            filter.order_by()
        ))
        .bind(&filter.status)
        .bind(&filter.kind)
        .bind(&filter.after)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(failed("listing jobs"))?;
        Ok(rows.iter().map(rows::job_row).collect())
    }

    async fn job_status(&self, job_id: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT status FROM jobs WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(failed("reading a job's status"))
    }

    async fn job_events(&self, job_id: &str) -> Result<Vec<JobEventRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, status, body, applied FROM job_events WHERE job_id = $1 ORDER BY attempt, seq, received_at",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await
        .map_err(failed("reading a job's events"))?;
        Ok(rows.iter().map(rows::event_row).collect())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT worker_id, host, version, state, lost, last_heartbeat_at, slots, models_loaded, gpus, downgrade FROM workers ORDER BY worker_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(failed("listing workers"))?;
        Ok(rows.iter().map(rows::worker_row).collect())
    }

    async fn worker_exists(&self, worker_id: &str) -> Result<bool, StoreError> {
        let known: Option<String> = sqlx::query_scalar("SELECT worker_id FROM workers WHERE worker_id = $1")
            .bind(worker_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(failed("looking up a worker"))?;
        Ok(known.is_some())
    }

    async fn recent_decisions(&self, limit: u32) -> Result<Vec<DecisionRow>, StoreError> {
        let rows =
            sqlx::query("SELECT decided_at, subject, decision, reason FROM policy_decisions ORDER BY id DESC LIMIT $1")
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(failed("reading policy decisions"))?;
        Ok(rows.iter().map(rows::decision_row).collect())
    }

    async fn downgraded_workers(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT worker_id FROM workers WHERE downgrade IS NOT NULL ORDER BY worker_id")
            .fetch_all(&self.pool)
            .await
            .map_err(failed("listing downgraded workers"))
    }

    async fn in_flight(&self, kind: &str) -> Result<u64, StoreError> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = $1 AND status IN ('accepted', 'running')")
                .bind(kind)
                .fetch_one(&self.pool)
                .await
                .map_err(failed("counting jobs in flight"))?;
        Ok(n as u64)
    }

    async fn replicas(&self, kind: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM workers WHERE NOT lost AND slots ? $1")
            .bind(kind)
            .fetch_one(&self.pool)
            .await
            .map_err(failed("counting replicas"))?;
        Ok(n as u64)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
