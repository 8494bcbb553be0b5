//! The worker's URL policy for `https://` inputs (`worker/src/fetch/ssrf.rs`) and the credential masking of
//! fetch errors (`redact.rs`): the pure parts, before any DNS lookup.
//!
//! Input: text, one URL per line; the first is the job's URL, the rest a redirect chain. Every line is
//! checked under three policies (open, a host allowlist, trusted internal hosts with plain http). Besides
//! never panicking: an accepted URL has an allowed scheme and no credentials; an accepted IP literal is
//! outside every special-purpose range of an independent table below (unless the host is trusted); no
//! loopback name passes; an accepted redirect to a trusted host came from trusted hosts only; and the raw
//! bytes, read as IPv4 and IPv6 addresses, are classified consistently with that table.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ainern2d_worker::config::FetchConfig;
use ainern2d_worker::fetch::{UrlPolicy, is_public, redact};
use libfuzzer_sys::fuzz_target;
use url::Url;

/// IPv4 ranges no job may reach: IANA's special-purpose registry (as a whole, even the few entries it marks
/// global, such as 192.0.0.9/32), multicast, the reserved 240/4 and broadcast.
const V4_SPECIAL: &[(u32, u8)] = &[
    (0x0000_0000, 8),  // 0/8 "this network"
    (0x0a00_0000, 8),  // 10/8
    (0x6440_0000, 10), // 100.64/10 shared
    (0x7f00_0000, 8),  // 127/8 loopback
    (0xa9fe_0000, 16), // 169.254/16 link-local
    (0xac10_0000, 12), // 172.16/12
    (0xc000_0000, 24), // 192.0.0/24 IETF protocol assignments
    (0xc000_0200, 24), // 192.0.2/24 TEST-NET-1
    (0xc058_6300, 24), // 192.88.99/24 6to4 relay anycast
    (0xc0a8_0000, 16), // 192.168/16
    (0xc612_0000, 15), // 198.18/15 benchmarking
    (0xc633_6400, 24), // 198.51.100/24 TEST-NET-2
    (0xcb00_7100, 24), // 203.0.113/24 TEST-NET-3
    (0xe000_0000, 4),  // 224/4 multicast
    (0xf000_0000, 4),  // 240/4 reserved, 255.255.255.255
];

/// IPv6 ranges no job may reach, besides everything outside 2000::/3 and the forms that embed an IPv4
/// address (judged by it; see `embedded_v4`).
const V6_SPECIAL: &[(u128, u8)] = &[
    (0x2001_0000 << 96, 23), // 2001::/23 IETF protocol assignments (Teredo, benchmarking, ORCHID)
    (0x2001_0db8 << 96, 32), // 2001:db8::/32 documentation
    (0x2002 << 112, 16),     // 2002::/16 6to4
    (0x3fff << 112, 20),     // 3fff::/20 documentation
    (0x0064_ff9b_0001 << 80, 48), // 64:ff9b:1::/48 local-use NAT64
    (0x0100 << 112, 64),     // 100::/64 discard-only
    (0x5f00 << 112, 16),     // 5f00::/16 SRv6 SIDs
    (0xfc00 << 112, 7),      // fc00::/7 unique local
    (0xfe80 << 112, 10),     // fe80::/10 link-local
    (0xfec0 << 112, 10),     // fec0::/10 site-local
    (0xff00 << 112, 8),      // ff00::/8 multicast
    (0, 128),                // :: unspecified
    (1, 128),                // ::1 loopback
];

fn in_v4(ip: Ipv4Addr, table: &[(u32, u8)]) -> bool {
    let a = u32::from(ip);
    table.iter().any(|&(net, len)| (a ^ net) >> (32 - u32::from(len)) == 0)
}

fn in_v6(ip: Ipv6Addr, table: &[(u128, u8)]) -> bool {
    let a = u128::from(ip);
    table.iter().any(|&(net, len)| len == 0 || (a ^ net).checked_shr(128 - u32::from(len)).unwrap_or(0) == 0)
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped `::ffff:0:0/96`, well-known NAT64 `64:ff9b::/96`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let a = u128::from(ip);
    let low = Ipv4Addr::from(a as u32);
    (a >> 32 == 0xffff || a >> 32 == 0x0064_ff9b_0000_0000_0000_0000).then_some(low)
}

