//! Row 5: LLM prompt and decode tokens/s, the `llm` pipeline (candle, in process) against llama.cpp
//! (`llama-cpp-python` 0.3.36, built from source on this machine) on the same random-weight Llama GGUF (the
//! `benches/llm` dimensions: 156 M parameters, 90 M of them outside the embedding and output), in Q8_0
//! and in Q4_K_M, with the same thread count, prompt tokens and number of
//! greedily generated tokens. The measuring is `llm-bench` (`benches/llm`, a package of its own, built
//! into the same target directory): it writes the model with the `tokenizer.ggml.*` metadata llama.cpp
//! needs, runs llama.cpp through `benches/llm/llama_peer.py` in the peers' Python, takes turns with it
//! (and with a bare candle loop on the same file) round by round and writes each round's figures as
//! JSON; this row runs it once per quantization and reports them. llama-cpp-python compiles llama.cpp
//! when it installs (about ten minutes on two cores): the quick mode leaves the row out.

use std::process::Command;

use anyhow::Context;

use crate::Ctx;
use crate::peers::{self, Peers};
use crate::report::{Check, Row};
use crate::support;

const QUANTS: [(&str, &str); 2] = [("q8_0", "Q8_0"), ("q4_k_m", "Q4_K_M")];
const PROMPT_TOKENS: usize = 512;
const TOKENS: usize = 128;

/// Where the decode time goes and what was tried: the profile behind this row, taken during development
/// on a shared 2-core machine (Xeon with AVX-512 VNNI and AMX) while other builds ran, so the absolute
/// figures in these notes are rough; the tables above are this run's.
const NOTES: &[&str] = &[
    "Profile of candle's side (`perf record -F 499 --call-graph dwarf` over three pipeline runs after the \
     warm-up, Q8_0, 2 threads, 512 prompt + 256 generated tokens): 29 % of the samples in candle's repacked \
     Q8_0 kernel (`repack_x86::kernels::q8_0_tile2`), 46 % spinning in candle's barrier pool (24 % the \
     calling thread waiting in `BarrierGuard::drop` for the worker to finish its share of a matmul, 22 % \
     the worker waiting for the next one: 57 parallel regions per token, with the serial work between \
     them), 8 % `memmove` (candle's quantized Llama concatenates each layer's whole KV cache afresh per \
     token, `Tensor::cat`, and `repeat_kv` copies K and V four times for the 16/4 grouped heads), about 5 % \
     f32 gemm for the attention, 2 % quantizing activations to Q8_K. The pipeline's own per-token work \
     (template, incremental detokenizing, stop strings, progress, sampling) is under 0.1 % of the samples, \
     and the pipeline runs at the bare candle loop's speed (the bare loop's rows above): nothing of ours \
     to fix; where candle trails llama.cpp, the time is inside candle.",
    "Tried within candle: thread count: 1 thread 38 decode tok/s against 10.5 with 2 in the same minute \
     with another program busy on the machine (the spin barrier stalls whenever either core is taken); on \
     quiet minutes 2 threads gave 71-88 tok/s. `CANDLE_BARRIER_POOL_SPIN_LIMIT` (default 25,000): 0 gave \
     24.5 decode tok/s, 25,000 57.5, 1,000,000 83.1 (consecutive runs on the loaded machine: noisy, but \
     parking early is clearly worse). The quantised layout: Q4_K_M (candle's Q4_K kernels, Q6_K on its \
     compact path) against Q8_0 is in the tables. The `mkl` feature changes only f32 matmuls (the \
     attention, about 5 %), not the quantised kernels; `accelerate` is macOS-only; neither was built. \
     What would close the gap is inside candle-transformers' quantized Llama: a preallocated KV cache \
     written in place, attention over grouped heads without `repeat_kv`, and fused q/k/v and gate/up \
     matmuls (candle has `QTensor::gemv_fused_shared_lhs`, which its quantized Llama does not use) to cut \
     the parallel regions per token.",
    "llama.cpp as pip builds it by default (`GGML_NATIVE`) crashes on this CPU: SIGSEGV in \
     `ggml_backend_amx_mul_mat` on the first prompt (llama-cpp-python 0.3.36, AMX-INT8 present). The row \
     builds it with every instruction set of the CPU but AMX (see the conditions); it keeps llama.cpp's \
     CPU repacking (`REPACK = 1`). Under load its OpenMP threads stall like candle's pool, and worse \
     (in the three rounds of one development run while other builds ran: llama.cpp 1.5, 7.1 and 79.9 \
     decode tok/s, the pipeline 75.5, 70.6 and 80.6, the bare candle loop 87.7, 9.2 and 70.6): on a busy machine the ratios favour ours, so only a run on a quiet machine \
     answers the target.",
];

