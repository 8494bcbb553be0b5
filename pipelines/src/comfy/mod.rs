//! The `video` kind through a ComfyUI server beside the worker: workflow templates filled from the job's
//! params ([`template`]), ComfyUI's HTTP and WebSocket API with a watchdog and per-prompt cancel
//! ([`client`]), and whatever ComfyUI wrote turned into an H.264 MP4 and a JPEG thumbnail ([`normalize`]).
//!
//! The protocol followed is ComfyUI's from v0.3.57 (targeted `POST /interrupt`; client-chosen `prompt_id`
//! from v0.3.45) to v0.8.0.

pub mod client;
pub mod normalize;
mod pipeline;
pub mod supervise;
pub mod template;
pub mod watch;

pub use pipeline::{ComfyPipeline, prompt_id};
pub use supervise::{Life, Supervisor};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[comfyui]` section of the worker's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComfyConfig {
    /// The server, e.g. `http://127.0.0.1:8188`.
    pub url: String,
    /// The directory of workflow templates: `<name>.json` (API format) with `<name>.toml` beside it.
    pub templates: PathBuf,
    /// The template of jobs that name none (default: the only one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_template: Option<String>,
    /// Seconds the WebSocket may stay silent while a prompt runs before the watchdog reconnects and
    /// reconciles from `/history` and `/queue`.
    #[serde(default = "default_silence_s")]
    pub silence_s: u64,
    /// The most seconds one prompt may take, queueing included.
    #[serde(default = "default_prompt_timeout_s")]
    pub prompt_timeout_s: u64,
    /// The largest output file downloaded from `/view`, in MB.
    #[serde(default = "default_max_output_mb")]
    pub max_output_mb: u64,
    /// `POST /free` after this many prompts (0: never).
    #[serde(default)]
    pub free_every: u32,
    /// `POST /free` after a prompt when a device's VRAM use (as ComfyUI reports it) is above this percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_above_pct: Option<u8>,
    /// Run ComfyUI as a child of the worker: the program and its arguments (e.g. `["python", "main.py",
    /// "--listen", "127.0.0.1", "--port", "8188"]`). It is restarted when it dies, and a prompt it was
    /// running fails as retryable at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// The working directory of `command` (default: the worker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_dir: Option<PathBuf>,
    /// How long a supervised ComfyUI may take to answer after (re)starting before a job waiting for it fails
    /// as retryable.
    #[serde(default = "default_start_timeout_s")]
    pub start_timeout_s: u64,
}

impl ComfyConfig {
    /// The server at `url` with the templates of `templates`, everything else by default.
    pub fn new(url: &str, templates: PathBuf) -> ComfyConfig {
        ComfyConfig {
            url: url.to_string(),
            templates,
            default_template: None,
            silence_s: default_silence_s(),
            prompt_timeout_s: default_prompt_timeout_s(),
            max_output_mb: default_max_output_mb(),
            free_every: 0,
            free_above_pct: None,
            command: None,
            command_dir: None,
            start_timeout_s: default_start_timeout_s(),
        }
    }
}

fn default_silence_s() -> u64 {
    60
}
fn default_prompt_timeout_s() -> u64 {
    3600
}
fn default_start_timeout_s() -> u64 {
    300
}
fn default_max_output_mb() -> u64 {
    2048
}
