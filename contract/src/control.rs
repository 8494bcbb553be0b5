//! `ainern2d.control.v1`: commands from the hub or an operator to workers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const CONTROL_SCHEMA: &str = "ainern2d.control.v1";

/// Caps applied to new jobs while a worker is downgraded. Absent fields are not capped.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DowngradeProfile {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_max_steps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_max_pixels: Option<u64>,
    /// Most frames of a `video` clip while downgraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_max_frames: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_model: Option<String>,
    /// Most frames per lip-sync inference call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lipsync_max_batch: Option<u32>,
    /// Slots per kind while downgraded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slots: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ControlCommand {
    /// Finish in-flight jobs, take no more, report `drained`.
    Drain,
    /// Take no new jobs until `uncordon`.
    Cordon,
    Uncordon,
    /// Stop a job: skipped when delivered, stopped when running.
    Cancel {
        job_id: String,
    },
    ApplyDowngrade {
        profile: DowngradeProfile,
    },
    ClearDowngrade,
}

/// Published on the control exchange with routing key `worker.<worker_id>` or `worker.all`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Control {
    /// Always `ainern2d.control.v1`.
    pub schema: String,
    pub command_id: String,
    pub issued_at: DateTime<Utc>,
    #[serde(flatten)]
    pub command: ControlCommand,
}
