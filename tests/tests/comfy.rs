//! The `video` pipeline on ComfyUI against the protocol-faithful fake (`ainern2d_tests::comfy`): the example
//! templates filled and queued under the job's own prompt id, progress, errors (out of memory, a 400 with
//! node errors, another client's interrupt), the watchdog (a WebSocket that drops, a server that goes
//! silent, a restart that loses the prompt), a redelivered job collecting its prompt from history, cancel
//! interrupting exactly its prompt, oversized outputs; the result an H.264 MP4 and a thumbnail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ainern2d_contract::parse_job;
use ainern2d_pipelines::comfy::{ComfyConfig, ComfyPipeline, prompt_id};
use ainern2d_pipelines::{
    CancellationToken, Pipeline, PipelineError, PipelineErrorKind, ProgressSink, RunOutput, RunRequest,
};
use ainern2d_tests::comfy::{At, Behaviour, Device, Failure, FakeComfy, OutputFile, Reject, View};
use ainern2d_tests::{ffprobe, test_clip};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(f32, String)>>);

impl ProgressSink for Recorder {
    fn progress(&self, fraction: f32, stage: &str, _: Option<String>) {
        self.0.lock().unwrap().push((fraction, stage.to_string()));
    }
}

struct Run {
    result: Result<RunOutput, PipelineError>,
    stages: Vec<(f32, String)>,
    _dir: tempfile::TempDir,
}

fn config(fake: &FakeComfy) -> ComfyConfig {
    let mut c = ComfyConfig::new(&fake.url(), repo().join("examples/comfyui"));
    c.silence_s = 2;
    c.prompt_timeout_s = 30;
    c
}

fn job(id: &str, params: serde_json::Value) -> ainern2d_contract::Job {
    let mut body = serde_json::json!({"schema": "ainern2d.job.v1", "job_id": id, "kind": "video",
        "params": params, "output": {"prefix": "p"}});
    body["inputs"] = serde_json::json!({"image": "s3://bucket/still.png"});
    parse_job(&serde_json::to_vec(&body).unwrap()).unwrap()
}

fn params(workflow: &str) -> serde_json::Value {
    serde_json::json!({"prompt": "a lighthouse", "width": 320, "height": 240, "fps": 12, "duration_s": 2.0,
        "steps": 3, "seed": 7, "workflow": workflow})
}

async fn run(pipeline: &ComfyPipeline, job: ainern2d_contract::Job, cancel: CancellationToken) -> Run {
    let pipeline = pipeline.clone();
    let dir = tempfile::tempdir().unwrap();
    let workdir = dir.path().to_path_buf();
    let (result, stages) = tokio::task::spawn_blocking(move || {
        let inputs = BTreeMap::from([("image".to_string(), repo().join("examples/media/still.png"))]);
        let req = RunRequest { job: &job, attempt: 1, inputs, workdir, downgrade: None };
        let sink = Recorder::default();
        let r = pipeline.run(&req, &sink, &cancel);
        (r, sink.0.into_inner().unwrap())
    })
    .await
    .unwrap();
    Run { result, stages, _dir: dir }
}

