//! `speech-bench`: the `audio` and `lipsync` pipelines on ONNX Runtime, each against a baseline measured
//! in the same run, rounds interleaved, medians reported.
//!
//! - `speech-bench tts`: real-time factor of the `audio` pipeline against `piper-tts` (Piper's own Python
//!   runtime) on the same voice, text and thread count, split into phonemisation, inference and encoding.
//! - `speech-bench lipsync`: frames per second of the `lipsync` pipeline on CPU, split into decode,
//!   detection, inference and encode, against the same model's calls alone on the same batches.

mod lipsync;
mod tts;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ainern2d_models::{CacheMetrics, Manifest, Models};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    Tts(tts::Args),
    Lipsync(lipsync::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Tts(args) => tts::run(args),
        Bench::Lipsync(args) => lipsync::run(args),
    }
}

/// The warm-model cache over an inline manifest.
fn models(manifest: &str, dir: &Path) -> anyhow::Result<Arc<Models>> {
    let manifest = Manifest::from_toml(manifest, dir)?;
    Ok(Arc::new(Models::new(manifest, None, CacheMetrics::new(), &[])?))
}

/// A file the bench needs, absolute, or an error saying how to get it.
fn existing(path: PathBuf, how: &str) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(path.is_file(), "{}: no such file; {how}", path.display());
    Ok(std::fs::canonicalize(path)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Where the repository's `examples/` are.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
