//! The `llm` pipeline on tiny random-weight models in the real formats (GGUF, safetensors + config +
//! tokenizer), loaded and run by the real code: determinism, sampling knobs, stop strings, cancellation,
//! context limits, corrupt files, the warm cache's budget, downgrade profiles.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ainern2d_contract::{DowngradeProfile, Job, parse_job};
use ainern2d_models::{CacheMetrics, Manifest, Models};
use ainern2d_pipelines::llm::tiny;
use ainern2d_pipelines::{CancellationToken, LlmPipeline, Pipeline, PipelineErrorKind, ProgressSink, RunRequest};

/// Every tiny model, written once per test binary.
fn fixtures() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        tiny::write_examples(dir.path()).unwrap();
        dir
    })
    .path()
}

const MODELS: &str = r#"
default_llm = "llama-gguf"
device = "cpu"
[budget]
cpu_mb = 64
[models.llama-gguf]
kind = "llm"
format = "gguf"
source = "tiny-llama.gguf"
tokenizer = "tokenizer.json"
memory_mb = 1
[models.qwen2-gguf]
kind = "llm"
format = "gguf"
source = "tiny-qwen2.gguf"
tokenizer = "tokenizer.json"
memory_mb = 1
[models.llama-st]
kind = "llm"
format = "safetensors"
source = "tiny-llama-st/model.safetensors"
tokenizer = "tiny-llama-st/tokenizer.json"
memory_mb = 1
[models.qwen2-st]
kind = "llm"
format = "safetensors"
source = "tiny-qwen2-st/model.safetensors"
tokenizer = "tiny-qwen2-st/tokenizer.json"
memory_mb = 1
"#;

fn pipeline_with(extra: &str, dir: &Path) -> (LlmPipeline, prometheus_client::registry::Registry) {
    let manifest = Manifest::from_toml(&format!("{MODELS}{extra}"), dir).unwrap();
    let metrics = CacheMetrics::new();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    (LlmPipeline::new(Arc::new(Models::new(manifest, None, metrics, &[]).unwrap())), registry)
}

fn pipeline() -> LlmPipeline {
    pipeline_with("", fixtures()).0
}

fn job(id: &str, params: serde_json::Value) -> Job {
    let body = serde_json::json!({"schema": "ainern2d.job.v1", "job_id": id, "kind": "llm", "params": params,
                                  "output": {"prefix": "t"}});
    parse_job(&serde_json::to_vec(&body).unwrap()).unwrap()
}

#[derive(Default)]
struct Recorder {
    tokens: Mutex<Vec<(u32, f32)>>,
    /// Cancel this token once this many tokens were reported.
    cancel_at: Option<(u32, CancellationToken)>,
}

impl ProgressSink for Recorder {
    fn progress(&self, _: f32, _: &str, _: Option<String>) {}
    fn tokens(&self, _: f32, tokens: u32, per_s: f32) {
        self.tokens.lock().unwrap().push((tokens, per_s));
        if let Some((at, cancel)) = &self.cancel_at
            && tokens >= *at
        {
            cancel.cancel();
        }
    }
}

fn run_with(
    p: &LlmPipeline,
    job: &Job,
    downgrade: Option<&DowngradeProfile>,
    sink: &Recorder,
    cancel: &CancellationToken,
) -> Result<serde_json::Value, ainern2d_pipelines::PipelineError> {
    let dir = tempfile::tempdir().unwrap();
    let req = RunRequest { job, attempt: 1, inputs: Default::default(), workdir: dir.path().into(), downgrade };
    let output = p.run(&req, sink, cancel)?;
    let artifacts = &output.artifacts;
    assert_eq!(artifacts.len(), 1);
    assert_eq!(artifacts[0].name, "completion.json");
    let body: serde_json::Value = serde_json::from_slice(&std::fs::read(&artifacts[0].path).unwrap()).unwrap();
    // The outcome event names what the artifact names.
    assert_eq!(output.execution.backend, body["backend"].as_str().unwrap());
    assert_eq!(output.execution.model.as_deref(), body["model"].as_str());
    Ok(body)
}

fn run(p: &LlmPipeline, job: &Job) -> serde_json::Value {
    run_with(p, job, None, &Recorder::default(), &CancellationToken::new()).unwrap()
}

