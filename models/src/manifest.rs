//! The model manifest: a TOML file naming every model a worker may load. Relative paths in it are
//! relative to the manifest's own directory.
//!
//! ```toml
//! default_llm = "tiny-llama"
//! warm = ["tiny-llama"]
//! cache_dir = "/var/cache/ainern2d/models"
//! device = "auto"
//!
//! [budget]
//! cpu_mb = 8192
//!
//! [models.tiny-llama]
//! kind = "llm"
//! format = "gguf"
//! source = "models/tiny-llama.gguf"
//! tokenizer = "models/tokenizer.json"
//! memory_mb = 16
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::device::DeviceSpec;
use crate::error::ModelError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The LLM used when a job names no model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_llm: Option<String>,
    /// The voice of `audio` jobs that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_tts: Option<String>,
    /// The model of `lipsync` jobs that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_lipsync: Option<String>,
    /// Models loaded before the worker reports ready.
    #[serde(default)]
    pub warm: Vec<String>,
    /// Where models from `s3://` are downloaded (`<cache_dir>/<sha256>/<file name>`).
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// `auto` (CUDA, then Metal, then CPU, as the build allows), `cpu`, `cuda`, `cuda:N`, `metal`.
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(default)]
    pub budget: Budget,
    #[serde(default)]
    pub models: BTreeMap<String, ModelSpec>,
    /// The manifest's directory (set when loading; relative paths resolve against it).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from(".ainern2d/models")
}

/// Memory the warm-model cache may fill, per device. Estimates come from each model's `memory_mb`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// RAM for models on the CPU (default 8192).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_mb: Option<u64>,
    /// Memory for models on a GPU (default: 90 % of the GPU's memory when NVML reports it, else 16384).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_mb: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Llm,
    /// A Piper voice (`<voice>.onnx` and its `<voice>.onnx.json`).
    Tts,
    /// A Wav2Lip-compatible ONNX model.
    Lipsync,
    /// An ONNX face detector (SCRFD) for lip-sync models.
    Face,
}

impl ModelKind {
    /// What errors call a model of this kind: "llm", "tts voice", …
    pub fn noun_bare(self) -> &'static str {
        match self {
            ModelKind::Llm => "llm",
            ModelKind::Tts => "tts voice",
            ModelKind::Lipsync => "lipsync model",
            ModelKind::Face => "face detector",
        }
    }

    /// The same with its article: "an llm", "a tts voice", …
    pub fn noun(self) -> &'static str {
        match self {
            ModelKind::Llm => "an llm",
            ModelKind::Tts => "a tts voice",
            ModelKind::Lipsync => "a lipsync model",
            ModelKind::Face => "a face detector",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Gguf,
    Safetensors,
    Onnx,
}

/// Who runs the model: candle in this process, or an OpenAI-compatible server (Ollama, vLLM, llm-proxy).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelBackend {
    #[default]
    Candle,
    Openai,
}

/// A single value or a list (`source = "a.safetensors"` or `source = ["a-1.safetensors", "a-2.safetensors"]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub kind: ModelKind,
    #[serde(default)]
    pub backend: ModelBackend,
    /// Weights format (candle models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ModelFormat>,
    /// Weights: a local path or `s3://bucket/key`; a list for sharded safetensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<OneOrMany>,
    /// Lowercase hex SHA-256 of each `source` file, in order (required for `s3://` files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<OneOrMany>,
    /// `tokenizer.json` (Hugging Face tokenizers): a local path or `s3://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_sha256: Option<String>,
    /// `config.json` of a safetensors model (default: `config.json` beside the first weights file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_sha256: Option<String>,
    /// Memory the loaded model needs, in MB (default: the weights' size plus 20 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Context length in tokens (default: from the model's metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<usize>,
    /// A built-in chat template (`chatml`, `llama2`, `llama3`, `mistral`, `plain`) or a Jinja template.
    /// Default: the template the model ships (GGUF metadata or `tokenizer_config.json`), else `plain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// Extra end-of-turn tokens (besides the tokenizer's EOS), e.g. `["<|im_end|>"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eos_tokens: Vec<String>,
    /// Safetensors weights dtype: `f32`, `f16`, `bf16` (default: f32 on CPU, the config's dtype on a GPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// ONNX models: the device to run on (`cpu`, `cuda`, `cuda:N`); default: the manifest's device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceSpec>,
    /// Lip-sync models: the `face` model of this manifest that finds faces (default: the job's box only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<String>,
    /// ONNX models: input and output names where they differ from the defaults, by role
    /// (lip-sync: `mel`, `face`, `output`; see the README).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub io: BTreeMap<String, String>,
    /// Lip-sync models: the face crop's side in pixels (default 96).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<u32>,
    /// Lip-sync models: the most frames per inference call (default: what the memory budget allows, at
    /// most 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// The remote endpoint when `backend = "openai"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteSpec>,
}

