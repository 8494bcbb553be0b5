//! One-shot mode: run one job file locally, with no broker, and show a progress bar
//! (`ainern2d-worker exec examples/jobs/audio.json --out DIR`). `llm`, `audio` and `lipsync` jobs run on
//! the models of the model manifest (`models.manifest`, else `./models.toml`) when it has one of their
//! kind; `video` jobs run through ComfyUI with `--backend comfyui --comfyui-url URL`; otherwise the mock
//! pipeline answers, and says so: the summary always names the backend that ran.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ainern2d_contract::{JobKind, parse_job};
use ainern2d_models::ModelKind;
use ainern2d_pipelines::comfy::{ComfyConfig, ComfyPipeline};
use ainern2d_pipelines::lipsync::LipsyncPipeline;
use ainern2d_pipelines::tts::TtsPipeline;
use ainern2d_pipelines::{CancellationToken, LlmPipeline, MockPipeline, Pipeline, ProgressSink, RunRequest};
use anyhow::Context;

use crate::config::{Backend, Config, StoreKind};
use crate::fetch::Fetcher;
use crate::store::ArtifactStore;

struct Bar(indicatif::ProgressBar);

impl ProgressSink for Bar {
    fn progress(&self, fraction: f32, stage: &str, message: Option<String>) {
        self.0.set_position((fraction.clamp(0.0, 1.0) * 1000.0) as u64);
        self.0.set_message(match message {
            Some(m) => format!("{stage}: {m}"),
            None => stage.to_string(),
        });
    }
}

/// The manifest `exec` uses for `llm` jobs: the configured one, else `./models.toml` when present.
pub fn discover_manifest(config: &Config) -> Option<PathBuf> {
    config.models.manifest.clone().or_else(|| {
        let local = PathBuf::from("models.toml");
        local.is_file().then_some(local)
    })
}

/// The manifest kind that serves a job kind in process.
fn model_kind(kind: JobKind) -> Option<ModelKind> {
    match kind {
        JobKind::Llm => Some(ModelKind::Llm),
        JobKind::Audio => Some(ModelKind::Tts),
        JobKind::Lipsync => Some(ModelKind::Lipsync),
        JobKind::Video => None,
    }
}

/// `exec --backend comfyui --comfyui-url URL [--templates DIR]`: `video` jobs through ComfyUI.
pub fn video_backend(
    config: &mut Config,
    backend: Option<&str>,
    url: Option<String>,
    templates: Option<PathBuf>,
) -> anyhow::Result<()> {
    match backend {
        None if url.is_none() && templates.is_none() => return Ok(()),
        None | Some("comfyui") => {}
        Some("mock") => {
            config.jobs.backends.insert(JobKind::Video, Backend::Mock);
            return Ok(());
        }
        Some(other) => anyhow::bail!("--backend {other}: video jobs run on comfyui or mock"),
    }
    let mut comfy = config.comfyui.clone().unwrap_or_else(|| ComfyConfig::new("", "examples/comfyui".into()));
    if let Some(url) = url {
        comfy.url = url;
    }
    if let Some(dir) = templates {
        comfy.templates = dir;
    }
    anyhow::ensure!(!comfy.url.is_empty(), "--backend comfyui needs --comfyui-url (or comfyui.url in the config)");
    config.comfyui = Some(comfy);
    config.jobs.backends.insert(JobKind::Video, Backend::Comfyui);
    Ok(())
}

fn pipeline_for(config: &Config, kind: JobKind, quiet: bool) -> anyhow::Result<Arc<dyn Pipeline>> {
    if config.backend(kind) == Backend::Comfyui
        && let Some(comfy) = &config.comfyui
    {
        if !quiet {
            eprintln!("{kind}: ComfyUI at {} with the templates of {}", comfy.url, comfy.templates.display());
        }
        let pipeline = ComfyPipeline::new(comfy.clone()).map_err(anyhow::Error::msg)?;
        let checked = pipeline.clone();
        std::thread::scope(|s| s.spawn(move || checked.warm_up()).join())
            .map_err(|_| anyhow::anyhow!("the ComfyUI check panicked"))?
            .map_err(|e| anyhow::anyhow!("ComfyUI at {}: {}", comfy.url, e.message))?;
        return Ok(Arc::new(pipeline));
    }
    let mock = |why: String| -> anyhow::Result<Arc<dyn Pipeline>> {
        if !quiet {
            eprintln!("{kind}: {why}: the MOCK pipeline answers (synthetic output, not a model's)");
        }
        Ok(Arc::new(MockPipeline::new(kind, config.mock.clone())))
    };
    let Some(wanted) = model_kind(kind) else {
        return mock("no in-process backend for this kind".into());
    };
    let Some(manifest) = discover_manifest(config) else {
        return mock("no model manifest (models.manifest or ./models.toml)".into());
    };
    let store = model_store(config, &manifest, quiet);
    let models = crate::models::open(&manifest, store, ainern2d_models::CacheMetrics::new(), &[])?;
    if !models.manifest.models.values().any(|m| m.kind == wanted) {
        return mock(format!("{} has no {wanted:?} model", manifest.display()).to_lowercase());
    }
    if !quiet {
        eprintln!("{kind}: models from {} on {}", manifest.display(), models.device_key);
    }
    Ok(match kind {
        JobKind::Audio => Arc::new(TtsPipeline::new(models, config.onnx.clone(), config.tts.clone())),
        JobKind::Lipsync => Arc::new(LipsyncPipeline::new(models, config.onnx.clone(), config.lipsync.clone())),
        _ => Arc::new(LlmPipeline::new(models)),
    })
}

