//! What every ainern2d program's `main` shares, written once: loading a typed config from a TOML file
//! plus `<PREFIX><SECTION>__<KEY>` environment overrides with errors that name the key, the `log` section
//! and its subscriber (JSON in production, pretty in a terminal; OpenTelemetry traces over OTLP when
//! configured, `trace`), and the shutdown signal. It knows no
//! program's config; each program validates its own.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub mod trace;

/// Reads `T` from its defaults, then the TOML file at `path` (which must exist when given), then the
/// variables `<env_prefix><SECTION>__<KEY>`, except those named in `not_keys` (variables of the same prefix
/// that are not config keys, such as the config path itself or a token). Errors name the key.
pub fn load<T: Serialize + DeserializeOwned + Default>(
    path: Option<&Path>,
    env_prefix: &str,
    not_keys: &'static [&'static str],
) -> Result<T, String> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = path {
        if !path.exists() {
            return Err(format!("config file {} does not exist", path.display()));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    let env = Env::prefixed(env_prefix)
        .filter(move |key| !not_keys.iter().any(|k| key.as_str().eq_ignore_ascii_case(k)))
        .split("__");
    extract(figment.merge(env))
}

/// Reads `T` from its defaults and a TOML document alone (tests).
pub fn from_toml<T: Serialize + DeserializeOwned + Default>(text: &str) -> Result<T, String> {
    extract(Figment::from(Serialized::defaults(T::default())).merge(Toml::string(text)))
}

fn extract<T: DeserializeOwned>(figment: Figment) -> Result<T, String> {
    figment.extract().map_err(|e| {
        e.into_iter()
            .map(|e| {
                let key = e.path.join(".");
                if key.is_empty() { e.to_string() } else { format!("config key `{key}`: {}", e.kind) }
            })
            .collect::<Vec<_>>()
            .join("; ")
    })
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, pretty otherwise.
    Auto,
    Json,
    Pretty,
}

/// The `log` section of every program's config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing` filter directive (`info`, `ainern2d_worker=debug`); `RUST_LOG` wins.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Auto, filter: "info".into() }
    }
}

/// Installs the global subscriber: logs on stderr, JSON unless a terminal (or as `format` says), and the
/// spans of the ainern2d crates over OTLP when an endpoint is configured ([`trace`]), as `service`. Keep
/// what it returns until the program exits: dropping it flushes the last spans.
pub fn init_logs(config: &LogConfig, service: &str) -> trace::Telemetry {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.filter));
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json { logs.json().flatten_event(true).boxed() } else { logs.boxed() };
    let (traces, telemetry, warnings) = trace::layer(service);
    tracing_subscriber::registry().with(logs).with(traces).with(filter).init();
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    if let Some(endpoint) = trace::endpoint().filter(|_| trace::enabled()) {
        tracing::info!(%endpoint, "exporting traces over OTLP");
    }
    telemetry
}

/// A token that fires on the first SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutdown signal received");
        fire.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        name: String,
        inner: Inner,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        count: u32,
    }

    impl Default for Demo {
        fn default() -> Self {
            Demo { name: "d".into(), inner: Inner::default() }
        }
    }

    #[test]
    fn errors_name_the_key_and_defaults_fill_the_rest() {
        let demo: Demo = from_toml("[inner]\ncount = 3").unwrap();
        assert_eq!(demo, Demo { name: "d".into(), inner: Inner { count: 3 } });
        let err = from_toml::<Demo>("[inner]\ncount = \"x\"").unwrap_err();
        assert!(err.contains("`inner.count`"), "{err}");
        let err = from_toml::<Demo>("[inner]\ncolor = 1").unwrap_err();
        assert!(err.contains("color"), "{err}");
        let err = load::<Demo>(Some(Path::new("/nonexistent/demo.toml")), "DEMO_", &[]).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }
}
