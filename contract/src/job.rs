//! `ainern2d.job.v1`: what the control plane asks a worker to do.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ContractError, ErrorCode};

pub const JOB_SCHEMA: &str = "ainern2d.job.v1";

/// The four kinds of work; each has its own queue and its own parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Llm,
    Audio,
    Video,
    Lipsync,
}

impl JobKind {
    pub const ALL: [JobKind; 4] = [JobKind::Llm, JobKind::Audio, JobKind::Video, JobKind::Lipsync];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Llm => "llm",
            JobKind::Audio => "audio",
            JobKind::Video => "video",
            JobKind::Lipsync => "lipsync",
        }
    }

    /// Names of the inputs this kind accepts, and whether each is required.
    pub fn inputs(self) -> &'static [(&'static str, bool)] {
        match self {
            JobKind::Llm => &[],
            JobKind::Audio => &[("reference", false)],
            JobKind::Video => &[("image", false)],
            JobKind::Lipsync => &[("video", true), ("audio", true)],
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown job kind `{s}` (expected one of llm, audio, video, lipsync)"))
    }
}

/// Text generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmParams {
    /// The user prompt.
    pub prompt: String,
    /// Optional system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Model name from the worker's manifest; the worker's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Upper bound on generated tokens (1..=32768).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Sampling temperature (0 = greedy, at most 2).
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1].
    #[serde(default = "one")]
    pub top_p: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Penalty for repeated tokens in [1, 2].
    #[serde(default = "one")]
    pub repetition_penalty: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Generation stops before any of these strings (at most 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// Text to speech.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AudioParams {
    /// The text to speak.
    pub text: String,
    /// Voice name from the worker's model manifest; the worker's default voice when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    /// Output sample rate in Hz (8000..=48000); default: the voice's own (the mock: 24000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    /// Requested duration in seconds (the mock only); derived from the text when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    /// The container and codec of the output: `audio.wav` (16-bit PCM), `.opus`, `.m4a` (AAC), `.mp3`.
    #[serde(default)]
    pub format: AudioFormat,
    /// Speaking rate relative to the voice's (0.25..=4; 2 speaks twice as fast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f32>,
    /// Voice variability (0..=2); default: the voice's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_scale: Option<f32>,
    /// Phoneme duration variability (0..=2); default: the voice's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_w: Option<f32>,
    /// A multi-speaker voice's speaker, by name or id (default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker: Option<Speaker>,
    /// Silence between sentences in seconds (0..=5); default: the worker's `tts.sentence_silence_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentence_silence_s: Option<f32>,
}

/// Output formats of `audio` jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AudioFormat {
    #[default]
    Wav,
    Opus,
    Aac,
    Mp3,
}

impl AudioFormat {
    /// The output's name: `audio.wav`, `audio.opus`, `audio.m4a`, `audio.mp3`.
    pub fn file_name(self) -> &'static str {
        match self {
            AudioFormat::Wav => "audio.wav",
            AudioFormat::Opus => "audio.opus",
            AudioFormat::Aac => "audio.m4a",
            AudioFormat::Mp3 => "audio.mp3",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            AudioFormat::Wav => "audio/wav",
            AudioFormat::Opus => "audio/ogg",
            AudioFormat::Aac => "audio/mp4",
            AudioFormat::Mp3 => "audio/mpeg",
        }
    }
}

/// A speaker of a multi-speaker voice: its name in the voice's config, or its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Speaker {
    Id(u32),
    Name(String),
}

/// Image (or text) to video.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VideoParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Frame width in pixels, even, 16..=3840.
    pub width: u32,
    /// Frame height in pixels, even, 16..=2160.
    pub height: u32,
    /// Frames per second, 1..=60.
    #[serde(default = "default_fps")]
    pub fps: u32,
    /// Clip length in seconds, (0, 120].
    pub duration_s: f64,
    /// Diffusion steps, 1..=200.
    #[serde(default = "default_steps")]
    pub steps: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The ComfyUI workflow template (`comfyui.templates`) or, for other backends, the model; `workflow`
    /// wins when both are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The ComfyUI workflow template to run (default: the worker's `comfyui.default_template`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// What the picture should not show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// Classifier-free guidance scale, 0..=30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cfg: Option<f32>,
}

