//! In-process generation with candle: quantized GGUF (Llama, Mistral, Qwen2) and safetensors (Llama,
//! Qwen2) checkpoints, the model's chat template, sampling, stop strings and per-token cancellation.

use std::collections::HashMap;
use std::io::BufReader;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ainern2d_models::{ModelError, ModelFormat, ModelSpec, Models};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::{llama, quantized_llama, quantized_qwen2, qwen2};
use tokenizers::Tokenizer;
use tokio_util::sync::CancellationToken;

use super::chat::{self, ChatTemplate};
use super::{Finish, GenRequest, Generation};
use crate::ProgressSink;
use crate::error::PipelineError;

/// Prompt tokens evaluated per forward pass where the model allows chunking.
const PROMPT_CHUNK: usize = 128;
/// How many recent tokens the repetition penalty looks at.
const REPEAT_WINDOW: usize = 64;
/// End-of-turn tokens of the common chat formats; those a tokenizer has end generation.
const END_TOKENS: [&str; 5] = ["</s>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>"];

enum Weights {
    /// Cloned per job: the clone shares the weights and has its own KV cache.
    QLlama(quantized_llama::ModelWeights),
    /// Not clonable in candle: one job at a time.
    QQwen2(Mutex<quantized_qwen2::ModelWeights>),
    Llama(llama::Llama, llama::Config, DType),
    Qwen2(qwen2::ModelForCausalLM),
}

/// A loaded model, shared by the jobs that use it (it lives in the warm-model cache).
pub struct LoadedLlm {
    weights: Weights,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    eos: Vec<u32>,
    /// Longest sequence (prompt + completion) in tokens.
    pub context: usize,
    /// `llama`, `qwen2`, … as the checkpoint names it.
    pub architecture: String,
    pub format: ModelFormat,
    device: Device,
    /// Prompt lengths seen and the bytes of attention masks candle's quantized Qwen2 keeps for them (it
    /// caches one per length and never frees them; see `needs_reload`).
    masks: Mutex<(std::collections::HashSet<usize>, u64)>,
}

/// Mask memory after which a quantized Qwen2 model is loaded afresh.
const MASK_BYTES_LIMIT: u64 = 256 * 1024 * 1024;

/// A model ready for one job's generation, with its own KV cache.
enum Session<'a> {
    QLlama(quantized_llama::ModelWeights),
    QQwen2(std::sync::MutexGuard<'a, quantized_qwen2::ModelWeights>),
    Llama(&'a llama::Llama, llama::Cache),
    Qwen2(qwen2::ModelForCausalLM),
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // The shared quantized Qwen2 keeps its KV cache between jobs otherwise.
        if let Session::QQwen2(model) = self {
            model.clear_kv_cache();
        }
    }
}

impl Session<'_> {
    /// Whether the prompt may be evaluated in chunks (a cancel is then honoured between chunks). Not for
    /// candle's safetensors Llama, whose mask assumes an empty KV cache for multi-token inputs, nor for
    /// the quantized Qwen2, which would cache a mask per chunk shape.
    fn chunks_prompt(&self) -> bool {
        matches!(self, Session::QLlama(_) | Session::Qwen2(_))
    }

    /// Logits of the next token (a vector over the vocabulary) after `ids` at position `pos`.
    fn forward(&mut self, ids: &[u32], pos: usize, device: &Device) -> candle_core::Result<Tensor> {
        let input = Tensor::new(ids, device)?.unsqueeze(0)?;
        let logits = match self {
            Session::QLlama(m) => m.forward(&input, pos)?,
            Session::QQwen2(m) => m.forward(&input, pos)?,
            Session::Llama(m, cache) => m.forward(&input, pos, cache)?,
            Session::Qwen2(m) => m.forward(&input, pos)?,
        };
        logits.flatten_all()?.to_dtype(DType::F32)
    }
}

impl LoadedLlm {
    /// Whether this model should be loaded afresh (the caller invalidates it in the cache): candle's
    /// quantized Qwen2 caches an attention mask per prompt length for its lifetime, which would grow
    /// without bound over many distinct prompts.
    pub fn needs_reload(&self) -> bool {
        self.masks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1 > MASK_BYTES_LIMIT
    }

