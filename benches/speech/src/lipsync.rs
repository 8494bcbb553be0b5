//! `speech-bench lipsync`: the `lipsync` pipeline on CPU (decode, SCRFD on every frame, box smoothing,
//! crops, the model in batches, paste-back, H.264, AAC mux) against the same model's calls alone: the same
//! batches of the same shapes through one session with the same threads, no media work. The input is the
//! committed portrait clip looped and scaled (FFmpeg's command line prepares it), with the example line
//! looped to the same length.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ainern2d_contract::parse_job;
use ainern2d_pipelines::lipsync::{LipsyncConfig, LipsyncPipeline, Timings, frames};
use ainern2d_pipelines::onnx::{self, OnnxConfig, OnnxModel};
use ainern2d_pipelines::{CancellationToken, NoProgress, RunRequest};
use ort::value::Tensor;

#[derive(clap::Args)]
pub struct Args {
    /// Where `scripts/test.sh` put `wav2lip-tiny.onnx` and `scrfd.onnx`.
    #[arg(long, env = "AINERN2D_TEST_FIXTURES")]
    fixtures: PathBuf,
    /// Seconds of video (25 fps).
    #[arg(long, default_value_t = 8)]
    seconds: u32,
    /// Frame height the portrait clip is scaled to.
    #[arg(long, default_value_t = 720)]
    height: u32,
    /// Frames per model call.
    #[arg(long, default_value_t = 16)]
    batch: u32,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn ffmpeg(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).output()?;
    anyhow::ensure!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// The looped, scaled clip and the looped line, `seconds` long.
fn inputs(dir: &Path, seconds: u32, height: u32) -> anyhow::Result<(PathBuf, PathBuf)> {
    let media = super::repo().join("examples/media");
    let (video, audio) = (dir.join("clip.mp4"), dir.join("line.wav"));
    let t = seconds.to_string();
    let scale = format!("scale=-2:{height}");
    let portrait = media.join("portrait.mp4");
    let line = media.join("line.wav");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    ffmpeg(&[
        "-stream_loop",
        "-1",
        "-i",
        &s(&portrait),
        "-t",
        &t,
        "-vf",
        &scale,
        "-r",
        "25",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        &s(&video),
    ])?;
    ffmpeg(&["-stream_loop", "-1", "-i", &s(&line), "-t", &t, "-ac", "1", "-ar", "16000", &s(&audio)])?;
    Ok((video, audio))
}

/// The model alone: `frames` frames in calls of `batch`, inputs of the pipeline's shapes.
fn model_alone(model: &OnnxModel, frames: u64, batch: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut left = frames;
    while left > 0 {
        let n = left.min(batch) as usize;
        left -= n as u64;
        let mel = Tensor::from_array(([n, 1, 80, 16], vec![0.5f32; n * 80 * 16]))?;
        let faces = Tensor::from_array(([n, 6, 96, 96], vec![0.5f32; n * 6 * 96 * 96]))?;
        let mut session = model.session();
        let out = session.run(ort::inputs!["mel_spectrogram" => mel, "video_frames" => faces])?;
        anyhow::ensure!(out.len() == 1, "the model has one output");
    }
    Ok(started.elapsed().as_secs_f64())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let how = "run scripts/test.sh (it generates the ONNX fixtures)";
    let lips = super::existing(args.fixtures.join("wav2lip-tiny.onnx"), how)?;
    let scrfd = super::existing(args.fixtures.join("scrfd.onnx"), how)?;
    let dir = tempfile::tempdir()?;
    let (video, audio) = inputs(dir.path(), args.seconds, args.height)?;
    let manifest = format!(
        "device = \"cpu\"\n[budget]\ncpu_mb = 65536\n[models.lips]\nkind = \"lipsync\"\nformat = \"onnx\"\n\
         source = {:?}\ndetector = \"scrfd\"\nbatch_size = {}\n[models.scrfd]\nkind = \"face\"\nformat = \"onnx\"\n\
         source = {:?}\n",
        lips.display().to_string(),
        args.batch,
        scrfd.display().to_string()
    );
    let onnx = OnnxConfig { runtime_path: None, strict_device: false, intra_threads: args.threads };
    let pipeline = LipsyncPipeline::new(super::models(&manifest, dir.path())?, onnx.clone(), LipsyncConfig::default());
    let runtime = onnx::runtime(&onnx).map_err(anyhow::Error::msg)?;
    let alone = OnnxModel::load(runtime, &onnx, "alone", &lips, "cpu")?;
    let info = frames::probe(&video, &frames::Limits::default()).map_err(|e| anyhow::anyhow!(e.message))?;
    let (w, h) = (info.width, info.height);
    let job = |params: serde_json::Value| {
        parse_job(&serde_json::to_vec(&serde_json::json!({
            "schema": "ainern2d.job.v1", "job_id": "bench", "kind": "lipsync", "output": {"prefix": "bench"},
            "params": params, "inputs": {"video": "s3://bench/v", "audio": "s3://bench/a"},
        }))?)
        .map_err(anyhow::Error::from)
    };
    let detected = job(serde_json::json!({"model": "lips"}))?;
    // The same job with the box given (the detector skipped): where a box lies does not change the work.
    let boxed = job(serde_json::json!({"model": "lips", "face_box": [w / 4, h / 5, 3 * w / 4, 3 * h / 5]}))?;
    let inputs = BTreeMap::from([("video".to_string(), video), ("audio".to_string(), audio)]);
    let ours = |job: &ainern2d_contract::Job| -> anyhow::Result<(f64, u64, Timings)> {
        let work = tempfile::tempdir()?;
        let req = RunRequest { job, attempt: 1, inputs: inputs.clone(), workdir: work.path().into(), downgrade: None };
        let started = Instant::now();
        let (out, t) =
            pipeline.run_timed(&req, &NoProgress, &CancellationToken::new()).map_err(|e| anyhow::anyhow!(e.message))?;
        Ok((started.elapsed().as_secs_f64(), out.execution.frames.unwrap_or(0), t))
    };
    let (_, frames, _) = ours(&detected)?; // warm-up: loads both models
    let batch = u64::from(args.batch);
    model_alone(&alone, frames, batch)?;
    let (mut walls, mut boxed_walls, mut alone_s, mut splits) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        // Alternate the order, so no run always gets the warmer (or the throttled) machine.
        let ((wall, _, t), (boxed_wall, _, _), bare) = if round % 2 == 0 {
            (ours(&detected)?, ours(&boxed)?, model_alone(&alone, frames, batch)?)
        } else {
            let bare = model_alone(&alone, frames, batch)?;
            let b = ours(&boxed)?;
            (ours(&detected)?, b, bare)
        };
        let fps = |s: f64| frames as f64 / s;
        eprintln!(
            "round {}: pipeline {:.1} fps ({frames} frames in {wall:.2}s), with the box given {:.1} fps, model alone \
             {:.1} fps",
            round + 1,
            fps(wall),
            fps(boxed_wall),
            fps(bare)
        );
        walls.push(wall);
        boxed_walls.push(boxed_wall);
        alone_s.push(bare);
        splits.push(t);
    }
    let per_frame = |f: fn(&Timings) -> std::time::Duration| {
        super::median(splits.iter().map(|t| f(t).as_secs_f64()).collect()) * 1e3 / frames as f64
    };
    let (wall, boxed_wall, bare) = (super::median(walls), super::median(boxed_walls), super::median(alone_s));
    println!(
        "lipsync on CPU, {frames} frames ({} s at 25 fps, {w}x{h}), batch {}, {} thread(s), {} rounds (medians):",
        args.seconds, args.batch, args.threads, args.rounds
    );
    println!(
        "  pipeline        {:.1} fps: decode {:.2} ms/frame, detection {:.2}, crops and paste-back {:.2}, \
         inference {:.2}, encode {:.2}",
        frames as f64 / wall,
        per_frame(|t| t.decode),
        per_frame(|t| t.detect),
        per_frame(|t| t.compose),
        per_frame(|t| t.inference),
        per_frame(|t| t.encode)
    );
    println!("  box given       {:.1} fps (no detection)", frames as f64 / boxed_wall);
    println!("  model alone     {:.1} fps: inference {:.3} ms/frame", frames as f64 / bare, bare * 1e3 / frames as f64);
    println!("  pipeline inference / model alone: {:.2}x", per_frame(|t| t.inference) / (bare * 1e3 / frames as f64));
    Ok(())
}