/// Whether the table says `ip` is special (never to be reached by a job).
fn special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => in_v4(v4, V4_SPECIAL),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => in_v4(v4, V4_SPECIAL),
            None => (u128::from(v6) >> 125) != 1 || in_v6(v6, V6_SPECIAL),
        },
    }
}

fn check_address(ip: IpAddr) {
    let public = is_public(ip);
    assert!(!(public && special(ip)), "{ip} is classified public but lies in a special-purpose range");
    if let IpAddr::V6(v6) = ip
        && let Some(v4) = embedded_v4(v6)
    {
        assert_eq!(public, is_public(IpAddr::V4(v4)), "{ip} is not judged by its embedded {v4}");
    }
}

fn host_of(url: &Url) -> Option<String> {
    let host = url.host_str()?.to_ascii_lowercase();
    Some(host.trim_start_matches('[').trim_end_matches(']').to_string())
}

fn policies() -> [(UrlPolicy, &'static [&'static str]); 3] {
    let cfg = |allowed: &[&str], trusted: &[&str], allow_http| FetchConfig {
        allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(),
        trusted_hosts: trusted.iter().map(|s| s.to_string()).collect(),
        allow_http,
        ..FetchConfig::default()
    };
    const NONE: &[&str] = &[];
    const TRUSTED: &[&str] = &["files.internal", "10.0.0.5", "::1", "localhost"];
    [
        (UrlPolicy::new(&cfg(&[], &[], false)), NONE),
        (UrlPolicy::new(&cfg(&["*.cdn.example", "media.example"], &[], false)), NONE),
        (UrlPolicy::new(&cfg(&[], TRUSTED, true)), TRUSTED),
    ]
}

fn check_url(policy: &UrlPolicy, trusted: &[&str], allow_http: bool, url: &Url) -> bool {
    let Ok(()) = policy.check(url) else { return false };
    assert!(url.scheme() == "https" || (allow_http && url.scheme() == "http"), "{url}: scheme accepted");
    assert!(url.username().is_empty() && url.password().is_none(), "{url}: credentials accepted");
    let host = host_of(url).expect("an accepted URL has a host");
    let is_trusted = trusted.contains(&host.as_str());
    let name = host.trim_end_matches('.');
    assert!(is_trusted || (name != "localhost" && !name.ends_with(".localhost")), "{url}: loopback name accepted");
    if let Ok(ip) = host.parse::<IpAddr>() {
        assert!(is_trusted || !special(ip), "{url}: special-purpose address {ip} accepted");
    }
    // The URL a redirect or a log line carries is the serialised one: it must be judged the same.
    let reparsed = Url::parse(url.as_str()).expect("a serialised URL parses");
    assert!(policy.check(&reparsed).is_ok(), "{url}: accepted, but not once serialised");
    true
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 16 {
        let v6: [u8; 16] = data[..16].try_into().unwrap();
        check_address(IpAddr::V6(Ipv6Addr::from(v6)));
    }
    if data.len() >= 4 {
        let v4: [u8; 4] = data[..4].try_into().unwrap();
        check_address(IpAddr::V4(Ipv4Addr::from(v4)));
        check_address(IpAddr::V6(Ipv4Addr::from(v4).to_ipv6_mapped()));
    }
    let text = String::from_utf8_lossy(data);
    let _ = redact(&text);
    let urls: Vec<Url> = text.lines().take(8).filter_map(|line| Url::parse(line).ok()).collect();
    for (i, (policy, trusted)) in policies().iter().enumerate() {
        let allow_http = i == 2;
        for (n, url) in urls.iter().enumerate() {
            let accepted = check_url(policy, trusted, allow_http, url);
            if n == 0 {
                continue;
            }
            let previous = &urls[..n];
            if policy.check_redirect(previous, url).is_ok() {
                assert!(accepted, "{url}: a redirect target the URL check refuses");
                let to_trusted = trusted.contains(&host_of(url).unwrap_or_default().as_str());
                let from_trusted = previous.iter().all(|u| host_of(u).is_some_and(|h| trusted.contains(&h.as_str())));
                assert!(!to_trusted || from_trusted, "{url}: a trusted host reached by a redirect from a public one");
            }
        }
    }
    // Error messages quote URLs: masking is complete (nothing is left to mask) and total.
    for line in text.lines().take(8) {
        let once = redact(line);
        assert_eq!(redact(&once), once, "redacting {line:?} left something to mask");
    }
});