impl VideoParams {
    /// Frames of the clip: `fps × duration_s`, rounded, at least 1.
    pub fn frames(&self) -> u32 {
        ((f64::from(self.fps) * self.duration_s).round() as u32).max(1)
    }
}

/// Lip-sync a face video (or a still image) to an audio track.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LipsyncParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The face in every frame, `[x1, y1, x2, y2]` in pixels; default: found by the model's detector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_box: Option<[u32; 4]>,
    /// Pixels added around the detected face, `[top, bottom, left, right]` (default `[0, 10, 0, 0]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pads: Option<[u32; 4]>,
    /// Frame rate of the output when the input is a still image (1..=60, default 25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<u32>,
    /// Smooth detected boxes over 5 frames (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smooth: Option<bool>,
}

fn default_max_tokens() -> u32 {
    256
}
fn default_temperature() -> f32 {
    0.7
}
fn one() -> f32 {
    1.0
}
fn default_fps() -> u32 {
    24
}
fn default_steps() -> u32 {
    20
}

/// The kind and its parameters, kept together so that a job can never carry the parameters of another kind.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(tag = "kind", content = "params", rename_all = "lowercase")]
pub enum JobSpec {
    Llm(LlmParams),
    Audio(AudioParams),
    Video(VideoParams),
    Lipsync(LipsyncParams),
}

impl JobSpec {
    pub fn kind(&self) -> JobKind {
        match self {
            JobSpec::Llm(_) => JobKind::Llm,
            JobSpec::Audio(_) => JobKind::Audio,
            JobSpec::Video(_) => JobKind::Video,
            JobSpec::Lipsync(_) => JobKind::Lipsync,
        }
    }
}

/// An input reference: `s3://bucket/key`, `https://…`, or a relative path that only the one-shot `exec`
/// mode reads (the daemon refuses it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct InputRef(pub String);

/// Where outputs go: `s3://<bucket>/<prefix>/<job_id>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputLocation {
    /// Bucket name; the worker's configured bucket when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Key prefix: `/`-separated segments of `[A-Za-z0-9._-]`, no `.` or `..` segments.
    pub prefix: String,
}

/// A job, as published on `<prefix>.jobs.<kind>`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Job {
    /// Always `ainern2d.job.v1`.
    pub schema: String,
    /// Unique id, `[A-Za-z0-9_-]{1,128}`; it is part of the output keys.
    pub job_id: String,
    #[serde(flatten)]
    pub spec: JobSpec,
    /// Named inputs; which names a kind takes is documented per kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, InputRef>,
    pub output: OutputLocation,
    /// 0 (lowest, default) to 9.
    #[serde(default)]
    pub priority: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The job is failed with `deadline_exceeded` when it cannot finish by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// W3C trace context of the control plane's span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Free-form labels for the control plane, echoed nowhere and never interpreted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// The job's fields before the parameters are typed by kind; parsing in two steps lets errors name
/// `params.width` rather than an opaque variant mismatch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobWire {
    schema: String,
    job_id: String,
    kind: JobKind,
    #[serde(default)]
    params: Value,
    #[serde(default)]
    inputs: BTreeMap<String, InputRef>,
    output: OutputLocation,
    #[serde(default)]
    priority: u8,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    deadline: Option<DateTime<Utc>>,
    #[serde(default)]
    traceparent: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

impl<'de> Deserialize<'de> for Job {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        parse_value(value).map_err(serde::de::Error::custom)
    }
}

/// Parses and validates a job message body. Every error names the field at fault when there is one.
pub fn parse_job(body: &[u8]) -> Result<Job, ContractError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ContractError::new(ErrorCode::MalformedMessage, format!("body is not valid JSON: {e}")))?;
    parse_value(value)
}

fn parse_value(value: Value) -> Result<Job, ContractError> {
    parse_unbounded(value).map_err(ContractError::bounded)
}

