//! The SSRF guard: which addresses and URLs a job may make the worker connect to, checked before the
//! first request, on every redirect, and again after DNS resolution.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::resolve::HostResolver;
use crate::config::FetchConfig;

/// Whether an address is one a job may make the worker connect to. Refused: everything IANA's
/// special-purpose registries do not mark globally reachable (loopback, private, shared, link-local,
/// documentation, benchmarking, reserved, multicast, unspecified, 6to4 relays), in v4 or v6 form, and in
/// IPv6 everything outside global unicast `2000::/3`. Addresses that embed an IPv4 address (mapped,
/// well-known NAT64) are judged by it.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            // 64:ff9b::/96, the well-known NAT64 prefix: a gateway connects to the embedded address.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                return is_public_v4(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
            }
            // Only 2000::/3 is global unicast. Outside it lie loopback, unspecified, IPv4-compatible and
            // -translated forms, local-use NAT64 (64:ff9b:1::/48), discard-only (100::/64), SRv6 SIDs
            // (5f00::/16), unique local (fc00::/7), link-local (fe80::/10), site-local (fec0::/10) and
            // multicast: none of them is where a job's input lives.
            if (s[0] & 0xe000) != 0x2000 {
                return false;
            }
            // 2001::/23 IETF protocol assignments (Teredo, ORCHID, benchmarking) and 2001:db8::/32 documentation.
            let ietf = s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8);
            // 6to4: deprecated (RFC 7526), and a relay reaches any IPv4 address.
            let six_to_four = s[0] == 0x2002;
            // 3fff::/20 documentation (RFC 9637).
            let documentation = s[0] == 0x3fff && s[1] < 0x1000;
            !(ietf || six_to_four || documentation)
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
        || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 6to4 relay anycast (deprecated)
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
        let host = host_of(url).ok_or("URL has no host")?;
        if !self.allowed(&host) {
            return Err(format!("host `{host}` is not in fetch.allowed_hosts"));
        }
        // RFC 6761: `localhost` and every name under it are loopback, whatever a resolver says or fails to
        // say (`localhost.` may not resolve here and resolve through DNS elsewhere).
        let name = host.trim_end_matches('.');
        if (name == "localhost" || name.ends_with(".localhost")) && !self.trusted(&host) {
            return Err(format!("host `{host}` is a loopback name"));
        }
        if let Ok(ip) = host.parse::<IpAddr>()
            && !is_public(ip)
            && !self.trusted(&host)
        {
            return Err(format!("address {ip} is loopback, private, link-local or reserved"));
        }
        Ok(())
    }

    /// Checks the target of a redirect; `previous` holds the URLs of the chain so far, the job's first.
    /// A trusted host may be private, so it is reached only from the job's own URL or from another
    /// trusted host: otherwise any public server could bounce the worker onto the internal one.
    pub fn check_redirect(&self, previous: &[reqwest::Url], next: &reqwest::Url) -> Result<(), String> {
        self.check(next)?;
        let host = host_of(next).unwrap_or_default();
        let from_trusted = previous.iter().all(|u| host_of(u).is_some_and(|h| self.trusted(&h)));
        if self.trusted(&host) && !from_trusted {
            return Err(format!(
                "host `{host}` is in fetch.trusted_hosts and is reached only by a job's own URL or from another \
                 trusted host, not by a redirect from a public one; name it in the job's inputs directly"
            ));
        }
        Ok(())
    }
}

/// The host of a URL, lower case, without the brackets of an IPv6 literal.
fn host_of(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?.to_ascii_lowercase();
    Some(host.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// Refusal raised inside reqwest (resolver, redirect policy); found again by walking the error chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Refusal(pub(super) String);

/// Resolves through a [`HostResolver`] (the system one in production) and refuses a name if any of its
/// addresses is not public, so a DNS answer cannot point the worker at internal services. It runs when the
/// connector needs the addresses, for the job's URL and for every redirect target, and the connection uses
/// exactly the checked addresses: there is no earlier lookup whose answer a rebinding server could change.
/// One private address among public ones refuses the whole name rather than dropping it: a name that
/// answers so is not one to trust with the next lookup either.
pub(super) struct GuardedResolver {
    pub(super) policy: Arc<UrlPolicy>,
    pub(super) inner: Arc<dyn HostResolver>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_ascii_lowercase();
        let lookup = self.inner.resolve(&host);
        Box::pin(async move {
            let ips = lookup.await?;
            if !policy.trusted(&host)
                && let Some(bad) = ips.iter().find(|ip| !is_public(**ip))
            {
                return Err(Box::new(Refusal(format!(
                    "host `{host}` resolves to {bad}, a loopback, private, link-local or reserved address"
                ))) as _);
            }
            Ok(Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0))) as Addrs)
        })
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
            "192.88.99.1", // 6to4 relay anycast (deprecated)
            "192.0.0.170", // IETF protocol assignments
            "198.18.0.1",  // benchmarking
            "203.0.113.9", // documentation
            "240.0.0.1",   // reserved
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fec0::1",            // site-local (deprecated)
            "::ffff:127.0.0.1",   // IPv4-mapped
            "::ffff:0:a00:1",     // IPv4-translated (SIIT)
            "64:ff9b::a9fe:a9fe", // NAT64 of a link-local address
            "64:ff9b:1::a00:1",   // local-use NAT64
            "100::1",             // discard-only
            "2001::1",            // Teredo
            "2001:2::1",          // benchmarking
            "2001:10::1",         // ORCHID (deprecated)
            "2001:db8::1",        // documentation
            "3fff::1",            // documentation (RFC 9637)
            "2002:7f00:1::1",     // 6to4 of 127.0.0.1
            "2002:5db8:d822::1",  // 6to4 of a public address: 6to4 is deprecated, refused as a whole
            "5f00::1",            // SRv6 SIDs
            "4000::1",            // outside 2000::/3: not allocated for global unicast
            "ff02::1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad} must be refused");
        }
        for good in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001::1", "64:ff9b::5db8:d822"] {
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
        assert!(check("https://[fec0::1]/").is_err());
        assert!(check("https://user:pw@media.example/").is_err());
    }

    #[test]
    fn trusted_hosts_are_not_redirect_targets_of_other_hosts() {
        let policy = UrlPolicy::new(&FetchConfig {
            trusted_hosts: vec!["files.internal".into(), "10.0.0.5".into()],
            ..FetchConfig::default()
        });
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        let public = url("https://media.example/a.png");
        let internal = url("https://files.internal/a.png");
        // A job may name a trusted host directly, and a trusted host may redirect within trusted hosts.
        assert!(policy.check(&internal).is_ok());
        assert!(policy.check_redirect(std::slice::from_ref(&internal), &url("https://10.0.0.5/b")).is_ok());
        // A public URL may not bounce the worker onto one, however long the chain.
        for target in ["https://files.internal/a.png", "https://FILES.internal/x", "https://10.0.0.5/b"] {
            let err = policy.check_redirect(std::slice::from_ref(&public), &url(target)).unwrap_err();
            assert!(err.contains("trusted"), "{target}: {err}");
            let chain = [internal.clone(), public.clone()];
            assert!(policy.check_redirect(&chain, &url(target)).is_err(), "{target} after a public hop");
        }
        // Public targets are still checked as usual.
        assert!(policy.check_redirect(std::slice::from_ref(&public), &url("https://cdn.example/a.png")).is_ok());
        assert!(policy.check_redirect(std::slice::from_ref(&internal), &url("https://127.0.0.1/")).is_err());
    }
}