/// A fake whose SaveVideo nodes (`3` in empty-video, `14` in wan-i2v) write `clip`, KSampler steps slowed.
async fn fake_with(dir: &Path, step_delay: Duration) -> FakeComfy {
    let clip = test_clip(dir);
    let mut b = Behaviour { step_delay, ..Behaviour::default() };
    b.outputs.insert("3".into(), OutputFile::path(&clip));
    b.outputs.insert("14".into(), OutputFile::path(&clip));
    FakeComfy::start(b).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_free_template_yields_h264_and_a_thumbnail() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_with(dir.path(), Duration::ZERO).await;
    let p = ComfyPipeline::new(config(&fake)).unwrap();
    let r = run(&p, job("v1", params("empty-video")), CancellationToken::new()).await;
    let out = r.result.unwrap();
    assert_eq!(out.execution.backend, "comfyui");
    assert_eq!(out.execution.model.as_deref(), Some("empty-video"));
    assert_eq!(out.execution.frames, Some(24));
    assert!((out.execution.duration_s.unwrap() - 2.0).abs() < 0.01);
    let v = ffprobe(&out.artifacts[0].path);
    let s = &v["streams"][0];
    assert_eq!(
        (s["codec_name"].as_str(), s["width"].as_u64(), s["height"].as_u64()),
        (Some("h264"), Some(320), Some(240))
    );
    assert_eq!(s["nb_read_frames"].as_str(), Some("24"));
    assert_eq!(out.artifacts[1].name, "thumbnail.jpg");
    assert_eq!(ffprobe(&out.artifacts[1].path)["streams"][0]["codec_name"], "mjpeg");
    // The prompt went in under the job's own id with the slots filled; no image upload (no image slot).
    let sent = fake.prompts();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["prompt_id"], prompt_id("v1", 1));
    assert_eq!(sent[0]["prompt"]["1"]["inputs"]["batch_size"], 24);
    assert_eq!(sent[0]["prompt"]["1"]["inputs"]["width"], 320);
    assert_eq!(sent[0]["prompt"]["3"]["inputs"]["filename_prefix"], "ainern2d/v1");
    assert!(fake.uploads().is_empty());
    assert!(r.stages.iter().any(|(_, s)| s == "SaveVideo"), "{:?}", r.stages);
    assert!(r.stages.windows(2).all(|w| w[0].0 <= w[1].0), "progress only moves forward: {:?}", r.stages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_to_video_template_uploads_the_image_and_reports_sampler_steps() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_with(dir.path(), Duration::from_millis(50)).await;
    let p = ComfyPipeline::new(config(&fake)).unwrap();
    let mut params = params("wan-i2v");
    params["width"] = 320.into();
    params["height"] = 240.into();
    let r = run(&p, job("i2v", params), CancellationToken::new()).await;
    r.result.unwrap();
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].1, std::fs::read(repo().join("examples/media/still.png")).unwrap());
    let sent = &fake.prompts()[0]["prompt"];
    assert_eq!(sent["5"]["inputs"]["image"].as_str(), Some(uploads[0].0.as_str()));
    assert_eq!(sent["11"]["inputs"]["steps"], 3);
    assert_eq!(sent["9"]["inputs"]["length"], 25, "24 frames rounded up to 4k+1");
    let sampler: Vec<f32> = r.stages.iter().filter(|(_, s)| s == "KSampler").map(|(f, _)| *f).collect();
    assert!(sampler.len() >= 3, "a progress event per step: {:?}", r.stages);
}

