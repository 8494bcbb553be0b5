//! The hub's status page (`/ui`) in headless Chromium, against the real hub and worker binaries on RabbitMQ,
//! Postgres and S3: it renders the fleet, shows a job's events as they happen, and its cordon and drain
//! buttons reach the worker. Chromium is driven over the DevTools protocol (a WebSocket and JSON-RPC), with
//! no driver in between.
//!
//! Needs Debian's `chromium` (`scripts/test.sh` installs it); without it the test fails, unless
//! `AINERN2D_TEST_SKIP_BROWSER=1` says to skip it. `AINERN2D_TEST_SCREENSHOT=docs/images/status-page.png`
//! writes the page, with the worker running and its jobs finished, as a 1280×800 PNG (a relative path is
//! taken from the repository root).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ainern2d_contract::JobKind;
use ainern2d_tests::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

mod hub_support;
use hub_support::*;

const ADMIN: &str = "ui-admin-token";
const READER: &str = "ui-read-token";

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_renders_the_fleet_streams_a_job_and_its_buttons_cordon_and_drain_the_worker() {
    let Some(chromium) = chromium() else { return };
    let started = Instant::now();
    let s = setup("ui").await;
    let tokens = tempfile::tempdir().unwrap();
    let (admin_file, read_file) = (tokens.path().join("admin"), tokens.path().join("read"));
    std::fs::write(&admin_file, ADMIN).unwrap();
    std::fs::write(&read_file, READER).unwrap();
    let hub = s
        .hub(&format!(
            "[api]\nadmin_token_file = \"{}\"\nread_token_file = \"{}\"\n",
            admin_file.display(),
            read_file.display()
        ))
        .await;
    let base = format!("http://127.0.0.1:{}", hub.http_port);
    // Slow enough mock jobs (16 tokens over 4 s) that their progress is seen arriving.
    create_bucket(&s3().await, &s.prefix.to_lowercase()).await;
    let port = free_port();
    let mut worker = Worker::spawn(&worker_config(
        &amqp_url(),
        &s.prefix,
        &s.prefix.to_lowercase(),
        port,
        "[mock]\nlatency_ms = 4000\n",
    ));
    worker.wait_ready().await;
    let worker_id = format!("{}-w{port}", s.prefix);
    let logs = || format!("hub log:\n{}\nworker log:\n{}", hub.logs(), worker.logs());

    // The page itself is open, under a same-origin-only policy; the root sends the browser to it.
    let page = reqwest::get(format!("{base}/ui")).await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"), "{csp}");

    let browser = Browser::launch(&chromium).await;
    let mut tab = browser.tab().await;
    tab.navigate(&format!("{base}/")).await;
    assert_eq!(tab.eval("location.pathname").await, "/ui");

    // Reads need a token on this hub: the page says so, then shows the fleet with the read token.
    tab.wait(
        "the banner asking for a token",
        "!document.getElementById('banner').hidden && document.getElementById('banner').textContent.includes('token')",
        &logs,
    )
    .await;
    tab.set_token(READER).await;
    let state_cell = format!("document.querySelector('tr[data-worker=\"{worker_id}\"] td.state')?.textContent");
    tab.wait_eq("the worker listed as ready", &state_cell, "ready", &logs).await;
    tab.wait("the queues of every kind", "document.querySelectorAll('#queues tr[data-kind]').length === 4", &logs)
        .await;
    tab.wait("the policy's rules", "document.getElementById('policy-config').textContent.includes('GPU')", &logs).await;
    let slots = tab.eval(&format!("document.querySelector('tr[data-worker=\"{worker_id}\"]').textContent")).await;
    assert!(slots.as_str().unwrap().contains("llm"), "the worker's slots: {slots}");

    // A job submitted through the API: selected in the page, its events arrive while it runs.
    let http = reqwest::Client::new();
    let submit = |id: &str, kind: JobKind, params: Value, inputs: Value| {
        let request =
            http.post(format!("{base}/v1/jobs")).bearer_auth(ADMIN).body(job(kind, id, params, inputs)).send();
        async move { assert_eq!(request.await.unwrap().status(), 202) }
    };
    submit("ui-live", JobKind::Llm, small_params(JobKind::Llm), json!({})).await;
    tab.eval(
        "document.getElementById('job-id').value = 'ui-live'; document.getElementById('job-lookup').requestSubmit()",
    )
    .await;
    let progress = "document.querySelectorAll('#events li[data-status=\"progress\"]').length";
    tab.wait("a progress event in the page", &format!("{progress} > 0"), &logs).await;
    let seen = tab.eval(progress).await.as_u64().unwrap();
    let status: Value =
        http.get(format!("{base}/v1/jobs/ui-live")).bearer_auth(READER).send().await.unwrap().json().await.unwrap();
    assert!(
        ["queued", "accepted", "running"].contains(&status["status"].as_str().unwrap()),
        "the page saw a progress event only after the job ended: {status}"
    );
    assert_eq!(tab.eval("document.getElementById('job-stream').textContent").await, "live");
    tab.wait("more progress, over the same stream", &format!("{progress} > {seen}"), &logs).await;
    tab.wait("the outcome event", "document.querySelector('#events li[data-status=\"succeeded\"]') !== null", &logs)
        .await;
    tab.wait_eq("the stream ended", "document.getElementById('job-stream').textContent", "ended", &logs).await;
    tab.wait("the job in the list", "document.querySelector('tr[data-job=\"ui-live\"] button.link') !== null", &logs)
        .await;
    tab.wait("the job's output", "document.querySelectorAll('#job-outputs tbody tr').length === 1", &logs).await;

    // More history for the page (and the screenshot): an audio job, and a lip-sync job whose inputs do not exist.
    submit("ui-audio", JobKind::Audio, small_params(JobKind::Audio), json!({})).await;
    let bucket = s.prefix.to_lowercase();
    let missing =
        json!({"video": format!("s3://{bucket}/in/missing.mp4"), "audio": format!("s3://{bucket}/in/missing.wav")});
    submit("ui-missing-input", JobKind::Lipsync, small_params(JobKind::Lipsync), missing).await;
    let row_status = |id: &str| format!("document.querySelector('tr[data-job=\"{id}\"] td.status')?.textContent");
    tab.wait_eq("the audio job succeeded", &row_status("ui-audio"), "succeeded", &logs).await;
    tab.wait_eq("the lip-sync job failed", &row_status("ui-missing-input"), "failed", &logs).await;
    tab.eval("document.querySelector('tr[data-job=\"ui-missing-input\"] button.link').click()").await;
    tab.wait("its error", "!document.getElementById('job-error').hidden", &logs).await;
    tab.eval("document.querySelector('tr[data-job=\"ui-live\"] button.link').click()").await;
    tab.wait(
        "the first job's events again",
        "document.querySelector('#events li[data-status=\"succeeded\"]') !== null",
        &logs,
    )
    .await;
    if let Ok(path) = std::env::var("AINERN2D_TEST_SCREENSHOT") {
        tab.eval("document.activeElement && document.activeElement.blur()").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let path = if Path::new(&path).is_absolute() { PathBuf::from(path) } else { repo_root().join(path) };
        std::fs::write(&path, tab.screenshot().await).unwrap();
        eprintln!("wrote the status page to {}", path.display());
    }

    // The read token cannot cordon: the page says why, and the worker goes on.
    let button = |action: &str| {
        format!("document.querySelector('tr[data-worker=\"{worker_id}\"] button[data-action=\"{action}\"]')")
    };
    tab.eval(&format!("{}.click()", button("cordon"))).await;
    tab.wait("the refusal", "document.getElementById('notice').textContent.includes('refused')", &logs).await;
    assert_eq!(worker_state(port).await, "ready");

    // With the admin token: cordon, uncordon, then drain (two clicks), each obeyed by the worker and reported
    // back by the hub.
    tab.set_token(ADMIN).await;
    tab.eval(&format!("{}.click()", button("cordon"))).await;
    wait_obeyed(&http, &base, &worker_id, port, "cordoned", &logs).await;
    tab.wait_eq("the page showing the cordon", &state_cell, "cordoned", &logs).await;
    tab.eval(&format!("{}.click()", button("uncordon"))).await;
    wait_obeyed(&http, &base, &worker_id, port, "ready", &logs).await;
    tab.wait_eq("the page showing the uncordon", &state_cell, "ready", &logs).await;
    tab.eval(&format!("{}.click()", button("drain"))).await;
    assert_eq!(tab.eval(&format!("{}.textContent", button("drain"))).await, "Confirm drain");
    assert_eq!(worker_state(port).await, "ready", "one click does not drain");
    tab.eval(&format!("{}.click()", button("drain"))).await;
    wait_obeyed(&http, &base, &worker_id, port, "drained", &logs).await;
    tab.wait_eq("the page showing the drain", &state_cell, "drained", &logs).await;

    let violations = tab.eval("JSON.stringify(window.__csp || [])").await;
    assert_eq!(violations, "[]", "the page broke its own Content-Security-Policy");
    drop(tab);
    drop(browser);
    s.stop_worker(worker).await;
    s.cleanup().await;
    eprintln!("status page test took {:.1} s", started.elapsed().as_secs_f64());
}

