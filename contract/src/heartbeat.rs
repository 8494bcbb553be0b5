//! `ainern2d.heartbeat.v1`: a worker's periodic report of itself.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const HEARTBEAT_SCHEMA: &str = "ainern2d.heartbeat.v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Starting,
    Ready,
    /// Takes no new work until uncordoned; in-flight work continues.
    Cordoned,
    /// Finishing in-flight work, taking no more.
    Draining,
    /// Nothing in flight and nothing taken any more.
    Drained,
    Stopping,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SlotUsage {
    pub total: u32,
    pub busy: u32,
}

/// One GPU's telemetry from NVML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GpuStats {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub utilization_pct: u32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_w: Option<f64>,
}

/// Published on the events exchange with routing key `worker.heartbeat.<worker_id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Heartbeat {
    /// Always `ainern2d.heartbeat.v1`.
    pub schema: String,
    pub worker_id: String,
    pub host: String,
    pub version: String,
    pub state: WorkerState,
    pub sent_at: DateTime<Utc>,
    /// Slots per job kind.
    pub slots: BTreeMap<String, SlotUsage>,
    #[serde(default)]
    pub models_loaded: Vec<String>,
    /// Empty when NVML is absent (no GPU or no driver): that is not an error.
    #[serde(default)]
    pub gpus: Vec<GpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downgrade: Option<String>,
}