fn parse_unbounded(value: Value) -> Result<Job, ContractError> {
    let Value::Object(map) = &value else {
        return Err(ContractError::new(ErrorCode::MalformedMessage, "body must be a JSON object"));
    };
    match map.get("schema") {
        None => return Err(ContractError::field("schema", format!("missing; expected \"{JOB_SCHEMA}\""))),
        Some(Value::String(s)) if s == JOB_SCHEMA => {}
        Some(other) => {
            return Err(ContractError {
                code: ErrorCode::UnsupportedSchema,
                field: Some("schema".into()),
                message: format!("unsupported schema {other}; this worker speaks \"{JOB_SCHEMA}\""),
            });
        }
    }
    // serde builds a struct from an array of its fields in order (`"params": ["hi"]`); the schema says objects.
    for key in ["params", "output"] {
        if map.get(key).is_some_and(Value::is_array) {
            return Err(ContractError::field(key, "must be an object"));
        }
    }
    let wire: JobWire = serde_path_to_error::deserialize(value).map_err(path_error(""))?;
    let spec = match wire.kind {
        JobKind::Llm => JobSpec::Llm(params(wire.params)?),
        JobKind::Audio => JobSpec::Audio(params(wire.params)?),
        JobKind::Video => JobSpec::Video(params(wire.params)?),
        JobKind::Lipsync => {
            JobSpec::Lipsync(if wire.params.is_null() { LipsyncParams::default() } else { params(wire.params)? })
        }
    };
    let job = Job {
        schema: wire.schema,
        job_id: wire.job_id,
        spec,
        inputs: wire.inputs,
        output: wire.output,
        priority: wire.priority,
        idempotency_key: wire.idempotency_key,
        deadline: wire.deadline,
        traceparent: wire.traceparent,
        metadata: wire.metadata,
    };
    job.validate_unbounded()?;
    Ok(job)
}

fn params<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ContractError> {
    if value.is_null() {
        return Err(ContractError::field("params", "missing; this kind requires parameters"));
    }
    serde_path_to_error::deserialize(value).map_err(path_error("params"))
}

fn path_error<E: std::fmt::Display>(prefix: &'static str) -> impl Fn(serde_path_to_error::Error<E>) -> ContractError {
    move |e| {
        let path = e.path().to_string();
        let field = match (prefix.is_empty(), path.as_str()) {
            (true, ".") => None,
            (true, p) => Some(p.to_string()),
            (false, ".") => Some(prefix.to_string()),
            (false, p) => Some(format!("{prefix}.{p}")),
        };
        let message = e.into_inner().to_string();
        // serde reports a missing field at the parent; name the field itself.
        let field = match (field, missing_field(&message)) {
            (None, Some(m)) => Some(m),
            (Some(f), Some(m)) => Some(format!("{f}.{m}")),
            (f, None) => f,
        };
        ContractError { code: ErrorCode::InvalidField, field, message }
    }
}

fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

impl Job {
    pub fn kind(&self) -> JobKind {
        self.spec.kind()
    }

    /// The object key of an output of this job: `<prefix>/<job_id>/<name>`. Deterministic, so a redelivered
    /// job writes the same object rather than a second one.
    pub fn output_key(&self, name: &str) -> String {
        format!("{}/{}/{}", self.output.prefix, self.job_id, name)
    }

    /// Checks every constraint the types alone cannot express.
    pub fn validate(&self) -> Result<(), ContractError> {
        self.validate_unbounded().map_err(ContractError::bounded)
    }

    fn validate_unbounded(&self) -> Result<(), ContractError> {
        if self.schema != JOB_SCHEMA {
            return Err(ContractError {
                code: ErrorCode::UnsupportedSchema,
                field: Some("schema".into()),
                message: format!("unsupported schema \"{}\"; expected \"{JOB_SCHEMA}\"", self.schema),
            });
        }
        check_token("job_id", &self.job_id, 128)?;
        check_prefix(&self.output.prefix)?;
        if let Some(bucket) = &self.output.bucket {
            check_bucket("output.bucket", bucket)?;
        }
        if self.priority > 9 {
            return Err(ContractError::field("priority", "must be between 0 and 9"));
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > 256)
        {
            return Err(ContractError::field("idempotency_key", "must be 1 to 256 characters"));
        }
        if let Some(tp) = &self.traceparent
            && !is_traceparent(tp)
        {
            return Err(ContractError::field(
                "traceparent",
                "must be a W3C traceparent: 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>",
            ));
        }
        if self.metadata.len() > MAX_METADATA
            || self.metadata.iter().any(|(k, v)| k.is_empty() || k.chars().count() > 128 || v.chars().count() > 4096)
        {
            return Err(ContractError::field(
                "metadata",
                format!("at most {MAX_METADATA} labels, keys of 1 to 128 characters, values of at most 4096"),
            ));
        }
        self.validate_inputs()?;
        validate_params(&self.spec)
    }