pub async fn run(ctx: &Ctx, quick_peers: &Peers) -> anyhow::Result<Row> {
    let mut row =
        Row::new(5, "LLM decode and prompt tokens/s: candle pipeline vs llama.cpp", "≥ 1.0× llama.cpp on CPU");
    let (peer, version) = peers::SLOW[0];
    if ctx.quick {
        return Ok(row.skip(format!(
            "the quick mode leaves out the slow peer {peer} {version} (its install compiles llama.cpp, about 10 min)"
        )));
    }
    let bin = ctx.bin("llm-bench");
    if !bin.exists() {
        return Ok(row.skip(format!("{} is not built (cargo build --release -p ainern2d-bench-llm)", bin.display())));
    }
    install_llama_cpp(quick_peers, peer, version)?;
    let peers = Peers::ensure(peers::SLOW)?;
    let dir = tempfile::tempdir()?;
    let mut first: Option<serde_json::Value> = None;
    for (arg, name) in QUANTS {
        eprintln!("compare: row 5, {name}");
        let json = dir.path().join(format!("{arg}.json"));
        let mut cmd = Command::new(&bin);
        cmd.args(["--quant", arg, "--rounds", &ctx.rounds.to_string()])
            .args(["--prompt-tokens", &PROMPT_TOKENS.to_string(), "--tokens", &TOKENS.to_string()])
            .arg("--python")
            .arg(peers.bin("python"));
        let f = support::bench_json(&mut cmd, &json)?;
        let values = |side: &str, key: &str| -> Vec<f64> {
            f[side][key].as_array().map(|v| v.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default()
        };
        for (what, key) in [("prompt", "prompt_tok_s"), ("decode", "decode_tok_s")] {
            let ours = row.measure(
                &format!("ainern2d `llm` pipeline, {name}, {what}"),
                "tok/s",
                true,
                &values("pipeline", key),
            );
            let peer = row.measure(&format!("llama.cpp, {name}, {what}"), "tok/s", false, &values("llama_cpp", key));
            row.measure(&format!("bare candle loop, {name}, {what}"), "tok/s", false, &values("bare_candle", key));
            row.measure(
                &format!("llama.cpp compute only (its perf counters), {name}, {what}"),
                "tok/s",
                false,
                &values("llama_cpp", &format!("compute_{key}")),
            );
            row.checks.push(Check::at_least(format!("{what} tok/s, {name}: ours / llama.cpp"), ours / peer, 1.0));
        }
        row.conditions.push(format!(
            "{name}: {:.0} MB file; bare candle and llama.cpp chose the same first {} of {TOKENS} greedy tokens",
            f["model_mb"].as_f64().unwrap_or(f64::NAN),
            f["greedy_agreement"]
        ));
        first.get_or_insert(f);
    }
    let f = first.expect("two quantizations ran");
    let d = &f["dims"];
    row.conditions.insert(
        0,
        format!(
            "random-weight Llama GGUF written by `llm-bench` (`benches/llm/src/gguf.rs`): {} layers, hidden {}, \
             {} heads ({} KV), FFN {}, vocab {} ({:.0} M parameters); Q4_K_M is llama.cpp's mix (Q6_K output, \
             Q6_K attn_v and ffn_down in layers 0, 3, 6, 7)",
            d["layers"],
            d["hidden"],
            d["heads"],
            d["kv_heads"],
            d["ffn"],
            d["vocab"],
            f["parameters"].as_f64().unwrap_or(f64::NAN) / 1e6
        ),
    );
    row.conditions.insert(
        1,
        format!(
            "{} threads on both sides (candle's default: the physical cores); {PROMPT_TOKENS} prompt tokens, \
             {TOKENS} generated, greedy, end-of-sequence ignored; prompt tok/s = prompt tokens / prompt \
             evaluation, decode tok/s = tokens / (first sample to last token); one warm-up run each, then {} \
             rounds in rotating order; {} build of `llm-bench`",
            f["threads"],
            ctx.rounds,
            ctx.profile()
        ),
    );
    let peer_info = &f["llama_cpp_peer"];
    row.conditions.push(format!(
        "candle {} (`candle-core` in Cargo.lock); {peer} {} (`benches/llm/llama_peer.py`: `Llama.eval`, \
         `Llama.sample(temp=0)`, `Llama.detokenize`; llama-cpp-python's defaults otherwise, n_batch {}), \
         llama.cpp built by pip ({}): {}",
        candle_version(),
        peer_info["llama_cpp_python"].as_str().unwrap_or("?"),
        peer_info["n_batch"],
        cmake_args().map_or("GGML_NATIVE".to_string(), |a| format!(
            "CMAKE_ARGS {a}: native but for AMX, whose kernels crash here"
        )),
        peer_info["system_info"].as_str().unwrap_or("?")
    ));
    row.notes.extend(NOTES.iter().map(|n| n.to_string()));
    Ok(row)
}

/// Builds `llama-cpp-python` into the peers' environment unless it is there at the pinned version (then
/// `Peers::ensure` only records it). pip's build is llama.cpp's default, `GGML_NATIVE`; on a CPU with AMX
/// that build's AMX kernels crash (SIGSEGV in `ggml_backend_amx_mul_mat` on the first prompt, seen with
/// 0.3.36 on a Xeon with AMX-INT8), so there it is built with every instruction set the CPU has but AMX.
/// A `CMAKE_ARGS` of the caller's wins.
fn install_llama_cpp(peers: &Peers, package: &str, version: &str) -> anyhow::Result<()> {
    let cmake = std::env::var_os("CMAKE_ARGS").is_none().then(cmake_args).flatten();
    // Exit status 0: the pinned version, built as wanted; 1: another build of it; 2: not there.
    let check = format!(
        "import sys\ntry:\n    import llama_cpp\nexcept ImportError:\n    sys.exit(2)\n\
         amx = b'AMX_INT8 = 1' in llama_cpp.llama_print_system_info()\n\
         sys.exit(0 if llama_cpp.__version__ == {version:?} and not (amx and {}) else 1)",
        if cmake.is_some() { "True" } else { "False" }
    );
    let status = Command::new(peers.bin("python")).args(["-c", &check]).output().ok().and_then(|o| o.status.code());
    if status == Some(0) {
        return Ok(());
    }
    let mut pip = Command::new(peers.bin("pip"));
    pip.args(["install", "--quiet", "--disable-pip-version-check", "--no-cache-dir"])
        .arg(format!("{package}=={version}"));
    if status == Some(1) {
        pip.args(["--force-reinstall", "--no-deps"]);
    }
    if let Some(args) = cmake {
        eprintln!("compare: building {package} with CMAKE_ARGS={args}");
        pip.env("CMAKE_ARGS", args);
    }
    eprintln!("compare: installing {package}=={version} (it compiles llama.cpp: about 10 minutes)");
    let status = pip.status().with_context(|| format!("pip install {package}"))?;
    anyhow::ensure!(status.success(), "pip install {package}=={version} failed ({status})");
    Ok(())
}

/// llama.cpp's instruction-set switches for this CPU without AMX, where it has AMX (else None: the
/// default native build).
fn cmake_args() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags: Vec<&str> = cpuinfo.lines().find_map(|l| l.strip_prefix("flags"))?.split_whitespace().collect();
    if !flags.contains(&"amx_int8") {
        return None;
    }
    let switches = [
        ("avx", "AVX"),
        ("avx2", "AVX2"),
        ("fma", "FMA"),
        ("f16c", "F16C"),
        ("bmi2", "BMI2"),
        ("avx_vnni", "AVX_VNNI"),
        ("avx512f", "AVX512"),
        ("avx512vbmi", "AVX512_VBMI"),
        ("avx512_vnni", "AVX512_VNNI"),
        ("avx512_bf16", "AVX512_BF16"),
    ];
    let on = switches.iter().filter(|(f, _)| flags.contains(f)).map(|(_, g)| format!(" -DGGML_{g}=ON"));
    Some(std::iter::once("-DGGML_NATIVE=OFF".to_string()).chain(on).collect())
}

/// `candle-core`'s version in the workspace's Cargo.lock.
fn candle_version() -> String {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap_or_default();
    lock.split("[[package]]")
        .find(|p| p.contains("name = \"candle-core\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "?".into())
}
