//! The hub's configuration: TOML plus `AINERN2D_HUB_<SECTION>__<KEY>` environment overrides, validated
//! with errors that name the key.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::policy::PolicyConfig;
// The store owns its section; config depends on store, never the other way round.
use crate::store::Backend;
pub use crate::store::DatabaseConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub broker: BrokerConfig,
    pub database: DatabaseConfig,
    pub ingest: IngestConfig,
    pub registry: RegistryConfig,
    pub http: HttpConfig,
    pub policy: PolicyConfig,
    /// Downgrade profiles by name; `policy.gpu.profile` names the one sent to hot workers.
    pub profiles: Vec<ainern2d_contract::DowngradeProfile>,
    pub alerts: AlertsConfig,
    pub api: ApiConfig,
    pub outbox: OutboxConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// File holding the admin token for mutating endpoints; `AINERN2D_HUB_ADMIN_TOKEN` is used when empty.
    /// With neither, every mutating endpoint answers 401. A file that cannot be read stops the start.
    pub admin_token_file: String,
    /// File holding the read token for the `/v1` reads; `AINERN2D_HUB_READ_TOKEN` is used when empty. With
    /// a read token, every read needs it (or the admin token); without one, reads are open but anonymous
    /// callers never see presigned URLs.
    pub read_token_file: String,
    /// When not empty, mutating endpoints accept only these client addresses.
    pub allowed_ips: Vec<std::net::IpAddr>,
    /// Largest request body (a submitted job); larger ones answer 413.
    pub max_body_bytes: usize,
    /// Event streams (`/v1/jobs/{id}/events`) open at once; more answer 503.
    pub max_sse_clients: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            admin_token_file: String::new(),
            read_token_file: String::new(),
            allowed_ips: Vec::new(),
            max_body_bytes: 1024 * 1024,
            max_sse_clients: 64,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Alertmanager-compatible endpoint (`POST /api/v2/alerts`) that receives every policy decision; empty: none.
    pub webhook_url: String,
    /// How often the backlog of every job queue is sampled.
    pub sample_interval_ms: u64,
    /// Alerts waiting for the webhook, at most; more are dropped (and counted), so a slow webhook never
    /// holds up event ingestion.
    pub queue_capacity: usize,
    /// How long one webhook call may take.
    pub timeout_ms: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig { webhook_url: String::new(), sample_interval_ms: 30_000, queue_capacity: 256, timeout_ms: 10_000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// A submitted job still unpublished after this long is published by the relay (a hub that died
    /// between recording and publishing it, a broker that was down).
    pub relay_after_ms: u64,
    /// How often the relay looks for such jobs.
    pub relay_interval_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig { relay_after_ms: 5_000, relay_interval_ms: 1_000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    pub url: String,
    /// Same prefix as the workers' `broker.prefix`.
    pub prefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Events applied per transaction, at most.
    pub batch_max: usize,
    /// How long a batch waits for more events before it is written (0: it takes what has arrived and is
    /// written at once; under load that is a full batch anyway).
    pub batch_wait_ms: u64,
    /// Unacked events the broker may hand the hub (must be at least `batch_max`).
    pub prefetch: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// A worker whose last heartbeat is older than this is marked lost.
    pub heartbeat_stale_s: u64,
    pub check_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// A request (other than an event stream) that takes longer answers 408.
    pub request_timeout_ms: u64,
    /// Requests (other than event streams) served at once; more wait for a turn.
    pub max_concurrent_requests: usize,
}

pub use ainern2d_cli::{LogConfig, LogFormat};

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig { url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(), prefix: "ainern2d".into() }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig { batch_max: 500, batch_wait_ms: 0, prefetch: 2000 }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig { heartbeat_stale_s: 60, check_interval_ms: 5_000 }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 9200)),
            request_timeout_ms: 30_000,
            max_concurrent_requests: 256,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            broker: BrokerConfig::default(),
            database: DatabaseConfig::default(),
            ingest: IngestConfig::default(),
            registry: RegistryConfig::default(),
            http: HttpConfig::default(),
            policy: PolicyConfig::default(),
            profiles: vec![ainern2d_contract::DowngradeProfile {
                name: "gpu-hot".into(),
                video_max_steps: Some(12),
                video_max_pixels: Some(640 * 360),
                llm_max_tokens: Some(512),
                lipsync_max_batch: Some(16),
                ..Default::default()
            }],
            alerts: AlertsConfig::default(),
            api: ApiConfig::default(),
            outbox: OutboxConfig::default(),
            log: LogConfig::default(),
        }
    }
}

