//! Fetching job inputs: `s3://` through the artifact store from the allowed buckets only, `https://` through
//! reqwest with an SSRF guard (`ssrf.rs`: host allowlist, only globally reachable addresses, after DNS
//! resolution — `resolve.rs`, the system resolver or a test's — and on every redirect), size and time
//! limits. Relative paths are read only in the one-shot `exec` mode. Error messages mask the credentials of
//! presigned URLs (`redact.rs`).

mod redact;
mod resolve;
mod ssrf;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

pub use redact::redact;
use resolve::SystemResolver;
pub use resolve::{HostResolver, Resolution};
use ssrf::{GuardedResolver, Refusal};
pub use ssrf::{UrlPolicy, is_public};

use crate::config::FetchConfig;
use crate::store::{ArtifactStore, StoreError};

/// The message of a fetch error becomes a `failed` event's message and a log line, so it never shows the
/// credentials of a presigned URL: the constructors mask them, and so does `Display` for errors built by hand.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not allowed (scheme, allowlist, address): permanent.
    #[error("input `{name}` refused: {}", redact(.reason))]
    Refused { name: String, reason: String },
    /// The input could not be read; `retryable` says whether a later attempt may succeed.
    #[error("input `{name}` unavailable: {}", redact(.reason))]
    Unavailable { name: String, reason: String, retryable: bool },
}

impl FetchError {
    pub fn refused(name: &str, reason: impl AsRef<str>) -> Self {
        FetchError::Refused { name: name.into(), reason: redact(reason.as_ref()) }
    }

    pub fn unavailable(name: &str, reason: impl AsRef<str>, retryable: bool) -> Self {
        FetchError::Unavailable { name: name.into(), reason: redact(reason.as_ref()), retryable }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, FetchError::Unavailable { retryable: true, .. })
    }
}

/// Fetches inputs into a job's scratch directory.
#[derive(Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    policy: Arc<UrlPolicy>,
    store: Option<Arc<dyn ArtifactStore>>,
    /// Buckets `s3://` inputs may name (`fetch.allowed_buckets`, resolved at config load).
    buckets: Vec<String>,
    max_bytes: u64,
    /// Base directory for relative paths; `None` refuses them (the daemon).
    local_base: Option<PathBuf>,
}

impl Fetcher {
    pub fn new(cfg: &FetchConfig, store: Option<Arc<dyn ArtifactStore>>, local_base: Option<PathBuf>) -> Self {
        Self::with_resolver(cfg, store, local_base, Arc::new(SystemResolver))
    }

