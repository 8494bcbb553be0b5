//! The benchmark's model in a form both runtimes load: `tiny::write_gguf_with`'s random-weight Llama
//! (the same tensors the tests' models have, at the bench's dimensions), rewritten with the
//! `tokenizer.ggml.*` metadata llama.cpp refuses to load a model without, and, for Q4_K_M, with
//! llama.cpp's own Q4_K_M mix of tensor types. The pipeline itself reads the tokenizer from the
//! `tokenizer.json` beside the model (the manifest's `tokenizer`), which describes the same vocabulary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ainern2d_pipelines::llm::tiny::{self, Dims, TinyArch};
use candle_core::Device;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};

/// The file layouts the bench writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    Q8_0,
    Q4_0,
    /// llama.cpp's `Q4_K_M`: Q4_K matrices, Q6_K for the output and, in some layers, for `attn_v` and
    /// `ffn_down`.
    Q4KM,
}

impl FromStr for Quant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" => Ok(Quant::Q8_0),
            "q4_0" => Ok(Quant::Q4_0),
            "q4_k_m" => Ok(Quant::Q4KM),
            other => Err(format!("{other}: use q8_0, q4_0 or q4_k_m")),
        }
    }
}

impl Quant {
    pub fn name(self) -> &'static str {
        match self {
            Quant::Q8_0 => "Q8_0",
            Quant::Q4_0 => "Q4_0",
            Quant::Q4KM => "Q4_K_M",
        }
    }

    /// `general.file_type` as llama.cpp numbers it (`LLAMA_FTYPE_MOSTLY_*`).
    fn file_type(self) -> u32 {
        match self {
            Quant::Q8_0 => 7,
            Quant::Q4_0 => 2,
            Quant::Q4KM => 15,
        }
    }

    /// The type `tiny` writes the matrices in (Q4_K_M is requantised from Q8_0 tensor by tensor).
    fn base(self) -> GgmlDType {
        match self {
            Quant::Q8_0 | Quant::Q4KM => GgmlDType::Q8_0,
            Quant::Q4_0 => GgmlDType::Q4_0,
        }
    }
}

/// The type llama.cpp's quantiser gives `name` in a Q4_K_M file (`llama_tensor_get_type`): Q6_K for
/// `output.weight`, and for `attn_v` and `ffn_down` in the layers `use_more_bits` picks (the first and
/// last eighth and every third one between); Q4_K elsewhere.
fn q4_k_m_type(name: &str, layers: usize) -> GgmlDType {
    let more_bits = |i: usize| i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2;
    let layer = name.strip_prefix("blk.").and_then(|rest| rest.split('.').next()).and_then(|i| i.parse().ok());
    match layer {
        _ if name == "output.weight" => GgmlDType::Q6K,
        Some(i) if (name.ends_with(".attn_v.weight") || name.ends_with(".ffn_down.weight")) && more_bits(i) => {
            GgmlDType::Q6K
        }
        _ => GgmlDType::Q4K,
    }
}

/// `tokenizer.ggml.token_type` values.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const UNUSED: i32 = 5;

/// Writes `dir/bench.gguf` and `dir/tokenizer.json`; returns the model's path.
pub fn write(dir: &Path, dims: Dims, quant: Quant) -> anyhow::Result<PathBuf> {
    let tokenizer_path = dir.join("tokenizer.json");
    tiny::write_tokenizer(&tokenizer_path).map_err(anyhow::Error::msg)?;
    let base = dir.join("base.gguf");
    tiny::write_gguf_with(&base, TinyArch::Llama, dims, quant.base()).map_err(anyhow::Error::msg)?;
    let mut reader = std::io::BufReader::new(std::fs::File::open(&base)?);
    let content = gguf_file::Content::read(&mut reader)?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let t = content.tensor(&mut reader, name, &Device::Cpu)?;
        let t = match quant {
            Quant::Q4KM if t.dtype() != GgmlDType::F32 => {
                QTensor::quantize(&t.dequantize(&Device::Cpu)?, q4_k_m_type(name, dims.layers))?
            }
            _ => t,
        };
        tensors.push((name.clone(), t));
    }
    let mut metadata: HashMap<String, gguf_file::Value> = content.metadata;
    metadata.extend(tokenizer_metadata(&tokenizer_path, dims.vocab)?);
    metadata.insert("general.file_type".into(), gguf_file::Value::U32(quant.file_type()));
    metadata.insert("general.quantization_version".into(), gguf_file::Value::U32(2));
    metadata.insert("llama.vocab_size".into(), gguf_file::Value::U32(dims.vocab as u32));
    let mut metadata: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    metadata.sort_by_key(|(k, _)| *k);
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let path = dir.join("bench.gguf");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    gguf_file::write(&mut out, &metadata, &tensors)?;
    drop(out);
    std::fs::remove_file(&base)?;
    type_empty_merges(&path)?;
    Ok(path)
}

