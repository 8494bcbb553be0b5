//! ComfyUI's WebSocket text frames through the watcher (`pipelines/src/comfy/watch.rs`: parse, `interpret`,
//! the progress it reports) and any frame also read as a `/history` entry (`client.rs`).
//!
//! Input: text, one frame per line, for prompt `p` of a four-node workflow. Besides never panicking: every
//! progress fraction is finite and within [0, 1] (it becomes a `progress` event's `fraction`); a finished
//! or failed prompt ends the watch.

#![no_main]

use ainern2d_pipelines::comfy::client::HistoryEntry;
use ainern2d_pipelines::comfy::watch::{Seen, Tracker, interpret};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let prompt = serde_json::json!({
        "3": {"class_type": "KSampler", "inputs": {}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {}},
        "8": {"class_type": "VAEDecode", "inputs": {}},
        "9": {"class_type": "SaveAnimatedWEBP", "inputs": {}},
    });
    let mut tracker = Tracker::new(&prompt);
    let text = String::from_utf8_lossy(data);
    for frame in text.lines() {
        // As `follow` does: a frame that is not JSON is skipped.
        let Ok(msg) = serde_json::from_str::<Value>(frame) else { continue };
        let history = HistoryEntry::parse(&msg);
        for node in history.outputs.keys() {
            let _ = history.files_of(node);
        }
        match interpret(&msg, "p", &mut tracker) {
            Seen::Nothing | Seen::Interrupted => {}
            Seen::Progress => {
                let fraction = tracker.fraction();
                assert!((0.0..=1.0).contains(&fraction), "progress fraction {fraction} after {frame}");
                let _ = tracker.stage();
            }
            Seen::Finished | Seen::Failed(_) => break,
        }
    }
});
