//! `llm-bench`: prompt and decode speed of the `llm` pipeline (chat template, sampling, incremental
//! detokenizing, stop-string checks, per-token progress and cancellation checks, the JSON artifact)
//! against a bare candle loop (forward, sample, forward) on the same generated GGUF model in the same
//! process, and, with `--python`, against llama.cpp (`llama-cpp-python`, `llama_peer.py`) in a Python
//! process of its own on the same file, thread count, prompt tokens and number of generated tokens.
//! Greedy by default. The contenders take turns round by round (the order rotates), after one warm-up
//! run each; medians are printed and, with `--json`, every round's figures written (`compare`'s row 5).
//!
//! `cargo run --release -p ainern2d-bench-llm -- --quant q4_k_m --threads 2 --python .../bin/python`
//!
//! Timing, the same on every side: prompt tokens/s is the prompt's tokens over the time its evaluation
//! took (the pipeline's `prompt_eval_s`); decode tokens/s is the generated tokens over the time from the
//! first sample to the last token (n samples, n - 1 single-token forwards: the pipeline's `generation_s`).

mod gguf;
mod peer;

use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use ainern2d_contract::parse_job;
use ainern2d_models::{CacheMetrics, Manifest, Models};
use ainern2d_pipelines::llm::tiny::Dims;
use ainern2d_pipelines::{CancellationToken, LlmPipeline, Pipeline, ProgressSink, RunRequest};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::ModelWeights;
use clap::Parser;

use gguf::Quant;

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
    /// The model file's quantization: q8_0, q4_0 or q4_k_m (llama.cpp's mix).
    #[arg(long, alias = "gguf-quant", default_value = "q8_0")]
    quant: Quant,
    /// Tokens generated per run.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Prompt length in tokens (the BOS token included; one token per byte of the prompt's text).
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// CPU threads on every side (candle's pools and llama.cpp's); default: candle's choice.
    #[arg(long)]
    threads: Option<usize>,
    /// 0 is greedy (the only sampling the llama.cpp peer does); above 0, top-k 40 and top-p 0.95.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// A Python with `llama-cpp-python` installed: adds llama.cpp as a contender.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Leave out the bare candle loop.
    #[arg(long)]
    no_bare: bool,
    /// Write the model (`bench.gguf`, `tokenizer.json`) here and keep it (default: a temporary directory).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Also write every round's figures here, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What the worker's sink does per token: hand the update to another thread.
struct ChannelSink(mpsc::Sender<(u32, f32)>);

impl ProgressSink for ChannelSink {
    fn progress(&self, _: f32, _: &str, _: Option<String>) {}
    fn tokens(&self, _: f32, tokens: u32, per_s: f32) {
        let _ = self.0.send((tokens, per_s));
    }
}

const TEXT: &str = "Write one line of dialogue for a lighthouse keeper greeting a storm. ";
const SEED: u64 = 7;
/// Context of the generated model (candle's quantized Llama precomputes rotary tables for 4096).
const CONTEXT: usize = 4096;

/// One run of one contender.
#[derive(Debug, Clone, Default)]
pub struct Round {
    pub prompt_tokens: usize,
    pub prompt_s: f64,
    pub tokens: usize,
    pub decode_s: f64,
    /// The generated ids, where the contender tells them.
    pub ids: Vec<u32>,
}

impl Round {
    fn prompt_rate(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_s
    }
    fn decode_rate(&self) -> f64 {
        self.tokens as f64 / self.decode_s
    }
}

/// The rounds of one contender, and for llama.cpp its own compute-only rates.
#[derive(Default)]
struct Side {
    rounds: Vec<Round>,
    compute: Vec<(f64, f64)>,
}