    /// [`Fetcher::new`] with host names resolved by `resolver` instead of the system: for tests, whose names
    /// answer what they need. The SSRF guard judges its answers as it judges the system's.
    pub fn with_resolver(
        cfg: &FetchConfig,
        store: Option<Arc<dyn ArtifactStore>>,
        local_base: Option<PathBuf>,
        resolver: Arc<dyn HostResolver>,
    ) -> Self {
        let policy = Arc::new(UrlPolicy::new(cfg));
        let redirect_policy = policy.clone();
        let max_redirects = cfg.max_redirects;
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { policy: policy.clone(), inner: resolver }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > max_redirects {
                    let reason = format!("more than {max_redirects} redirects (fetch.max_redirects)");
                    return attempt.error(Refusal(reason));
                }
                match redirect_policy.check_redirect(attempt.previous(), attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(reason) => {
                        let reason = format!("redirect to {} refused: {reason}", attempt.url());
                        attempt.error(Refusal(reason))
                    }
                }
            }))
            .connect_timeout(Duration::from_secs(cfg.connect_timeout_s))
            .timeout(Duration::from_secs(cfg.timeout_s))
            .no_proxy()
            .build()
            .expect("the HTTP client configuration is static and valid");
        // Unresolved (a config built in code, not loaded) fails closed: no bucket.
        let buckets = cfg.allowed_buckets.clone().unwrap_or_default();
        Fetcher { http, policy, store, buckets, max_bytes: cfg.max_bytes, local_base }
    }

    /// Downloads one input to `dest`.
    pub async fn fetch(&self, name: &str, url: &str, dest: &Path) -> Result<u64, FetchError> {
        let refused = |reason: String| FetchError::refused(name, reason);
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').ok_or_else(|| refused("expected s3://bucket/key".into()))?;
            // The worker's S3 credentials usually read far more than jobs should (models, other tenants).
            if !self.buckets.iter().any(|b| b == bucket) {
                return Err(refused(format!(
                    "bucket `{bucket}` is not in fetch.allowed_buckets; copy the input into an allowed bucket, or \
                     ask the operator to allow `{bucket}`"
                )));
            }
            let store =
                self.store.as_ref().ok_or_else(|| refused("s3:// inputs need an S3 store configured".into()))?;
            return store
                .get_to_file(bucket, key, dest, self.max_bytes)
                .await
                .map_err(|e| FetchError::unavailable(name, e.to_string(), e.is_retryable()));
        }
        if url.starts_with("https://") || url.starts_with("http://") {
            return self.fetch_http(name, url, dest).await;
        }
        if url.contains(':') {
            return Err(refused(format!("unsupported URL `{url}`: use s3:// or https://")));
        }
        let Some(base) = &self.local_base else {
            return Err(refused("local paths are only read by `ainern2d-worker exec`; use s3:// or https://".into()));
        };
        if url.starts_with('/') || url.split('/').any(|s| s == ".." || s.is_empty()) {
            return Err(refused(format!("path `{url}` must be relative and stay below {}", base.display())));
        }
        let src = base.join(url);
        let len = tokio::fs::metadata(&src)
            .await
            .map_err(|e| FetchError::unavailable(name, format!("{}: {e}", src.display()), false))?
            .len();
        if len > self.max_bytes {
            let reason = format!("{len} bytes is above fetch.max_bytes ({})", self.max_bytes);
            return Err(FetchError::unavailable(name, reason, false));
        }
        tokio::fs::copy(&src, dest).await.map_err(|e| FetchError::unavailable(name, e.to_string(), true))
    }

    async fn fetch_http(&self, name: &str, url: &str, dest: &Path) -> Result<u64, FetchError> {
        let refused = |reason: String| FetchError::refused(name, reason);
        let unavailable = |reason: String, retryable: bool| FetchError::unavailable(name, reason, retryable);
        let parsed = reqwest::Url::parse(url).map_err(|e| refused(format!("invalid URL: {e}")))?;
        self.policy.check(&parsed).map_err(refused)?;
        let response = self.http.get(parsed).send().await.map_err(|e| classify(name, &e))?;
        let status = response.status();
        // A redirect that reaches us is one the client did not follow because its target is not an
        // http(s) URL it can represent (`file:///etc/passwd`): refused like every other redirect target
        // (and named), not reported as an unavailable input.
        if status.is_redirection()
            && let Some(location) = response.headers().get(reqwest::header::LOCATION)
        {
            let location = String::from_utf8_lossy(location.as_bytes());
            let reason = match response.url().join(&location) {
                Ok(next) => self.policy.check(&next).err().unwrap_or_else(|| "the HTTP client cannot follow it".into()),
                Err(e) => format!("not a URL ({e})"),
            };
            return Err(refused(format!("redirect to {location} refused: {reason}")));
        }
        if !status.is_success() {
            // 4xx other than 408/429 will not change on retry; 5xx and throttling might.
            let retryable = status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
            return Err(unavailable(format!("HTTP {status} from {url}"), retryable));
        }
        if let Some(len) = response.content_length()
            && len > self.max_bytes
        {
            return Err(unavailable(format!("{len} bytes is above fetch.max_bytes ({})", self.max_bytes), false));
        }
        let mut file =
            tokio::fs::File::create(dest).await.map_err(|e| unavailable(format!("{}: {e}", dest.display()), true))?;
        let mut stream = response.bytes_stream();
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| classify(name, &e))?;
            written += chunk.len() as u64;
            if written > self.max_bytes {
                return Err(unavailable(format!("body exceeds fetch.max_bytes ({})", self.max_bytes), false));
            }
            file.write_all(&chunk).await.map_err(|e| unavailable(format!("{}: {e}", dest.display()), true))?;
        }
        file.flush().await.map_err(|e| unavailable(format!("{}: {e}", dest.display()), true))?;
        Ok(written)
    }
}

