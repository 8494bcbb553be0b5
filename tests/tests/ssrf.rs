//! The SSRF corpus: every way of writing a loopback, private or otherwise internal address that URL
//! parsers accept (decimal, octal and hex IPv4, short forms, percent-encoding, full-width digits, IPv4-mapped,
//! -compatible and NAT64 IPv6, trailing dots, names that resolve to loopback), schemes that are not
//! HTTP(S), names that a test resolver answers with internal addresses, and redirects to all of these. The
//! real `Fetcher` is given each one while a listener on 127.0.0.1 counts connections: every URL must be
//! refused as a permanent error, and the listener must see nothing. Positive controls (the same listener
//! as a trusted host, directly and at the end of a redirect chain) prove the counter counts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ainern2d_worker::config::FetchConfig;
use ainern2d_worker::fetch::{FetchError, Fetcher, HostResolver, Resolution};

/// A listener on 127.0.0.1 that answers `200 ok` and counts the connections it accepted.
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
            });
        }
    });
    (port, accepted)
}

fn corpus(p: u16) -> Vec<String> {
    let loopback = [
        "127.0.0.1",
        "2130706433",          // decimal
        "017700000001",        // octal, whole
        "0x7f000001",          // hex, whole
        "0x7f.0.0.1",          // hex first octet
        "0177.0.0.1",          // octal first octet
        "0177.0000.0000.0001", // octal, padded
        "127.000.000.001",
        "127.1",   // short form
        "127.0.1", // short form
        "0x7f.1",
        "127.0.0.1.",                                          // trailing dot
        "%31%32%37.0.0.1",                                     // percent-encoded
        "\u{ff11}\u{ff12}\u{ff17}.\u{ff10}.\u{ff10}.\u{ff11}", // full-width digits (IDNA maps them)
        "127.255.255.254",
        "0", // 0.0.0.0, which Linux connects to locally
        "0.0.0.0",
        "0x0",
        "[::1]",
        "[0:0:0:0:0:0:0:1]",
        "[::]",
        "[::ffff:127.0.0.1]", // IPv4-mapped
        "[::ffff:7f00:1]",
        "[0:0:0:0:0:ffff:127.0.0.1]",
        "[::127.0.0.1]",        // IPv4-compatible (deprecated)
        "[64:ff9b::127.0.0.1]", // well-known NAT64
        "[64:ff9b::7f00:1]",
        "[64:ff9b:1::7f00:1]", // local-use NAT64
        "localhost",           // a name that resolves to loopback
        "LOCALHOST",
        "localhost.",
        "app.localhost", // RFC 6761: every name under localhost is loopback
    ];
    let mut urls: Vec<String> = loopback.iter().map(|h| format!("http://{h}:{p}/input.png")).collect();
    for scheme in ["HTTP", "https", "hTTp"] {
        urls.push(format!("{scheme}://127.0.0.1:{p}/input.png"));
    }
    urls.push(format!("http://user:secret@example.com:{p}/")); // embedded credentials
    urls.push(format!("http://127.0.0.1:{p}@127.0.0.1:{p}/")); // userinfo confusion
    for other in [
        "file:///etc/passwd".to_string(),
        format!("gopher://127.0.0.1:{p}/_GET%20/"),
        format!("ftp://127.0.0.1:{p}/x"),
        format!("dict://127.0.0.1:{p}/info"),
        format!("ldap://127.0.0.1:{p}/"),
        format!("ws://127.0.0.1:{p}/"),
        "data:text/plain,hello".to_string(),
        "jar:file:///x.jar!/y".to_string(),
        "netdoc:///etc/passwd".to_string(),
    ] {
        urls.push(other);
    }
    // Internal addresses that are not this listener: refused just the same (nothing listens there to count).
    for internal in [
        "10.0.0.1",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.169.254", // cloud metadata
        "[fd00:ec2::254]", // cloud metadata over IPv6
        "100.64.0.1",
        "198.18.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "[fe80::1]",
        "[fc00::1]",
        "[2002:7f00:1::]", // 6to4 of 127.0.0.1
    ] {
        urls.push(format!("http://{internal}:{p}/"));
    }
    urls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_url_of_the_corpus_is_refused_before_any_connection() {
    let (port, accepted) = counting_listener().await;
    let cfg = FetchConfig { allow_http: true, ..FetchConfig::default() };
    let fetcher = Fetcher::new(&cfg, None, None);
    let dir = tempfile::tempdir().unwrap();
    let urls = corpus(port);
    assert_eq!(urls.len(), 58, "the README counts them");
    let mut let_through = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let dest = dir.path().join(format!("in-{i}"));
        match fetcher.fetch("image", url, &dest).await {
            Err(e @ FetchError::Refused { .. }) => assert!(!e.is_retryable(), "{url}: {e}"),
            other => let_through.push(format!("{url}: {other:?}")),
        }
        assert!(!dest.exists(), "{url}: something was written");
    }
    assert!(let_through.is_empty(), "not refused:\n{}", let_through.join("\n"));
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the listener was reached");

    // The control: the same listener as a trusted host is reached, so the counter counts.
    let trusted = FetchConfig { allow_http: true, trusted_hosts: vec!["127.0.0.1".into()], ..FetchConfig::default() };
    let dest = dir.path().join("trusted");
    let n = Fetcher::new(&trusted, None, None)
        .fetch("image", &format!("http://127.0.0.1:{port}/input.png"), &dest)
        .await
        .unwrap();
    assert_eq!((n, accepted.load(Ordering::SeqCst)), (2, 1));
}