    fn note_prompt(&self, len: usize) {
        if matches!(self.weights, Weights::QQwen2(_)) && len > 1 {
            let mut masks = self.masks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if masks.0.insert(len) {
                masks.1 += (len * len) as u64;
            }
        }
    }

    fn session(&self, cancel: &CancellationToken) -> Result<Session<'_>, PipelineError> {
        let candle = |e: candle_core::Error| classify(&e, "preparing the model");
        Ok(match &self.weights {
            Weights::QLlama(m) => Session::QLlama(m.clone()),
            Weights::QQwen2(m) => loop {
                if cancel.is_cancelled() {
                    return Err(PipelineError::cancelled());
                }
                match m.try_lock() {
                    Ok(mut guard) => {
                        guard.clear_kv_cache();
                        break Session::QQwen2(guard);
                    }
                    Err(std::sync::TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(10)),
                    Err(std::sync::TryLockError::Poisoned(p)) => {
                        let mut guard = p.into_inner();
                        guard.clear_kv_cache();
                        break Session::QQwen2(guard);
                    }
                }
            },
            Weights::Llama(m, config, dtype) => {
                Session::Llama(m, llama::Cache::new(true, *dtype, config, &self.device).map_err(candle)?)
            }
            Weights::Qwen2(m) => {
                let mut m = m.clone();
                m.clear_kv_cache();
                Session::Qwen2(m)
            }
        })
    }
}

/// A candle error during inference (out of memory is told apart: [`PipelineError::inference`]).
fn classify(e: &candle_core::Error, what: &str) -> PipelineError {
    PipelineError::inference(format!("{what}: {e}"))
}

/// The memory a model needs: the manifest's estimate, else its files' size plus 20 %.
pub fn estimate_bytes(spec: &ModelSpec, files: &[PathBuf]) -> u64 {
    if let Some(mb) = spec.memory_mb {
        return mb * 1024 * 1024;
    }
    let size: u64 = files.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    size + size / 5
}

/// Loads a model's files (downloading them first when they live in S3) into memory on the models'
/// device. Any failure, including a panic inside the model code on a malformed checkpoint, is an error
/// naming the model and the file.
pub fn load(models: &Models, name: &str, spec: &ModelSpec) -> Result<LoadedLlm, ModelError> {
    let fail = |message: String| ModelError::Load { name: name.to_string(), message };
    let tokenizer_ref = spec.tokenizer_file().ok_or_else(|| fail("the manifest names no tokenizer".into()))?;
    let tokenizer_path = models.local_path(&tokenizer_ref)?;
    let weights: Vec<PathBuf> = spec.weights().iter().map(|f| models.local_path(f)).collect::<Result<_, _>>()?;
    let config_path = match spec.format {
        Some(ModelFormat::Safetensors) => {
            Some(models.local_path(&spec.config_file().ok_or_else(|| fail("no config.json".into()))?)?)
        }
        _ => None,
    };
    let device = models.device.clone();
    // candle's model constructors index and unwrap freely; a malformed checkpoint must not take the
    // worker down.
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        load_files(spec, &tokenizer_path, &weights, config_path.as_deref(), device).map_err(&fail)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(fail(format!("the checkpoint does not match its architecture ({what})")))
    })
}