/// Finds our own refusal in reqwest's error chain; everything else is a (retryable) network problem.
fn classify(name: &str, e: &reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(r) = err.downcast_ref::<Refusal>() {
            return FetchError::refused(name, &r.0);
        }
        source = err.source();
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let detail = std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string());
    FetchError::unavailable(name, format!("{what}: {detail}"), true)
}

impl From<StoreError> for FetchError {
    fn from(e: StoreError) -> Self {
        FetchError::unavailable("", e.to_string(), e.is_retryable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    #[tokio::test]
    async fn s3_inputs_only_from_allowed_buckets() {
        let root = tempfile::tempdir().unwrap();
        for bucket in ["outputs", "models"] {
            std::fs::create_dir_all(root.path().join(bucket)).unwrap();
            std::fs::write(root.path().join(bucket).join("k"), b"bytes").unwrap();
        }
        let store: Arc<dyn ArtifactStore> = Arc::new(LocalStore::new(root.path()));
        let dest = root.path().join("dest");
        let cfg = FetchConfig { allowed_buckets: Some(vec!["outputs".into()]), ..FetchConfig::default() };
        let fetcher = Fetcher::new(&cfg, Some(store.clone()), None);
        assert_eq!(fetcher.fetch("image", "s3://outputs/k", &dest).await.unwrap(), 5);
        let err = fetcher.fetch("image", "s3://models/k", &dest).await.unwrap_err();
        assert!(matches!(err, FetchError::Refused { .. }) && !err.is_retryable(), "{err}");
        let shown = err.to_string();
        assert!(shown.contains("`models`") && shown.contains("fetch.allowed_buckets"), "{shown}");
        // Unresolved (a config built by hand) or empty: no bucket at all.
        for allowed in [None, Some(vec![])] {
            let fetcher = Fetcher::new(
                &FetchConfig { allowed_buckets: allowed, ..FetchConfig::default() },
                Some(store.clone()),
                None,
            );
            assert!(matches!(fetcher.fetch("image", "s3://outputs/k", &dest).await, Err(FetchError::Refused { .. })));
        }
    }

    /// A local server that answers 403 to everything and redirects `/redirect` to the metadata address.
    async fn forbidding_server() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route(
                "/redirect",
                axum::routing::get(|| async {
                    axum::response::Redirect::temporary("http://169.254.169.254/k?X-Amz-Signature=deadbeef0123")
                }),
            )
            .fallback(|| async { axum::http::StatusCode::FORBIDDEN });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    }

    #[tokio::test]
    async fn errors_never_show_presigned_credentials() {
        let port = forbidding_server().await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = FetchConfig {
            allow_http: true,
            trusted_hosts: vec!["localhost".into()],
            allowed_buckets: Some(vec![]),
            ..FetchConfig::default()
        };
        let fetcher = Fetcher::new(&cfg, None, None);
        let query = "X-Amz-Credential=AKIAEXAMPLE%2F20250101&X-Amz-Signature=deadbeef0123";
        let dir = tempfile::tempdir().unwrap();
        for url in [
            format!("http://localhost:{port}/k.png?{query}"),
            format!("http://localhost:{closed}/k.png?{query}"),
            format!("http://localhost:{port}/redirect?{query}"),
            format!("http://127.0.0.1:{port}/k.png?{query}"),
            format!("ftp://bob:hunter2@h/k.png?{query}"),
        ] {
            let err = fetcher.fetch("image", &url, &dir.path().join("in")).await.unwrap_err();
            for shown in [err.to_string(), format!("{err:?}")] {
                for secret in ["AKIAEXAMPLE", "deadbeef0123", "hunter2"] {
                    assert!(!shown.contains(secret), "{url}: {shown}");
                }
            }
        }
    }
}
