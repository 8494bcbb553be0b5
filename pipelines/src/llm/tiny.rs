//! Tiny random-weight models in the real file formats: a byte-level BPE `tokenizer.json`, quantized GGUF
//! files (Llama and Qwen2 layouts, Q8_0 matrices) and safetensors checkpoints with `config.json` and
//! `tokenizer_config.json`. Tests and the example manifest use them; they load through exactly the code
//! that loads a real Llama or Qwen2 checkpoint, and generate gibberish quickly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::{llama, qwen2};

/// The layouts the tiny models come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyArch {
    Llama,
    Qwen2,
}

impl TinyArch {
    fn name(self) -> &'static str {
        match self {
            TinyArch::Llama => "llama",
            TinyArch::Qwen2 => "qwen2",
        }
    }
}

/// Dimensions of every tiny model.
pub const VOCAB: usize = 264;
pub const HIDDEN: usize = 64;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const LAYERS: usize = 2;
pub const FFN: usize = 128;
/// Context length in tokens (one token per byte of text, so about this many characters of prompt).
pub const CONTEXT: usize = 256;

const SPECIALS: [&str; 8] = [
    "<s>",
    "</s>",
    "<|im_start|>",
    "<|im_end|>",
    "<|reserved_0|>",
    "<|reserved_1|>",
    "<|reserved_2|>",
    "<|reserved_3|>",
];
const BOS: u32 = 256;
const EOS: u32 = 257;
const IM_END: u32 = 259;

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'].strip() }}<|im_end|>\n\
    {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The byte-to-character table of byte-level BPE: printable bytes stand for themselves, the others are
/// shifted above U+0100 so every byte has a visible character.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut shifted = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("latin-1")
            } else {
                shifted += 1;
                char::from_u32(255 + shifted).expect("latin extended")
            }
        })
        .collect()
}

/// Writes a byte-level BPE tokenizer: one token per byte (ids 0..256) and the special tokens after them.
pub fn write_tokenizer(path: &Path) -> Result<(), String> {
    let vocab: serde_json::Map<String, serde_json::Value> =
        byte_chars().into_iter().enumerate().map(|(id, c)| (c.to_string(), id.into())).collect();
    let added: Vec<serde_json::Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"id": 256 + i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                               "normalized": false, "special": true})
        })
        .collect();
    let byte_level =
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []},
    });
    std::fs::write(path, serde_json::to_vec_pretty(&json).map_err(err)?).map_err(err)
}

/// Normal samples from a seeded generator (xorshift64* and Box-Muller): the same seed writes the same
/// model, so tests on these models behave the same on every run. candle's own `randn` cannot be seeded.
struct Normal(u64);

impl Normal {
    fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        // 53 random bits in (0, 1].
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn tensor(&mut self, shape: &[usize], std: f32) -> Result<Tensor, String> {
        let n: usize = shape.iter().product();
        let mut values = Vec::with_capacity(n);
        while values.len() < n {
            let (u1, u2) = (self.next_unit(), self.next_unit());
            let r = (-2.0 * u1.ln()).sqrt();
            let a = 2.0 * std::f64::consts::PI * u2;
            values.push((r * a.cos()) as f32 * std);
            values.push((r * a.sin()) as f32 * std);
        }
        values.truncate(n);
        Tensor::from_vec(values, shape, &Device::Cpu).map_err(err)
    }
}

/// Seed of the generated weights.
const SEED: u64 = 0x5EED_1A2B_3C4D_5E6F;

/// The shape of a generated model (the tests' models are [`Dims::TINY`]; the benchmark makes a bigger one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub vocab: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub layers: usize,
    pub ffn: usize,
    pub context: usize,
}

impl Dims {
    pub const TINY: Dims = Dims {
        vocab: VOCAB,
        hidden: HIDDEN,
        heads: HEADS,
        kv_heads: KV_HEADS,
        layers: LAYERS,
        ffn: FFN,
        context: CONTEXT,
    };
}

