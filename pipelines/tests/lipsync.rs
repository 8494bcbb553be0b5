//! The `lipsync` pipeline on ONNX Runtime with the generated Wav2Lip-signature model (it recolours the
//! lower half of the face crop from the mel window) and the SCRFD detector: output frames = mel chunks,
//! the mouth region changed and the rest of the frame not, the input's audio muxed; bad media refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ainern2d_contract::{Job, parse_job};
use ainern2d_models::{CacheMetrics, Manifest, Models};
use ainern2d_pipelines::lipsync::{LipsyncConfig, LipsyncPipeline, frames};
use ainern2d_pipelines::onnx::OnnxConfig;
use ainern2d_pipelines::{CancellationToken, NoProgress, Pipeline, PipelineErrorKind, ProgressSink, RunRequest};

fn fixtures() -> PathBuf {
    let p = PathBuf::from(std::env::var("AINERN2D_TEST_FIXTURES").unwrap_or("/tmp/ainern2d-services/fixtures".into()));
    assert!(p.join("wav2lip-tiny.onnx").is_file(), "{} lacks the ONNX fixtures: run scripts/test.sh", p.display());
    p
}

fn media(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("examples/media").join(name)
}

fn pipeline() -> (LipsyncPipeline, tempfile::TempDir) {
    let fx = fixtures();
    let lib = std::env::var("ORT_DYLIB_PATH").unwrap_or(
        "/tmp/ainern2d-services/py/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1".into(),
    );
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "device = \"cpu\"\n[models.lips]\nkind = \"lipsync\"\nformat = \"onnx\"\nsource = \"{fx}/wav2lip-tiny.onnx\"\n\
         detector = \"scrfd\"\nbatch_size = 8\n[models.scrfd]\nkind = \"face\"\nformat = \"onnx\"\nsource = \"{fx}/scrfd.onnx\"\n",
        fx = fx.display()
    );
    let manifest = Manifest::from_toml(&text, dir.path()).unwrap();
    let models = Arc::new(Models::new(manifest, None, CacheMetrics::new(), &[]).unwrap());
    let onnx = OnnxConfig { runtime_path: Some(lib.into()), strict_device: false, intra_threads: 1 };
    (LipsyncPipeline::new(models, onnx, LipsyncConfig::default()), dir)
}

fn job(params: serde_json::Value) -> Job {
    let body = serde_json::json!({"schema": "ainern2d.job.v1", "job_id": "l", "kind": "lipsync", "params": params,
        "inputs": {"video": "s3://bucket/v", "audio": "s3://bucket/a"}, "output": {"prefix": "p"}});
    parse_job(&serde_json::to_vec(&body).unwrap()).unwrap()
}

fn run(
    p: &LipsyncPipeline,
    params: serde_json::Value,
    video: &Path,
    audio: &Path,
    sink: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> (Result<ainern2d_pipelines::RunOutput, ainern2d_pipelines::PipelineError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let job = job(params);
    let inputs =
        BTreeMap::from([("video".to_string(), video.to_path_buf()), ("audio".to_string(), audio.to_path_buf())]);
    let req = RunRequest { job: &job, attempt: 1, inputs, workdir: dir.path().into(), downgrade: None };
    (p.run(&req, sink, cancel), dir)
}

fn rgb_frames(path: &Path) -> (Vec<Vec<u8>>, u32, u32) {
    let mut out = Vec::new();
    let (mut w, mut h) = (0, 0);
    frames::decode_rgb(path, &frames::Limits::default(), u64::MAX, |_, rgb, fw, fh| {
        out.push(rgb.to_vec());
        (w, h) = (fw, fh);
        Ok(())
    })
    .unwrap();
    (out, w, h)
}

fn audio_stream(path: &Path) -> (String, f64) {
    let o = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=codec_name,duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    let line = String::from_utf8(o.stdout).unwrap();
    let (codec, duration) = line.trim().split_once(',').unwrap_or_else(|| panic!("no audio stream: {line}"));
    (codec.to_string(), duration.parse().unwrap())
}

/// Mean absolute difference of two RGB frames inside and outside a box.
fn diff(a: &[u8], b: &[u8], w: u32, bx: [u32; 4]) -> (f64, f64) {
    let (mut inside, mut ni, mut outside, mut no) = (0u64, 0u64, 0u64, 0u64);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let p = i as u32 / 3;
        let (px, py) = (p % w, p / w);
        let d = u64::from(x.abs_diff(*y));
        if px >= bx[0] && px < bx[2] && py >= bx[1] && py < bx[3] {
            (inside, ni) = (inside + d, ni + 1);
        } else {
            (outside, no) = (outside + d, no + 1);
        }
    }
    (inside as f64 / ni.max(1) as f64, outside as f64 / no.max(1) as f64)
}