#[test]
fn every_architecture_and_format_generates_and_the_same_seed_gives_the_same_text() {
    let p = pipeline();
    for model in ["llama-gguf", "qwen2-gguf", "llama-st", "qwen2-st"] {
        let params = serde_json::json!({"prompt": "Greet the storm.", "system": "You keep a lighthouse.",
            "model": model, "max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "top_k": 40,
            "repetition_penalty": 1.1, "seed": 11});
        let a = run(&p, &job("a", params.clone()));
        let b = run(&p, &job("b", params.clone()));
        assert_eq!(a["model"], model);
        assert_eq!(a["backend"], "candle");
        assert_eq!(a["device"], "cpu");
        assert_eq!(a["text"], b["text"], "{model}: same seed, same text");
        assert_eq!(a["usage"]["completion_tokens"], b["usage"]["completion_tokens"]);
        let completion = a["usage"]["completion_tokens"].as_u64().unwrap();
        assert!((1..=24).contains(&completion), "{model}: {a}");
        if a["finish_reason"] == "length" {
            assert_eq!(completion, 24, "{model}: {a}");
        } else {
            assert_eq!(a["finish_reason"], "stop", "{model}: {a}");
        }
        // The prompt went through the model's own chat template: system + user + assistant header.
        assert_eq!(a["chat_template"], "model");
        assert!(a["usage"]["prompt_tokens"].as_u64().unwrap() > "Greet the storm.".len() as u64);
        assert!(a["timings"]["tokens_per_s"].as_f64().unwrap() > 0.0, "{a}");
        assert_eq!(a["model_cache"], "miss", "{model}: the first run loads it");
        assert_eq!(b["model_cache"], "hit", "{model}: the second finds it loaded");
        let mut other = params.clone();
        other["seed"] = 12.into();
        other["max_tokens"] = 24.into();
        let c = run(&p, &job("c", other));
        // The weights are seeded, so this is deterministic; with flat logits two seeds do not agree.
        assert_ne!(a["text"], c["text"], "{model}: another seed, other text");
    }
}

#[test]
fn greedy_decoding_ignores_the_seed() {
    let p = pipeline();
    let params = |seed: u64| serde_json::json!({"prompt": "tide", "max_tokens": 12, "temperature": 0.0, "seed": seed});
    let a = run(&p, &job("a", params(1)));
    let b = run(&p, &job("b", params(2)));
    assert_eq!(a["text"], b["text"]);
    assert_eq!(a["model"], "llama-gguf", "the manifest's default_llm");
}

#[test]
fn a_job_without_a_seed_samples_the_same_way_on_every_attempt() {
    let p = pipeline();
    let params = serde_json::json!({"prompt": "fog", "max_tokens": 16, "temperature": 1.0});
    let first = run(&p, &job("same-id", params.clone()));
    let retry = run(&p, &job("same-id", params));
    assert_eq!(first["text"], retry["text"]);
    assert_eq!(first["sampling"]["seed"], retry["sampling"]["seed"]);
}

#[test]
fn stop_strings_end_the_text_before_them() {
    let p = pipeline();
    let params = serde_json::json!({"prompt": "salt", "max_tokens": 40, "temperature": 0.0});
    let full = run(&p, &job("full", params.clone()));
    let text: Vec<char> = full["text"].as_str().unwrap().chars().collect();
    assert!(text.len() >= 6, "{full}");
    // Stop at a piece from the middle of what greedy decoding produced.
    let stop: String = text[3..5].iter().collect();
    let expected: String = full["text"].as_str().unwrap().split(stop.as_str()).next().unwrap().to_string();
    let mut stopped = params.clone();
    stopped["stop"] = serde_json::json!(["never-produced", stop]);
    let out = run(&p, &job("stopped", stopped));
    assert_eq!(out["text"], expected.as_str());
    assert_eq!(out["finish_reason"], "stop");
}