/// Answers each lookup the way a hostile or misconfigured DNS server might. `origin.test` is the stand-in
/// for a public server (trusted in the tests that use it, the only way a loopback server can play one);
/// `rebind.example` answers another internal address on every lookup. Names without an entry do not
/// resolve, so nothing leaves the machine. Every name asked is recorded.
struct TestResolver {
    names: HashMap<&'static str, Vec<IpAddr>>,
    rebinds: AtomicUsize,
    asked: Mutex<Vec<String>>,
}

const REBIND: [&str; 3] = ["127.0.0.1", "10.0.0.5", "::1"];

impl TestResolver {
    fn new() -> Arc<Self> {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let names = [
            ("origin.test", vec![ip("127.0.0.1")]),
            ("internal.example", vec![ip("127.0.0.1")]),
            ("ten.example", vec![ip("10.0.0.5")]),
            ("metadata.example", vec![ip("169.254.169.254")]),
            ("loopback6.example", vec![ip("::1")]),
            ("mapped.example", vec![ip("::ffff:127.0.0.1")]),
            ("nat64.example", vec![ip("64:ff9b::7f00:1")]),
            ("ula.example", vec![ip("fd00::1")]),
            ("zero.example", vec![ip("0.0.0.0")]),
            ("shared.example", vec![ip("100.64.0.1")]),
            ("linklocal6.example", vec![ip("fe80::1")]),
            // One public address and one private: the whole name is refused (not just the private
            // address dropped), whichever comes first; the public one is never tried either.
            ("mixed.example", vec![ip("93.184.216.34"), ip("127.0.0.1")]),
            ("mixed-first.example", vec![ip("127.0.0.1"), ip("93.184.216.34")]),
        ];
        Arc::new(TestResolver {
            names: names.into_iter().collect(),
            rebinds: AtomicUsize::new(0),
            asked: Mutex::new(Vec::new()),
        })
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl HostResolver for TestResolver {
    fn resolve(&self, host: &str) -> Resolution {
        self.asked.lock().unwrap().push(host.to_string());
        let name = host.trim_end_matches('.');
        let answer = if name == "rebind.example" {
            let i = self.rebinds.fetch_add(1, Ordering::SeqCst);
            Some(vec![REBIND[i % REBIND.len()].parse().unwrap()])
        } else {
            self.names.get(name).cloned()
        };
        let host = host.to_string();
        Box::pin(async move {
            answer.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host}: not in the test")))
        })
    }
}

/// Fetches every URL and returns those not refused as a permanent error whose message names what was
/// refused (`expect`); nothing may be written.
async fn refused_all(fetcher: &Fetcher, cases: &[(String, String)], dir: &std::path::Path) -> Vec<String> {
    let mut let_through = Vec::new();
    for (i, (url, expect)) in cases.iter().enumerate() {
        let dest = dir.join(format!("case-{i}"));
        match fetcher.fetch("image", url, &dest).await {
            Err(e @ FetchError::Refused { .. }) if !e.is_retryable() && e.to_string().contains(expect.as_str()) => {}
            other => let_through.push(format!("{url} (expected a refusal naming `{expect}`): {other:?}")),
        }
        assert!(!dest.exists(), "{url}: something was written");
    }
    let_through
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_resolve_to_internal_addresses_are_refused_after_resolution() {
    let (port, accepted) = counting_listener().await;
    let resolver = TestResolver::new();
    let cfg = FetchConfig { allow_http: true, ..FetchConfig::default() };
    let fetcher = Fetcher::with_resolver(&cfg, None, None, resolver.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(String, String)> = [
        ("internal.example", "127.0.0.1"),
        ("INTERNAL.Example", "127.0.0.1"),
        ("internal.example.", "127.0.0.1"),
        ("ten.example", "10.0.0.5"),
        ("metadata.example", "169.254.169.254"),
        ("loopback6.example", "::1"),
        ("mapped.example", "::ffff:127.0.0.1"),
        ("nat64.example", "64:ff9b::7f00:1"),
        ("ula.example", "fd00::1"),
        ("zero.example", "0.0.0.0"),
        ("shared.example", "100.64.0.1"),
        ("linklocal6.example", "fe80::1"),
        ("mixed.example", "127.0.0.1"),
        ("mixed-first.example", "127.0.0.1"),
        // The answer changes on every lookup; each one is judged, none is remembered as good.
        ("rebind.example", REBIND[0]),
        ("rebind.example", REBIND[1]),
        ("rebind.example", REBIND[2]),
    ]
    .into_iter()
    .map(|(host, ip)| (format!("http://{host}:{port}/input.png"), format!("resolves to {ip}")))
    .collect();
    cases.push((format!("https://internal.example:{port}/input.png"), "resolves to 127.0.0.1".into()));
    assert_eq!(cases.len(), 18, "the README counts them");
    let let_through = refused_all(&fetcher, &cases, dir.path()).await;
    assert!(let_through.is_empty(), "not refused:\n{}", let_through.join("\n"));
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the listener was reached");
    // Refused after resolution: the resolver was asked every time, the rebinding name three times.
    let asked = resolver.asked();
    assert_eq!(asked.len(), cases.len(), "{asked:?}");
    assert_eq!(asked.iter().filter(|h| *h == "rebind.example").count(), 3, "{asked:?}");

    // The control: a trusted name that the test resolver points at the listener reaches it, so the
    // connection goes where the resolver said.
    let trusted = FetchConfig { trusted_hosts: vec!["origin.test".into()], ..cfg };
    let n = Fetcher::with_resolver(&trusted, None, None, resolver.clone())
        .fetch("image", &format!("http://origin.test:{port}/input.png"), &dir.path().join("trusted"))
        .await
        .unwrap();
    assert_eq!((n, accepted.load(Ordering::SeqCst)), (2, 1));
}

/// A loopback server, reached as `origin.test`, that redirects: `/to/<status>/<i>` answers `<status>`
/// with `Location: <targets[i]>`, `/chain/<k>/<n>` answers 302 to `/chain/<k+1>/<n>` and, at `k = n`, to
/// the counting listener as `origin.test` (a redirect the policy allows). Counts the requests it answers.
async fn redirecting_server(targets: Vec<String>, counting_port: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    let targets = Arc::new(targets);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = listener.accept().await {
            let (targets, count) = (targets.clone(), count.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split(' ').nth(1).unwrap_or("/");
                let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                let (status, location) = match parts[..] {
                    ["to", status, i] => (status.to_string(), targets[i.parse::<usize>().unwrap()].clone()),
                    ["chain", k, n] => {
                        let (k, n) = (k.parse::<usize>().unwrap(), n.parse::<usize>().unwrap());
                        let next = if k < n {
                            format!("/chain/{}/{n}", k + 1)
                        } else {
                            format!("http://origin.test:{counting_port}/")
                        };
                        ("302".to_string(), next)
                    }
                    _ => ("404".to_string(), String::new()),
                };
                count.fetch_add(1, Ordering::SeqCst);
                let response = format!(
                    "HTTP/1.1 {status} Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = sock.write_all(response.as_bytes()).await;
            });
        }
    });
    (port, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_redirect_target_is_checked_before_connecting() {
    let (c, accepted) = counting_listener().await;
    // Each target, and what the refusal must name.
    let targets = [
        (format!("http://127.0.0.1:{c}/"), "127.0.0.1"),
        (format!("http://[::1]:{c}/"), "::1"),
        ("http://169.254.169.254/latest/meta-data/".to_string(), "169.254.169.254"),
        (format!("http://0x7f.1:{c}/"), "127.0.0.1"),
        (format!("http://2130706433:{c}/"), "127.0.0.1"),
        (format!("http://[::ffff:127.0.0.1]:{c}/"), "::ffff:127.0.0.1"),
        (format!("http://[64:ff9b::7f00:1]:{c}/"), "64:ff9b::7f00:1"),
        ("http://10.0.0.5/".to_string(), "10.0.0.5"),
        (format!("//127.0.0.1:{c}/"), "127.0.0.1"), // scheme-relative
        (format!("https://127.0.0.1:{c}/"), "127.0.0.1"),
        (format!("http://localhost:{c}/"), "localhost"),
        (format!("http://internal.example:{c}/"), "resolves to 127.0.0.1"), // through the test resolver
        (format!("http://mixed.example:{c}/"), "resolves to 127.0.0.1"),
        ("file:///etc/passwd".to_string(), "file:///etc/passwd"),
        (format!("gopher://127.0.0.1:{c}/_GET%20/"), "gopher"),
    ];
    let (r, answered) = redirecting_server(targets.iter().map(|(t, _)| t.clone()).collect(), c).await;
    let mut cases = Vec::new();
    for status in [301, 302, 303, 307, 308] {
        for (i, (_, expect)) in targets.iter().enumerate() {
            cases.push((format!("http://origin.test:{r}/to/{status}/{i}"), expect.to_string()));
        }
    }
    // One redirect more than fetch.max_redirects (5), whose last hop would reach the listener.
    cases.push((format!("http://origin.test:{r}/chain/1/6"), "more than 5 redirects".into()));
    assert_eq!(cases.len(), 76, "the README counts them");

    let resolver = TestResolver::new();
    let cfg = FetchConfig { allow_http: true, trusted_hosts: vec!["origin.test".into()], ..FetchConfig::default() };
    assert_eq!(cfg.max_redirects, 5);
    let fetcher = Fetcher::with_resolver(&cfg, None, None, resolver.clone());
    let dir = tempfile::tempdir().unwrap();
    let let_through = refused_all(&fetcher, &cases, dir.path()).await;
    assert!(let_through.is_empty(), "not refused:\n{}", let_through.join("\n"));
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the listener was reached");
    // The origin did answer every request (the redirects were issued): one per case, six in the chain.
    assert_eq!(answered.load(Ordering::SeqCst), cases.len() - 1 + 6);

    // The control: exactly fetch.max_redirects hops, the last to the listener as a trusted name, is followed.
    let n =
        fetcher.fetch("image", &format!("http://origin.test:{r}/chain/1/5"), &dir.path().join("chain")).await.unwrap();
    assert_eq!((n, accepted.load(Ordering::SeqCst)), (2, 1));
}

/// A trusted 127.0.0.1 server whose body never ends: chunks of `chunk` bytes every `every`, no length.
/// Returns its port and how many body bytes it managed to send before the client hung up.
async fn endless(chunk: usize, every: std::time::Duration) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(AtomicUsize::new(0));
    let count = sent.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let head = b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ntransfer-encoding: chunked\r\n\r\n";
                if sock.write_all(head).await.is_err() {
                    return;
                }
                let body = vec![b'x'; chunk];
                loop {
                    let frame = [format!("{chunk:x}\r\n").as_bytes(), &body, b"\r\n"].concat();
                    if sock.write_all(&frame).await.is_err() {
                        return;
                    }
                    count.fetch_add(chunk, Ordering::SeqCst);
                    tokio::time::sleep(every).await;
                }
            });
        }
    });
    (port, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_is_cut_at_the_byte_cap_and_a_slow_one_at_the_time_cap() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = |max_bytes: u64, timeout_s: u64| FetchConfig {
        allow_http: true,
        trusted_hosts: vec!["127.0.0.1".into()],
        max_bytes,
        timeout_s,
        ..FetchConfig::default()
    };
    // Fast and endless: cut just past 1 MiB.
    let (port, sent) = endless(64 * 1024, std::time::Duration::ZERO).await;
    let started = std::time::Instant::now();
    let e = Fetcher::new(&trusted(1024 * 1024, 60), None, None)
        .fetch("image", &format!("http://127.0.0.1:{port}/big.png"), &dir.path().join("big"))
        .await
        .expect_err("an endless body must not be accepted");
    assert!(!e.is_retryable() && e.to_string().contains("fetch.max_bytes"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // What the server got out before the client hung up: the cap plus what the socket buffers held.
    assert!(sent.load(Ordering::SeqCst) < 16 * 1024 * 1024, "{} bytes sent", sent.load(Ordering::SeqCst));
    // Slow and endless (a byte a few times a second, under every cap): cut at the time limit.
    let (port, _) = endless(1, std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let slow = Fetcher::new(&trusted(1024 * 1024, 1), None, None);
    let (url, dest) = (format!("http://127.0.0.1:{port}/slow.png"), dir.path().join("slow"));
    let fetch = slow.fetch("image", &url, &dest);
    let e = tokio::time::timeout(std::time::Duration::from_secs(10), fetch)
        .await
        .expect("the time cap did not cut the body")
        .expect_err("a body that never ends must time out");
    assert!(e.to_string().contains("timed out"), "{e}");
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_secs(5), "{took:?}");
}
