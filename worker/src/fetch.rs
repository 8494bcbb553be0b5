//! Fetching job inputs: `s3://` through the artifact store, `https://` through reqwest with an SSRF guard
//! (host allowlist, no loopback/private/link-local addresses after DNS resolution and on every redirect),
//! size and time limits. Relative paths are read only in the one-shot `exec` mode.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::io::AsyncWriteExt;

use crate::config::FetchConfig;
use crate::store::{ArtifactStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not allowed (scheme, allowlist, address): permanent.
    #[error("input `{name}` refused: {reason}")]
    Refused { name: String, reason: String },
    /// The input could not be read; `retryable` says whether a later attempt may succeed.
    #[error("input `{name}` unavailable: {reason}")]
    Unavailable { name: String, reason: String, retryable: bool },
}

impl FetchError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, FetchError::Unavailable { retryable: true, .. })
    }
}

/// Whether an address is one a job may make the worker connect to: not loopback, private, link-local,
/// shared (CGNAT), multicast, documentation, benchmarking, reserved or unspecified, in v4 or v6 form.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0];
            if nat64 {
                return is_public_v4(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1)
                || s[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 shared address space
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking
        || o[0] >= 240)
}

/// The URL policy shared by the first request, every redirect and the DNS resolver.
#[derive(Debug, Clone)]
pub struct UrlPolicy {
    allowed_hosts: Vec<String>,
    trusted_hosts: Vec<String>,
    allow_http: bool,
}

impl UrlPolicy {
    pub fn new(cfg: &FetchConfig) -> Self {
        let lower = |v: &Vec<String>| v.iter().map(|h| h.to_ascii_lowercase()).collect();
        UrlPolicy {
            allowed_hosts: lower(&cfg.allowed_hosts),
            trusted_hosts: lower(&cfg.trusted_hosts),
            allow_http: cfg.allow_http,
        }
    }

    fn trusted(&self, host: &str) -> bool {
        self.trusted_hosts.iter().any(|h| h == host)
    }

    fn allowed(&self, host: &str) -> bool {
        self.allowed_hosts.is_empty()
            || self.trusted(host)
            || self.allowed_hosts.iter().any(|h| match h.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len()
                        && host.ends_with(suffix)
                        && host[..host.len() - suffix.len()].ends_with('.')
                }
                None => h == host,
            })
    }

    /// Checks a URL before any connection is made. Host names are checked again, after resolution, by
    /// [`GuardedResolver`]; IP literals are fully decided here.
    pub fn check(&self, url: &reqwest::Url) -> Result<(), String> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err("plain http:// is not allowed (fetch.allow_http is off); use https://".into()),
            other => return Err(format!("scheme `{other}` is not allowed")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("URLs with embedded credentials are not allowed".into());
        }
        let host = url.host_str().ok_or("URL has no host")?.to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        if !self.allowed(&host) {
            return Err(format!("host `{host}` is not in fetch.allowed_hosts"));
        }
        if let Ok(ip) = host.parse::<IpAddr>()
            && !is_public(ip)
            && !self.trusted(&host)
        {
            return Err(format!("address {ip} is loopback, private, link-local or reserved"));
        }
        Ok(())
    }
}

/// Refusal raised inside reqwest (resolver, redirect policy); found again by walking the error chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refusal(String);