#[test]
fn progress_reports_tokens_and_rate() {
    let p = pipeline();
    let sink = Recorder::default();
    let job = job("progress", serde_json::json!({"prompt": "bell", "max_tokens": 10, "temperature": 0.0}));
    let out = run_with(&p, &job, None, &sink, &CancellationToken::new()).unwrap();
    let seen = sink.tokens.lock().unwrap().clone();
    let n = out["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(seen.len(), n, "one report per generated token");
    assert!(seen.iter().enumerate().all(|(i, (t, rate))| *t as usize == i + 1 && *rate > 0.0), "{seen:?}");
}

#[test]
fn cancellation_stops_within_one_token() {
    let p = pipeline();
    let cancel = CancellationToken::new();
    let sink = Recorder { cancel_at: Some((3, cancel.clone())), ..Default::default() };
    // Sampling over close-to-uniform logits: EOS (2 of 264 ids) is unlikely in the first few tokens.
    let job = job(
        "cancel",
        serde_json::json!({"prompt": "x", "model": "llama-gguf", "max_tokens": 200, "temperature": 0.7, "seed": 3}),
    );
    let err = run_with(&p, &job, None, &sink, &cancel).unwrap_err();
    assert_eq!(err.kind, PipelineErrorKind::Cancelled, "{err}");
    let reported = sink.tokens.lock().unwrap().len();
    assert_eq!(reported, 3, "generation continued after the cancel");
}

#[test]
fn a_prompt_longer_than_the_context_is_a_clear_permanent_error() {
    let p = pipeline();
    let prompt = "w".repeat(tiny::CONTEXT + 10);
    let err = run_with(
        &p,
        &job("long", serde_json::json!({"prompt": prompt, "max_tokens": 4})),
        None,
        &Recorder::default(),
        &CancellationToken::new(),
    )
    .unwrap_err();
    assert_eq!(err.kind, PipelineErrorKind::Permanent);
    assert!(err.message.contains(&format!("has a context of {} tokens", tiny::CONTEXT)), "{}", err.message);
    // A prompt that fits but leaves less room than max_tokens generates up to the end of the context (the
    // GGUF Llama evaluates such a prompt in two chunks, the safetensors Llama in one pass).
    let prompt = "w".repeat(tiny::CONTEXT - 40);
    let mut texts = Vec::new();
    for model in ["llama-gguf", "llama-st"] {
        let out = run(
            &p,
            &job("edge", serde_json::json!({"prompt": prompt, "model": model, "max_tokens": 500, "temperature": 0.0})),
        );
        assert_eq!(out["truncated_to_context"], true, "{out}");
        texts.push(out["usage"]["prompt_tokens"].clone());
    }
    assert!(texts[0].as_u64().unwrap() > 128, "the prompt spans more than one chunk: {texts:?}");
    let out = run(&p, &job("edge", serde_json::json!({"prompt": prompt, "max_tokens": 500, "temperature": 0.0})));
    let used = out["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used <= tiny::CONTEXT as u64, "{out}");
    assert_eq!(out["truncated_to_context"], true);
}

#[test]
fn the_cache_evicts_the_least_recently_used_model_under_a_small_budget() {
    let (p, registry) = pipeline_with("", fixtures());
    // Budget 64 MB; make each model "need" 40 MB so only one fits.
    let manifest = MODELS
        .replace("memory_mb = 1", "memory_mb = 40")
        .replace("default_llm = \"llama-gguf\"", "default_llm = \"llama-gguf\"\nwarm = [\"llama-gguf\"]");
    let manifest = Manifest::from_toml(&manifest, fixtures()).unwrap();
    let metrics = CacheMetrics::new();
    let mut registry2 = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry2);
    let small = LlmPipeline::new(Arc::new(Models::new(manifest, None, metrics, &[]).unwrap()));
    small.warm_up().unwrap();
    let resident = |p: &LlmPipeline| p.models().cache.resident().into_iter().map(|r| r.name).collect::<Vec<_>>();
    assert_eq!(resident(&small), ["llama-gguf"], "warm-up loads the warm list");
    let params = |model: &str| serde_json::json!({"prompt": "hi", "model": model, "max_tokens": 2});
    let out = run(&small, &job("q", params("qwen2-gguf")));
    assert_eq!(out["model_cache"], "miss");
    assert_eq!(resident(&small), ["qwen2-gguf"]);
    run(&small, &job("l", params("llama-gguf")));
    assert_eq!(resident(&small), ["llama-gguf"]);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry2).unwrap();
    assert!(text.contains("model_cache_evictions_total{model=\"llama-gguf\"} 1"), "{text}");
    assert!(text.contains("model_cache_evictions_total{model=\"qwen2-gguf\"} 1"), "{text}");
    assert!(text.contains(&format!("model_bytes_resident{{device=\"cpu\"}} {}", 40 * 1024 * 1024)), "{text}");
    assert!(text.contains("model_load_seconds_count{model=\"llama-gguf\"} 2"), "{text}");
    // The big-budget pipeline keeps all of them.
    for m in ["llama-gguf", "qwen2-gguf"] {
        run(&p, &job("x", params(m)));
    }
    assert_eq!(p.models().cache.resident().len(), 2);
    drop(registry);
}