fn load_files(
    spec: &ModelSpec,
    tokenizer_path: &Path,
    weights: &[PathBuf],
    config_path: Option<&Path>,
    device: Device,
) -> Result<LoadedLlm, String> {
    let tokenizer = Tokenizer::from_file(tokenizer_path)
        .map_err(|e| format!("{} is not a usable tokenizer.json: {e}", tokenizer_path.display()))?;
    let token_text = |id: u32| tokenizer.id_to_token(id).unwrap_or_default();
    match spec.format {
        Some(ModelFormat::Gguf) => {
            let path = &weights[0];
            let mut reader =
                BufReader::new(std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?);
            let content = gguf_file::Content::read(&mut reader)
                .map_err(|e| format!("{} is not a readable GGUF file: {e}", path.display()))?;
            let md = |key: &str| content.metadata.get(key);
            let architecture = md("general.architecture")
                .and_then(|v| v.to_string().ok())
                .cloned()
                .ok_or_else(|| format!("{} has no general.architecture", path.display()))?;
            let md_u32 = |key: &str| md(key).and_then(|v| v.to_u32().ok());
            let shipped_context = md_u32(&format!("{architecture}.context_length")).map(|v| v as usize);
            let bos = md_u32("tokenizer.ggml.bos_token_id").map(token_text).unwrap_or_default();
            let eos_id = md_u32("tokenizer.ggml.eos_token_id");
            let shipped_template = md("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned();
            let gguf_err = |e: candle_core::Error| format!("{} does not load as {architecture}: {e}", path.display());
            let (weights, max_context) = match architecture.as_str() {
                // llama.cpp writes Mistral models with the `llama` architecture and keys.
                "llama" => (
                    Weights::QLlama(
                        quantized_llama::ModelWeights::from_gguf(content, &mut reader, &device).map_err(gguf_err)?,
                    ),
                    // candle's quantized Llama precomputes rotary tables for this many positions.
                    Some(quantized_llama::MAX_SEQ_LEN),
                ),
                "qwen2" => (
                    Weights::QQwen2(Mutex::new(
                        quantized_qwen2::ModelWeights::from_gguf(content, &mut reader, &device).map_err(gguf_err)?,
                    )),
                    None,
                ),
                other => {
                    return Err(format!(
                        "{} is a `{other}` model; GGUF models of the llama (Llama, Mistral) and qwen2 architectures are supported",
                        path.display()
                    ));
                }
            };
            let context = [spec.context_length, shipped_context, max_context].into_iter().flatten().min();
            finish(
                spec,
                tokenizer,
                weights,
                architecture,
                ModelFormat::Gguf,
                context,
                &bos,
                eos_id,
                shipped_template,
                device,
            )
        }
        Some(ModelFormat::Safetensors) => {
            let config_path = config_path.ok_or("no config.json")?;
            let text = std::fs::read_to_string(config_path)
                .map_err(|e| format!("cannot read {}: {e}", config_path.display()))?;
            let config: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", config_path.display()))?;
            let architecture = config.get("model_type").and_then(|v| v.as_str()).unwrap_or("llama").to_string();
            let dtype = match spec.dtype.as_deref() {
                Some("f16") => DType::F16,
                Some("bf16") => DType::BF16,
                Some(_) => DType::F32,
                // Half precision on a GPU (as the checkpoint was trained); the CPU is fastest in f32.
                None if device.is_cpu() => DType::F32,
                None => match config.get("torch_dtype").and_then(|v| v.as_str()) {
                    Some("float16") => DType::F16,
                    _ => DType::BF16,
                },
            };
            let mut tensors = HashMap::new();
            for path in weights {
                let part = candle_core::safetensors::load(path, &device)
                    .map_err(|e| format!("{} is not a readable safetensors file: {e}", path.display()))?;
                tensors.extend(part);
            }
            let vb = VarBuilder::from_tensors(tensors, dtype, &device);
            let config_err =
                |e: serde_json::Error| format!("{} is not a {architecture} config: {e}", config_path.display());
            let weights_err = |e: candle_core::Error| format!("the weights do not fit the {architecture} config: {e}");
            let shipped_context = config.get("max_position_embeddings").and_then(|v| v.as_u64()).map(|v| v as usize);
            let weights = match architecture.as_str() {
                "llama" | "mistral" => {
                    let cfg: llama::LlamaConfig = serde_json::from_value(config.clone()).map_err(config_err)?;
                    let cfg = cfg.into_config(false);
                    Weights::Llama(llama::Llama::load(vb, &cfg).map_err(weights_err)?, cfg, dtype)
                }
                "qwen2" => {
                    let cfg: qwen2::Config = serde_json::from_value(config.clone()).map_err(config_err)?;
                    Weights::Qwen2(qwen2::ModelForCausalLM::new(&cfg, vb).map_err(weights_err)?)
                }
                other => {
                    return Err(format!(
                        "{} describes a `{other}` model; safetensors models of the llama and qwen2 architectures are supported",
                        config_path.display()
                    ));
                }
            };
            let eos_id = match config.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| v as u32),
                Some(serde_json::Value::Array(list)) => list.first().and_then(|v| v.as_u64()).map(|v| v as u32),
                _ => None,
            };
            // tokenizer_config.json beside the tokenizer carries the chat template and the BOS token.
            let tokenizer_config: Option<serde_json::Value> = tokenizer_path
                .parent()
                .map(|d| d.join("tokenizer_config.json"))
                .and_then(|p| std::fs::read_to_string(p).ok())
                .and_then(|t| serde_json::from_str(&t).ok());
            let shipped_template = tokenizer_config.as_ref().and_then(chat::from_tokenizer_config);
            let bos =
                config.get("bos_token_id").and_then(|v| v.as_u64()).map(|id| token_text(id as u32)).unwrap_or_default();
            let context = [spec.context_length, shipped_context].into_iter().flatten().min();
            finish(
                spec,
                tokenizer,
                weights,
                architecture,
                ModelFormat::Safetensors,
                context,
                &bos,
                eos_id,
                shipped_template,
                device,
            )
        }
        Some(ModelFormat::Onnx) => Err("ONNX models are not served by the llm pipeline".into()),
        None => Err("the manifest gives no format".into()),
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    spec: &ModelSpec,
    tokenizer: Tokenizer,
    weights: Weights,
    architecture: String,
    format: ModelFormat,
    context: Option<usize>,
    bos: &str,
    eos_id: Option<u32>,
    shipped_template: Option<String>,
    device: Device,
) -> Result<LoadedLlm, String> {
    let mut eos: Vec<u32> = eos_id.into_iter().collect();
    for token in spec.eos_tokens.iter().map(String::as_str).chain(END_TOKENS) {
        match tokenizer.token_to_id(token) {
            Some(id) if !eos.contains(&id) => eos.push(id),
            Some(_) => {}
            None if spec.eos_tokens.iter().any(|t| t == token) => {
                return Err(format!("eos token `{token}` is not in the tokenizer's vocabulary"));
            }
            None => {}
        }
    }
    let eos_text = eos.first().and_then(|id| tokenizer.id_to_token(*id)).unwrap_or_default();
    let template = ChatTemplate::new(spec.chat_template.as_deref(), shipped_template, bos, &eos_text)?;
    Ok(LoadedLlm {
        weights,
        tokenizer,
        template,
        eos,
        context: context.unwrap_or(4096),
        architecture,
        format,
        device,
        masks: Mutex::new(Default::default()),
    })
}

