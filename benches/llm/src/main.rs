//! `llm-bench`: generation speed of the `llm` pipeline (chat template, sampling with repetition penalty,
//! incremental detokenizing, stop-string checks, per-token progress and cancellation checks, the JSON
//! artifact) against a bare candle loop (forward, sample, forward) on the same generated GGUF model, with
//! the same sampling, in one process. Rounds are interleaved; medians are reported.
//!
//! `cargo run --release -p ainern2d-bench-llm -- --hidden 1024 --layers 8 --tokens 128 --rounds 5`

use std::sync::{Arc, mpsc};
use std::time::Instant;

use ainern2d_contract::parse_job;
use ainern2d_models::{CacheMetrics, Manifest, Models};
use ainern2d_pipelines::llm::tiny::{self, Dims, TinyArch};
use ainern2d_pipelines::{CancellationToken, LlmPipeline, Pipeline, ProgressSink, RunRequest};
use candle_core::quantized::{GgmlDType, gguf_file};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::ModelWeights;
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 32_000)]
    vocab: usize,
    #[arg(long, default_value_t = 1024)]
    hidden: usize,
    #[arg(long, default_value_t = 8)]
    layers: usize,
    #[arg(long, default_value_t = 16)]
    heads: usize,
    #[arg(long, default_value_t = 4)]
    kv_heads: usize,
    #[arg(long, default_value_t = 2816)]
    ffn: usize,
    /// Matrix quantization: q8_0 or q4_0.
    #[arg(long, default_value = "q8_0")]
    quant: String,
    /// Tokens generated per run.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// What the worker's sink does per token: hand the update to another thread.
struct ChannelSink(mpsc::Sender<(u32, f32)>);

impl ProgressSink for ChannelSink {
    fn progress(&self, _: f32, _: &str, _: Option<String>) {}
    fn tokens(&self, _: f32, tokens: u32, per_s: f32) {
        let _ = self.0.send((tokens, per_s));
    }
}

const PROMPT: &str = "Write one line of dialogue for a lighthouse keeper greeting a storm.";
const SEED: u64 = 7;

