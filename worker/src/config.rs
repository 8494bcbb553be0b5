//! The worker's configuration: one typed struct, read from a TOML file with `AINERN2D_WORKER_*`
//! environment overrides (`__` separates sections: `AINERN2D_WORKER_BROKER__URL`), validated at start-up
//! with errors that name the bad key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ainern2d_contract::JobKind;
use ainern2d_pipelines::MockConfig;
use ainern2d_pipelines::comfy::ComfyConfig;
use ainern2d_pipelines::lipsync::LipsyncConfig;
use ainern2d_pipelines::onnx::OnnxConfig;
use ainern2d_pipelines::tts::TtsConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Unique per worker process; defaults to `<hostname>-<pid>`.
    pub worker_id: String,
    pub broker: BrokerConfig,
    pub jobs: JobsConfig,
    pub store: StoreConfig,
    pub fetch: FetchConfig,
    pub http: HttpConfig,
    pub events: EventsConfig,
    pub heartbeat: HeartbeatConfig,
    pub shutdown: ShutdownConfig,
    pub liveness: LivenessConfig,
    pub mock: MockConfig,
    pub models: ModelsConfig,
    /// ONNX Runtime (`audio` and `lipsync` on the inference backend).
    pub onnx: OnnxConfig,
    pub tts: TtsConfig,
    pub lipsync: LipsyncConfig,
    /// The ComfyUI server of `video` jobs on the `comfyui` backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comfyui: Option<ComfyConfig>,
    pub log: LogConfig,
    /// Where jobs get their scratch directories.
    pub scratch_dir: PathBuf,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// AMQP URL, e.g. `amqp://user:pass@rabbitmq:5672/%2f`.
    pub url: String,
    /// Prefix of every queue and exchange name (`<prefix>.jobs.video`, …).
    pub prefix: String,
    /// Upper bound of the reconnect backoff.
    pub reconnect_max_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Kinds this worker serves.
    pub kinds: Vec<JobKind>,
    /// Concurrent inference slots per kind.
    pub slots: BTreeMap<JobKind, u32>,
    /// Extra deliveries per kind beyond the slots, so the next job's inference overlaps the previous job's
    /// upload instead of waiting for it.
    pub upload_overlap: u32,
    /// Attempts (first delivery included) before a retryable failure is dead-lettered.
    pub max_attempts: u32,
    /// Delay before retry n (the last one repeats). Each delay is a retry queue with that TTL.
    pub retry_delays_ms: Vec<u64>,
    /// Inference backend for every served kind: `mock` (synthetic real media), `noop` (no output; for
    /// measuring the runtime itself) or `inference` (the models of `models.manifest`: candle in process or
    /// an OpenAI-compatible server, per model; `llm` only so far).
    pub backend: Backend,
    /// Per-kind overrides of `backend`, e.g. `{ llm = "inference" }`.
    pub backends: BTreeMap<JobKind, Backend>,
    /// Longest a job of a kind may run (inference and upload) when it names no earlier `deadline`; past
    /// it the job is cancelled and retried. Unset: no limit.
    pub max_runtime_s: BTreeMap<JobKind, u64>,
    /// A job this worker has held for this long (waiting for a slot, running or uploading) is held by a
    /// lease from then on: a copy in a lease queue of its own that dead-letters back to the job queue
    /// after `lease_ttl_s` unless renewed, and the delivery is acked — so the broker's `consumer_timeout`
    /// never fires on a long job. Keep it below the broker's `consumer_timeout`. 0: never (the broker's
    /// `consumer_timeout` must then exceed the longest job).
    pub lease_after_s: u64,
    /// How soon a leased job comes back to its queue when its worker dies or loses the broker; renewed
    /// every third of it.
    pub lease_ttl_s: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Mock,
    Noop,
    Inference,
    /// A ComfyUI server (`[comfyui]`): `video` jobs only.
    Comfyui,
}

