//! The `llm` pipeline: picks the job's model from the manifest (a downgrade profile may swap it for a
//! smaller one and cap the tokens), then generates in process with candle or streams from an
//! OpenAI-compatible server. Both write the same `completion.json` and report the same progress.

mod chat;
mod local;
mod openai;
pub mod tiny;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use ainern2d_contract::{Job, JobKind, JobSpec, LlmParams};
use ainern2d_models::{ModelBackend, ModelError, ModelKind, Models};
use tokio_util::sync::CancellationToken;

pub use chat::{BUILTINS as CHAT_TEMPLATES, ChatTemplate};
pub use local::LoadedLlm;
#[doc(hidden)]
pub use openai::SseReader;

use crate::error::{PipelineError, PipelineErrorKind};
use crate::{Artifact, Execution, Pipeline, ProgressSink, RunOutput, RunRequest};

/// What one generation asks for, after the worker's policy is applied.
#[derive(Debug)]
pub struct GenRequest<'a> {
    pub params: &'a LlmParams,
    /// The manifest name of the model that runs.
    pub model: &'a str,
    /// `params.max_tokens`, capped by a downgrade profile.
    pub max_tokens: u32,
    /// `params.seed`, else derived from the job id (a retried job samples the same tokens).
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` (or the end of the context).
    Length,
}

/// The outcome of one generation, whichever backend produced it.
#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub finish: Finish,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: u64,
    pub prompt_eval_s: f64,
    pub time_to_first_token_s: f64,
    pub generation_s: f64,
    pub context_length: Option<u64>,
    /// `max_tokens` was lowered to what the context had room for.
    pub truncated_to_context: bool,
    /// Where the chat template came from (candle models).
    pub template: Option<String>,
}

/// Maps a model-layer error onto how the worker should treat the job.
pub fn model_error(e: ModelError) -> PipelineError {
    if matches!(e, ModelError::Cancelled { .. }) {
        return PipelineError::cancelled();
    }
    let kind = if e.is_retryable() { PipelineErrorKind::Retryable } else { PipelineErrorKind::Permanent };
    PipelineError { kind, message: e.to_string() }
}

/// An error about model `name` as a job error, its message prefixed with the model's name (a cancellation
/// stays a cancellation). `before_loader` counts it as a load failure: the loader itself never ran (a
/// download or a checksum failed), so the cache did not count it.
pub fn named_model_error(models: &Models, name: &str, before_loader: bool, e: ModelError) -> PipelineError {
    if matches!(e, ModelError::Cancelled { .. }) {
        return model_error(e);
    }
    if before_loader {
        models.cache.record_load_failure(name);
    }
    let mut e = model_error(e);
    e.message = format!("model `{name}`: {}", e.message);
    e
}

/// The `llm` pipeline over a model manifest.
#[derive(Debug, Clone)]
pub struct LlmPipeline {
    models: Arc<Models>,
}

impl LlmPipeline {
    pub fn new(models: Arc<Models>) -> Self {
        LlmPipeline { models }
    }

    pub fn models(&self) -> &Arc<Models> {
        &self.models
    }

    /// The model a job runs on: a downgrade profile's `llm_model` (when the manifest has it), else the
    /// job's `model`, else the manifest's `default_llm`, else the only llm.
    pub fn choose_model(&self, params: &LlmParams, downgrade_model: Option<&str>) -> Result<String, PipelineError> {
        let manifest = &self.models.manifest;
        if let Some(small) = downgrade_model {
            if manifest.models.get(small).is_some_and(|m| m.kind == ModelKind::Llm) {
                return Ok(small.to_string());
            }
            tracing::warn!(model = small, "downgrade profile names an llm that is not in the manifest; ignored");
        }
        manifest.choose(ModelKind::Llm, params.model.as_deref()).map_err(PipelineError::permanent)
    }

    /// The loaded candle model `name` from the warm cache (loading it on a miss). Returns whether it was
    /// already loaded.
    pub fn load(&self, name: &str) -> Result<(Arc<LoadedLlm>, bool), PipelineError> {
        self.load_until(name, &|| false)
    }

    /// [`LlmPipeline::load`] for a job: waiting for another job's load or download of the same model ends
    /// (as a cancellation) once `cancelled` says so.
    pub fn load_until(
        &self,
        name: &str,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<(Arc<LoadedLlm>, bool), PipelineError> {
        let models = &self.models;
        let spec = models.spec(name).map_err(model_error)?;
        if let Some(loaded) = models.cache.get::<LoadedLlm>(name).map_err(model_error)? {
            return Ok((loaded, true));
        }
        // The estimate needs the files' sizes: resolve (download) them before reserving memory.
        let named = |e| named_model_error(models, name, true, e);
        let mut files: Vec<std::path::PathBuf> = spec
            .weights()
            .iter()
            .map(|f| models.local_path_until(f, cancelled))
            .collect::<Result<_, _>>()
            .map_err(named)?;
        if let Some(t) = spec.tokenizer_file() {
            files.push(models.local_path_until(&t, cancelled).map_err(named)?);
        }
        let bytes = local::estimate_bytes(spec, &files);
        models
            .cache
            .get_or_load_until(name, &models.device_key, bytes, cancelled, || local::load(models, name, spec))
            .map_err(model_error)
    }
}

/// An f32 as the decimal it was written as (`0.8`, not `0.800000011920929`).
fn short_f32(v: f32) -> serde_json::Value {
    v.to_string().parse::<f64>().map_or(serde_json::Value::Null, serde_json::Value::from)
}

fn derived_seed(job_id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    job_id.hash(&mut h);
    h.finish()
}

impl Pipeline for LlmPipeline {
    fn kind(&self) -> JobKind {
        JobKind::Llm
    }

    fn backend(&self) -> &'static str {
        "models"
    }

    fn output_names(&self, _job: &Job) -> Vec<String> {
        vec!["completion.json".to_string()]
    }

    fn warm_up(&self) -> Result<(), PipelineError> {
        for name in &self.models.manifest.warm {
            let spec = self.models.spec(name).map_err(model_error)?;
            if spec.kind != ModelKind::Llm || spec.backend != ModelBackend::Candle {
                continue;
            }
            let started = Instant::now();
            self.load(name)?;
            tracing::info!(model = %name, seconds = started.elapsed().as_secs_f64(), "model warmed up");
        }
        Ok(())
    }

    fn run(
        &self,
        req: &RunRequest<'_>,
        progress: &dyn ProgressSink,
        cancel: &CancellationToken,
    ) -> Result<RunOutput, PipelineError> {
        let JobSpec::Llm(params) = &req.job.spec else {
            return Err(PipelineError::permanent(format!("llm pipeline given a {} job", req.job.kind())));
        };
        let started = Instant::now();
        let downgrade = req.downgrade;
        let model = self.choose_model(params, downgrade.and_then(|d| d.llm_model.as_deref()))?;
        let max_tokens =
            downgrade.and_then(|d| d.llm_max_tokens).map_or(params.max_tokens, |cap| params.max_tokens.min(cap));
        let gen_req = GenRequest {
            params,
            model: &model,
            max_tokens,
            seed: params.seed.unwrap_or_else(|| derived_seed(&req.job.job_id)),
        };
        let spec = self.models.spec(&model).map_err(model_error)?;
        let (generation, backend, load_s, cache_hit) = match spec.backend {
            ModelBackend::Candle => {
                progress.progress(0.0, "load", Some(format!("model {model}")));
                let load_started = Instant::now();
                let (loaded, hit) = self.load_until(&model, &|| cancel.is_cancelled())?;
                let load_s = load_started.elapsed().as_secs_f64();
                let generated = local::generate(&loaded, &gen_req, progress, cancel);
                if loaded.needs_reload() {
                    self.models.cache.invalidate(&model);
                }
                (generated?, "candle", load_s, Some(hit))
            }
            ModelBackend::Openai => {
                let remote = spec.remote.as_ref().expect("validated: openai models have a remote");
                (openai::generate(remote, &gen_req, progress, cancel)?, "openai", 0.0, None)
            }
        };
        let device = match spec.backend {
            ModelBackend::Candle => self.models.device_key.clone(),
            ModelBackend::Openai => "remote".to_string(),
        };
        let tokens_per_s = generation.completion_tokens as f64 / generation.generation_s.max(1e-9);
        tracing::info!(
            job_id = %req.job.job_id, model = %model, backend, completion_tokens = generation.completion_tokens,
            tokens_per_s, "generation finished"
        );
        let body = serde_json::json!({
            "text": generation.text,
            "model": model,
            "backend": backend,
            "device": device,
            "finish_reason": match generation.finish { Finish::Stop => "stop", Finish::Length => "length" },
            "usage": {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": generation.completion_tokens,
                "total_tokens": generation.prompt_tokens.map(|p| p + generation.completion_tokens),
            },
            "timings": {
                "load_s": load_s,
                "prompt_eval_s": generation.prompt_eval_s,
                "time_to_first_token_s": generation.time_to_first_token_s,
                "generation_s": generation.generation_s,
                "tokens_per_s": tokens_per_s,
                "total_s": started.elapsed().as_secs_f64(),
            },
            "model_cache": cache_hit.map(|hit| if hit { "hit" } else { "miss" }),
            "sampling": {
                "temperature": short_f32(params.temperature),
                "top_p": short_f32(params.top_p),
                "top_k": params.top_k,
                "repetition_penalty": short_f32(params.repetition_penalty),
                "seed": gen_req.seed,
                "max_tokens": max_tokens,
                "stop": params.stop,
            },
            "context_length": generation.context_length,
            "truncated_to_context": generation.truncated_to_context,
            "chat_template": generation.template,
            "downgrade": downgrade.map(|d| d.name.clone()),
        });
        let path = req.workdir.join("completion.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&body).expect("json"))?;
        Ok(RunOutput {
            artifacts: vec![Artifact { name: "completion.json".into(), path, content_type: "application/json".into() }],
            execution: Execution {
                backend: backend.to_string(),
                model: Some(model),
                device: Some(device),
                ..Execution::default()
            },
        })
    }
}