/// Turns token ids into text as they arrive, holding back bytes of a character that is not complete yet.
struct Detokenizer {
    tokens: Vec<u32>,
    /// Tokens before `prev` are emitted; `prev..cur` is the context for decoding the next ones.
    prev: usize,
    cur: usize,
}

impl Detokenizer {
    fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<String, String> {
        self.tokens.push(token);
        let decode = |ids: &[u32]| tokenizer.decode(ids, true).map_err(|e| format!("decoding: {e}"));
        let before = decode(&self.tokens[self.prev..self.cur])?;
        let now = decode(&self.tokens[self.prev..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.is_char_boundary(before.len()) {
            self.prev = self.cur;
            self.cur = self.tokens.len();
            Ok(now[before.len()..].to_string())
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back (an incomplete character at the very end becomes U+FFFD).
    fn flush(&mut self, tokenizer: &Tokenizer) -> Result<String, String> {
        let decode = |ids: &[u32]| tokenizer.decode(ids, true).map_err(|e| format!("decoding: {e}"));
        let before = decode(&self.tokens[self.prev..self.cur])?;
        let now = decode(&self.tokens[self.prev..])?;
        self.prev = self.tokens.len();
        self.cur = self.tokens.len();
        Ok(if now.len() > before.len() && now.is_char_boundary(before.len()) {
            now[before.len()..].to_string()
        } else {
            String::new()
        })
    }
}

/// The earliest occurrence of any stop string in `text` at or after byte `from`.
pub(super) fn find_stop(text: &str, from: usize, stops: &[String]) -> Option<usize> {
    let mut from = from.min(text.len());
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    stops.iter().filter_map(|s| text[from..].find(s.as_str()).map(|i| from + i)).min()
}

pub fn sampling(req: &GenRequest<'_>) -> Sampling {
    let p = req.params;
    let temperature = f64::from(p.temperature);
    if temperature <= 1e-7 {
        return Sampling::ArgMax;
    }
    let top_p = (p.top_p < 1.0).then_some(f64::from(p.top_p));
    match (p.top_k, top_p) {
        (Some(k), Some(p)) => Sampling::TopKThenTopP { k: k as usize, p, temperature },
        (Some(k), None) => Sampling::TopK { k: k as usize, temperature },
        (None, Some(p)) => Sampling::TopP { p, temperature },
        (None, None) => Sampling::All { temperature },
    }
}

/// Generates the completion of one job. Runs on the calling (blocking) thread; checks `cancel` before
/// every token.
pub fn generate(
    model: &LoadedLlm,
    req: &GenRequest<'_>,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<Generation, PipelineError> {
    let params = req.params;
    let prompt = model.template.render(params.system.as_deref(), &params.prompt).map_err(PipelineError::permanent)?;
    let encoding = model
        .tokenizer
        .encode(prompt.as_str(), false)
        .map_err(|e| PipelineError::permanent(format!("tokenizing the prompt failed: {e}")))?;
    let prompt_ids = encoding.get_ids().to_vec();
    if prompt_ids.is_empty() {
        return Err(PipelineError::permanent("the prompt encodes to no tokens"));
    }
    if prompt_ids.len() >= model.context {
        return Err(PipelineError::permanent(format!(
            "the prompt is {} tokens (with the chat template) but model `{}` has a context of {} tokens; \
             shorten the prompt",
            prompt_ids.len(),
            req.model,
            model.context
        )));
    }
    let room = model.context - prompt_ids.len();
    let max_tokens = (req.max_tokens as usize).min(room);
    if cancel.is_cancelled() {
        return Err(PipelineError::cancelled());
    }
    let mut session = model.session(cancel)?;
    let started = Instant::now();
    progress.progress(0.0, "prompt", Some(format!("{} prompt tokens", prompt_ids.len())));
    model.note_prompt(prompt_ids.len());
    let chunk = if session.chunks_prompt() { PROMPT_CHUNK } else { prompt_ids.len() };
    let mut logits = None;
    for (i, part) in prompt_ids.chunks(chunk).enumerate() {
        if i > 0 {
            if cancel.is_cancelled() {
                return Err(PipelineError::cancelled());
            }
            progress.progress(0.0, "prompt", Some(format!("{} of {} prompt tokens", i * chunk, prompt_ids.len())));
        }
        logits =
            Some(session.forward(part, i * chunk, &model.device).map_err(|e| classify(&e, "evaluating the prompt"))?);
    }
    let mut logits = logits.expect("the prompt is not empty");
    let prompt_s = started.elapsed().as_secs_f64();
    let mut sampler = LogitsProcessor::from_sampling(req.seed, sampling(req));
    let mut all = prompt_ids.clone();
    let mut detok = Detokenizer { tokens: Vec::new(), prev: 0, cur: 0 };
    let mut text = String::new();
    let mut generated = 0usize;
    let mut first_token_s = None;
    let max_stop = params.stop.iter().map(String::len).max().unwrap_or(0);
    let gen_started = Instant::now();
    let mut finish = Finish::Length;
    let mut stopped_by_string = false;
    let decode_err = |m: String| PipelineError::permanent(m);
    while generated < max_tokens {
        if cancel.is_cancelled() {
            return Err(PipelineError::cancelled());
        }
        if params.repetition_penalty != 1.0 {
            let window = &all[all.len().saturating_sub(REPEAT_WINDOW)..];
            logits = candle_transformers::utils::apply_repeat_penalty(&logits, params.repetition_penalty, window)
                .map_err(|e| classify(&e, "applying the repetition penalty"))?;
        }
        let next = sampler.sample(&logits).map_err(|e| classify(&e, "sampling"))?;
        first_token_s.get_or_insert_with(|| started.elapsed().as_secs_f64());
        if model.eos.contains(&next) {
            finish = Finish::Stop;
            break;
        }
        generated += 1;
        all.push(next);
        let piece = detok.push(&model.tokenizer, next).map_err(decode_err)?;
        if !piece.is_empty() {
            let from = text.len().saturating_sub(max_stop);
            text.push_str(&piece);
            if let Some(at) = find_stop(&text, from, &params.stop) {
                text.truncate(at);
                finish = Finish::Stop;
                stopped_by_string = true;
                break;
            }
        }
        let per_s = generated as f64 / gen_started.elapsed().as_secs_f64().max(1e-9);
        progress.tokens(generated as f32 / max_tokens as f32, generated as u32, per_s as f32);
        if generated == max_tokens {
            break;
        }
        logits = session.forward(&[next], all.len() - 1, &model.device).map_err(|e| classify(&e, "generating"))?;
    }
    // Bytes held back for an unfinished character (at the end of the budget or an end-of-turn token;
    // text cut at a stop string ends before it anyway).
    if !stopped_by_string {
        let rest = detok.flush(&model.tokenizer).map_err(decode_err)?;
        let from = text.len().saturating_sub(max_stop);
        text.push_str(&rest);
        if let Some(at) = find_stop(&text, from, &params.stop) {
            text.truncate(at);
            finish = Finish::Stop;
        }
    }
    let generation_s = gen_started.elapsed().as_secs_f64();
    Ok(Generation {
        text,
        finish,
        prompt_tokens: Some(prompt_ids.len() as u64),
        completion_tokens: generated as u64,
        prompt_eval_s: prompt_s,
        time_to_first_token_s: first_token_s.unwrap_or(prompt_s),
        generation_s,
        context_length: Some(model.context as u64),
        truncated_to_context: max_tokens < req.max_tokens as usize,
        template: Some(model.template.origin.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_evaluated_in_chunks_gives_the_logits_of_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        super::super::tiny::write_examples(dir.path()).unwrap();
        let manifest = ainern2d_models::Manifest::from_toml(
            "device = \"cpu\"\n[models.m]\nkind = \"llm\"\nformat = \"gguf\"\nsource = \"tiny-llama.gguf\"\ntokenizer = \"tokenizer.json\"\n",
            dir.path(),
        )
        .unwrap();
        let models = Models::new(manifest, None, ainern2d_models::CacheMetrics::new(), &[]).unwrap();
        let model = load(&models, "m", models.spec("m").unwrap()).unwrap();
        let ids: Vec<u32> = (0..200u32).map(|i| (i * 7) % 256).collect();
        let cancel = CancellationToken::new();
        let mut one = model.session(&cancel).unwrap();
        assert!(one.chunks_prompt());
        let whole = one.forward(&ids, 0, &model.device).unwrap();
        let mut two = model.session(&cancel).unwrap();
        two.forward(&ids[..PROMPT_CHUNK], 0, &model.device).unwrap();
        let chunked = two.forward(&ids[PROMPT_CHUNK..], PROMPT_CHUNK, &model.device).unwrap();
        let diff = (whole - chunked).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-3, "chunked logits differ by {diff}");
    }

    #[test]
    fn stop_strings_are_found_from_a_char_boundary() {
        let stops = vec!["END".to_string(), "é!".to_string()];
        assert_eq!(find_stop("abcENDx", 0, &stops), Some(3));
        assert_eq!(find_stop("aé!", 2, &stops), Some(1), "a start inside a character moves back");
        assert_eq!(find_stop("abc", 1, &stops), None);
    }
}