pub const ENV_PREFIX: &str = "AINERN2D_HUB_";

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Config, String> {
        // Variables of the same prefix that are not config keys: the config path, the tokens.
        let config: Config = ainern2d_cli::load(path, ENV_PREFIX, &["admin_token", "read_token", "config"])?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        let config: Config = ainern2d_cli::from_toml(text)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        let bad = |key: &str, why: &str| Err(format!("config key `{key}`: {why}"));
        if !(self.broker.url.starts_with("amqp://") || self.broker.url.starts_with("amqps://")) {
            return bad("broker.url", "must start with amqp:// or amqps://");
        }
        if Backend::of_url(&self.database.url).is_none() {
            return bad("database.url", "must start with postgres://, postgresql://, sqlite:// or be sqlite::memory:");
        }
        if self.database.schema.is_empty()
            || !self.database.schema.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return bad("database.schema", "must be non-empty [A-Za-z0-9_]");
        }
        if self.ingest.batch_max == 0 || usize::from(self.ingest.prefetch) < self.ingest.batch_max {
            return bad("ingest.prefetch", "must be at least ingest.batch_max (and batch_max above 0)");
        }
        if self.registry.heartbeat_stale_s == 0 {
            return bad("registry.heartbeat_stale_s", "must be above 0");
        }
        if !self.profiles.iter().any(|p| p.name == self.policy.gpu.profile) {
            return bad("policy.gpu.profile", "names no profile in `profiles`");
        }
        if !self.alerts.webhook_url.is_empty() && !self.alerts.webhook_url.starts_with("http") {
            return bad("alerts.webhook_url", "must be an http(s) URL");
        }
        for (key, value) in [
            ("alerts.queue_capacity", self.alerts.queue_capacity as u64),
            ("alerts.timeout_ms", self.alerts.timeout_ms),
            ("api.max_body_bytes", self.api.max_body_bytes as u64),
            ("api.max_sse_clients", self.api.max_sse_clients as u64),
            ("http.request_timeout_ms", self.http.request_timeout_ms),
            ("http.max_concurrent_requests", self.http.max_concurrent_requests as u64),
            ("outbox.relay_after_ms", self.outbox.relay_after_ms),
            ("outbox.relay_interval_ms", self.outbox.relay_interval_ms),
        ] {
            if value == 0 {
                return bad(key, "must be above 0");
            }
        }
        self.policy.validate()
    }

    pub fn profile(&self, name: &str) -> Option<&ainern2d_contract::DowngradeProfile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    pub fn to_masked_toml(&self) -> String {
        let mut c = self.clone();
        for url in [&mut c.broker.url, &mut c.database.url] {
            if let Some((scheme_user, rest)) = url.split_once('@')
                && let Some((scheme, userpass)) = scheme_user.split_once("://")
                && let Some((user, _)) = userpass.split_once(':')
            {
                *url = format!("{scheme}://{user}:********@{rest}");
            }
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_seed_001() {
        let c = Config::from_toml("").unwrap();
        assert_eq!((c.policy.gpu.high_pct, c.policy.gpu.sustain_s), (92.0, 900));
        assert_eq!((c.policy.backlog.threshold, c.policy.backlog.sustain_s), (2000, 600));
        assert_eq!((c.policy.success.min_rate, c.policy.latency.p95_max_s), (0.95, 180.0));
        assert_eq!(c.registry.heartbeat_stale_s, 60);
    }

    #[test]
    fn errors_name_the_key() {
        for (toml, key) in [
            ("[database]\nurl = \"mysql://x\"", "database.url"),
            ("[ingest]\nbatch_max = 5000", "ingest.prefetch"),
            ("[policy.gpu]\nclear_pct = 99.0", "policy.gpu.clear_pct"),
            ("[policy.gpu]\nhigh = 3", "high"),
            ("[policy.gpu]\nprofile = \"nope\"", "policy.gpu.profile"),
            ("[outbox]\nrelay_after_ms = 0", "outbox.relay_after_ms"),
            ("[api]\nmax_sse_clients = 0", "api.max_sse_clients"),
        ] {
            let err = Config::from_toml(toml).unwrap_err();
            assert!(err.contains(key), "{toml:?} -> {err}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn the_token_and_config_path_variables_are_not_config_keys() {
        // figment's Jail gives the closure its own environment.
        figment::Jail::expect_with(|jail| {
            jail.set_env("AINERN2D_HUB_ADMIN_TOKEN", "t");
            jail.set_env("AINERN2D_HUB_READ_TOKEN", "r");
            jail.set_env("AINERN2D_HUB_CONFIG", "/nowhere.toml");
            jail.set_env("AINERN2D_HUB_INGEST__BATCH_MAX", "7");
            let c = Config::load(None).map_err(figment::Error::from)?;
            assert_eq!(c.ingest.batch_max, 7);
            Ok(())
        });
    }

    #[test]
    fn database_url_accepts_postgres_and_sqlite_and_names_the_key_otherwise() {
        for url in ["postgresql://h/db", "sqlite:///tmp/hub.db", "sqlite://hub.db?mode=rwc", "sqlite::memory:"] {
            Config::from_toml(&format!("[database]\nurl = \"{url}\"")).unwrap();
        }
        for url in ["mysql://h/db", "sqlite:hub.db", "file:///tmp/hub.db", ""] {
            let err = Config::from_toml(&format!("[database]\nurl = \"{url}\"")).unwrap_err();
            assert!(err.contains("`database.url`"), "{url:?} -> {err}");
        }
    }

    #[test]
    fn passwords_are_masked() {
        let c = Config::from_toml("[database]\nurl = \"postgres://hub:hunter2@db:5432/hub\"").unwrap();
        assert!(!c.to_masked_toml().contains("hunter2"));
    }
}
