//! Row 11: text to speech, real-time factor (compute seconds per second of speech): the `audio` pipeline
//! against `piper-tts` 1.8 (Piper's own Python runtime) on the same voice, text and ONNX Runtime thread
//! count. The measuring is `speech-bench tts` (`benches/speech`, a package of its own, built into the same
//! target directory): it alternates the two sides round by round and writes each round's figures as JSON;
//! this row runs it and reports them. `piper-tts` comes from PyPI into the peers' environment; the voice is
//! the one `scripts/services.sh` installs for the tests (`AINERN2D_TEST_PIPER_VOICE`).

use std::process::Command;

use crate::Ctx;
use crate::peers::Peers;
use crate::report::{Check, Row};
use crate::support;

pub async fn run(ctx: &Ctx, peers: &Peers) -> anyhow::Result<Row> {
    let mut row = Row::new(11, "TTS real-time factor vs piper-tts", "≥ 1.0×");
    let bin = ctx.bin("speech-bench");
    let Some(voice) = std::env::var_os("AINERN2D_TEST_PIPER_VOICE") else {
        return Ok(row.skip("no Piper voice: set AINERN2D_TEST_PIPER_VOICE (scripts/bench.sh does)"));
    };
    if !bin.exists() {
        return Ok(row.skip(format!("{} is not built (cargo build -p ainern2d-bench-speech)", bin.display())));
    }
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("tts.json");
    let threads = 1;
    let mut cmd = Command::new(&bin);
    cmd.args(["tts", "--threads", &threads.to_string(), "--rounds", &ctx.rounds.to_string(), "--voice"])
        .arg(&voice)
        .arg("--python")
        .arg(peers.bin("python"));
    let figures = support::bench_json(&mut cmd, &json)?;
    let values = |side: &str| -> Vec<f64> {
        figures[side]["rtf"].as_array().map(|v| v.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default()
    };
    let stage = |side: &str, name: &str| -> Vec<f64> {
        let rounds = figures[side]["rounds"].as_array().cloned().unwrap_or_default();
        rounds.iter().filter_map(|r| Some(r[name].as_f64()? * 1e3)).collect()
    };
    row.conditions.push(format!(
        "voice {}, {} characters of narration, {threads} ONNX Runtime thread on both sides, {} build of `speech-bench`",
        figures["voice"].as_str().unwrap_or("?"),
        figures["characters"],
        ctx.profile()
    ));
    row.conditions.push(format!(
        "piper-tts {} in its own Python process (`benches/speech/piper_peer.py`), its ONNX Runtime {}",
        peers.version("python", &["-c", "import importlib.metadata as m; print(m.version('piper-tts'))"]),
        figures["peer_onnxruntime"].as_str().unwrap_or("?")
    ));
    let ours = row.measure("ainern2d `audio` pipeline", "RTF", true, &values("pipeline"));
    let peer = row.measure("piper-tts", "RTF", false, &values("piper_tts"));
    for (side, name) in [("pipeline", "ainern2d"), ("piper_tts", "piper-tts")] {
        for s in ["phonemize", "inference", "encode"] {
            row.measure(&format!("{name}: {s}"), "ms", false, &stage(side, s));
        }
    }
    row.checks.push(Check::at_least("speed: piper-tts RTF / ours", peer / ours, 1.0));
    Ok(row)
}
