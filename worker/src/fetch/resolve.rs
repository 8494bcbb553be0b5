//! Where host names become addresses: the system resolver in production, another one in tests (a name
//! that answers loopback, a private range, or a different address on each call). Whatever a resolver
//! answers is checked by the SSRF guard (`ssrf.rs`) at connect time, and the connection uses exactly the
//! addresses that were checked.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;

/// The answer of a [`HostResolver`].
pub type Resolution = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// Resolves a host name (lower case, as the URL has it, without brackets or port).
pub trait HostResolver: Send + Sync + 'static {
    fn resolve(&self, host: &str) -> Resolution;
}

/// The system resolver (`getaddrinfo` through tokio), what [`super::Fetcher::new`] uses.
#[derive(Debug, Clone, Copy)]
pub(super) struct SystemResolver;

impl HostResolver for SystemResolver {
    fn resolve(&self, host: &str) -> Resolution {
        let host = host.to_string();
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.map(|a| a.ip()).collect()) })
    }
}