/// Kinds that have a real inference pipeline.
pub const INFERENCE_KINDS: [JobKind; 3] = [JobKind::Llm, JobKind::Audio, JobKind::Lipsync];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// The model manifest (TOML): which models exist, where their files are, what stays warm.
    pub manifest: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    S3,
    Local,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// Bucket for outputs when a job names none.
    pub bucket: String,
    /// S3 endpoint (MinIO: `http://minio:9000`); empty for AWS.
    pub endpoint: String,
    pub region: String,
    /// With `secret_access_key`; both empty: the standard AWS credential chain (environment, profile, web
    /// identity, container), and without one of those the worker does not start.
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Path-style URLs (`endpoint/bucket/key`), as MinIO expects.
    pub force_path_style: bool,
    /// Create the output bucket at start when it is missing.
    pub create_bucket: bool,
    /// Objects at least this large are uploaded in parts.
    pub multipart_threshold_bytes: u64,
    pub part_size_bytes: u64,
    /// Objects of one job uploaded at once (a job with many outputs: frames, segments).
    pub upload_concurrency: u32,
    /// Parts of one multipart upload sent at once (1: one after the other).
    pub part_concurrency: u32,
    /// Lifetime of the presigned GET URLs in `succeeded` events.
    pub presign_ttl_s: u64,
    /// The longest an S3 request may go unanswered: from its start (an upload's body included) to the
    /// first byte of the answer. A request past it is retried, then the job: without it, a connection
    /// whose packets are dropped holds the job for the SDK's attempt timeout (5 minutes). Raise it when
    /// a single part (`part_size_bytes`, or a whole object below `multipart_threshold_bytes`) takes
    /// longer than this to send.
    pub request_timeout_s: u64,
    /// Root directory of the `local` store.
    pub local_dir: PathBuf,
    /// Buckets a job's `output.bucket` may name besides `bucket`; a job naming any other is refused.
    pub allowed_buckets: Vec<String>,
}

/// A config value that is a credential: serialized as itself (the config file round-trips; `--print-config`
/// masks it), never shown by `Debug`, so no `{:?}` of a config or a store can leak it into a log.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"********\"" })
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.into())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    /// When not empty, only these hosts (exact, or `*.example.com`) may be fetched over HTTP(S).
    pub allowed_hosts: Vec<String>,
    /// Hosts that may resolve to private or loopback addresses (an internal file server). Nothing else may.
    pub trusted_hosts: Vec<String>,
    /// Allow plain `http://` inputs (off: only `https://`).
    pub allow_http: bool,
    pub max_bytes: u64,
    pub timeout_s: u64,
    pub connect_timeout_s: u64,
    pub max_redirects: usize,
    /// Buckets `s3://` inputs may name. Unset: the output bucket (`store.bucket`) only; `[]`: no `s3://`
    /// inputs at all. The worker's credentials can read more than jobs should.
    pub allowed_buckets: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `/health`, `/ready` and `/metrics`.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// At most one `progress` event per job per interval (the first one interval after the start).
    pub progress_interval_ms: u64,
    /// `running` is published once a job has run this long; a job that finishes sooner reports only its
    /// outcome (whose `timings_ms` carry every stage). 0 publishes `running` for every job.
    pub lifecycle_delay_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    pub interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight jobs may run after SIGTERM before they are returned to the queue.
    pub grace_s: u64,
}

/// `/health` that proves progress, and recycling (`liveness.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LivenessConfig {
    /// `/health` fails while a job's pipeline has reported nothing for this long (0: never). Set it above
    /// the longest silent step: a model's first load, one diffusion step of the largest video.
    pub stall_after_s: u64,
    /// Drain and exit 0 after this many outcomes (0: never), for the supervisor to start a fresh process.
    pub recycle_after_jobs: u64,
    /// Drain and exit 0 when the resident memory passes this (0: never; Linux).
    pub recycle_above_rss_mb: u64,
    /// Drain and exit 0 when this process's GPU memory passes this (0: never; needs NVML).
    pub recycle_above_vram_mb: u64,
    /// How often the limits are checked.
    pub check_interval_s: u64,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            stall_after_s: 1800,
            recycle_after_jobs: 0,
            recycle_above_rss_mb: 0,
            recycle_above_vram_mb: 0,
            check_interval_s: 10,
        }
    }
}

pub use ainern2d_cli::{LogConfig, LogFormat};

impl Default for Config {
    fn default() -> Self {
        Config {
            worker_id: String::new(),
            broker: BrokerConfig::default(),
            jobs: JobsConfig::default(),
            store: StoreConfig::default(),
            fetch: FetchConfig::default(),
            http: HttpConfig::default(),
            events: EventsConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            shutdown: ShutdownConfig::default(),
            liveness: LivenessConfig::default(),
            mock: MockConfig::default(),
            models: ModelsConfig::default(),
            onnx: OnnxConfig::default(),
            tts: TtsConfig::default(),
            lipsync: LipsyncConfig::default(),
            comfyui: None,
            log: LogConfig::default(),
            scratch_dir: std::env::temp_dir().join("ainern2d-worker"),
        }
    }
}

