//! The `lipsync` kind in process: a Wav2Lip-compatible ONNX model, faces from an ONNX detector.

pub mod audio;
pub mod face;
pub mod frames;
pub mod image;
pub mod mel;
mod pipeline;
pub mod writer;

pub use pipeline::{LipsyncPipeline, Timings};

use serde::{Deserialize, Serialize};

/// The `[lipsync]` section of the worker's config: what a job's media may be, checked before heavy work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LipsyncConfig {
    /// Largest input frame, in pixels per side.
    pub max_width: u32,
    pub max_height: u32,
    /// Most output frames (mel chunks) a job may produce.
    pub max_frames: u64,
    /// Longest input audio, in seconds.
    pub max_audio_s: f64,
    /// Memory one frame of a batch needs in the model, in MB (sizes batches from the memory budget).
    pub mb_per_frame: u64,
}

impl Default for LipsyncConfig {
    fn default() -> Self {
        LipsyncConfig { max_width: 3840, max_height: 2160, max_frames: 25 * 600, max_audio_s: 600.0, mb_per_frame: 16 }
    }
}

impl LipsyncConfig {
    pub fn validate(&self) -> Result<(), String> {
        let bad = |key: &str, why: &str| Err(format!("config key `lipsync.{key}`: {why}"));
        if !(16..=16_384).contains(&self.max_width) {
            return bad("max_width", "must be 16..=16384");
        }
        if !(16..=16_384).contains(&self.max_height) {
            return bad("max_height", "must be 16..=16384");
        }
        if self.max_frames == 0 {
            return bad("max_frames", "must be at least 1");
        }
        if !(self.max_audio_s > 0.0 && self.max_audio_s <= 86_400.0) {
            return bad("max_audio_s", "must be in (0, 86400]");
        }
        if self.mb_per_frame == 0 {
            return bad("mb_per_frame", "must be at least 1");
        }
        Ok(())
    }
}
