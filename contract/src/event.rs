//! `ainern2d.event.v1`: what a worker reports about a job.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::job::JobKind;

pub const EVENT_SCHEMA: &str = "ainern2d.event.v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    Accepted,
    Running,
    Progress,
    Succeeded,
    Failed,
    Cancelled,
    Retrying,
    DeadLettered,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Accepted => "accepted",
            EventStatus::Running => "running",
            EventStatus::Progress => "progress",
            EventStatus::Succeeded => "succeeded",
            EventStatus::Failed => "failed",
            EventStatus::Cancelled => "cancelled",
            EventStatus::Retrying => "retrying",
            EventStatus::DeadLettered => "dead_lettered",
        }
    }

    /// A terminal status ends the job: no later event of the same job changes its outcome.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventStatus::Succeeded | EventStatus::Failed | EventStatus::Cancelled | EventStatus::DeadLettered
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Progress {
    /// 0.0 to 1.0.
    pub fraction: f32,
    /// Pipeline stage, e.g. `fetch`, `inference`, `encode`, `upload`.
    pub stage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Text generation: tokens generated so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u32>,
    /// Text generation: tokens per second since the first generated token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f32>,
}

/// One stored output object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OutputObject {
    /// Logical name within the job (`video.mp4`, `audio.wav`, `completion.json`).
    pub name: String,
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the object's bytes.
    pub sha256: String,
    pub content_type: String,
    /// Time-limited GET URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presigned_url: Option<String>,
}

/// What ran a job: on succeeded events, so that an output is never mistaken for another backend's
/// (a mock's for a model's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Execution {
    /// `mock`, `candle`, `openai`, `onnxruntime`, `comfyui`, `noop`.
    pub backend: String,
    /// The manifest name of the model (or voice) that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Where it ran: `cpu`, `cuda:0`, `remote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// ONNX Runtime's execution provider (`CPUExecutionProvider`, `CUDAExecutionProvider`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_provider: Option<String>,
    /// Media outputs: length in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    /// Audio outputs: samples per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    /// Video outputs: frames written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorInfo {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
    /// The offending field for validation errors (`params.width`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An event, published on the events exchange with routing key `job.<kind>.<status>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Always `ainern2d.event.v1`.
    pub schema: String,
    /// Unique per event; terminal events have a deterministic id (`<job_id>/<attempt>/<status>`) so that a
    /// redelivered job re-announces the same outcome rather than a second one.
    pub event_id: String,
    pub job_id: String,
    /// Absent when the message was too malformed to tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<JobKind>,
    /// 1 for the first delivery, +1 for each retry.
    pub attempt: u32,
    pub worker_id: String,
    pub status: EventStatus,
    /// Monotonic within one attempt, so consumers can order events of the same attempt.
    pub seq: u32,
    pub emitted_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputObject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// What ran the job (succeeded events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<Execution>,
    /// Milliseconds spent per stage (`queue`, `fetch`, `inference`, `upload`, `total`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub timings_ms: BTreeMap<String, f64>,
    /// Name of the downgrade profile applied to this job, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downgrade: Option<String>,
    /// W3C trace context: the job's `traceparent`, continued. With traces on (OTLP) it names the worker's
    /// span for the job (same trace id), so the hub's ingest span hangs below it; without, the job's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Event {
    pub fn new(
        job_id: &str,
        kind: Option<JobKind>,
        attempt: u32,
        worker_id: &str,
        status: EventStatus,
        seq: u32,
    ) -> Self {
        let event_id = if status.is_terminal() || status == EventStatus::Retrying {
            format!("{job_id}/{attempt}/{}", status.as_str())
        } else {
            format!("{job_id}/{attempt}/{seq}")
        };
        Event {
            schema: EVENT_SCHEMA.into(),
            event_id,
            job_id: job_id.into(),
            kind,
            attempt,
            worker_id: worker_id.into(),
            status,
            seq,
            emitted_at: Utc::now(),
            progress: None,
            outputs: Vec::new(),
            error: None,
            execution: None,
            timings_ms: BTreeMap::new(),
            downgrade: None,
            traceparent: None,
        }
    }

    /// Gives a non-terminal event an id unique to one delivery of the job (`<job_id>/<attempt>/<delivery>/
    /// <seq>`): a redelivered attempt starts its sequence again, and its `running` and `progress` events
    /// must not be taken for replays of the earlier delivery's. Terminal and `retrying` ids stay
    /// deterministic, so a replayed outcome is recognised as one.
    pub fn with_delivery(mut self, delivery: &str) -> Self {
        if !(self.status.is_terminal() || self.status == EventStatus::Retrying) {
            self.event_id = format!("{}/{}/{delivery}/{}", self.job_id, self.attempt, self.seq);
        }
        self
    }

    /// Routing key on the events exchange: `job.<kind>.<status>` (`job.unknown.failed` for unparseable jobs).
    pub fn routing_key(&self) -> String {
        format!("job.{}.{}", self.kind.map(|k| k.as_str()).unwrap_or("unknown"), self.status.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_terminal_ids_are_unique_per_delivery_and_outcomes_deterministic() {
        let ev = |status, delivery| Event::new("j", Some(JobKind::Llm), 2, "w", status, 0).with_delivery(delivery);
        assert_ne!(ev(EventStatus::Running, "a").event_id, ev(EventStatus::Running, "b").event_id);
        assert_eq!(ev(EventStatus::Progress, "a").event_id, "j/2/a/0");
        assert_eq!(ev(EventStatus::Succeeded, "a").event_id, ev(EventStatus::Succeeded, "b").event_id);
        assert_eq!(ev(EventStatus::Retrying, "a").event_id, "j/2/retrying");
    }
}
