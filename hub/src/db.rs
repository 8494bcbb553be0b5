//! Postgres: migrations, batched event application (three statements per batch, whatever its size), the
//! worker registry.

use std::collections::HashMap;

use ainern2d_contract::{Event, Heartbeat};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use crate::status::{JobState, JobStatus, Transition, transition};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects with `search_path` set to `schema` (created if missing), so several hubs or tests can share one
/// database without sharing tables.
pub async fn connect(url: &str, schema: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    if schema != "public" {
        let admin = PgPoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")).execute(&admin).await?;
        admin.close().await;
    }
    PgPoolOptions::new().max_connections(max_connections).connect_with(options.options([("search_path", schema)])).await
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// What a batch did, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    pub applied: u64,
    pub ignored: u64,
    pub duplicates: u64,
    pub heartbeats: u64,
}

/// A job row after an event moved it: what the caller may want to react to (policy, SSE).
#[derive(Debug, Clone)]
pub struct Finished {
    pub job_id: String,
    pub status: JobStatus,
    pub e2e_s: Option<f64>,
}

struct Row_ {
    kind: Option<String>,
    status: JobStatus,
    attempt: u32,
    worker_id: Option<String>,
    submitted_at: Option<DateTime<Utc>>,
    accepted_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    progress: Option<serde_json::Value>,
    outputs: Option<serde_json::Value>,
    error: Option<serde_json::Value>,
    timings_ms: Option<serde_json::Value>,
    downgrade: Option<String>,
    touched: bool,
}