/// The URL's password never reaches a log line through `{:?}`.
impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &ainern2d_queue::amqp::mask_url(&self.url))
            .field("prefix", &self.prefix)
            .field("reconnect_max_ms", &self.reconnect_max_ms)
            .finish()
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefix: "ainern2d".into(),
            reconnect_max_ms: 30_000,
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            kinds: JobKind::ALL.to_vec(),
            slots: BTreeMap::from([(JobKind::Llm, 4), (JobKind::Audio, 2), (JobKind::Video, 1), (JobKind::Lipsync, 1)]),
            upload_overlap: 1,
            max_attempts: 3,
            retry_delays_ms: vec![1_000, 10_000, 60_000],
            max_runtime_s: BTreeMap::new(),
            lease_after_s: 300,
            lease_ttl_s: 60,
            backend: Backend::Mock,
            backends: BTreeMap::new(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::S3,
            bucket: "ainern2d-outputs".into(),
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            access_key_id: String::new(),
            secret_access_key: Secret::default(),
            force_path_style: true,
            create_bucket: true,
            multipart_threshold_bytes: 16 * 1024 * 1024,
            part_size_bytes: 8 * 1024 * 1024,
            upload_concurrency: 8,
            // 1 until a chaos round that left an upload behind with 4 is understood (0x865484db119ccfb8).
            part_concurrency: 1,
            presign_ttl_s: 3600,
            request_timeout_s: 60,
            local_dir: PathBuf::from("outputs"),
            allowed_buckets: Vec::new(),
        }
    }
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            allowed_hosts: Vec::new(),
            trusted_hosts: Vec::new(),
            allow_http: false,
            max_bytes: 2 * 1024 * 1024 * 1024,
            timeout_s: 300,
            connect_timeout_s: 10,
            max_redirects: 5,
            allowed_buckets: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: SocketAddr::from(([0, 0, 0, 0], 9100)) }
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { progress_interval_ms: 500, lifecycle_delay_ms: 20 }
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig { interval_ms: 10_000 }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace_s: 30 }
    }
}

pub const ENV_PREFIX: &str = "AINERN2D_WORKER_";