/// Writes a quantized GGUF model with random weights, its metadata in the layout llama.cpp uses.
pub fn write_gguf(path: &Path, arch: TinyArch) -> Result<(), String> {
    write_gguf_with(path, arch, Dims::TINY, GgmlDType::Q8_0)
}

/// [`write_gguf`] with other dimensions and matrix quantization (the hidden and FFN sizes must be
/// multiples of the quantization block, 32 for Q8_0 and Q4_0, 256 for the K-quants).
pub fn write_gguf_with(path: &Path, arch: TinyArch, d: Dims, quant: GgmlDType) -> Result<(), String> {
    let Dims { vocab, hidden, heads, kv_heads, layers, ffn, context } = d;
    let a = arch.name();
    let head_dim = hidden / heads;
    let u = |v: usize| gguf_file::Value::U32(v as u32);
    let metadata: Vec<(String, gguf_file::Value)> = vec![
        ("general.architecture".into(), gguf_file::Value::String(a.into())),
        ("general.name".into(), gguf_file::Value::String(format!("ainern2d tiny {a} (random weights)"))),
        (format!("{a}.context_length"), u(context)),
        (format!("{a}.embedding_length"), u(hidden)),
        (format!("{a}.block_count"), u(layers)),
        (format!("{a}.feed_forward_length"), u(ffn)),
        (format!("{a}.attention.head_count"), u(heads)),
        (format!("{a}.attention.head_count_kv"), u(kv_heads)),
        (format!("{a}.rope.dimension_count"), u(head_dim)),
        (format!("{a}.attention.layer_norm_rms_epsilon"), gguf_file::Value::F32(1e-5)),
        (format!("{a}.rope.freq_base"), gguf_file::Value::F32(10_000.0)),
        ("tokenizer.ggml.bos_token_id".into(), u(BOS as usize)),
        ("tokenizer.ggml.eos_token_id".into(), u(EOS as usize)),
        ("tokenizer.chat_template".into(), gguf_file::Value::String(CHATML.into())),
    ];
    let rng = std::cell::RefCell::new(Normal(SEED ^ arch as u64));
    let randn = |shape: &[usize], std: f32| rng.borrow_mut().tensor(shape, std);
    let q8 = |shape: &[usize]| QTensor::quantize(&randn(shape, 0.5)?, quant).map_err(err);
    let f32s = |t: Tensor| QTensor::quantize(&t, GgmlDType::F32).map_err(err);
    let ones = |n: usize| Tensor::ones(n, DType::F32, &Device::Cpu).map_err(err);
    let kv = kv_heads * head_dim;
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), q8(&[vocab, hidden])?),
        ("output_norm.weight".into(), f32s(ones(hidden)?)?),
        ("output.weight".into(), q8(&[vocab, hidden])?),
    ];
    for i in 0..layers {
        let p = format!("blk.{i}");
        tensors.push((format!("{p}.attn_q.weight"), q8(&[hidden, hidden])?));
        tensors.push((format!("{p}.attn_k.weight"), q8(&[kv, hidden])?));
        tensors.push((format!("{p}.attn_v.weight"), q8(&[kv, hidden])?));
        tensors.push((format!("{p}.attn_output.weight"), q8(&[hidden, hidden])?));
        tensors.push((format!("{p}.ffn_gate.weight"), q8(&[ffn, hidden])?));
        tensors.push((format!("{p}.ffn_up.weight"), q8(&[ffn, hidden])?));
        tensors.push((format!("{p}.ffn_down.weight"), q8(&[hidden, ffn])?));
        tensors.push((format!("{p}.attn_norm.weight"), f32s(ones(hidden)?)?));
        tensors.push((format!("{p}.ffn_norm.weight"), f32s(ones(hidden)?)?));
        if arch == TinyArch::Qwen2 {
            tensors.push((format!("{p}.attn_q.bias"), f32s(randn(&[hidden], 0.1)?)?));
            tensors.push((format!("{p}.attn_k.bias"), f32s(randn(&[kv], 0.1)?)?));
            tensors.push((format!("{p}.attn_v.bias"), f32s(randn(&[kv], 0.1)?)?));
        }
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).map_err(err)?;
    gguf_file::write(&mut file, &metadata, &tensors).map_err(err)
}