/// An OpenAI-compatible chat-completions endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteSpec {
    /// Base URL up to and including `/v1`, e.g. `http://ollama:11434/v1`.
    pub endpoint: String,
    /// The model name the server knows (`qwen2.5:7b-instruct`).
    pub model: String,
    /// Environment variable holding the API key (sent as a bearer token), if the server wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Longest wait for the next streamed chunk, in seconds.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_s: u64,
}

fn default_idle_timeout() -> u64 {
    120
}

/// One file of a model: where it is and, optionally, what its bytes hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    pub location: String,
    pub sha256: Option<String>,
}

impl FileRef {
    pub fn is_s3(&self) -> bool {
        self.location.starts_with("s3://")
    }
}

impl ModelSpec {
    /// The weights files with their checksums.
    pub fn weights(&self) -> Vec<FileRef> {
        let sources = self.source.as_ref().map(OneOrMany::to_vec).unwrap_or_default();
        let sums = self.sha256.as_ref().map(OneOrMany::to_vec).unwrap_or_default();
        sources
            .into_iter()
            .enumerate()
            .map(|(i, location)| FileRef { location, sha256: sums.get(i).cloned() })
            .collect()
    }

    pub fn tokenizer_file(&self) -> Option<FileRef> {
        self.tokenizer.clone().map(|location| FileRef { location, sha256: self.tokenizer_sha256.clone() })
    }

    /// `config.json`: the configured one, else beside the first weights file (a voice's
    /// `<voice>.onnx.json` beside its `<voice>.onnx`).
    pub fn config_file(&self) -> Option<FileRef> {
        if let Some(location) = &self.config {
            return Some(FileRef { location: location.clone(), sha256: self.config_sha256.clone() });
        }
        let first = self.weights().into_iter().next()?;
        if self.kind == ModelKind::Tts {
            return Some(FileRef { location: format!("{}.json", first.location), sha256: self.config_sha256.clone() });
        }
        let dir = match first.location.rfind('/') {
            Some(i) => &first.location[..=i],
            None => "",
        };
        Some(FileRef { location: format!("{dir}config.json"), sha256: self.config_sha256.clone() })
    }
}

impl Manifest {
    /// Reads, parses and validates a manifest file; errors name the file and the key.
    pub fn load(path: &Path) -> Result<Manifest, ModelError> {
        let err = |message: String| ModelError::Manifest { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let mut manifest: Manifest = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        manifest.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if manifest.base_dir.as_os_str().is_empty() {
            manifest.base_dir = PathBuf::from(".");
        }
        if manifest.cache_dir.is_relative() {
            manifest.cache_dir = manifest.base_dir.join(&manifest.cache_dir);
        }
        manifest.validate().map_err(err)?;
        Ok(manifest)
    }

    /// Parses a manifest from text (tests); relative paths resolve against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Manifest, ModelError> {
        let err = |message: String| ModelError::Manifest { path: base_dir.join("<inline>"), message };
        let mut manifest: Manifest = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        manifest.base_dir = base_dir.to_path_buf();
        if manifest.cache_dir.is_relative() {
            manifest.cache_dir = base_dir.join(&manifest.cache_dir);
        }
        manifest.validate().map_err(err)?;
        Ok(manifest)
    }