impl Config {
    /// Defaults, then the TOML file (if any), then the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, String> {
        // `CONFIG` is the config file's own path, not a key.
        Self::complete(ainern2d_cli::load(path, ENV_PREFIX, &["config"])?)
    }

    /// Parses a TOML document alone (tests).
    pub fn from_toml(text: &str) -> Result<Config, String> {
        Self::complete(ainern2d_cli::from_toml(text)?)
    }

    /// Fills the defaults that depend on other keys, then validates.
    fn complete(mut config: Config) -> Result<Config, String> {
        if config.worker_id.is_empty() {
            let host = hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "worker".into());
            config.worker_id = format!("{host}-{}", std::process::id());
        }
        // The safe default for s3:// inputs depends on another section: the output bucket only.
        if config.fetch.allowed_buckets.is_none() {
            config.fetch.allowed_buckets = Some(vec![config.store.bucket.clone()]);
        }
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        let bad = |key: &str, why: &str| Err(format!("config key `{key}`: {why}"));
        if !self.worker_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return bad("worker_id", "may only use [A-Za-z0-9._-] (it is part of routing keys)");
        }
        if !(self.broker.url.starts_with("amqp://") || self.broker.url.starts_with("amqps://")) {
            return bad("broker.url", "must start with amqp:// or amqps://");
        }
        if self.broker.prefix.is_empty()
            || !self.broker.prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return bad("broker.prefix", "must be non-empty [A-Za-z0-9._-]");
        }
        if self.jobs.kinds.is_empty() {
            return bad("jobs.kinds", "must name at least one kind");
        }
        for kind in &self.jobs.kinds {
            if self.slots(*kind) == 0 {
                return bad(&format!("jobs.slots.{kind}"), "must be at least 1 for a served kind");
            }
            if self.backend(*kind) == Backend::Comfyui {
                let key = if self.jobs.backends.contains_key(kind) {
                    format!("jobs.backends.{kind}")
                } else {
                    "jobs.backend".into()
                };
                if *kind != JobKind::Video {
                    return bad(&key, &format!("ComfyUI serves video jobs only, not {kind} (use mock or inference)"));
                }
                match &self.comfyui {
                    None => return bad("comfyui", &format!("{key} = \"comfyui\" needs a [comfyui] section")),
                    Some(c) if !(c.url.starts_with("http://") || c.url.starts_with("https://")) => {
                        return bad("comfyui.url", "must be an http(s) URL");
                    }
                    Some(c) if c.free_above_pct.is_some_and(|p| p == 0 || p > 100) => {
                        return bad("comfyui.free_above_pct", "must be a percentage, 1 to 100");
                    }
                    Some(c) if c.command.as_ref().is_some_and(|c| c.is_empty() || c[0].is_empty()) => {
                        return bad("comfyui.command", "must name a program, e.g. [\"python\", \"main.py\"]");
                    }
                    Some(_) => {}
                }
            }
            if self.backend(*kind) == Backend::Inference {
                let key = if self.jobs.backends.contains_key(kind) {
                    format!("jobs.backends.{kind}")
                } else {
                    "jobs.backend".into()
                };
                if !INFERENCE_KINDS.contains(kind) {
                    return bad(&key, &format!("there is no inference pipeline for {kind} jobs yet (use mock)"));
                }
                if self.models.manifest.is_none() {
                    return bad("models.manifest", &format!("{key} = \"inference\" needs a model manifest"));
                }
            }
        }
        if self.jobs.max_attempts == 0 {
            return bad("jobs.max_attempts", "must be at least 1");
        }
        if self.jobs.retry_delays_ms.is_empty() || self.jobs.retry_delays_ms.contains(&0) {
            return bad("jobs.retry_delays_ms", "needs at least one delay, each above 0");
        }
        if let Some((kind, _)) = self.jobs.max_runtime_s.iter().find(|(_, s)| **s == 0) {
            return bad(&format!("jobs.max_runtime_s.{kind}"), "must be at least 1 (leave it out for no limit)");
        }
        if self.jobs.lease_after_s > 0 && self.jobs.lease_ttl_s < 3 {
            return bad("jobs.lease_ttl_s", "must be at least 3 (it is renewed every third of it)");
        }
        if self.store.kind == StoreKind::S3 && self.store.bucket.is_empty() {
            return bad("store.bucket", "must be set");
        }
        if self.store.part_size_bytes < 5 * 1024 * 1024 {
            return bad("store.part_size_bytes", "S3 requires parts of at least 5 MiB");
        }
        if self.store.request_timeout_s == 0 {
            return bad("store.request_timeout_s", "must be at least 1");
        }
        if self.store.upload_concurrency == 0 {
            return bad("store.upload_concurrency", "must be at least 1");
        }
        if self.store.part_concurrency == 0 {
            return bad("store.part_concurrency", "must be at least 1");
        }
        if self.store.multipart_threshold_bytes < self.store.part_size_bytes {
            return bad("store.multipart_threshold_bytes", "must be at least store.part_size_bytes");
        }
        match (self.store.access_key_id.is_empty(), self.store.secret_access_key.is_empty()) {
            (false, true) => {
                return bad("store.secret_access_key", "is empty while store.access_key_id is set; set both");
            }
            (true, false) => {
                return bad("store.access_key_id", "is empty while store.secret_access_key is set; set both");
            }
            _ => {}
        }
        let bucket_name =
            |b: &String| !b.is_empty() && b.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c));
        if !self.store.allowed_buckets.iter().all(bucket_name) {
            return bad("store.allowed_buckets", "bucket names are non-empty [A-Za-z0-9._-]");
        }
        if !self.fetch.allowed_buckets.iter().flatten().all(bucket_name) {
            return bad("fetch.allowed_buckets", "bucket names are non-empty [A-Za-z0-9._-]");
        }
        self.tts.validate()?;
        self.lipsync.validate()?;
        if self.liveness.check_interval_s == 0 {
            return bad("liveness.check_interval_s", "must be at least 1");
        }
        if self.shutdown.grace_s == 0 {
            return bad("shutdown.grace_s", "must be at least 1");
        }
        self.mock.validate().map_err(|e| format!("config key `{e}"))?;
        Ok(())
    }

    /// The backend that serves `kind`.
    pub fn backend(&self, kind: JobKind) -> Backend {
        self.jobs.backends.get(&kind).copied().unwrap_or(self.jobs.backend)
    }

    pub fn slots(&self, kind: JobKind) -> u32 {
        self.jobs.slots.get(&kind).copied().unwrap_or(1)
    }

    /// The effective configuration as TOML with secrets masked (`--print-config`).
    pub fn to_masked_toml(&self) -> String {
        let mut c = self.clone();
        if !c.store.secret_access_key.is_empty() {
            c.store.secret_access_key = "********".into();
        }
        if let Ok(mut url) = url::Url::parse(&c.broker.url)
            && url.password().is_some()
        {
            let _ = url.set_password(Some("********"));
            c.broker.url = url.to_string();
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::from_toml("").unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let table = [
            ("[broker]\nurl = \"http://x\"", "broker.url"),
            ("[jobs]\nmax_attempts = 0", "jobs.max_attempts"),
            ("[jobs]\nlease_ttl_s = 2", "jobs.lease_ttl_s"),
            ("[jobs.slots]\nvideo = 0", "jobs.slots.video"),
            ("[jobs]\nretry_delays_ms = []", "jobs.retry_delays_ms"),
            ("[jobs.max_runtime_s]\nvideo = 0", "jobs.max_runtime_s.video"),
            ("[store]\npart_size_bytes = 10", "store.part_size_bytes"),
            ("[store]\nupload_concurrency = 0", "store.upload_concurrency"),
            ("[store]\npart_concurrency = 0", "store.part_concurrency"),
            ("[store]\nrequest_timeout_s = 0", "store.request_timeout_s"),
            ("[mock]\nfailure_rate = 2.0", "mock.failure_rate"),
            ("[store]\nbukket = \"x\"", "bukket"),
            ("[jobs]\nkinds = [\"image\"]", "jobs.kinds"),
            ("[jobs.backends]\nllm = \"inference\"", "models.manifest"),
            ("[jobs.backends]\nvideo = \"inference\"\n[models]\nmanifest = \"m.toml\"", "jobs.backends.video"),
        ];
        for (toml, key) in table {
            let err = Config::from_toml(toml).unwrap_err();
            assert!(err.contains(key), "{toml:?} -> {err}");
        }
    }

    #[test]
    fn secrets_are_masked() {
        let c = Config::from_toml(
            "[broker]\nurl = \"amqp://u:hunter2@h:5672/%2f\"\n[store]\naccess_key_id = \"AKIA\"\nsecret_access_key = \"s3cr3t\"",
        )
        .unwrap();
        let shown = c.to_masked_toml();
        assert!(!shown.contains("hunter2") && !shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn the_s3_secret_is_not_in_debug_output() {
        let c = Config::from_toml("[store]\naccess_key_id = \"AKIAEXAMPLE\"\nsecret_access_key = \"s3cr3t\"").unwrap();
        for shown in [format!("{c:?}"), format!("{c:#?}"), format!("{:?}", c.store)] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
    }

    #[test]
    fn the_broker_password_is_not_in_debug_output() {
        let c = Config::from_toml("[broker]\nurl = \"amqp://app:hunter2@rabbit:5672/%2f\"").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && shown.contains("amqp://app:***@rabbit"), "{shown}");
    }

    #[test]
    fn there_are_no_default_s3_credentials() {
        let c = Config::from_toml("").unwrap();
        assert!(c.store.access_key_id.is_empty() && c.store.secret_access_key.is_empty(), "{:?}", c.store);
    }

    #[test]
    fn input_buckets_default_to_the_output_bucket() {
        let c = Config::from_toml("[store]\nbucket = \"media-out\"").unwrap();
        assert_eq!(c.fetch.allowed_buckets, Some(vec!["media-out".to_string()]));
        let c = Config::from_toml("[fetch]\nallowed_buckets = []").unwrap();
        assert_eq!(c.fetch.allowed_buckets, Some(vec![]));
        let c = Config::from_toml("[fetch]\nallowed_buckets = [\"in\"]").unwrap();
        assert_eq!(c.fetch.allowed_buckets, Some(vec!["in".to_string()]));
    }

    #[test]
    fn fetch_and_store_errors_name_the_key() {
        let table = [
            ("[fetch]\nallowed_buckets = [\"\"]", "fetch.allowed_buckets"),
            ("[fetch]\nallowed_buckets = [\"a/b\"]", "fetch.allowed_buckets"),
            ("[store]\nallowed_buckets = [\"\"]", "store.allowed_buckets"),
            ("[store]\naccess_key_id = \"AKIA\"", "store.secret_access_key"),
            ("[store]\nsecret_access_key = \"s3cr3t\"", "store.access_key_id"),
        ];
        for (toml, key) in table {
            let err = Config::from_toml(toml).unwrap_err();
            assert!(err.contains(key), "{toml:?} -> {err}");
        }
    }
}
