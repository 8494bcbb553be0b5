//! The `audio` kind in process: Piper voices (VITS exported to ONNX) behind an espeak-ng phonemizer.

pub mod espeak;
pub mod ids;
mod pipeline;
pub mod text;
pub mod voice;

use std::path::PathBuf;

pub use pipeline::{Speech, Timings, TtsPipeline, Voice};

use serde::{Deserialize, Serialize};

/// The `[tts]` section of the worker's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TtsConfig {
    /// libespeak-ng (default: `libespeak-ng.so.1` from the system's library path).
    pub espeak_library: Option<PathBuf>,
    /// espeak-ng's data directory (default: the library's own).
    pub espeak_data: Option<PathBuf>,
    /// Longest text a job may ask for, in characters.
    pub max_chars: usize,
    /// Silence between sentences, in seconds (a job's `sentence_silence_s` overrides it).
    pub sentence_silence_s: f32,
}

impl Default for TtsConfig {
    fn default() -> Self {
        TtsConfig { espeak_library: None, espeak_data: None, max_chars: 5_000, sentence_silence_s: 0.2 }
    }
}

impl TtsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_chars == 0 || self.max_chars > 10_000 {
            return Err("config key `tts.max_chars`: must be 1..=10000 (the contract's limit)".into());
        }
        if !(0.0..=5.0).contains(&self.sentence_silence_s) {
            return Err("config key `tts.sentence_silence_s`: must be 0..=5 seconds".into());
        }
        Ok(())
    }
}
