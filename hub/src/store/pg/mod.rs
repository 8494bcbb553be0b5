//! The Postgres status store: migrations from `hub/migrations/`, tables in the schema `database.schema`
//! (through `search_path`), and a batch applied set-based: three statements whatever its size (record the
//! events, lock and load their jobs, write the jobs back), a fourth when some events were not applied, plus
//! one per heartbeat.

use std::collections::{HashMap, HashSet};

use ainern2d_contract::{Event, Heartbeat};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};

use super::batch::{self, JobRecord, WorkerColumns};
use super::rows::{self, Columns, columns_by_get};
use super::{
    BatchStats, DecisionRow, Finished, JobEventRow, JobFilter, JobRow, StatusStore, StoreError, WorkerRow, failed,
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

async fn upsert_worker(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, hb: &Heartbeat) -> Result<(), sqlx::Error> {
    let c = WorkerColumns::of(hb);
    // An older heartbeat (reordered) never overwrites a newer one.
    sqlx::query(
        "INSERT INTO workers (worker_id, host, version, state, last_heartbeat_at, slots, models_loaded, gpus, downgrade, lost)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, FALSE)
         ON CONFLICT (worker_id) DO UPDATE SET host = EXCLUDED.host, version = EXCLUDED.version, state = EXCLUDED.state,
             last_heartbeat_at = EXCLUDED.last_heartbeat_at, slots = EXCLUDED.slots, models_loaded = EXCLUDED.models_loaded,
             gpus = EXCLUDED.gpus, downgrade = EXCLUDED.downgrade, lost = FALSE
         WHERE workers.last_heartbeat_at <= EXCLUDED.last_heartbeat_at",
    )
    .bind(&hb.worker_id)
    .bind(&hb.host)
    .bind(&hb.version)
    .bind(c.state)
    .bind(hb.sent_at)
    .bind(c.slots)
    .bind(c.models_loaded)
    .bind(c.gpus)
    .bind(&hb.downgrade)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl PgStore {
    async fn apply(
        &self,
        events: &[Event],
        heartbeats: &[Heartbeat],
    ) -> Result<(BatchStats, Vec<Finished>), sqlx::Error> {
        let mut stats = BatchStats::default();
        let mut finished = Vec::new();
        let mut tx = self.pool.begin().await?;
        if !events.is_empty() {
            // 1. Record the events; the ones that come back are new.
            let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
            let job_ids: Vec<&str> = events.iter().map(|e| e.job_id.as_str()).collect();
            let attempts: Vec<i32> = events.iter().map(|e| e.attempt as i32).collect();
            let seqs: Vec<i32> = events.iter().map(|e| e.seq as i32).collect();
            let statuses: Vec<&str> = events.iter().map(|e| e.status.as_str()).collect();
            let workers: Vec<&str> = events.iter().map(|e| e.worker_id.as_str()).collect();
            let emitted: Vec<DateTime<Utc>> = events.iter().map(|e| e.emitted_at).collect();
            let bodies: Vec<serde_json::Value> =
                events.iter().map(|e| serde_json::to_value(e).expect("events serialize")).collect();
            let fresh: Vec<String> = sqlx::query_scalar(
                "INSERT INTO job_events (event_id, job_id, attempt, seq, status, worker_id, emitted_at, body, applied)
                 SELECT e.*, TRUE FROM UNNEST($1::text[], $2::text[], $3::int[], $4::int[], $5::text[], $6::text[], $7::timestamptz[], $8::jsonb[])
                     AS e(event_id, job_id, attempt, seq, status, worker_id, emitted_at, body)
                 ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            )
            .bind(&ids)
            .bind(&job_ids)
            .bind(&attempts)
            .bind(&seqs)
            .bind(&statuses)
            .bind(&workers)
            .bind(&emitted)
            .bind(&bodies)
            .fetch_all(&mut *tx)
            .await?;
            let fresh: HashSet<String> = fresh.into_iter().collect();
            let new_events = batch::new_events(events, &fresh);

            // 2. Lock and load the jobs they touch.
            let touched = batch::touched_jobs(&new_events);
            let loaded: HashMap<String, JobRecord> = sqlx::query(
                "SELECT job_id, kind, status, attempt, worker_id, submitted_at, accepted_at, started_at, finished_at,
                        progress, outputs, error, timings_ms, downgrade
                 FROM jobs WHERE job_id = ANY($1) ORDER BY job_id FOR UPDATE",
            )
            .bind(&touched)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(rows::job_record)
            .collect();

            // 3. Run the state machine in memory, in arrival order.
            let plan = batch::plan(events.len(), &new_events, loaded);
            stats = plan.stats;
            finished = plan.finished;
            if !plan.ignored.is_empty() {
                sqlx::query("UPDATE job_events SET applied = FALSE WHERE event_id = ANY($1)")
                    .bind(&plan.ignored)
                    .execute(&mut *tx)
                    .await?;
            }

            // 4. Write the touched rows back in one statement.
            let changed = &plan.changed;
            if !changed.is_empty() {
                let col =
                    |f: &dyn Fn(&JobRecord) -> Option<String>| changed.iter().map(|(_, r)| f(r)).collect::<Vec<_>>();
                let ts = |f: &dyn Fn(&JobRecord) -> Option<DateTime<Utc>>| {
                    changed.iter().map(|(_, r)| f(r)).collect::<Vec<_>>()
                };
                let js = |f: &dyn Fn(&JobRecord) -> Option<serde_json::Value>| {
                    changed.iter().map(|(_, r)| f(r)).collect::<Vec<_>>()
                };
                sqlx::query(
                    "INSERT INTO jobs (job_id, kind, status, attempt, worker_id, accepted_at, started_at, finished_at,
                                       progress, outputs, error, timings_ms, downgrade, updated_at)
                     SELECT u.*, now() FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::timestamptz[],
                            $7::timestamptz[], $8::timestamptz[], $9::jsonb[], $10::jsonb[], $11::jsonb[], $12::jsonb[], $13::text[])
                         AS u(job_id, kind, status, attempt, worker_id, accepted_at, started_at, finished_at, progress, outputs,
                              error, timings_ms, downgrade)
                     ON CONFLICT (job_id) DO UPDATE SET kind = EXCLUDED.kind, status = EXCLUDED.status, attempt = EXCLUDED.attempt,
                         worker_id = EXCLUDED.worker_id, accepted_at = EXCLUDED.accepted_at, started_at = EXCLUDED.started_at,
                         finished_at = EXCLUDED.finished_at, progress = EXCLUDED.progress, outputs = EXCLUDED.outputs,
                         error = EXCLUDED.error, timings_ms = EXCLUDED.timings_ms, downgrade = EXCLUDED.downgrade,
                         updated_at = now()",
                )
                .bind(changed.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>())
                .bind(col(&|r| r.kind.clone()))
                .bind(changed.iter().map(|(_, r)| r.status_str()).collect::<Vec<_>>())
                .bind(changed.iter().map(|(_, r)| r.attempt as i32).collect::<Vec<_>>())
                .bind(col(&|r| r.worker_id.clone()))
                .bind(ts(&|r| r.accepted_at))
                .bind(ts(&|r| r.started_at))
                .bind(ts(&|r| r.finished_at))
                .bind(js(&|r| r.progress.clone()))
                .bind(js(&|r| r.outputs.clone()))
                .bind(js(&|r| r.error.clone()))
                .bind(js(&|r| r.timings_ms.clone()))
                .bind(col(&|r| r.downgrade.clone()))
                .execute(&mut *tx)
                .await?;
            }
        }
        for hb in heartbeats {
            upsert_worker(&mut tx, hb).await?;
            stats.heartbeats += 1;
        }
        tx.commit().await?;
        Ok((stats, finished))
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

    async fn unfinished_jobs(&self) -> Result<Vec<super::UnfinishedJob>, StoreError> {
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
            .map(|(job_id, status, attempt, spec)| super::UnfinishedJob {
                job_id,
                spec,
                attempt: super::next_attempt(&status, attempt),
            })
            .collect())
    }

    async fn existing_spec(&self, job_id: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let spec: Option<Option<serde_json::Value>> = sqlx::query_scalar("SELECT spec FROM jobs WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(failed("reading a job's spec"))?;
        Ok(spec.flatten())
    }

    async fn delete_if_queued(&self, job_id: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM jobs WHERE job_id = $1 AND status = 'queued'")
            .bind(job_id)
            .execute(&self.pool)
            .await
            .map_err(failed("deleting an unpublished job"))?
            .rows_affected();
        Ok(deleted == 1)
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
             AND ($3::text IS NULL OR job_id > $3) ORDER BY job_id LIMIT $4"
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
