//! A batch of events and heartbeats in one Postgres transaction, set-based: record the events, lock and
//! load their jobs, write the jobs back (three statements whatever the batch size), a fourth when some
//! events were not applied, plus one per heartbeat.

use std::collections::{HashMap, HashSet};

use ainern2d_contract::{Event, Heartbeat};
use chrono::{DateTime, Utc};

use super::PgStore;
use crate::store::batch::{self, JobRecord, WorkerColumns};
use crate::store::rows;
use crate::store::{BatchStats, Finished};

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
    pub(super) async fn apply(
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