/// Resolves through the system resolver and refuses a name if any of its addresses is not public, so a DNS
/// answer cannot point the worker at internal services (the connection uses exactly the checked addresses).
#[derive(Debug, Clone)]
struct GuardedResolver {
    policy: Arc<UrlPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_ascii_lowercase();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !policy.trusted(&host)
                && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip()))
            {
                return Err(Box::new(Refusal(format!(
                    "host `{host}` resolves to {}, a loopback, private, link-local or reserved address",
                    bad.ip()
                ))) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Fetches inputs into a job's scratch directory.
#[derive(Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    policy: Arc<UrlPolicy>,
    store: Option<Arc<dyn ArtifactStore>>,
    max_bytes: u64,
    /// Base directory for relative paths; `None` refuses them (the daemon).
    local_base: Option<PathBuf>,
}

impl Fetcher {
    pub fn new(cfg: &FetchConfig, store: Option<Arc<dyn ArtifactStore>>, local_base: Option<PathBuf>) -> Self {
        let policy = Arc::new(UrlPolicy::new(cfg));
        let redirect_policy = policy.clone();
        let max_redirects = cfg.max_redirects;
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { policy: policy.clone() }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > max_redirects {
                    return attempt.error(Refusal(format!("more than {max_redirects} redirects")));
                }
                match redirect_policy.check(attempt.url()) {
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
        Fetcher { http, policy, store, max_bytes: cfg.max_bytes, local_base }
    }

    /// Downloads one input to `dest`.
    pub async fn fetch(&self, name: &str, url: &str, dest: &Path) -> Result<u64, FetchError> {
        let refused = |reason: String| FetchError::Refused { name: name.into(), reason };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').ok_or_else(|| refused("expected s3://bucket/key".into()))?;
            let store =
                self.store.as_ref().ok_or_else(|| refused("s3:// inputs need an S3 store configured".into()))?;
            return store.get_to_file(bucket, key, dest, self.max_bytes).await.map_err(|e| FetchError::Unavailable {
                name: name.into(),
                retryable: e.is_retryable(),
                reason: e.to_string(),
            });
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
            .map_err(|e| FetchError::Unavailable {
                name: name.into(),
                reason: format!("{}: {e}", src.display()),
                retryable: false,
            })?
            .len();
        if len > self.max_bytes {
            return Err(FetchError::Unavailable {
                name: name.into(),
                reason: format!("{len} bytes is above fetch.max_bytes ({})", self.max_bytes),
                retryable: false,
            });
        }
        tokio::fs::copy(&src, dest).await.map_err(|e| FetchError::Unavailable {
            name: name.into(),
            reason: e.to_string(),
            retryable: true,
        })
    }

    async fn fetch_http(&self, name: &str, url: &str, dest: &Path) -> Result<u64, FetchError> {
        let refused = |reason: String| FetchError::Refused { name: name.into(), reason };
        let unavailable =
            |reason: String, retryable: bool| FetchError::Unavailable { name: name.into(), reason, retryable };
        let parsed = reqwest::Url::parse(url).map_err(|e| refused(format!("invalid URL: {e}")))?;
        self.policy.check(&parsed).map_err(refused)?;
        let response = self.http.get(parsed).send().await.map_err(|e| classify(name, &e))?;
        let status = response.status();
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
            return FetchError::Refused { name: name.into(), reason: r.0.clone() };
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
    FetchError::Unavailable { name: name.into(), reason: format!("{what}: {detail}"), retryable: true }
}

impl From<StoreError> for FetchError {
    fn from(e: StoreError) -> Self {
        FetchError::Unavailable { name: String::new(), retryable: e.is_retryable(), reason: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_classes() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad} must be refused");
        }
        for good in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(good.parse().unwrap()), "{good} must be allowed");
        }
    }

    #[test]
    fn url_policy() {
        let policy = UrlPolicy::new(&FetchConfig {
            allowed_hosts: vec!["*.cdn.example".into(), "media.example".into()],
            ..FetchConfig::default()
        });
        let check = |u: &str| policy.check(&reqwest::Url::parse(u).unwrap());
        assert!(check("https://a.cdn.example/x").is_ok());
        assert!(check("https://media.example/x").is_ok());
        assert!(check("https://evilcdn.example/x").is_err());
        assert!(check("https://cdn.example.evil/x").is_err());
        assert!(check("http://media.example/x").unwrap_err().contains("http://"));
        assert!(check("ftp://media.example/x").is_err());
        let open = UrlPolicy::new(&FetchConfig::default());
        let check = |u: &str| open.check(&reqwest::Url::parse(u).unwrap());
        assert!(check("https://169.254.169.254/latest/meta-data").unwrap_err().contains("169.254.169.254"));
        assert!(check("https://[::1]/").is_err());
        assert!(check("https://user:pw@media.example/").is_err());
    }
}
