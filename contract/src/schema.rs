//! JSON Schema documents generated from the contract types. `schemas/*.json` at the workspace root are
//! these, committed; a test fails when they are stale (`UPDATE_SCHEMAS=1 cargo test -p ainern2d-contract`).

use crate::{Control, Event, Heartbeat, Job};

/// `(file name, pretty JSON)` for every message of the contract.
pub fn all() -> Vec<(&'static str, String)> {
    fn render<T: schemars::JsonSchema>() -> String {
        let mut s = serde_json::to_string_pretty(&schemars::schema_for!(T)).expect("schemas serialize");
        s.push('\n');
        s
    }
    vec![
        ("job.v1.schema.json", render::<Job>()),
        ("event.v1.schema.json", render::<Event>()),
        ("heartbeat.v1.schema.json", render::<Heartbeat>()),
        ("control.v1.schema.json", render::<Control>()),
    ]
}