/// Waits until the worker's own `/ready` and the hub's registry (its heartbeats) both report `state`.
async fn wait_obeyed(
    http: &reqwest::Client,
    base: &str,
    worker_id: &str,
    port: u16,
    state: &str,
    logs: &impl Fn() -> String,
) {
    let deadline = Instant::now() + T;
    loop {
        let workers: Value =
            http.get(format!("{base}/v1/workers")).bearer_auth(READER).send().await.unwrap().json().await.unwrap();
        let registered = workers["workers"].as_array().unwrap().iter().find(|w| w["worker_id"] == worker_id).cloned();
        let own = worker_state(port).await;
        if own == state && registered.as_ref().is_some_and(|w| w["state"] == state) {
            return;
        }
        assert!(Instant::now() < deadline, "worker `{own}`, hub {registered:?}, expected `{state}`\n{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Debian's `chromium` (or `AINERN2D_TEST_CHROMIUM`); `None` only when `AINERN2D_TEST_SKIP_BROWSER=1`.
fn chromium() -> Option<PathBuf> {
    let named = std::env::var_os("AINERN2D_TEST_CHROMIUM").map(PathBuf::from);
    let found = named.or_else(|| {
        std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join("chromium")).find(|c| c.is_file()))
    });
    if found.is_some() {
        return found;
    }
    if std::env::var("AINERN2D_TEST_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("skipped: no chromium, and AINERN2D_TEST_SKIP_BROWSER=1");
        return None;
    }
    panic!(
        "the status page test needs Chromium: install Debian's `chromium` (`apt-get install chromium`; \
         scripts/test.sh does), point AINERN2D_TEST_CHROMIUM at a Chromium binary, or set \
         AINERN2D_TEST_SKIP_BROWSER=1 to skip this test"
    );
}

/// A headless Chromium of this test's own (its own profile directory), killed on drop.
struct Browser {
    child: Child,
    ws_url: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch(binary: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(binary)
            .args([
                "--headless=new",
                // Root (a CI container) cannot use Chromium's sandbox; the page is ours, on loopback.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1280,800",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        // The DevTools address is on stderr; the rest of stderr is drained so that Chromium never blocks on it.
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(Ok(url.trim().to_string()));
                } else if seen.len() < 50 {
                    seen.push(line);
                }
            }
            let _ = tx.send(Err(seen.join("\n")));
        });
        let ws_url = match tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30))).await.unwrap()
        {
            Ok(Ok(url)) => url,
            Ok(Err(stderr)) => panic!("chromium exited before listening:\n{stderr}"),
            Err(_) => panic!("chromium did not print its DevTools address within 30 s"),
        };
        Browser { child, ws_url, _profile: profile }
    }

    /// A new tab, attached over the browser's connection.
    async fn tab(&self) -> Tab {
        let (ws, _) = tokio_tungstenite::connect_async(&self.ws_url).await.unwrap();
        let mut tab = Tab { ws, next_id: 0, session: None };
        let target = tab.call("Target.createTarget", json!({"url": "about:blank"})).await;
        let attached =
            tab.call("Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true})).await;
        tab.session = Some(attached["sessionId"].as_str().unwrap().to_string());
        tab.call("Page.enable", json!({})).await;
        tab.call("Runtime.enable", json!({})).await;
        tab.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        // Any breach of the page's Content-Security-Policy is recorded from the first script on.
        let record = "window.__csp = []; document.addEventListener('securitypolicyviolation', \
                      (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));";
        tab.call("Page.addScriptToEvaluateOnNewDocument", json!({"source": record})).await;
        tab
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One page, driven by DevTools calls in turn (each waits for its answer; events are skipped).
struct Tab {
    ws: Socket,
    next_id: u64,
    session: Option<String>,
}

impl Tab {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            request["sessionId"] = json!(s);
        }
        self.ws.send(Message::Text(request.to_string().into())).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let message = self.ws.next().await.expect("chromium closed the DevTools connection").unwrap();
                let Message::Text(text) = message else { continue };
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["id"] == id {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} within 30 s"));
        if let Some(e) = answer.get("error") {
            panic!("{method} failed: {e}");
        }
        answer["result"].clone()
    }

    async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.eval("document.readyState").await != "complete" || self.eval("location.pathname").await == "blank" {
            assert!(Instant::now() < deadline, "{url} did not load");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of a JavaScript expression in the page (a promise is awaited).
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}))
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("`{expression}` threw: {e}");
        }
        r["result"].get("value").cloned().unwrap_or(Value::Null)
    }

    /// Waits until `condition` (JavaScript) is true; past the deadline the test fails with the page's text.
    async fn wait(&mut self, what: &str, condition: &str, logs: &impl Fn() -> String) {
        let deadline = Instant::now() + T;
        while self.eval(&format!("Boolean({condition})")).await != true {
            if Instant::now() > deadline {
                let text = self.eval("document.body.innerText").await;
                panic!(
                    "the page never showed {what} (`{condition}`); it shows:\n{}\n{}",
                    text.as_str().unwrap_or(""),
                    logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_eq(&mut self, what: &str, expression: &str, expected: &str, logs: &impl Fn() -> String) {
        self.wait(what, &format!("({expression}) === {}", json!(expected)), logs).await;
    }

    /// Types a token into the page's token field and submits it, as an operator would.
    async fn set_token(&mut self, token: &str) {
        self.eval(&format!(
            "document.getElementById('token').value = {}; document.getElementById('auth').requestSubmit()",
            json!(token)
        ))
        .await;
    }

    async fn screenshot(&mut self) -> Vec<u8> {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        base64_decode(shot["data"].as_str().unwrap())
    }
}

/// Standard base64 (what DevTools sends screenshots in), without pulling in a crate for one call.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {:?}", c as char),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, d)| n | u32::from(*d) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_decodes_with_and_without_padding() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
    assert_eq!(base64_decode("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
}
