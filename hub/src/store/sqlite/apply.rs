//! A batch of events and heartbeats in one SQLite transaction. An embedded database has no round trips to
//! save, so statements go one row at a time, inside the one transaction.

use std::collections::{HashMap, HashSet};

use ainern2d_contract::{Event, Heartbeat};
use chrono::Utc;
use sqlx::Sqlite;

use super::{SqliteStore, micros};
use crate::store::batch::{self, JobRecord, WorkerColumns};
use crate::store::rows;
use crate::store::{BatchStats, Finished};

impl SqliteStore {
    pub(super) async fn apply(
        &self,
        events: &[Event],
        heartbeats: &[Heartbeat],
    ) -> Result<(BatchStats, Vec<Finished>), sqlx::Error> {
        let mut stats = BatchStats::default();
        let mut finished = Vec::new();
        let now = micros(Utc::now());
        let mut tx = self.writer.begin().await?;
        if !events.is_empty() {
            // 1. Record the events; the ones inserted are new. (An embedded database has no round trips to
            //    save, so statements go one row at a time, inside the one transaction.)
            let mut fresh = HashSet::new();
            for e in events {
                let inserted = sqlx::query(
                    "INSERT INTO job_events (event_id, job_id, attempt, seq, status, worker_id, emitted_at, received_at, applied, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1, ?9) ON CONFLICT (event_id) DO NOTHING",
                )
                .bind(&e.event_id)
                .bind(&e.job_id)
                .bind(i64::from(e.attempt))
                .bind(i64::from(e.seq))
                .bind(e.status.as_str())
                .bind(&e.worker_id)
                .bind(micros(e.emitted_at))
                .bind(now)
                .bind(serde_json::to_value(e).expect("events serialize"))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 1 {
                    fresh.insert(e.event_id.clone());
                }
            }
            let new_events = batch::new_events(events, &fresh);

            // 2. Load the jobs they touch (the single writer makes the transaction the only one writing).
            let touched = batch::touched_jobs(&new_events);
            let loaded: HashMap<String, JobRecord> = sqlx::query(
                "SELECT job_id, kind, status, attempt, worker_id, submitted_at, accepted_at, started_at, finished_at,
                        progress, outputs, error, timings_ms, downgrade
                 FROM jobs WHERE job_id IN (SELECT value FROM json_each(?1))",
            )
            .bind(serde_json::to_string(&touched).expect("ids serialize"))
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
                sqlx::query("UPDATE job_events SET applied = 0 WHERE event_id IN (SELECT value FROM json_each(?1))")
                    .bind(serde_json::to_string(&plan.ignored).expect("ids serialize"))
                    .execute(&mut *tx)
                    .await?;
            }

            // 4. Write the touched rows back.
            for (job_id, r) in &plan.changed {
                sqlx::query(
                    "INSERT INTO jobs (job_id, kind, status, attempt, worker_id, accepted_at, started_at, finished_at,
                                       progress, outputs, error, timings_ms, downgrade, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                     ON CONFLICT (job_id) DO UPDATE SET kind = excluded.kind, status = excluded.status, attempt = excluded.attempt,
                         worker_id = excluded.worker_id, accepted_at = excluded.accepted_at, started_at = excluded.started_at,
                         finished_at = excluded.finished_at, progress = excluded.progress, outputs = excluded.outputs,
                         error = excluded.error, timings_ms = excluded.timings_ms, downgrade = excluded.downgrade,
                         updated_at = excluded.updated_at",
                )
                .bind(job_id)
                .bind(&r.kind)
                .bind(r.status_str())
                .bind(i64::from(r.attempt))
                .bind(&r.worker_id)
                .bind(r.accepted_at.map(micros))
                .bind(r.started_at.map(micros))
                .bind(r.finished_at.map(micros))
                .bind(&r.progress)
                .bind(&r.outputs)
                .bind(&r.error)
                .bind(&r.timings_ms)
                .bind(&r.downgrade)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        for hb in heartbeats {
            upsert_worker(&mut tx, hb, now).await?;
            stats.heartbeats += 1;
        }
        tx.commit().await?;
        Ok((stats, finished))
    }
}

async fn upsert_worker(tx: &mut sqlx::Transaction<'_, Sqlite>, hb: &Heartbeat, now: i64) -> Result<(), sqlx::Error> {
    let c = WorkerColumns::of(hb);
    // An older heartbeat (reordered) never overwrites a newer one.
    sqlx::query(
        "INSERT INTO workers (worker_id, host, version, state, last_heartbeat_at, slots, models_loaded, gpus, downgrade, lost, first_seen_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10)
         ON CONFLICT (worker_id) DO UPDATE SET host = excluded.host, version = excluded.version, state = excluded.state,
             last_heartbeat_at = excluded.last_heartbeat_at, slots = excluded.slots, models_loaded = excluded.models_loaded,
             gpus = excluded.gpus, downgrade = excluded.downgrade, lost = 0
         WHERE workers.last_heartbeat_at <= excluded.last_heartbeat_at",
    )
    .bind(&hb.worker_id)
    .bind(&hb.host)
    .bind(&hb.version)
    .bind(c.state)
    .bind(micros(hb.sent_at))
    .bind(c.slots)
    .bind(c.models_loaded)
    .bind(c.gpus)
    .bind(&hb.downgrade)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