fn config_json(arch: TinyArch) -> serde_json::Value {
    let common = serde_json::json!({
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "max_position_embeddings": CONTEXT,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "bos_token_id": BOS, "torch_dtype": "float32",
    });
    let mut config = common.as_object().expect("object").clone();
    let extra = match arch {
        TinyArch::Llama => serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "eos_token_id": EOS,
            "tie_word_embeddings": false,
        }),
        TinyArch::Qwen2 => serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "eos_token_id": IM_END,
            "tie_word_embeddings": true, "sliding_window": CONTEXT, "max_window_layers": LAYERS,
            "use_sliding_window": false, "hidden_act": "silu",
        }),
    };
    config.extend(extra.as_object().expect("object").clone());
    serde_json::Value::Object(config)
}

/// Writes a safetensors checkpoint directory: `model.safetensors`, `config.json`, `tokenizer.json` and
/// `tokenizer_config.json` (with a chat template). The weights are created by candle's own model
/// constructors, so their names and shapes are exactly what the loader expects.
pub fn write_safetensors(dir: &Path, arch: TinyArch) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(err)?;
    let config = config_json(arch);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    match arch {
        TinyArch::Llama => {
            let cfg: llama::LlamaConfig = serde_json::from_value(config.clone()).map_err(err)?;
            llama::Llama::load(vb, &cfg.into_config(false)).map_err(err)?;
        }
        TinyArch::Qwen2 => {
            let cfg: qwen2::Config = serde_json::from_value(config.clone()).map_err(err)?;
            qwen2::ModelForCausalLM::new(&cfg, vb).map_err(err)?;
        }
    }
    // The constructors drew candle's unseeded initial values; replace them with seeded ones of the same
    // shapes.
    let mut rng = Normal(SEED ^ (arch as u64 + 2));
    {
        let vars = varmap.data().lock().map_err(err)?;
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        for name in names {
            let var = &vars[name];
            let std =
                var.as_tensor().to_dtype(DType::F32).and_then(|t| t.flatten_all()?.var_keepdim(0)).map_err(err)?;
            let std = std.to_vec1::<f32>().map_err(err)?[0].sqrt();
            // Norm weights are all ones already. The spread is capped so the logits stay flat enough for
            // sampling to matter (an embedding of spread 1 tied to the output makes them very peaked).
            if std >= 1e-6 {
                var.set(&rng.tensor(var.as_tensor().dims(), std.min(0.2))?).map_err(err)?;
            }
        }
    }
    varmap.save(dir.join("model.safetensors")).map_err(err)?;
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config).map_err(err)?).map_err(err)?;
    write_tokenizer(&dir.join("tokenizer.json"))?;
    let eos = if arch == TinyArch::Qwen2 { "<|im_end|>" } else { "</s>" };
    let tokenizer_config = serde_json::json!({"bos_token": "<s>", "eos_token": eos, "chat_template": CHATML});
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_vec_pretty(&tokenizer_config).map_err(err)?)
        .map_err(err)
}

/// Writes every tiny model into `dir` (what `examples/models.toml` points at):
/// `tokenizer.json`, `tiny-llama.gguf`, `tiny-qwen2.gguf`, `tiny-llama-st/`, `tiny-qwen2-st/`.
pub fn write_examples(dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut written = Vec::new();
    let tokenizer = dir.join("tokenizer.json");
    write_tokenizer(&tokenizer)?;
    written.push(tokenizer);
    for (arch, name) in [(TinyArch::Llama, "tiny-llama"), (TinyArch::Qwen2, "tiny-qwen2")] {
        let gguf = dir.join(format!("{name}.gguf"));
        write_gguf(&gguf, arch)?;
        written.push(gguf);
        let st = dir.join(format!("{name}-st"));
        write_safetensors(&st, arch)?;
        written.push(st);
    }
    Ok(written)
}

/// A map of every tensor in a safetensors file (tests that corrupt or inspect a checkpoint).
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>, String> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(err)
}