/// Applies events and heartbeats in one transaction. Events already recorded (same `event_id`) are skipped;
/// the rest are applied in order through the status state machine.
pub async fn apply_batch(
    pool: &PgPool,
    events: &[Event],
    heartbeats: &[Heartbeat],
) -> Result<(BatchStats, Vec<Finished>), sqlx::Error> {
    let mut stats = BatchStats::default();
    let mut finished = Vec::new();
    let mut tx = pool.begin().await?;
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
        let fresh: std::collections::HashSet<String> = fresh.into_iter().collect();
        // Within one batch the same event may appear twice (a redelivery racing the original).
        let mut seen = std::collections::HashSet::new();
        let new_events: Vec<&Event> =
            events.iter().filter(|e| fresh.contains(&e.event_id) && seen.insert(e.event_id.as_str())).collect();
        stats.duplicates = (events.len() - new_events.len()) as u64;

        // 2. Lock and load the jobs they touch.
        let touched: Vec<&str> = {
            let mut v: Vec<&str> = new_events.iter().map(|e| e.job_id.as_str()).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let mut rows: HashMap<String, Row_> = HashMap::new();
        for r in sqlx::query(
            "SELECT job_id, kind, status, attempt, worker_id, submitted_at, accepted_at, started_at, finished_at,
                    progress, outputs, error, timings_ms, downgrade
             FROM jobs WHERE job_id = ANY($1) ORDER BY job_id FOR UPDATE",
        )
        .bind(&touched)
        .fetch_all(&mut *tx)
        .await?
        {
            let status: String = r.get("status");
            rows.insert(
                r.get("job_id"),
                Row_ {
                    kind: r.get("kind"),
                    status: JobStatus::parse(&status).unwrap_or(JobStatus::Queued),
                    attempt: r.get::<i32, _>("attempt") as u32,
                    worker_id: r.get("worker_id"),
                    submitted_at: r.get("submitted_at"),
                    accepted_at: r.get("accepted_at"),
                    started_at: r.get("started_at"),
                    finished_at: r.get("finished_at"),
                    progress: r.get("progress"),
                    outputs: r.get("outputs"),
                    error: r.get("error"),
                    timings_ms: r.get("timings_ms"),
                    downgrade: r.get("downgrade"),
                    touched: false,
                },
            );
        }

        // 3. Run the state machine in memory, in arrival order.
        let mut ignored_ids: Vec<&str> = Vec::new();
        for e in &new_events {
            let current = rows.get(&e.job_id).map(|r| JobState { status: r.status, attempt: r.attempt });
            let step = transition(current, e.status, e.attempt);
            let row = rows.entry(e.job_id.clone()).or_insert_with(|| Row_ {
                kind: None,
                status: JobStatus::Queued,
                attempt: e.attempt,
                worker_id: None,
                submitted_at: None,
                accepted_at: None,
                started_at: None,
                finished_at: None,
                progress: None,
                outputs: None,
                error: None,
                timings_ms: None,
                downgrade: None,
                touched: false,
            });
            match step {
                Transition::Ignore(_) => {
                    stats.ignored += 1;
                    ignored_ids.push(e.event_id.as_str());
                    continue;
                }
                Transition::Progress => {}
                Transition::Advance(status) => {
                    row.status = status;
                    row.attempt = e.attempt;
                    match status {
                        JobStatus::Accepted => row.accepted_at = row.accepted_at.or(Some(e.emitted_at)),
                        JobStatus::Running => row.started_at = row.started_at.or(Some(e.emitted_at)),
                        s if s.is_terminal() => {
                            row.finished_at = Some(e.emitted_at);
                            row.outputs = Some(serde_json::to_value(&e.outputs).expect("outputs serialize"));
                            row.timings_ms = Some(serde_json::to_value(&e.timings_ms).expect("timings serialize"));
                            let e2e = row.submitted_at.map(|s| (e.emitted_at - s).num_milliseconds() as f64 / 1e3);
                            finished.push(Finished { job_id: e.job_id.clone(), status, e2e_s: e2e });
                        }
                        _ => {}
                    }
                    if e.error.is_some() {
                        row.error = Some(serde_json::to_value(&e.error).expect("errors serialize"));
                    }
                }
            }
            stats.applied += 1;
            row.touched = true;
            row.kind = row.kind.take().or(e.kind.map(|k| k.as_str().to_string()));
            row.worker_id = Some(e.worker_id.clone());
            if e.progress.is_some() {
                row.progress = Some(serde_json::to_value(&e.progress).expect("progress serializes"));
            }
            if e.downgrade.is_some() {
                row.downgrade = e.downgrade.clone();
            }
        }
        if !ignored_ids.is_empty() {
            sqlx::query("UPDATE job_events SET applied = FALSE WHERE event_id = ANY($1)")
                .bind(&ignored_ids)
                .execute(&mut *tx)
                .await?;
        }

        // 4. Write the touched rows back in one statement.
        let changed: Vec<(&String, &Row_)> = rows.iter().filter(|(_, r)| r.touched).collect();
        if !changed.is_empty() {
            let col = |f: &dyn Fn(&Row_) -> Option<String>| changed.iter().map(|(_, r)| f(r)).collect::<Vec<_>>();
            let ts = |f: &dyn Fn(&Row_) -> Option<DateTime<Utc>>| changed.iter().map(|(_, r)| f(r)).collect::<Vec<_>>();
            let js =
                |f: &dyn Fn(&Row_) -> Option<serde_json::Value>| changed.iter().map(|(_, r)| f(r)).collect::<Vec<_>>();
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
            .bind(changed.iter().map(|(_, r)| r.status.as_str()).collect::<Vec<_>>())
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

async fn upsert_worker(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, hb: &Heartbeat) -> Result<(), sqlx::Error> {
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
    .bind(serde_json::to_value(hb.state).expect("state serializes").as_str().unwrap_or("unknown").to_string())
    .bind(hb.sent_at)
    .bind(serde_json::to_value(&hb.slots).expect("slots serialize"))
    .bind(serde_json::to_value(&hb.models_loaded).expect("models serialize"))
    .bind(serde_json::to_value(&hb.gpus).expect("gpus serialize"))
    .bind(&hb.downgrade)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Marks workers whose last heartbeat is older than `stale_before` as lost; returns their ids.
pub async fn mark_lost(pool: &PgPool, stale_before: DateTime<Utc>) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("UPDATE workers SET lost = TRUE WHERE NOT lost AND last_heartbeat_at < $1 RETURNING worker_id")
        .bind(stale_before)
        .fetch_all(pool)
        .await
}

pub async fn record_decision(
    pool: &PgPool,
    at: DateTime<Utc>,
    subject: &str,
    decision: &serde_json::Value,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO policy_decisions (decided_at, subject, decision, reason) VALUES ($1, $2, $3, $4)")
        .bind(at)
        .bind(subject)
        .bind(decision)
        .bind(reason)
        .execute(pool)
        .await?;
    Ok(())
}
