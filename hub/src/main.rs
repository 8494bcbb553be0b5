//! `ainern2d-hub`: the CPU-side service that will consume events into Postgres, keep the worker registry and
//! enforce the fleet policy. Only the contract is wired so far; the hub itself is the next milestone.
//!
//! The hub must never link inference code (no candle, ort or FFmpeg).

fn main() {
    eprintln!(
        "ainern2d-hub {}: not built yet; it speaks {} / {} and will ingest them into Postgres",
        env!("CARGO_PKG_VERSION"),
        ainern2d_contract::EVENT_SCHEMA,
        ainern2d_contract::HEARTBEAT_SCHEMA
    );
    std::process::exit(2);
}