    fn validate_inputs(&self) -> Result<(), ContractError> {
        let accepted = self.kind().inputs();
        for (name, url) in &self.inputs {
            let field = format!("inputs.{name}");
            if !accepted.iter().any(|(n, _)| n == name) {
                let names: Vec<_> = accepted.iter().map(|(n, _)| *n).collect();
                let expected = if names.is_empty() { "none".to_string() } else { names.join(", ") };
                return Err(ContractError::field(
                    field,
                    format!("{} jobs take no input of that name (accepted: {expected})", self.kind()),
                ));
            }
            check_input_url(&field, &url.0)?;
        }
        for (name, required) in accepted {
            if *required && !self.inputs.contains_key(*name) {
                return Err(ContractError::field(
                    format!("inputs.{name}"),
                    format!("required for {} jobs", self.kind()),
                ));
            }
        }
        Ok(())
    }
}

/// Labels in `metadata`. It and every free-text parameter are bounded, so that a message's size says
/// nothing about what the worker holds, logs and forwards beyond these limits.
const MAX_METADATA: usize = 64;
/// Names of models, voices and workflows (characters).
const MAX_NAME: usize = 200;

fn validate_params(spec: &JobSpec) -> Result<(), ContractError> {
    fn range<T: PartialOrd + std::fmt::Display>(field: &str, v: T, lo: T, hi: T) -> Result<(), ContractError> {
        if v < lo || v > hi {
            return Err(ContractError::field(format!("params.{field}"), format!("{v} is out of range [{lo}, {hi}]")));
        }
        Ok(())
    }
    fn text(field: &str, v: &str, max: usize) -> Result<(), ContractError> {
        if v.trim().is_empty() {
            return Err(ContractError::field(format!("params.{field}"), "must not be empty"));
        }
        at_most(field, Some(v), max)
    }
    fn at_most(field: &str, v: Option<&str>, max: usize) -> Result<(), ContractError> {
        if v.is_some_and(|v| v.chars().count() > max) {
            return Err(ContractError::field(format!("params.{field}"), format!("longer than {max} characters")));
        }
        Ok(())
    }
    match spec {
        JobSpec::Llm(p) => {
            text("prompt", &p.prompt, 200_000)?;
            at_most("system", p.system.as_deref(), 200_000)?;
            at_most("model", p.model.as_deref(), MAX_NAME)?;
            range("max_tokens", p.max_tokens, 1, 32_768)?;
            range("temperature", p.temperature, 0.0, 2.0)?;
            if !(p.top_p > 0.0 && p.top_p <= 1.0) {
                return Err(ContractError::field("params.top_p", format!("{} is out of range (0, 1]", p.top_p)));
            }
            if let Some(k) = p.top_k {
                range("top_k", k, 1, 100_000)?;
            }
            range("repetition_penalty", p.repetition_penalty, 1.0, 2.0)?;
            if p.stop.len() > 8 || p.stop.iter().any(|s| s.is_empty() || s.chars().count() > 1000) {
                return Err(ContractError::field(
                    "params.stop",
                    "at most 8 non-empty strings of at most 1000 characters",
                ));
            }
        }
        JobSpec::Audio(p) => {
            text("text", &p.text, 10_000)?;
            at_most("voice", p.voice.as_deref(), MAX_NAME)?;
            if let Some(rate) = p.sample_rate {
                range("sample_rate", rate, 8_000, 48_000)?;
            }
            let unit = |name: &str, v: Option<f32>, lo: f32, hi: f32| match v {
                Some(v) if !(lo..=hi).contains(&v) => {
                    Err(ContractError::field(format!("params.{name}"), format!("{v} is out of range {lo}..={hi}")))
                }
                _ => Ok(()),
            };
            unit("speed", p.speed, 0.25, 4.0)?;
            unit("noise_scale", p.noise_scale, 0.0, 2.0)?;
            unit("noise_w", p.noise_w, 0.0, 2.0)?;
            unit("sentence_silence_s", p.sentence_silence_s, 0.0, 5.0)?;
            if let Some(Speaker::Name(name)) = &p.speaker {
                text("speaker", name, 200)?;
            }
            if let Some(d) = p.duration_s
                && !(d > 0.0 && d <= 600.0)
            {
                return Err(ContractError::field("params.duration_s", format!("{d} is out of range (0, 600]")));
            }
        }
        JobSpec::Video(p) => {
            at_most("prompt", p.prompt.as_deref(), 10_000)?;
            at_most("negative_prompt", p.negative_prompt.as_deref(), 10_000)?;
            at_most("model", p.model.as_deref(), MAX_NAME)?;
            at_most("workflow", p.workflow.as_deref(), MAX_NAME)?;
            range("width", p.width, 16, 3840)?;
            range("height", p.height, 16, 2160)?;
            if p.width % 2 != 0 || p.height % 2 != 0 {
                return Err(ContractError::field(
                    if p.width % 2 != 0 { "params.width" } else { "params.height" },
                    "must be even (H.264 with 4:2:0 chroma)",
                ));
            }
            range("fps", p.fps, 1, 60)?;
            if !(p.duration_s > 0.0 && p.duration_s <= 120.0) {
                return Err(ContractError::field(
                    "params.duration_s",
                    format!("{} is out of range (0, 120]", p.duration_s),
                ));
            }
            range("steps", p.steps, 1, 200)?;
            if let Some(cfg) = p.cfg
                && !(0.0..=30.0).contains(&cfg)
            {
                return Err(ContractError::field("params.cfg", format!("{cfg} is out of range 0..=30")));
            }
        }
        JobSpec::Lipsync(p) => {
            at_most("model", p.model.as_deref(), MAX_NAME)?;
            if let Some(fps) = p.fps {
                range("fps", fps, 1, 60)?;
            }
            if let Some([x1, y1, x2, y2]) = p.face_box
                && (x2 <= x1 || y2 <= y1 || x2 > 16_384 || y2 > 16_384)
            {
                return Err(ContractError::field("params.face_box", "must be [x1, y1, x2, y2] with x1 < x2, y1 < y2"));
            }
            if let Some(pads) = p.pads
                && pads.iter().any(|&v| v > 1024)
            {
                return Err(ContractError::field("params.pads", "each pad is at most 1024 pixels"));
            }
        }
    }
    Ok(())
}