fn kind(r: &Run) -> (PipelineErrorKind, String) {
    let e = r.result.as_ref().expect_err("the job should fail");
    (e.kind, e.message.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_errors_out_of_memory_and_rejections_are_classified() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_with(dir.path(), Duration::ZERO).await;
    let p = ComfyPipeline::new(config(&fake)).unwrap();
    let base = fake.behaviour();

    fake.set_behaviour(Behaviour { fail: Some(Failure::oom(At::new("11", 1))), ..base.clone() });
    let (k, m) = kind(&run(&p, job("oom", params("wan-i2v")), CancellationToken::new()).await);
    assert_eq!(k, PipelineErrorKind::OutOfMemory, "{m}");
    assert!(m.contains("node 11 (KSampler)") && m.contains("torch.OutOfMemoryError"), "{m}");

    fake.set_behaviour(Behaviour {
        fail: Some(Failure::exception(At::new("12", 0), "RuntimeError", "bad shape")),
        ..base.clone()
    });
    let (k, m) = kind(&run(&p, job("err", params("wan-i2v")), CancellationToken::new()).await);
    assert_eq!(k, PipelineErrorKind::Permanent, "{m}");
    assert!(m.contains("node 12 (VAEDecode) failed: RuntimeError: bad shape"), "{m}");

    fake.set_behaviour(Behaviour { reject: Some(Reject::new("1", "unet_name")), ..base.clone() });
    let (k, m) = kind(&run(&p, job("rej", params("wan-i2v")), CancellationToken::new()).await);
    assert_eq!(k, PipelineErrorKind::Permanent, "{m}");
    assert!(m.contains("node 1 (UNETLoader) input `unet_name`"), "{m}");

    fake.set_behaviour(Behaviour { interrupt_at: Some(At::new("11", 1)), ..base });
    let (k, m) = kind(&run(&p, job("intr", params("wan-i2v")), CancellationToken::new()).await);
    assert_eq!(k, PipelineErrorKind::Retryable, "someone else's interrupt is retried: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_survives_a_dropped_socket_and_reports_a_lost_or_stuck_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_with(dir.path(), Duration::from_millis(100)).await;
    let base = fake.behaviour();
    let p = ComfyPipeline::new(config(&fake)).unwrap();

    fake.set_behaviour(Behaviour { close_websockets_at: Some(At::new("11", 1)), ..base.clone() });
    let r = run(&p, job("drop", params("wan-i2v")), CancellationToken::new()).await;
    r.result.expect("a dropped WebSocket is reconnected and the prompt collected");
    assert!(fake.ws_connects().len() >= 2, "it reconnected");

    fake.set_behaviour(Behaviour { restart_at: Some(At::new("11", 1)), ..base.clone() });
    let (k, m) = kind(&run(&p, job("lost", params("wan-i2v")), CancellationToken::new()).await);
    assert_eq!(k, PipelineErrorKind::Retryable, "{m}");
    assert!(m.contains("in neither /history nor /queue"), "{m}");

    // Silent and stuck: the watchdog keeps finding it running until the prompt's time limit.
    fake.set_behaviour(Behaviour { hang_at: Some(At::new("11", 1)), ..base });
    let mut c = config(&fake);
    c.silence_s = 1;
    c.prompt_timeout_s = 4;
    let p = ComfyPipeline::new(c).unwrap();
    let started = std::time::Instant::now();
    let (k, m) = kind(&run(&p, job("stuck", params("wan-i2v")), CancellationToken::new()).await);
    assert_eq!(k, PipelineErrorKind::Permanent, "{m}");
    assert!(m.contains("prompt_timeout_s"), "{m}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(fake.interrupts().last(), Some(&Some(prompt_id("stuck", 1))), "the stuck prompt is cancelled");
    fake.restart();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_job_collects_its_prompt_from_history() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_with(dir.path(), Duration::ZERO).await;
    let p = ComfyPipeline::new(config(&fake)).unwrap();
    let first = run(&p, job("again", params("empty-video")), CancellationToken::new()).await;
    first.result.unwrap();
    // The same attempt delivered again: nothing queued a second time.
    let second = run(&p, job("again", params("empty-video")), CancellationToken::new()).await;
    second.result.unwrap();
    assert_eq!(fake.prompts().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_interrupts_exactly_this_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_with(dir.path(), Duration::from_millis(300)).await;
    let p = ComfyPipeline::new(config(&fake)).unwrap();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        trigger.cancel();
    });
    let mut params = params("wan-i2v");
    params["steps"] = 20.into();
    let (k, _) = kind(&run(&p, job("stop", params), cancel).await);
    assert_eq!(k, PipelineErrorKind::Cancelled);
    let id = prompt_id("stop", 1);
    assert_eq!(fake.interrupts(), [Some(id.clone())], "a targeted interrupt, never a global one");
    assert!(fake.deleted().contains(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_with(dir.path(), Duration::ZERO).await;
    let mut b = fake.behaviour();
    b.view = View { inflate_to: Some(3 * 1024 * 1024), ..View::default() };
    fake.set_behaviour(b);
    let mut c = config(&fake);
    c.max_output_mb = 2;
    let p = ComfyPipeline::new(c).unwrap();
    let (k, m) = kind(&run(&p, job("big", params("empty-video")), CancellationToken::new()).await);
    assert_eq!(k, PipelineErrorKind::Permanent, "{m}");
    assert!(m.contains("max_output_mb"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_the_job_at_once_when_comfyui_is_wedged() {
    let dir = tempfile::tempdir().unwrap();
    let fake = std::sync::Arc::new(fake_with(dir.path(), Duration::from_millis(300)).await);
    let p = ComfyPipeline::new(config(&fake)).unwrap();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let id = prompt_id("wedged", 1);
    let wedger = fake.clone();
    let killer = tokio::spawn(async move {
        while wedger.running().as_deref() != Some(id.as_str()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut b = wedger.behaviour();
        b.wedged = true;
        wedger.set_behaviour(b);
        // Long enough for the watchdog (silence_s = 2) to be in the middle of asking the wedged server.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        trigger.cancel();
        std::time::Instant::now()
    });
    let mut params = params("wan-i2v");
    params["steps"] = 40.into();
    let r = run(&p, job("wedged", params), cancel).await;
    assert!(killer.is_finished(), "the job ended before it was cancelled: {:?}", r.result);
    let cancelled_at = killer.await.unwrap();
    let (k, m) = kind(&r);
    assert_eq!(k, PipelineErrorKind::Cancelled, "{m}");
    assert!(cancelled_at.elapsed() < Duration::from_secs(3), "cancel took {:?}", cancelled_at.elapsed());
}

/// A fake whose one GPU is `used_pct` full.
fn gpu_at(fake: &FakeComfy, used_pct: u64) {
    let total = 80 * 1024 * 1024 * 1024u64;
    let mut b = fake.behaviour();
    b.device = Device::Cuda {
        name: "cuda:0 NVIDIA H100 : cudaMallocAsync".into(),
        vram_total: total,
        vram_free: total / 100 * (100 - used_pct),
        torch_vram_total: 0,
        torch_vram_free: 0,
    };
    fake.set_behaviour(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_freed_above_the_threshold_every_n_prompts_and_after_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_with(dir.path(), Duration::ZERO).await;
    let mut c = config(&fake);
    c.free_above_pct = Some(90);
    let p = ComfyPipeline::new(c).unwrap();
    gpu_at(&fake, 50);
    run(&p, job("cool", params("empty-video")), CancellationToken::new()).await.result.unwrap();
    assert_eq!(fake.frees(), 0, "50 % full is under the threshold");
    gpu_at(&fake, 95);
    run(&p, job("hot", params("empty-video")), CancellationToken::new()).await.result.unwrap();
    assert_eq!(fake.frees(), 1, "95 % full is over it");
    // Out of memory frees whatever the config says, so the retry does not meet the same leftovers.
    let mut b = fake.behaviour();
    b.fail = Some(Failure::oom(At::new("11", 1)));
    fake.set_behaviour(b);
    let p = ComfyPipeline::new(config(&fake)).unwrap();
    let (k, _) = kind(&run(&p, job("oom", params("wan-i2v")), CancellationToken::new()).await);
    assert_eq!((k, fake.frees()), (PipelineErrorKind::OutOfMemory, 2));
    // Every 2 prompts.
    let mut b = fake.behaviour();
    b.fail = None;
    fake.set_behaviour(b);
    let mut c = config(&fake);
    c.free_every = 2;
    let p = ComfyPipeline::new(c).unwrap();
    for i in 0..4 {
        run(&p, job(&format!("n{i}"), params("empty-video")), CancellationToken::new()).await.result.unwrap();
    }
    assert_eq!(fake.frees(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_reports_version_and_device_memory_or_why_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_with(dir.path(), Duration::ZERO).await;
    gpu_at(&fake, 25);
    let p = ComfyPipeline::new(config(&fake)).unwrap();
    let probe = p.clone();
    let s = tokio::task::spawn_blocking(move || probe.probe()).await.unwrap().expect("ComfyUI has a server to probe");
    assert!(s.reachable && s.error.is_none(), "{s:?}");
    assert_eq!(s.backend, "comfyui");
    assert!(s.version.is_some(), "{s:?}");
    assert_eq!(s.devices.len(), 1);
    let d = &s.devices[0];
    assert_eq!((d.kind.as_str(), d.index), ("cuda", 0));
    assert_eq!(d.vram_free_bytes, d.vram_total_bytes / 100 * 75);
    drop(fake);
    let s = tokio::task::spawn_blocking(move || p.probe()).await.unwrap().unwrap();
    assert!(!s.reachable, "{s:?}");
    assert!(s.error.as_deref().is_some_and(|e| e.contains("/system_stats")), "{s:?}");
}