fn corrupt_manifest(dir: &Path, source: &str, format: &str) -> LlmPipeline {
    let extra = format!(
        "\n[models.broken]\nkind = \"llm\"\nformat = \"{format}\"\nsource = \"{source}\"\ntokenizer = \"{}\"\nmemory_mb = 1\n",
        fixtures().join("tokenizer.json").display()
    );
    let text = MODELS
        .replace("source = \"", &format!("source = \"{}/", fixtures().display()))
        .replace("tokenizer = \"", &format!("tokenizer = \"{}/", fixtures().display()));
    let manifest = Manifest::from_toml(&format!("{text}{extra}"), dir).unwrap();
    LlmPipeline::new(Arc::new(Models::new(manifest, None, CacheMetrics::new(), &[]).unwrap()))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn corrupt_models_are_clear_permanent_errors() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = std::fs::read(fixtures().join("tiny-llama.gguf")).unwrap();
    let cases: Vec<(PathBuf, &str, &str)> = vec![
        (dir.path().join("garbage.gguf"), "gguf", "is not a readable GGUF file"),
        (dir.path().join("truncated.gguf"), "gguf", "does not load as llama"),
        (dir.path().join("st/model.safetensors"), "safetensors", "does not match its architecture"),
        (dir.path().join("junk/model.safetensors"), "safetensors", "is not a readable safetensors file"),
    ];
    std::fs::write(&cases[0].0, b"definitely not a model").unwrap();
    std::fs::write(&cases[1].0, &gguf[..gguf.len() / 2]).unwrap();
    // A checkpoint missing one layer's tensor (candle's Llama loader panics on that; we must not).
    copy_dir(&fixtures().join("tiny-llama-st"), &dir.path().join("st"));
    let mut tensors = tiny::read_safetensors(&cases[2].0).unwrap();
    tensors.remove("model.layers.1.mlp.up_proj.weight").unwrap();
    candle_core::safetensors::save(&tensors, &cases[2].0).unwrap();
    copy_dir(&fixtures().join("tiny-llama-st"), &dir.path().join("junk"));
    std::fs::write(&cases[3].0, b"{\"not\": \"safetensors\"}").unwrap();
    for (path, format, want) in &cases {
        let p = corrupt_manifest(dir.path(), path.to_str().unwrap(), format);
        let job = job("broken", serde_json::json!({"prompt": "hi", "model": "broken", "max_tokens": 2}));
        let err = run_with(&p, &job, None, &Recorder::default(), &CancellationToken::new()).unwrap_err();
        assert_eq!(err.kind, PipelineErrorKind::Permanent, "{}: {err}", path.display());
        assert!(err.message.contains("broken") && err.message.contains(want), "{}: {}", path.display(), err.message);
        // The same pipeline still serves good models.
        run(&p, &job.clone_with_model("llama-gguf"));
    }
}

trait WithModel {
    fn clone_with_model(&self, model: &str) -> Job;
}

impl WithModel for Job {
    fn clone_with_model(&self, model: &str) -> Job {
        let mut job = self.clone();
        if let ainern2d_contract::JobSpec::Llm(p) = &mut job.spec {
            p.model = Some(model.to_string());
        }
        job
    }
}

#[test]
fn unknown_models_and_missing_files_are_named() {
    let p = pipeline();
    let err = run_with(
        &p,
        &job("u", serde_json::json!({"prompt": "hi", "model": "gpt-9"})),
        None,
        &Recorder::default(),
        &CancellationToken::new(),
    )
    .unwrap_err();
    assert_eq!(err.kind, PipelineErrorKind::Permanent);
    assert!(
        err.message.contains("`gpt-9` is not in the manifest") && err.message.contains("llama-gguf"),
        "{}",
        err.message
    );
    let dir = tempfile::tempdir().unwrap();
    let p = corrupt_manifest(dir.path(), "/nonexistent/model.gguf", "gguf");
    let job = job("m", serde_json::json!({"prompt": "hi", "model": "broken"}));
    let err = run_with(&p, &job, None, &Recorder::default(), &CancellationToken::new()).unwrap_err();
    assert!(err.message.contains("/nonexistent/model.gguf does not exist"), "{}", err.message);
}

#[test]
fn downgrade_profiles_cap_tokens_and_swap_the_model() {
    let p = pipeline();
    let job = job("d", serde_json::json!({"prompt": "hi", "model": "llama-st", "max_tokens": 30, "temperature": 0.0}));
    let profile = DowngradeProfile {
        name: "gpu-hot".into(),
        llm_max_tokens: Some(5),
        llm_model: Some("qwen2-gguf".into()),
        ..Default::default()
    };
    let out = run_with(&p, &job, Some(&profile), &Recorder::default(), &CancellationToken::new()).unwrap();
    assert_eq!(out["model"], "qwen2-gguf");
    assert_eq!(out["downgrade"], "gpu-hot");
    assert_eq!(out["sampling"]["max_tokens"], 5);
    assert!(out["usage"]["completion_tokens"].as_u64().unwrap() <= 5);
    // A profile naming a model this worker lacks keeps the job's model.
    let profile = DowngradeProfile { name: "x".into(), llm_model: Some("nope".into()), ..Default::default() };
    let out = run_with(&p, &job, Some(&profile), &Recorder::default(), &CancellationToken::new()).unwrap();
    assert_eq!(out["model"], "llama-st");
}