fn check_token(field: &str, v: &str, max: usize) -> Result<(), ContractError> {
    if v.is_empty() || v.len() > max || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(ContractError::field(field, format!("must be 1 to {max} characters of [A-Za-z0-9_-]")));
    }
    Ok(())
}

fn check_prefix(prefix: &str) -> Result<(), ContractError> {
    let bad = |why: &str| Err(ContractError::field("output.prefix", why.to_string()));
    if prefix.is_empty() || prefix.len() > 512 {
        return bad("must be 1 to 512 characters");
    }
    for segment in prefix.split('/') {
        if segment.is_empty() {
            return bad("must not start or end with `/` or contain `//`");
        }
        if segment == "." || segment == ".." {
            return bad("must not contain `.` or `..` segments");
        }
        if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return bad("segments may only use [A-Za-z0-9._-]");
        }
    }
    Ok(())
}

/// S3 bucket naming rules (the DNS-compatible subset every S3 implementation accepts).
pub(crate) fn check_bucket(field: &str, bucket: &str) -> Result<(), ContractError> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && bucket.as_bytes()[0].is_ascii_alphanumeric()
        && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric()
        && !bucket.contains("..");
    if !ok {
        return Err(ContractError::field(field, "must be a valid S3 bucket name (3-63 of [a-z0-9.-])"));
    }
    Ok(())
}

/// The longest input URL (bytes): more than most HTTP servers take in a request line, far less than the
/// 64 KiB an HTTP URI can hold at all (the S3 client panics building a request beyond that).
const MAX_INPUT_URL: usize = 8192;
/// S3's own limit on a key (bytes).
const MAX_S3_KEY: usize = 1024;