    /// The manifest key naming the default model of `kind`, and its value.
    fn default_of(&self, kind: ModelKind) -> (&'static str, Option<&String>) {
        match kind {
            ModelKind::Llm => ("default_llm", self.default_llm.as_ref()),
            ModelKind::Tts => ("default_tts", self.default_tts.as_ref()),
            ModelKind::Lipsync => ("default_lipsync", self.default_lipsync.as_ref()),
            ModelKind::Face => ("", None),
        }
    }

    /// The model a job of `kind` runs: the one it asks for, else the manifest's default for the kind, else
    /// the only model of that kind. The error says which of those failed.
    pub fn choose(&self, kind: ModelKind, requested: Option<&str>) -> Result<String, String> {
        let (key, default) = self.default_of(kind);
        let name = match (requested, default) {
            (Some(name), _) => name.to_string(),
            (None, Some(name)) => name.clone(),
            (None, None) => match self.names_of(kind).as_slice() {
                [one] => one.clone(),
                [] => return Err(format!("the model manifest has no {}", kind.noun_bare())),
                _ => {
                    return Err(format!(
                        "the job names no model and the model manifest has several {}s and no {key}",
                        kind.noun_bare()
                    ));
                }
            },
        };
        match self.models.get(&name) {
            None => {
                let known: Vec<&str> = self.models.keys().map(String::as_str).collect();
                Err(format!("model `{name}` is not in the manifest (known: {})", known.join(", ")))
            }
            Some(m) if m.kind != kind => Err(format!("model `{name}` is not {}", kind.noun())),
            Some(_) => Ok(name),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let known = |name: &str| self.models.contains_key(name);
        for kind in [ModelKind::Llm, ModelKind::Tts, ModelKind::Lipsync] {
            let (key, default) = self.default_of(kind);
            match default.map(|n| (n, self.models.get(n))) {
                Some((name, None)) => return Err(format!("{key} `{name}` is not under [models]")),
                Some((name, Some(m))) if m.kind != kind => {
                    return Err(format!("{key} `{name}` is not {}", kind.noun()));
                }
                _ => {}
            }
        }
        if let Some(name) = self.warm.iter().find(|n| !known(n)) {
            return Err(format!("warm names `{name}`, which is not under [models]"));
        }
        for (name, m) in &self.models {
            let bad = |why: String| Err(format!("models.{name}: {why}"));
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
                return bad("model names may only use [A-Za-z0-9._:-]".into());
            }
            match m.backend {
                ModelBackend::Openai => {
                    let Some(remote) = &m.remote else {
                        return bad("backend = \"openai\" needs a [models.<name>.remote] table".into());
                    };
                    if !(remote.endpoint.starts_with("http://") || remote.endpoint.starts_with("https://")) {
                        return bad(format!("remote.endpoint `{}` must be an http(s) URL", remote.endpoint));
                    }
                    if m.kind != ModelKind::Llm {
                        return bad("only llm models can use backend = \"openai\"".into());
                    }
                }
                ModelBackend::Candle => {
                    if m.remote.is_some() {
                        return bad("`remote` is only for backend = \"openai\"".into());
                    }
                    let Some(format) = m.format else {
                        return bad("needs `format` (gguf, safetensors or onnx)".into());
                    };
                    let weights = m.weights();
                    if weights.is_empty() {
                        return bad("needs `source` (a path or s3:// URL of the weights)".into());
                    }
                    if format == ModelFormat::Gguf && weights.len() != 1 {
                        return bad("a gguf model is one file".into());
                    }
                    let sums = m.sha256.as_ref().map(OneOrMany::to_vec).unwrap_or_default();
                    if !sums.is_empty() && sums.len() != weights.len() {
                        return bad(format!("has {} source files but {} sha256 values", weights.len(), sums.len()));
                    }
                    let onnx_kind = matches!(m.kind, ModelKind::Tts | ModelKind::Lipsync | ModelKind::Face);
                    if onnx_kind != (format == ModelFormat::Onnx) {
                        return bad(if onnx_kind {
                            "tts, lipsync and face models run on ONNX Runtime: format = \"onnx\"".into()
                        } else {
                            "onnx is for tts, lipsync and face models; an llm is gguf or safetensors".into()
                        });
                    }
                    if !onnx_kind && (m.device.is_some() || !m.io.is_empty()) {
                        return bad("`device` and `io` are for onnx models".into());
                    }
                    if m.kind != ModelKind::Lipsync
                        && (m.detector.is_some() || m.image_size.is_some() || m.batch_size.is_some())
                    {
                        return bad("`detector`, `image_size` and `batch_size` are for lipsync models".into());
                    }
                    if let Some(d) = &m.detector {
                        match self.models.get(d) {
                            Some(f) if f.kind == ModelKind::Face => {}
                            Some(_) => return bad(format!("detector `{d}` is not a face model")),
                            None => return bad(format!("detector `{d}` is not under [models]")),
                        }
                    }
                    if let Some(size) = m.image_size
                        && !(16..=1024).contains(&size)
                    {
                        return bad(format!("image_size {size} is out of range 16..=1024"));
                    }
                    if m.batch_size == Some(0) {
                        return bad("batch_size must be above 0".into());
                    }
                    let roles: &[&str] = match m.kind {
                        ModelKind::Lipsync => &["mel", "face", "output"],
                        ModelKind::Tts => &["input", "input_lengths", "scales", "sid", "output"],
                        ModelKind::Face => &["input"],
                        ModelKind::Llm => &[],
                    };
                    if let Some(role) = m.io.keys().find(|k| !roles.contains(&k.as_str())) {
                        return bad(format!("io.{role} is not one of {}", roles.join(", ")));
                    }
                    if m.kind == ModelKind::Llm && m.tokenizer.is_none() {
                        return bad("an llm needs `tokenizer` (a tokenizer.json)".into());
                    }
                    let mut files = weights;
                    files.extend(m.tokenizer_file());
                    if m.format == Some(ModelFormat::Safetensors) || m.kind == ModelKind::Tts {
                        files.extend(m.config_file());
                    }
                    for f in files {
                        if let Some(sum) = &f.sha256
                            && !(sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()))
                        {
                            return bad(format!("sha256 of {} is not 64 hex digits", f.location));
                        }
                        if f.is_s3() {
                            if f.sha256.is_none() {
                                return bad(format!("{} is in S3 and needs its sha256", f.location));
                            }
                            let rest = &f.location["s3://".len()..];
                            if !rest.contains('/') || rest.starts_with('/') || rest.ends_with('/') {
                                return bad(format!("{} is not s3://bucket/key", f.location));
                            }
                        }
                    }
                    if let Some(dtype) = &m.dtype
                        && !matches!(dtype.as_str(), "f32" | "f16" | "bf16")
                    {
                        return bad(format!("dtype `{dtype}` is not f32, f16 or bf16"));
                    }
                }
            }
            if m.memory_mb == Some(0) {
                return bad("memory_mb must be above 0".into());
            }
            if m.context_length == Some(0) {
                return bad("context_length must be above 0".into());
            }
        }
        Ok(())
    }

    /// The memory budget of a device key (`cpu`, `cuda:0`, `metal:0`), in bytes.
    pub fn budget_bytes(&self, device_key: &str, gpu_total_bytes: Option<u64>) -> u64 {
        const MB: u64 = 1024 * 1024;
        if device_key == "cpu" {
            return self.budget.cpu_mb.unwrap_or(8192) * MB;
        }
        match (self.budget.gpu_mb, gpu_total_bytes) {
            (Some(mb), _) => mb * MB,
            (None, Some(total)) => total / 10 * 9,
            (None, None) => 16_384 * MB,
        }
    }

    /// The names of the models of one kind.
    pub fn names_of(&self, kind: ModelKind) -> Vec<String> {
        self.models.iter().filter(|(_, m)| m.kind == kind).map(|(n, _)| n.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
default_llm = "tiny"
warm = ["tiny"]
[budget]
cpu_mb = 64
[models.tiny]
kind = "llm"
format = "gguf"
source = "tiny.gguf"
tokenizer = "s3://models/tok/tokenizer.json"
tokenizer_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
memory_mb = 4
[models.remote]
kind = "llm"
backend = "openai"
remote = { endpoint = "http://127.0.0.1:11434/v1", model = "qwen2.5:0.5b" }
[models.st]
kind = "llm"
format = "safetensors"
source = ["s3://models/st/a.safetensors", "s3://models/st/b.safetensors"]
sha256 = ["1111111111111111111111111111111111111111111111111111111111111111", "2222222222222222222222222222222222222222222222222222222222222222"]
config_sha256 = "3333333333333333333333333333333333333333333333333333333333333333"
tokenizer = "tokenizer.json"
"#;

    #[test]
    fn parses_and_derives_files() {
        let m = Manifest::from_toml(GOOD, Path::new("/etc/models")).unwrap();
        assert_eq!(m.cache_dir, Path::new("/etc/models/.ainern2d/models"));
        let st = &m.models["st"];
        assert_eq!(st.weights().len(), 2);
        assert_eq!(st.weights()[1].sha256.as_deref().unwrap().chars().next(), Some('2'));
        let config = st.config_file().unwrap();
        assert_eq!(config.location, "s3://models/st/config.json");
        assert_eq!(m.budget_bytes("cpu", None), 64 * 1024 * 1024);
        assert_eq!(m.budget_bytes("cuda:0", Some(1000)), 900);
        assert_eq!(m.names_of(ModelKind::Llm).len(), 3);
    }

    #[test]
    fn errors_name_the_model_and_key() {
        let table = [
            (GOOD.replace("default_llm = \"tiny\"", "default_llm = \"nope\""), "default_llm `nope`"),
            (GOOD.replace("warm = [\"tiny\"]", "warm = [\"ghost\"]"), "warm names `ghost`"),
            (GOOD.replace("format = \"gguf\"\n", ""), "models.tiny: needs `format`"),
            (
                GOOD.replace(
                    "tokenizer_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
                    "",
                ),
                "needs its sha256",
            ),
            (GOOD.replace("config_sha256", "#"), "config.json is in S3 and needs its sha256"),
            (GOOD.replace("http://127.0.0.1:11434/v1", "ftp://x"), "remote.endpoint"),
            (GOOD.replace("memory_mb = 4", "memory_mb = 0"), "memory_mb"),
            (GOOD.replace("memory_mb = 4", "memry_mb = 4"), "memry_mb"),
            (
                GOOD.replace("\"2222222222222222222222222222222222222222222222222222222222222222\"", ""),
                "2 source files but 1 sha256",
            ),
        ];
        for (text, want) in table {
            let err = Manifest::from_toml(&text, Path::new(".")).unwrap_err().to_string();
            assert!(err.contains(want), "expected `{want}` in: {err}");
        }
    }

    #[test]
    fn choose_takes_the_job_then_the_default_then_the_only_one() {
        let m = Manifest::from_toml(GOOD, Path::new(".")).unwrap();
        assert_eq!(m.choose(ModelKind::Llm, Some("st")).unwrap(), "st");
        assert_eq!(m.choose(ModelKind::Llm, None).unwrap(), "tiny", "default_llm");
        let e = m.choose(ModelKind::Llm, Some("ghost")).unwrap_err();
        assert!(e.contains("`ghost` is not in the manifest (known: remote, st, tiny)"), "{e}");
        let e = m.choose(ModelKind::Tts, Some("tiny")).unwrap_err();
        assert_eq!(e, "model `tiny` is not a tts voice");
        assert_eq!(m.choose(ModelKind::Lipsync, None).unwrap_err(), "the model manifest has no lipsync model");
        let no_default = GOOD.replace("default_llm = \"tiny\"\n", "");
        let m = Manifest::from_toml(&no_default, Path::new(".")).unwrap();
        let e = m.choose(ModelKind::Llm, None).unwrap_err();
        assert!(e.contains("several llms and no default_llm"), "{e}");
        let one = format!("{no_default}[models.joe]\nkind = \"tts\"\nformat = \"onnx\"\nsource = \"joe.onnx\"\n");
        let m = Manifest::from_toml(&one, Path::new(".")).unwrap();
        assert_eq!(m.choose(ModelKind::Tts, None).unwrap(), "joe", "the only voice");
    }
}
