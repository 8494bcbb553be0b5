//! Job submission as an outbox. `POST /v1/jobs` commits the job's row first (unpublished), then publishes
//! the job (mandatory, confirmed) and marks the row published. Whatever happens between the two — a hub
//! killed, a broker down, a queue gone — the row stays unpublished, and the relay below publishes it once
//! it is older than `outbox.relay_after_ms`, with the replay header so that a worker that already ran a
//! copy re-announces the stored outputs instead of running the job again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ainern2d_contract::Job;
use ainern2d_contract::topology::{ATTEMPT_HEADER, REPLAY_HEADER, Topology};
use ainern2d_queue::{HeaderValue, Message};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Hub;
use crate::backoff::{self, Resettable};
use crate::publisher::PublishError;

/// Rows the relay reads per sweep, at most.
const SWEEP_LIMIT: u32 = 500;

/// The message of a job's first attempt; `replay`: it may have been published before.
pub fn job_message(job: &Job, body: impl Into<bytes::Bytes>, replay: bool) -> Message {
    let mut message = Message::json(body)
        .with_priority(Some(job.priority))
        .with_header(ATTEMPT_HEADER, HeaderValue::Int(1))
        .mandatory();
    if replay {
        message = message.with_header(REPLAY_HEADER, HeaderValue::Int(1));
    }
    message
}

/// Job ids whose publish is under way (by a request or the relay), so the other leaves them alone.
#[derive(Default)]
pub(crate) struct InFlight(std::sync::Mutex<HashSet<String>>);

/// Holds a job id in [`InFlight`] until dropped.
pub(crate) struct Claim<'a>(&'a InFlight, String);

impl InFlight {
    pub(crate) fn claim(&self, job_id: &str) -> Option<Claim<'_>> {
        self.0.lock().expect("in-flight lock").insert(job_id.to_string()).then(|| Claim(self, job_id.to_string()))
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.0.lock().expect("in-flight lock").remove(&self.1);
    }
}

impl Hub {
    /// Publishes a submitted job and marks its row published. The queue is in the error: the API names it.
    pub(crate) async fn publish_job(&self, job: &Job, message: &Message) -> Result<(), (String, PublishError)> {
        let queue = Topology::new(self.config.broker.prefix.clone()).job_queue(job.kind());
        self.publisher.publish("", &queue, message).await.map_err(|e| (queue, e))?;
        if let Err(e) = self.store.mark_published(&job.job_id).await {
            // The job is enqueued; the relay will publish it once more, as a replay the worker recognises.
            tracing::warn!(job_id = %job.job_id, "job enqueued but not marked published: {e}");
        }
        Ok(())
    }
}

/// Publishes the jobs left unpublished until `shutdown`. A job whose publish fails waits a growing,
/// jittered delay before its next try; the others are not held back by it.
pub async fn relay(hub: Arc<Hub>, shutdown: CancellationToken) {
    let after = chrono::Duration::milliseconds(hub.config.outbox.relay_after_ms as i64);
    let interval = Duration::from_millis(hub.config.outbox.relay_interval_ms);
    let mut waiting: HashMap<String, (Instant, Resettable)> = HashMap::new();
    loop {
        tokio::select! { _ = tokio::time::sleep(interval) => {}, _ = shutdown.cancelled() => return }
        if !hub.publisher.is_up() {
            continue;
        }
        let rows = match hub.store.unpublished_jobs(chrono::Utc::now() - after, SWEEP_LIMIT).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("outbox relay cannot read unpublished jobs: {e}");
                continue;
            }
        };
        hub.metrics.outbox_pending.set(rows.len() as i64);
        let present: HashSet<&str> = rows.iter().map(|r| r.job_id.as_str()).collect();
        waiting.retain(|id, _| present.contains(id.as_str()));
        for row in &rows {
            if waiting.get(&row.job_id).is_some_and(|(next, _)| Instant::now() < *next) {
                continue;
            }
            let Some(_claim) = hub.outbox.claim(&row.job_id) else { continue };
            let result = match serde_json::from_value::<Job>(row.spec.clone()) {
                Ok(job) => {
                    let body = serde_json::to_vec(&row.spec).expect("json values serialize");
                    hub.publish_job(&job, &job_message(&job, body, true))
                        .await
                        .map_err(|(queue, e)| format!("publishing to {queue}: {e}"))
                }
                Err(e) => Err(format!("its stored spec is not a job: {e}")),
            };
            match result {
                Ok(()) => {
                    waiting.remove(&row.job_id);
                    hub.metrics.outbox_relayed.inc();
                    tracing::info!(job_id = %row.job_id, "outbox relay published a job left unpublished");
                }
                Err(why) => {
                    let (next, backoff) = waiting
                        .entry(row.job_id.clone())
                        .or_insert_with(|| (Instant::now(), Resettable::new(backoff::relay())));
                    let delay = backoff.next_delay();
                    *next = Instant::now() + delay;
                    tracing::warn!(job_id = %row.job_id, "outbox relay: job not published ({why}); next try in {delay:?}");
                }
            }
        }
    }
}