impl Side {
    fn json(&self) -> serde_json::Value {
        let r = &self.rounds;
        let mut v = serde_json::json!({
            "prompt_tok_s": r.iter().map(Round::prompt_rate).collect::<Vec<_>>(),
            "decode_tok_s": r.iter().map(Round::decode_rate).collect::<Vec<_>>(),
            "prompt_s": r.iter().map(|r| r.prompt_s).collect::<Vec<_>>(),
            "decode_s": r.iter().map(|r| r.decode_s).collect::<Vec<_>>(),
            "prompt_tokens": r.first().map(|r| r.prompt_tokens),
            "tokens": r.first().map(|r| r.tokens),
        });
        if !self.compute.is_empty() {
            v["compute_prompt_tok_s"] = self.compute.iter().map(|c| c.0).collect::<Vec<_>>().into();
            v["compute_decode_tok_s"] = self.compute.iter().map(|c| c.1).collect::<Vec<_>>().into();
        }
        v
    }

    fn medians(&self) -> (f64, f64) {
        (
            median(self.rounds.iter().map(Round::prompt_rate).collect()),
            median(self.rounds.iter().map(Round::decode_rate).collect()),
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// candle sizes its thread pools from these variables when they first start; a process started without
/// them (or with other values) runs itself again with them set.
fn ensure_threads(threads: usize) -> anyhow::Result<()> {
    let want = threads.to_string();
    let set = |k: &str| std::env::var(k).ok().as_deref() == Some(want.as_str());
    if set("RAYON_NUM_THREADS") && set("CANDLE_NUM_THREADS") {
        return Ok(());
    }
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env("RAYON_NUM_THREADS", &want)
        .env("CANDLE_NUM_THREADS", &want)
        .status()?;
    std::process::exit(status.code().unwrap_or(1));
}

/// The model's parameters (embedding, output and every layer's matrices and norms).
fn parameters(d: &Dims) -> usize {
    let kv = d.kv_heads * (d.hidden / d.heads);
    let layer = 2 * d.hidden * d.hidden + 2 * kv * d.hidden + 3 * d.hidden * d.ffn + 2 * d.hidden;
    2 * d.vocab * d.hidden + d.layers * layer + d.hidden
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = args.threads.unwrap_or_else(candle_core::utils::get_num_threads);
    ensure_threads(threads)?;
    anyhow::ensure!(args.prompt_tokens >= 2, "--prompt-tokens: at least 2 (the BOS token and one byte)");
    anyhow::ensure!(args.prompt_tokens + args.tokens <= CONTEXT, "prompt and tokens exceed the context of {CONTEXT}");
    anyhow::ensure!(
        args.python.is_none() || args.temperature == 0.0,
        "the llama.cpp peer samples greedily only: leave --temperature at 0"
    );
    let dims = Dims {
        vocab: args.vocab,
        hidden: args.hidden,
        heads: args.heads,
        kv_heads: args.kv_heads,
        layers: args.layers,
        ffn: args.ffn,
        context: CONTEXT,
    };
    let temp = tempfile::tempdir()?;
    let dir = match &args.model_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            std::fs::canonicalize(d)?
        }
        None => temp.path().to_path_buf(),
    };
    let started = Instant::now();
    let gguf = gguf::write(&dir, dims, args.quant)?;
    let size_mb = std::fs::metadata(&gguf)?.len() as f64 / 1e6;
    eprintln!(
        "model: {dims:?} {}, {:.0} M parameters, {size_mb:.0} MB, written in {:.1}s; {threads} threads",
        args.quant.name(),
        parameters(&dims) as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    // The pipeline, as the worker builds it.
    let manifest = Manifest::from_toml(
        "device = \"cpu\"\n[budget]\ncpu_mb = 65536\n[models.bench]\nkind = \"llm\"\nformat = \"gguf\"\n\
         source = \"bench.gguf\"\ntokenizer = \"tokenizer.json\"\nchat_template = \"plain\"\n",
        &dir,
    )?;
    let pipeline = LlmPipeline::new(Arc::new(Models::new(manifest, None, CacheMetrics::new(), &[])?));
    let load = Instant::now();
    pipeline.load("bench").map_err(|e| anyhow::anyhow!(e.message))?;
    eprintln!("pipeline load: {:.2}s", load.elapsed().as_secs_f64());
    // The `plain` template puts the BOS token before the text; every byte of it is one token.
    let text: String = TEXT.chars().cycle().take(args.prompt_tokens - 1).collect();
    let sampled = args.temperature > 0.0;
    let mut params = serde_json::json!({"prompt": text, "model": "bench", "max_tokens": args.tokens,
                                        "temperature": args.temperature, "seed": SEED});
    if sampled {
        params["top_k"] = 40.into();
        params["top_p"] = 0.95.into();
    }
    let job = parse_job(&serde_json::to_vec(&serde_json::json!({
        "schema": "ainern2d.job.v1", "job_id": "bench", "kind": "llm", "output": {"prefix": "bench"},
        "params": params,
    }))?)?;

    // The bare loop: the same file through candle's own loader, the same tokenizer and sampling.
    let mut reader = std::io::BufReader::new(std::fs::File::open(&gguf)?);
    let content = gguf_file::Content::read(&mut reader)?;
    let bare = ModelWeights::from_gguf(content, &mut reader, &Device::Cpu)?;
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).map_err(anyhow::Error::msg)?;
    let prompt_ids =
        tokenizer.encode(format!("<s>{text}").as_str(), false).map_err(anyhow::Error::msg)?.get_ids().to_vec();
    anyhow::ensure!(prompt_ids.len() == args.prompt_tokens, "the prompt is {} tokens", prompt_ids.len());
    let sampling = || {
        if sampled {
            Sampling::TopKThenTopP { k: 40, p: 0.95, temperature: f64::from(args.temperature) }
        } else {
            Sampling::ArgMax
        }
    };

    let run_pipeline = || -> anyhow::Result<Round> {
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
        let n = out["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize;
        anyhow::ensure!(
            n == args.tokens && reports == n,
            "the pipeline generated {n} of {} tokens ({reports} progress reports; an end-of-turn token?): \
             try another --prompt-tokens",
            args.tokens
        );
        let prompt_tokens = out["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize;
        anyhow::ensure!(prompt_tokens == prompt_ids.len(), "the pipeline's prompt is {prompt_tokens} tokens");
        let t = &out["timings"];
        Ok(Round {
            prompt_tokens,
            prompt_s: t["prompt_eval_s"].as_f64().unwrap_or(f64::NAN),
            tokens: n,
            decode_s: t["generation_s"].as_f64().unwrap_or(f64::NAN),
            ids: Vec::new(),
        })
    };
    let run_bare = || -> anyhow::Result<Round> {
        // Bare candle: the whole prompt in one forward, then from the first sample to the last token like
        // the pipeline's generation_s.
        let mut model = bare.clone();
        let t = Instant::now();
        let mut logits =
            model.forward(&Tensor::new(prompt_ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?, 0)?.squeeze(0)?;
        let prompt_s = t.elapsed().as_secs_f64();
        let mut sampler = LogitsProcessor::from_sampling(SEED, sampling());
        let mut ids = Vec::with_capacity(args.tokens);
        let t = Instant::now();
        for i in 0..args.tokens {
            let next = sampler.sample(&logits)?;
            ids.push(next);
            if i + 1 == args.tokens {
                break;
            }
            let pos = prompt_ids.len() + i;
            logits = model.forward(&Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?, pos)?.squeeze(0)?;
        }
        Ok(Round {
            prompt_tokens: prompt_ids.len(),
            prompt_s,
            tokens: ids.len(),
            decode_s: t.elapsed().as_secs_f64(),
            ids,
        })
    };
    let mut peer = match &args.python {
        Some(python) => Some(peer::LlamaCpp::start(python, &gguf, threads, CONTEXT)?),
        None => None,
    };
    if let Some(p) = &peer {
        eprintln!("llama.cpp: {}", p.ready);
    }

    // Contenders: 0 the pipeline, 1 bare candle, 2 llama.cpp.
    let mut names = vec!["pipeline"];
    if !args.no_bare {
        names.push("bare candle");
    }
    if peer.is_some() {
        names.push("llama.cpp");
    }
    let mut sides: Vec<Side> = names.iter().map(|_| Side::default()).collect();
    let mut run = |name: &str| -> anyhow::Result<(Round, Option<(f64, f64)>)> {
        Ok(match name {
            "pipeline" => (run_pipeline()?, None),
            "bare candle" => (run_bare()?, None),
            _ => {
                let (r, c) = peer.as_mut().expect("peer").generate(&prompt_ids, args.tokens)?;
                (r, Some(c))
            }
        })
    };
    // Warm-up, not counted: candle repacks the weights for its kernels on first use, llama.cpp pages the
    // file in.
    let warm = Instant::now();
    let mut first_ids: Vec<(String, Vec<u32>)> = Vec::new();
    for name in &names {
        let (r, _) = run(name)?;
        if !r.ids.is_empty() {
            first_ids.push((name.to_string(), r.ids));
        }
    }
    eprintln!("warm-up: {:.1}s", warm.elapsed().as_secs_f64());
    for round in 0..args.rounds {
        // Rotate which runs first, so none always gets the warmer (or the throttled) machine.
        let mut line = format!("round {}:", round + 1);
        for k in 0..names.len() {
            let i = (round + k) % names.len();
            let (r, compute) = run(names[i])?;
            line += &format!(" {} {:.0} prompt tok/s, {:.1} decode tok/s;", names[i], r.prompt_rate(), r.decode_rate());
            sides[i].rounds.push(r);
            if let Some(c) = compute {
                sides[i].compute.push(c);
            }
        }
        eprintln!("{}", line.trim_end_matches(';'));
    }
    // Greedy on the same weights, bare candle and llama.cpp should pick the same tokens until rounding in
    // their different kernels breaks a near tie.
    let agree = match first_ids.as_slice() {
        [(_, a), (_, b)] => Some(a.iter().zip(b).take_while(|(x, y)| x == y).count()),
        _ => None,
    };
    println!(
        "llm, {} layers x {} hidden, vocab {}, {} ({size_mb:.0} MB), {} prompt tokens, {} generated, {threads} threads, \
         {} rounds (medians):",
        dims.layers,
        dims.hidden,
        dims.vocab,
        args.quant.name(),
        args.prompt_tokens,
        args.tokens,
        args.rounds
    );
    let (pp, pd) = sides[0].medians();
    for (name, side) in names.iter().zip(&sides) {
        let (p, d) = side.medians();
        println!(
            "  {name:<12} prompt {p:>7.1} tok/s ({:.2}x the pipeline's)  decode {d:>6.1} tok/s ({:.2}x)",
            p / pp,
            d / pd
        );
    }
    if let Some(n) = agree {
        println!("  bare candle and llama.cpp chose the same first {n} of {} tokens", args.tokens);
    }
    if let Some(path) = &args.json {
        let mut figures = serde_json::json!({
            "dims": {"vocab": dims.vocab, "hidden": dims.hidden, "layers": dims.layers, "heads": dims.heads,
                     "kv_heads": dims.kv_heads, "ffn": dims.ffn},
            "parameters": parameters(&dims),
            "quant": args.quant.name(),
            "model_mb": size_mb,
            "threads": threads,
            "prompt_tokens": args.prompt_tokens,
            "tokens": args.tokens,
            "rounds": args.rounds,
            "sampling": if sampled { format!("top-k 40, top-p 0.95, temperature {}", args.temperature) } else { "greedy".into() },
            "greedy_agreement": agree,
        });
        for (name, side) in names.iter().zip(&sides) {
            figures[name.replace([' ', '.'], "_")] = side.json();
        }
        if let Some(p) = &peer {
            figures["llama_cpp_peer"] = p.ready.clone();
        }
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)?;
    }
    Ok(())
}