fn check_input_url(field: &str, url: &str) -> Result<(), ContractError> {
    if url.len() > MAX_INPUT_URL {
        return Err(ContractError::field(field, format!("longer than {MAX_INPUT_URL} bytes")));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(field, bucket)?;
        if key.is_empty() {
            return Err(ContractError::field(field, "s3 URL has no key: expected s3://bucket/key"));
        }
        if key.len() > MAX_S3_KEY {
            return Err(ContractError::field(field, format!("s3 key longer than {MAX_S3_KEY} bytes (the S3 limit)")));
        }
        // What the local store refuses as well: a key that would leave its bucket on a file system, and
        // characters no file name or S3 listing carries safely.
        if key.split('/').any(|s| s.is_empty() || s == "." || s == "..") || key.chars().any(char::is_control) {
            return Err(ContractError::field(
                field,
                "s3 key must not have empty, `.` or `..` segments or control characters",
            ));
        }
        return Ok(());
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(());
    }
    // A relative path is only honoured by the one-shot `exec` mode (the daemon refuses it with
    // `input_refused`); it is syntactically valid so that the committed examples are valid jobs.
    let relative = !url.is_empty()
        && !url.contains(':')
        && !url.starts_with('/')
        && url.split('/').all(|s| !s.is_empty() && s != "." && s != "..");
    if relative {
        return Ok(());
    }
    Err(ContractError::field(field, "must be an s3:// or https:// URL (or, for `exec`, a relative path)"))
}