fn sampling() -> Sampling {
    Sampling::TopKThenTopP { k: 40, p: 0.95, temperature: 0.8 }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let quant = match args.quant.as_str() {
        "q8_0" => GgmlDType::Q8_0,
        "q4_0" => GgmlDType::Q4_0,
        other => anyhow::bail!("--quant {other}: use q8_0 or q4_0"),
    };
    let dims = Dims {
        vocab: args.vocab,
        hidden: args.hidden,
        heads: args.heads,
        kv_heads: args.kv_heads,
        layers: args.layers,
        ffn: args.ffn,
        context: 4096,
    };
    let dir = tempfile::tempdir()?;
    let gguf = dir.path().join("bench.gguf");
    let started = Instant::now();
    tiny::write_gguf_with(&gguf, TinyArch::Llama, dims, quant).map_err(anyhow::Error::msg)?;
    tiny::write_tokenizer(&dir.path().join("tokenizer.json")).map_err(anyhow::Error::msg)?;
    let size_mb = std::fs::metadata(&gguf)?.len() as f64 / 1e6;
    eprintln!("model: {dims:?} {quant:?}, {size_mb:.0} MB, written in {:.1}s", started.elapsed().as_secs_f64());

    // The pipeline, as the worker builds it.
    let manifest = Manifest::from_toml(
        "device = \"cpu\"\n[budget]\ncpu_mb = 65536\n[models.bench]\nkind = \"llm\"\nformat = \"gguf\"\n\
         source = \"bench.gguf\"\ntokenizer = \"tokenizer.json\"\nchat_template = \"plain\"\n",
        dir.path(),
    )?;
    let pipeline = LlmPipeline::new(Arc::new(Models::new(manifest, None, CacheMetrics::new(), &[])?));
    let load = Instant::now();
    pipeline.load("bench").map_err(|e| anyhow::anyhow!(e.message))?;
    eprintln!("pipeline load: {:.2}s", load.elapsed().as_secs_f64());
    let job = parse_job(&serde_json::to_vec(&serde_json::json!({
        "schema": "ainern2d.job.v1", "job_id": "bench", "kind": "llm", "output": {"prefix": "bench"},
        "params": {"prompt": PROMPT, "model": "bench", "max_tokens": args.tokens, "temperature": 0.8,
                   "top_k": 40, "top_p": 0.95, "seed": SEED, "stop": ["\n\n\n\n"]},
    }))?)?;

    // The bare loop: the same file through candle's own loader, the same tokenizer and sampling.
    let mut reader = std::io::BufReader::new(std::fs::File::open(&gguf)?);
    let content = gguf_file::Content::read(&mut reader)?;
    let bare = ModelWeights::from_gguf(content, &mut reader, &Device::Cpu)?;
    let tokenizer = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).map_err(anyhow::Error::msg)?;
    let prompt_ids = tokenizer.encode(PROMPT, false).map_err(anyhow::Error::msg)?.get_ids().to_vec();

    let (mut pipe_rates, mut bare_rates) = (Vec::new(), Vec::new());
    let run_pipeline = || -> anyhow::Result<(f64, f64, usize)> {
        let work = tempfile::tempdir()?;
        let (tx, rx) = mpsc::channel();
        let drain = std::thread::spawn(move || rx.iter().count());
        let req = RunRequest {
            job: &job,
            attempt: 1,
            inputs: Default::default(),
            workdir: work.path().into(),
            downgrade: None,
        };
        let artifacts = pipeline
            .run(&req, &ChannelSink(tx), &CancellationToken::new())
            .map_err(|e| anyhow::anyhow!(e.message))?
            .artifacts;
        let reports = drain.join().expect("drain thread");
        let out: serde_json::Value = serde_json::from_slice(&std::fs::read(&artifacts[0].path)?)?;
        let n = out["usage"]["completion_tokens"].as_u64().unwrap_or(0) as f64;
        Ok((n / out["timings"]["generation_s"].as_f64().unwrap_or(f64::NAN), n, reports))
    };
    let run_bare = || -> anyhow::Result<f64> {
        // Bare candle: time from the first sample to the last token, like the pipeline's generation_s
        // (repetition penalty 1.0: the pipeline skips it too).
        let mut model = bare.clone();
        let mut logits =
            model.forward(&Tensor::new(prompt_ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?, 0)?.squeeze(0)?;
        let mut sampler = LogitsProcessor::from_sampling(SEED, sampling());
        let mut all = prompt_ids.clone();
        let t = Instant::now();
        for i in 0..args.tokens {
            let next = sampler.sample(&logits)?;
            all.push(next);
            if i + 1 == args.tokens {
                break;
            }
            logits = model.forward(&Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?, all.len() - 1)?.squeeze(0)?;
        }
        Ok(args.tokens as f64 / t.elapsed().as_secs_f64())
    };
    for round in 0..args.rounds {
        // Alternate which runs first, so neither always gets the warmer (or the throttled) machine.
        let ((pipe, n, reports), bare_rate) = if round % 2 == 0 {
            let p = run_pipeline()?;
            (p, run_bare()?)
        } else {
            let b = run_bare()?;
            (run_pipeline()?, b)
        };
        eprintln!(
            "round {}: pipeline {pipe:.1} tok/s ({n} tokens, {reports} progress reports), bare candle {bare_rate:.1} tok/s",
            round + 1
        );
        pipe_rates.push(pipe);
        bare_rates.push(bare_rate);
    }
    let (p, b) = (median(pipe_rates), median(bare_rates));
    println!(
        "llm generation, {} layers x {} hidden, vocab {}, {:?}, {} tokens, {} rounds: pipeline {p:.1} tok/s, bare candle {b:.1} tok/s (median), ratio {:.3}",
        dims.layers,
        dims.hidden,
        dims.vocab,
        quant,
        args.tokens,
        args.rounds,
        p / b
    );
    Ok(())
}