/// Runs the job in `job_file` and writes its outputs to `out`. Relative input paths are resolved against the
/// current directory. Returns the written files.
pub async fn exec(config: &Config, job_file: &Path, out: &Path, quiet: bool) -> anyhow::Result<Vec<PathBuf>> {
    let body = std::fs::read(job_file).with_context(|| format!("cannot read {}", job_file.display()))?;
    let job = parse_job(&body).map_err(|e| anyhow::anyhow!("{} is not a valid job: {e}", job_file.display()))?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let scratch = tempfile::tempdir()?;
    let fetcher = Fetcher::new(&config.fetch, None, Some(std::env::current_dir()?));
    let mut inputs = BTreeMap::new();
    for (name, url) in &job.inputs {
        let dest = scratch.path().join(format!("input-{name}"));
        fetcher.fetch(name, &url.0, &dest).await?;
        inputs.insert(name.clone(), dest);
    }
    let pipeline = pipeline_for(config, job.kind(), quiet)?;
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(1000) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:40}] {percent:>3}% {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let workdir = scratch.path().to_path_buf();
    let job_for_run = job.clone();
    let result = tokio::task::spawn_blocking(move || {
        let req = RunRequest { job: &job_for_run, attempt: 1, inputs, workdir, downgrade: None };
        let sink = Bar(bar.clone());
        let r = pipeline.run(&req, &sink, &CancellationToken::new());
        bar.finish_and_clear();
        r
    })
    .await?;
    let output = result.map_err(|e| {
        let hint = if e.message.contains("examples/models/") && e.message.contains("does not exist") {
            "\n  (generate the example models first: ainern2d-worker models tiny examples/models)"
        } else {
            ""
        };
        anyhow::anyhow!("{} job {} failed: {}{hint}", job.kind(), job.job_id, e.message)
    })?;
    let mut written = Vec::new();
    for a in output.artifacts {
        let dest = out.join(&a.name);
        std::fs::copy(&a.path, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
        written.push(dest);
    }
    if !quiet {
        eprintln!("{} job {} finished in {:.2}s", job.kind(), job.job_id, started.elapsed().as_secs_f64());
        eprintln!("{}", execution_summary(&output.execution));
        if let Some(summary) = written.iter().find(|p| p.ends_with("completion.json")).and_then(|p| llm_summary(p)) {
            eprintln!("{summary}");
        }
    }
    Ok(written)
}

/// One line naming what ran: backend, model, device, and the media's length.
fn execution_summary(e: &ainern2d_pipelines::Execution) -> String {
    let mut line = format!("backend {}", e.backend);
    if let Some(model) = &e.model {
        line += &format!(", model {model}");
    }
    match (&e.device, &e.execution_provider) {
        (Some(d), Some(ep)) => line += &format!(", on {d} ({ep})"),
        (Some(d), None) => line += &format!(", on {d}"),
        _ => {}
    }
    if let Some(s) = e.duration_s {
        line += &format!(", duration {s:.2} s");
    }
    if let Some(rate) = e.sample_rate {
        line += &format!(", {rate} Hz");
    }
    if let Some(frames) = e.frames {
        line += &format!(", {frames} frames");
    }
    line
}

/// One line about a completion: tokens, speed, model.
fn llm_summary(path: &Path) -> Option<String> {
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(format!(
        "{} tokens at {:.1} tok/s (prompt {} tokens, model {}, {} on {}, finish {})",
        c["usage"]["completion_tokens"],
        c["timings"]["tokens_per_s"].as_f64()?,
        c["usage"]["prompt_tokens"],
        c["model"].as_str()?,
        c["backend"].as_str().unwrap_or("mock"),
        c["device"].as_str().unwrap_or("cpu"),
        c["finish_reason"].as_str().unwrap_or("?"),
    ))
}

/// The S3 client for `s3://` model files. A one-shot run on local models needs no credentials; without
/// them, a model in S3 fails with "no S3 client", and this says why.
fn model_store(config: &Config, manifest: &Path, quiet: bool) -> Option<Arc<dyn ArtifactStore>> {
    match config.store.kind {
        StoreKind::S3 => match crate::s3::S3Store::from_config(&config.store) {
            Ok(store) => Some(Arc::new(store)),
            Err(e) => {
                // Only worth saying when a (not commented-out) line names an s3:// file.
                let wants_s3 = std::fs::read_to_string(manifest)
                    .is_ok_and(|t| t.lines().any(|l| !l.trim_start().starts_with('#') && l.contains("\"s3://")));
                if !quiet && wants_s3 {
                    eprintln!("llm: s3:// model files cannot be downloaded: {e}");
                }
                None
            }
        },
        StoreKind::Local => None,
    }
}

/// `ainern2d-worker models check`: loads every in-process model of the manifest (downloading `s3://`
/// files into the cache first) and prints one line per model. Fails when any model fails.
pub async fn check_models(config: &Config) -> anyhow::Result<()> {
    let manifest = discover_manifest(config)
        .ok_or_else(|| anyhow::anyhow!("no model manifest: pass one, set models.manifest, or create ./models.toml"))?;
    let store = model_store(config, &manifest, false);
    let models = crate::models::open(&manifest, store, ainern2d_models::CacheMetrics::new(), &[])?;
    println!("{}: {} models, device {}", manifest.display(), models.manifest.models.len(), models.device_key);
    let pipeline = LlmPipeline::new(models.clone());
    let mut failed = 0;
    for (name, spec) in &models.manifest.models {
        let line = match (spec.kind, spec.backend) {
            (ainern2d_models::ModelKind::Llm, ainern2d_models::ModelBackend::Candle) => {
                let p = pipeline.clone();
                let n = name.clone();
                let started = Instant::now();
                match tokio::task::spawn_blocking(move || p.load(&n)).await? {
                    Ok((model, _)) => format!(
                        "ok    {name}: {} {:?}, context {} tokens, loaded in {:.2}s",
                        model.architecture,
                        model.format,
                        model.context,
                        started.elapsed().as_secs_f64()
                    ),
                    Err(e) => {
                        failed += 1;
                        format!("FAIL  {name}: {}", e.message)
                    }
                }
            }
            (_, ainern2d_models::ModelBackend::Openai) => {
                let remote = spec.remote.as_ref().map(|r| format!("{} at {}", r.model, r.endpoint)).unwrap_or_default();
                format!("skip  {name}: served by {remote} (not contacted)")
            }
            (kind, _) => {
                let (models, onnx, tts, n) = (models.clone(), config.onnx.clone(), config.tts.clone(), name.clone());
                let started = Instant::now();
                let loaded = tokio::task::spawn_blocking(move || match kind {
                    ModelKind::Tts => TtsPipeline::new(models, onnx, tts).load(&n, &|| false).map(|(v, _)| {
                        format!(
                            "voice, {} Hz, {} speaker(s), on {}",
                            v.config.audio.sample_rate,
                            v.config.num_speakers.max(1),
                            v.model.provider_name()
                        )
                    }),
                    _ => ainern2d_pipelines::onnx::load_cached(&models, &onnx, &n, &|| false).map(|(m, _)| {
                        let io: Vec<String> = m.inputs.iter().chain(&m.outputs).map(ToString::to_string).collect();
                        format!(
                            "{} onnx ({}), on {}",
                            format!("{kind:?}").to_lowercase(),
                            io.join(", "),
                            m.provider_name()
                        )
                    }),
                })
                .await?;
                match loaded {
                    Ok(what) => format!("ok    {name}: {what}, loaded in {:.2}s", started.elapsed().as_secs_f64()),
                    Err(e) => {
                        failed += 1;
                        format!("FAIL  {name}: {}", e.message)
                    }
                }
            }
        };
        println!("{line}");
    }
    let resident: u64 = models.cache.resident().iter().map(|r| r.bytes).sum();
    println!(
        "resident: {} MB of the {} MB budget",
        resident / (1024 * 1024),
        models.cache.budget(&models.device_key) / (1024 * 1024)
    );
    if failed > 0 {
        anyhow::bail!("{failed} model(s) failed to load");
    }
    Ok(())
}