fn is_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video_job() -> Value {
        serde_json::json!({
            "schema": JOB_SCHEMA,
            "job_id": "j-1",
            "kind": "video",
            "params": {"width": 64, "height": 48, "fps": 8, "duration_s": 1.0},
            "output": {"prefix": "renders"},
        })
    }

    fn err(v: Value) -> ContractError {
        parse_job(&serde_json::to_vec(&v).unwrap()).unwrap_err()
    }

    #[test]
    fn valid_job_round_trips() {
        let job = parse_job(&serde_json::to_vec(&video_job()).unwrap()).unwrap();
        assert_eq!(job.kind(), JobKind::Video);
        assert_eq!(job.output_key("video.mp4"), "renders/j-1/video.mp4");
        let again = parse_job(&serde_json::to_vec(&job).unwrap()).unwrap();
        assert_eq!(job, again);
    }

    #[test]
    fn errors_name_the_field() {
        let table: Vec<(&str, Value, ErrorCode, Option<&str>)> = vec![
            ("not json", Value::String("x".into()), ErrorCode::MalformedMessage, None),
            ("no schema", serde_json::json!({"job_id": "a"}), ErrorCode::InvalidField, Some("schema")),
            (
                "v2",
                {
                    let mut j = video_job();
                    j["schema"] = "ainern2d.job.v2".into();
                    j
                },
                ErrorCode::UnsupportedSchema,
                Some("schema"),
            ),
            (
                "odd width",
                {
                    let mut j = video_job();
                    j["params"]["width"] = 65.into();
                    j
                },
                ErrorCode::InvalidField,
                Some("params.width"),
            ),
            (
                "width type",
                {
                    let mut j = video_job();
                    j["params"]["width"] = "wide".into();
                    j
                },
                ErrorCode::InvalidField,
                Some("params.width"),
            ),
            (
                "no height",
                {
                    let mut j = video_job();
                    j["params"].as_object_mut().unwrap().remove("height");
                    j
                },
                ErrorCode::InvalidField,
                Some("params.height"),
            ),
            (
                "unknown param",
                {
                    let mut j = video_job();
                    j["params"]["widht"] = 1.into();
                    j
                },
                ErrorCode::InvalidField,
                Some("params.widht"),
            ),
            (
                "bad kind",
                {
                    let mut j = video_job();
                    j["kind"] = "image".into();
                    j
                },
                ErrorCode::InvalidField,
                Some("kind"),
            ),
            (
                "path trick",
                {
                    let mut j = video_job();
                    j["output"]["prefix"] = "a/../b".into();
                    j
                },
                ErrorCode::InvalidField,
                Some("output.prefix"),
            ),
            (
                "job id slash",
                {
                    let mut j = video_job();
                    j["job_id"] = "a/b".into();
                    j
                },
                ErrorCode::InvalidField,
                Some("job_id"),
            ),
            (
                "file input",
                {
                    let mut j = video_job();
                    j["inputs"] = serde_json::json!({"image": "file:///etc/passwd"});
                    j
                },
                ErrorCode::InvalidField,
                Some("inputs.image"),
            ),
            (
                "unknown input",
                {
                    let mut j = video_job();
                    j["inputs"] = serde_json::json!({"audio": "s3://b-1/k"});
                    j
                },
                ErrorCode::InvalidField,
                Some("inputs.audio"),
            ),
            (
                "traceparent",
                {
                    let mut j = video_job();
                    j["traceparent"] = "nope".into();
                    j
                },
                ErrorCode::InvalidField,
                Some("traceparent"),
            ),
        ];
        for (name, value, code, field) in table {
            let e = err(value);
            assert_eq!(e.code, code, "{name}: {e}");
            assert_eq!(e.field.as_deref(), field, "{name}: {e}");
        }
    }

    #[test]
    fn lipsync_requires_both_inputs() {
        let j = serde_json::json!({
            "schema": JOB_SCHEMA, "job_id": "l", "kind": "lipsync",
            "inputs": {"video": "s3://in-bucket/face.mp4"}, "output": {"prefix": "p"}
        });
        assert_eq!(err(j).field.as_deref(), Some("inputs.audio"));
    }

    #[test]
    fn errors_stay_short_whatever_they_quote() {
        // serde quotes a value of the wrong type, paths name keys: both come from the message, and the
        // error travels in an AMQP header the broker refuses beyond its frame size.
        let huge = "9".repeat(1 << 20);
        let mut cases = Vec::new();
        for pointer in ["/params/width", "/schema", "/kind"] {
            let mut j = video_job();
            *j.pointer_mut(pointer).unwrap() = Value::String(huge.clone());
            cases.push(j);
        }
        let mut j = video_job();
        j["params"][huge.as_str()] = 1.into();
        cases.push(j);
        let mut j = video_job();
        j["inputs"] = serde_json::json!({ huge.as_str(): "s3://b-1/k" });
        cases.push(j);
        for j in cases {
            let e = err(j);
            assert!(e.message.len() <= 1024 && e.to_string().len() <= 1300, "{} bytes", e.to_string().len());
            assert!(e.field.as_ref().is_none_or(|f| f.len() <= 256), "a {} byte field", e.field.unwrap().len());
        }
    }

    #[test]
    fn input_urls_are_bounded() {
        // A key beyond what an HTTP URI can hold made the S3 client panic building the request; S3 itself
        // allows 1024 bytes.
        for (url, ok) in [
            (format!("s3://b-1/{}", "k".repeat(1024)), true),
            (format!("s3://b-1/{}", "k".repeat(1025)), false),
            (format!("s3://b-1/{}", "é".repeat(513)), false),
            (format!("https://example.com/{}", "a".repeat(8192 - 20)), true),
            (format!("https://example.com/{}", "a".repeat(8192)), false),
            ("r".repeat(8193), false),
        ] {
            let mut j = video_job();
            j["inputs"] = serde_json::json!({ "image": url });
            let result = parse_job(&serde_json::to_vec(&j).unwrap());
            assert_eq!(result.is_ok(), ok, "{} bytes: {:?}", url.len(), result.err());
            if let Err(e) = result {
                assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidField, Some("inputs.image")));
            }
        }
    }

    fn job_of(kind: &str, params: Value, inputs: Value) -> Value {
        serde_json::json!({"schema": JOB_SCHEMA, "job_id": "j-1", "kind": kind, "params": params, "inputs": inputs,
                           "output": {"prefix": "p"}, "metadata": {}})
    }

    #[test]
    fn params_and_output_are_objects() {
        // serde builds a struct from an array of its fields in order; the schema says objects.
        let llm = |params| job_of("llm", params, serde_json::json!({}));
        let mut output = llm(serde_json::json!({"prompt": "hi"}));
        output["output"] = serde_json::json!([null, "p"]);
        let lipsync_inputs = serde_json::json!({"video": "s3://b-1/v.mp4", "audio": "s3://b-1/a.wav"});
        for (j, field) in [
            (llm(serde_json::json!(["hi"])), "params"),
            (job_of("lipsync", serde_json::json!([]), lipsync_inputs), "params"),
            (output, "output"),
        ] {
            let e = err(j);
            assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidField, Some(field)), "{e}");
        }
    }

    #[test]
    fn free_text_and_metadata_are_bounded() {
        let long = |n: usize| "x".repeat(n);
        let llm = serde_json::json!({"prompt": "hi"});
        let video = serde_json::json!({"width": 64, "height": 48, "duration_s": 1.0});
        let audio = serde_json::json!({"text": "hi"});
        let lipsync_inputs = serde_json::json!({"video": "s3://b-1/v.mp4", "audio": "s3://b-1/a.wav"});
        let none = serde_json::json!({});
        let cases: Vec<(Value, &str, usize)> = vec![
            (job_of("llm", llm.clone(), none.clone()), "/params/system", 200_000),
            (job_of("llm", llm.clone(), none.clone()), "/params/model", 200),
            (job_of("audio", audio, none.clone()), "/params/voice", 200),
            (job_of("video", video.clone(), none.clone()), "/params/prompt", 10_000),
            (job_of("video", video.clone(), none.clone()), "/params/negative_prompt", 10_000),
            (job_of("video", video.clone(), none.clone()), "/params/model", 200),
            (job_of("video", video.clone(), none.clone()), "/params/workflow", 200),
            (job_of("lipsync", serde_json::json!({}), lipsync_inputs), "/params/model", 200),
            (job_of("llm", llm.clone(), none.clone()), "/metadata/k", 4096),
        ];
        for (j, pointer, max) in cases {
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            let field = if parent == "/metadata" { "metadata".to_string() } else { pointer[1..].replace('/', ".") };
            let mut ok = j.clone();
            ok.pointer_mut(parent).unwrap()[key] = long(max).into();
            assert!(parse_job(&serde_json::to_vec(&ok).unwrap()).is_ok(), "{pointer} at {max}");
            let mut over = j;
            over.pointer_mut(parent).unwrap()[key] = long(max + 1).into();
            let e = err(over);
            assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidField, Some(field.as_str())), "{e}");
        }
        let mut j = job_of("llm", llm.clone(), none.clone());
        j["params"]["stop"] = serde_json::json!([long(1001)]);
        assert_eq!(err(j).field.as_deref(), Some("params.stop"));
        let mut j = job_of("llm", llm.clone(), none.clone());
        j["metadata"] = Value::Object((0..65).map(|i| (format!("k{i}"), Value::from("v"))).collect());
        assert_eq!(err(j).field.as_deref(), Some("metadata"));
        let mut j = job_of("llm", llm, none);
        j["metadata"] = serde_json::json!({ long(129): "v" });
        assert_eq!(err(j).field.as_deref(), Some("metadata"));
    }

    #[test]
    fn s3_keys_have_no_dot_segments_or_control_characters() {
        // What the local store refuses too: `..` would leave a bucket on a file-system-backed S3 server,
        // `//` and `a/..` made s3s-fs answer InternalError (retried as if the server were down), and a
        // NUL is an I/O error (retryable) in the local store.
        for (key, ok) in [
            ("../../etc/passwd", false),
            ("a/../../b", false),
            ("/etc/passwd", false),
            ("./x", false),
            ("a/..", false),
            ("a/", false),
            ("a\u{0}b", false),
            ("a\nb", false),
            ("a\u{7f}b", false),
            ("a/b.c/d..e", true),
            ("a\\b", true),
            ("a b/ü", true),
        ] {
            let mut j = video_job();
            j["inputs"] = serde_json::json!({ "image": format!("s3://b-1/{key}") });
            let result = parse_job(&serde_json::to_vec(&j).unwrap());
            assert_eq!(result.is_ok(), ok, "{key:?}: {:?}", result.err());
            if let Err(e) = result {
                assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidField, Some("inputs.image")));
            }
        }
    }

    #[test]
    fn traceparent_format() {
        assert!(is_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!is_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
    }
}