#[test]
fn a_given_box_changes_the_mouth_and_nothing_else_and_keeps_the_audio() {
    let (p, _d) = pipeline();
    let (video, audio) = (media("face.mp4"), media("line.wav"));
    let (input, w, h) = rgb_frames(&video);
    let bx = [w / 4, h / 4, w * 3 / 4, h * 3 / 4];
    let params = serde_json::json!({"face_box": bx});
    let (out, dir) = run(&p, params, &video, &audio, &NoProgress, &CancellationToken::new());
    let out = out.unwrap();
    let path = dir.path().join("lipsync.mp4");
    let (output, ow, oh) = rgb_frames(&path);
    assert_eq!((ow, oh), (w & !1, h & !1));
    assert_eq!(out.execution.frames, Some(output.len() as u64), "output frames = mel chunks");
    let audio_s = audio_stream(&audio).1;
    let fps = frames::probe(&video, &frames::Limits::default()).unwrap().fps;
    assert!((output.len() as f64 / fps - audio_s).abs() < 0.2, "{} frames at {fps} fps for {audio_s} s", output.len());
    // The box's lower half (the mouth) is the model's; the upper half and the rest are the input's (up to
    // H.264's loss).
    let mouth = [bx[0], (bx[1] + bx[3]) / 2 + 2, bx[2], bx[3] - 1];
    let (changed, _) = diff(&input[3], &output[3], w, mouth);
    let (_, rest) = diff(&input[3], &output[3], w, bx);
    assert!(changed > 20.0, "the mouth region changed: {changed}");
    assert!(rest < 6.0, "the rest of the frame did not: {rest}");
    let (codec, duration) = audio_stream(&path);
    assert_eq!(codec, "aac");
    assert!((duration - audio_s).abs() < 0.1, "the input's audio: {duration} vs {audio_s}");
    assert_eq!(out.execution.backend, "onnxruntime");
}

#[test]
fn a_still_image_is_looped_for_the_audio_and_a_faceless_video_fails() {
    let (p, _d) = pipeline();
    let (out, dir) = run(
        &p,
        serde_json::json!({"face_box": [4, 4, 40, 40], "fps": 10}),
        &media("still.png"),
        &media("line.wav"),
        &NoProgress,
        &CancellationToken::new(),
    );
    let out = out.unwrap();
    let frames = out.execution.frames.unwrap();
    assert_eq!(rgb_frames(&dir.path().join("lipsync.mp4")).0.len() as u64, frames);
    let audio_s = audio_stream(&media("line.wav")).1;
    assert!((frames as f64 / 10.0 - audio_s).abs() < 0.2, "{frames} frames at 10 fps for {audio_s} s");
    // The synthetic clip has no face: the detector finds none in any frame.
    let (err, _dir) =
        run(&p, serde_json::json!({}), &media("face.mp4"), &media("line.wav"), &NoProgress, &CancellationToken::new());
    let err = err.unwrap_err();
    assert_eq!(err.kind, PipelineErrorKind::Permanent);
    assert!(err.message.contains("no face"), "{}", err.message);
}

#[test]
fn the_detector_finds_the_portrait_and_the_job_succeeds() {
    let (p, _d) = pipeline();
    let (out, _dir) = run(
        &p,
        serde_json::json!({}),
        &media("portrait.mp4"),
        &media("line.wav"),
        &NoProgress,
        &CancellationToken::new(),
    );
    let out = out.unwrap_or_else(|e| panic!("{}", e.message));
    assert!(out.execution.frames.unwrap() > 10);
}

#[test]
fn bad_media_is_refused_before_inference() {
    let (p, _d) = pipeline();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "this is not a video").unwrap();
    let truncated = dir.path().join("truncated.mp4");
    let bytes = std::fs::read(media("face.mp4")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let fail = |video: &Path, audio: &Path, params: serde_json::Value| {
        let (out, _dir) = run(&p, params, video, audio, &NoProgress, &CancellationToken::new());
        let err = out.unwrap_err();
        assert_eq!(err.kind, PipelineErrorKind::Permanent, "{}", err.message);
        err.message
    };
    let box_ = serde_json::json!({"face_box": [4, 4, 40, 40]});
    let m = fail(&text, &media("line.wav"), box_.clone());
    assert!(m.contains("notes.mp4"), "{m}");
    let m = fail(&truncated, &media("line.wav"), box_.clone());
    assert!(!m.is_empty());
    let m = fail(&media("face.mp4"), &text, box_.clone());
    assert!(m.contains("audio"), "{m}");
    let m = fail(&media("face.mp4"), &media("line.wav"), serde_json::json!({"face_box": [4, 4, 4000, 40]}));
    assert!(m.contains("face_box"), "{m}");
}

#[test]
fn cancelling_stops_between_batches() {
    struct CancelOnBatch(CancellationToken);
    impl ProgressSink for CancelOnBatch {
        fn progress(&self, _: f32, stage: &str, _: Option<String>) {
            if stage == "inference" {
                self.0.cancel();
            }
        }
    }
    let (p, _d) = pipeline();
    let cancel = CancellationToken::new();
    let (out, _dir) = run(
        &p,
        serde_json::json!({"face_box": [4, 4, 40, 40]}),
        &media("face.mp4"),
        &media("line.wav"),
        &CancelOnBatch(cancel.clone()),
        &cancel,
    );
    assert_eq!(out.unwrap_err().kind, PipelineErrorKind::Cancelled);
}
