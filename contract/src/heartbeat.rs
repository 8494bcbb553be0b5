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

impl WorkerState {
    pub const ALL: [WorkerState; 6] = [
        WorkerState::Starting,
        WorkerState::Ready,
        WorkerState::Cordoned,
        WorkerState::Draining,
        WorkerState::Drained,
        WorkerState::Stopping,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Cordoned => "cordoned",
            WorkerState::Draining => "draining",
            WorkerState::Drained => "drained",
            WorkerState::Stopping => "stopping",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SlotUsage {
    pub total: u32,
    pub busy: u32,
}

/// One GPU's telemetry: from NVML, or (a worker without NVML whose video jobs run on ComfyUI) the memory
/// figures ComfyUI reports, with `source = "comfyui"` and no utilisation, temperature or power.
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
    /// Where the figures come from when not NVML (`comfyui`): `utilization_pct` is then unknown (0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A server a pipeline runs on (ComfyUI), as the worker's last probe found it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackendStatus {
    /// The backend (`comfyui`).
    pub backend: String,
    pub url: String,
    /// Whether it answered the last probe.
    pub reachable: bool,
    /// Why it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub ram_total_bytes: u64,
    #[serde(default)]
    pub ram_free_bytes: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<BackendDevice>,
    /// Present when the worker runs the server as its child process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<BackendProcess>,
}

/// One device a backend server computes on, with its memory as the server sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackendDevice {
    pub index: u32,
    pub name: String,
    /// `cuda`, `cpu`, `mps`, ….
    pub kind: String,
    pub vram_total_bytes: u64,
    pub vram_free_bytes: u64,
}

/// A backend server the worker supervises.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackendProcess {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Times it was restarted after dying.
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
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
    /// Backend servers by job kind (`video`: ComfyUI); absent for in-process pipelines.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backends: BTreeMap<String, BackendStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_are_the_wire_names() {
        for state in WorkerState::ALL {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
    }
}
