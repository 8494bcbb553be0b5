//! Building and publishing one job's events, with a sequence number shared by every task of the job.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use ainern2d_contract::{ErrorInfo, Event, EventStatus, Execution, JobKind, OutputObject, Progress};

use ainern2d_queue::Message;

use crate::broker::{BrokerError, Publisher};

#[derive(Clone)]
pub struct Emitter {
    publisher: Publisher,
    exchange: String,
    job_id: String,
    kind: Option<JobKind>,
    attempt: u32,
    worker_id: String,
    traceparent: Option<String>,
    downgrade: Option<String>,
    /// Unique per delivery: keeps the ids of a redelivered attempt's non-terminal events apart.
    delivery: String,
    seq: Arc<AtomicU32>,
}

impl Emitter {
    pub fn new(
        publisher: Publisher,
        exchange: String,
        job_id: &str,
        kind: Option<JobKind>,
        attempt: u32,
        worker_id: &str,
    ) -> Self {
        Emitter {
            publisher,
            exchange,
            job_id: job_id.into(),
            kind,
            attempt,
            worker_id: worker_id.into(),
            traceparent: None,
            downgrade: None,
            delivery: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            seq: Arc::new(AtomicU32::new(0)),
        }
    }

    pub fn with_downgrade(mut self, profile: Option<String>) -> Self {
        self.downgrade = profile;
        self
    }

    pub fn with_trace(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    pub fn event(&self, status: EventStatus) -> Event {
        let mut event = Event::new(
            &self.job_id,
            self.kind,
            self.attempt,
            &self.worker_id,
            status,
            self.seq.fetch_add(1, Ordering::Relaxed),
        )
        .with_delivery(&self.delivery);
        event.traceparent = self.traceparent.clone();
        event.downgrade = self.downgrade.clone();
        event
    }

    async fn send(&self, event: &Event, confirm: bool) -> Result<(), BrokerError> {
        let body = serde_json::to_vec(event).expect("events serialize");
        let message = Message::json(body).with_message_id(event.event_id.as_str());
        let key = event.routing_key();
        if confirm {
            self.publisher.publish(&self.exchange, &key, &message).await
        } else {
            self.publisher.publish_nowait(&self.exchange, &key, &message).await
        }
    }

    /// `accepted` / `running`: published in order, not awaited.
    pub async fn lifecycle(&self, status: EventStatus) -> Result<(), BrokerError> {
        self.send(&self.event(status), false).await
    }

    pub async fn progress(&self, progress: Progress) -> Result<(), BrokerError> {
        let mut event = self.event(EventStatus::Progress);
        event.progress = Some(progress);
        self.send(&event, false).await
    }

    /// A terminal (or `retrying`) event, confirmed by the broker before this returns.
    pub async fn outcome(
        &self,
        status: EventStatus,
        outputs: Vec<OutputObject>,
        execution: Option<Execution>,
        error: Option<ErrorInfo>,
        timings_ms: BTreeMap<String, f64>,
    ) -> Result<(), BrokerError> {
        let mut event = self.event(status);
        event.outputs = outputs;
        event.execution = execution;
        event.error = error;
        event.timings_ms = timings_ms;
        self.send(&event, true).await
    }
}