/// GGUF value types.
const GGUF_U32: u32 = 4;
const GGUF_STRING: u32 = 8;
const GGUF_ARRAY: u32 = 9;

/// candle writes an empty array with elements of type u32; llama.cpp wants `tokenizer.ggml.merges` to be
/// an array of strings even when it is empty. Patches the element type in place (the same four bytes).
fn type_empty_merges(path: &Path) -> anyhow::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let key = b"tokenizer.ggml.merges";
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    // The metadata comes first; the vocabulary's strings take well under a few MB.
    let mut head = Vec::new();
    (&mut file).take(16 << 20).read_to_end(&mut head)?;
    // The key as GGUF writes it: its length (u64), its bytes, then the value's type.
    let at = (8..head.len().saturating_sub(key.len() + 16))
        .find(|&i| head[i..].starts_with(key) && head[i - 8..i] == (key.len() as u64).to_le_bytes())
        .ok_or_else(|| anyhow::anyhow!("{}: no tokenizer.ggml.merges key", path.display()))?;
    let u32_at = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().expect("4 bytes"));
    let value = at + key.len();
    anyhow::ensure!(
        u32_at(value) == GGUF_ARRAY && u32_at(value + 4) == GGUF_U32 && head[value + 8..value + 16] == [0; 8],
        "{}: tokenizer.ggml.merges is not the empty array candle writes",
        path.display()
    );
    file.seek(SeekFrom::Start((value + 4) as u64))?;
    file.write_all(&GGUF_STRING.to_le_bytes())?;
    Ok(())
}

/// The vocabulary of `tokenizer.json` as llama.cpp's `gpt2` (byte-level BPE) tokenizer reads it, padded
/// with unused tokens to the model's `vocab` rows (llama.cpp checks that the two agree).
fn tokenizer_metadata(tokenizer: &Path, vocab: usize) -> anyhow::Result<Vec<(String, gguf_file::Value)>> {
    use gguf_file::Value;
    let tok = tokenizers::Tokenizer::from_file(tokenizer).map_err(anyhow::Error::msg)?;
    let specials: Vec<u32> =
        tok.get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(id, _)| *id).collect();
    let (mut tokens, mut types) = (Vec::with_capacity(vocab), Vec::with_capacity(vocab));
    for id in 0..vocab as u32 {
        match tok.id_to_token(id) {
            Some(text) => {
                tokens.push(Value::String(text));
                types.push(Value::I32(if specials.contains(&id) { CONTROL } else { NORMAL }));
            }
            None => {
                tokens.push(Value::String(format!("<|unused_{id}|>")));
                types.push(Value::I32(UNUSED));
            }
        }
    }
    anyhow::ensure!(tok.get_vocab_size(true) <= vocab, "the tokenizer has more tokens than the model's {vocab}");
    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.scores".into(), Value::Array(vec![Value::F32(0.0); vocab])),
        // One token per byte: nothing to merge (llama.cpp requires the key all the same).
        ("tokenizer.ggml.merges".into(), Value::Array(Vec::new())),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_m_gives_more_bits_where_llama_cpp_does() {
        let t = |n: &str| q4_k_m_type(n, 8);
        assert_eq!(t("output.weight"), GgmlDType::Q6K);
        assert_eq!(t("token_embd.weight"), GgmlDType::Q4K);
        let more: Vec<usize> = (0..8).filter(|i| t(&format!("blk.{i}.ffn_down.weight")) == GgmlDType::Q6K).collect();
        assert_eq!(more, [0, 3, 6, 7]);
        assert_eq!(t("blk.3.attn_v.weight"), GgmlDType::Q6K);
        assert_eq!(t("blk.3.attn_k.weight"), GgmlDType::Q4K);
        assert_eq!(t("blk.1.attn_v.weight"), GgmlDType::Q4K);
    }

    #[test]
    fn the_model_carries_llama_cpp_tokenizer_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let dims = Dims { vocab: 512, hidden: 256, heads: 4, kv_heads: 2, layers: 2, ffn: 512, context: 256 };
        let path = write(dir.path(), dims, Quant::Q4KM).unwrap();
        let mut reader = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let content = gguf_file::Content::read(&mut reader).unwrap();
        let tokens = content.metadata["tokenizer.ggml.tokens"].to_vec().unwrap();
        assert_eq!(tokens.len(), 512);
        assert_eq!(tokens[256].to_string().unwrap(), "<s>");
        assert_eq!(content.metadata["tokenizer.ggml.token_type"].to_vec().unwrap()[256].to_i32().unwrap(), CONTROL);
        assert_eq!(content.tensor_infos["output.weight"].ggml_dtype, GgmlDType::Q6K);
        assert_eq!(content.tensor_infos["blk.1.ffn_up.weight"].ggml_dtype, GgmlDType::Q4K);
        assert!(!dir.path().join("base.gguf").exists());
    }
}
