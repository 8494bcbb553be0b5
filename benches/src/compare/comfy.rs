//! Row 10: a `video` job through the worker's ComfyUI backend against the same workflow sent to ComfyUI's
//! HTTP API by a plain client, on one real ComfyUI (`--cpu`, loopback) that the row starts from a checkout
//! it is given (`--comfyui DIR`) and stops at the end. It never fetches or builds ComfyUI.
//!
//! - Ours: the worker binary as a daemon (`backend = "comfyui"`, local-directory store), one job at a time,
//!   timed from publishing the job to seeing its `succeeded` event on a tap.
//! - Raw: `POST /prompt`, `GET /history/{id}` every millisecond until the entry is complete, `GET /view` of
//!   the output into a file.
//!
//! Both run `examples/comfyui/empty-video.json` filled alike: 24 frames of 320×240 at 24 fps. The worker
//! also normalises ComfyUI's MP4 (decode, H.264 re-encode, faststart remux, JPEG thumbnail), which the raw
//! client does not; the target allows for it. The worker records no timing of its own for that step, so it
//! is read from the job's events (published for every report here, `events.progress_interval_ms = 0`): from
//! the `normalize` progress event to the end of the `inference` stage (`timings_ms`, placed on the clock by
//! the `succeeded` event's `emitted_at`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ainern2d_contract::topology::Topology;
use ainern2d_contract::{Event, EventStatus, JobKind};
use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use serde_json::Value;

use crate::Ctx;
use crate::report::{Check, Row};
use crate::support;

const TITLE: &str = "A video job through the ComfyUI backend vs the raw ComfyUI round trip";
const TARGET: &str = "overhead ≤ 10 ms + normalisation";
const TEMPLATE: &str = "empty-video";
const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;
const FPS: u32 = 24;
const FRAMES: u32 = 24;
/// How often the raw client asks `/history` whether its prompt is done.
const POLL: Duration = Duration::from_millis(1);
const T: Duration = Duration::from_secs(120);

pub async fn run(ctx: &Ctx, comfyui: Option<&Path>) -> anyhow::Result<Row> {
    let row = Row::new(10, TITLE, TARGET);
    let Some(dir) = comfyui else {
        return Ok(row.skip(
            "no ComfyUI checkout given (`--comfyui DIR` or AINERN2D_BENCH_COMFYUI, a directory with ComfyUI's \
             main.py and a Python that runs it, e.g. DIR/.venv); ComfyUI is in no package registry",
        ));
    };
    anyhow::ensure!(
        dir.join("main.py").is_file(),
        "--comfyui {}: no main.py there (give a ComfyUI checkout)",
        dir.display()
    );
    let scratch = tempfile::tempdir()?;
    // Stopped on drop, so an error below stops it too.
    let comfy = Comfy::start(dir, scratch.path()).await?;
    let result = measure(ctx, &comfy, dir, scratch.path(), row).await;
    comfy.stop();
    result
}

/// A ComfyUI server, child of this process; SIGTERM (then SIGKILL) when dropped.
struct Comfy {
    child: Option<Child>,
    url: String,
    log: PathBuf,
    stats: Value,
}

impl Comfy {
    async fn start(dir: &Path, scratch: &Path) -> anyhow::Result<Comfy> {
        let venv = dir.join(".venv/bin/python");
        let python = if venv.is_file() { venv } else { PathBuf::from("python3") };
        let base = scratch.join("comfy");
        for sub in ["custom_nodes", "models", "input", "output", "temp", "user"] {
            std::fs::create_dir_all(base.join(sub))?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = scratch.join("comfyui.log");
        let out = std::fs::File::create(&log)?;
        // Everything it writes goes to the scratch directory (no custom nodes, no models, an in-memory
        // database); API nodes off, so it talks to nothing beyond loopback.
        let child = Command::new(&python)
            .arg("main.py")
            .args(["--listen", "127.0.0.1", "--port", &port.to_string(), "--cpu"])
            .arg("--base-directory")
            .arg(&base)
            .arg("--output-directory")
            .arg(base.join("output"))
            .arg("--input-directory")
            .arg(base.join("input"))
            .arg("--temp-directory")
            .arg(base.join("temp"))
            .arg("--user-directory")
            .arg(base.join("user"))
            .args(["--database-url", "sqlite:///:memory:", "--disable-auto-launch", "--disable-api-nodes"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {} main.py in {}: {e}", python.display(), dir.display()))?;
        let mut comfy = Comfy { child: Some(child), url: format!("http://127.0.0.1:{port}"), log, stats: Value::Null };
        comfy.stats = comfy.wait_answering().await?;
        Ok(comfy)
    }

    /// `/system_stats`, once it answers (importing torch takes a while).
    async fn wait_answering(&mut self) -> anyhow::Result<Value> {
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{}/system_stats", self.url)).timeout(Duration::from_secs(2)).send().await
                && r.status().is_success()
            {
                return Ok(serde_json::from_slice(&r.bytes().await?)?);
            }
            if let Some(status) = self.child.as_mut().map(Child::try_wait).transpose()?.flatten() {
                anyhow::bail!("ComfyUI exited before it answered ({status}):\n{}", self.log_tail());
            }
            anyhow::ensure!(started.elapsed() < T, "ComfyUI did not answer within {T:?}:\n{}", self.log_tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn version(&self) -> String {
        let s = &self.stats["system"];
        format!(
            "ComfyUI {} (Python {}, PyTorch {}), device {}",
            s["comfyui_version"].as_str().unwrap_or("?"),
            s["python_version"].as_str().and_then(|v| v.split_whitespace().next()).unwrap_or("?"),
            s["pytorch_version"].as_str().unwrap_or("?"),
            self.stats["devices"][0]["name"].as_str().unwrap_or("?"),
        )
    }

    fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Comfy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The commit of a git checkout, when it is one.
fn commit_of(dir: &Path) -> Option<String> {
    let o = Command::new("git").arg("-C").arg(dir).args(["rev-parse", "HEAD"]).stderr(Stdio::null()).output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string()).filter(|c| !c.is_empty())
}

/// `examples/comfyui` of this repository (from the working directory, else from where this crate was built).
fn examples() -> PathBuf {
    let here = PathBuf::from("examples/comfyui");
    if here.join(format!("{TEMPLATE}.json")).is_file() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/comfyui")
}

/// The template filled as the worker fills it for the job of [`job_body`] (its slots: width, height,
/// frames, fps, prefix).
fn raw_prompt(workflow: &Value, prefix: &str) -> Value {
    let mut p = workflow.clone();
    p["1"]["inputs"]["width"] = WIDTH.into();
    p["1"]["inputs"]["height"] = HEIGHT.into();
    p["1"]["inputs"]["batch_size"] = FRAMES.into();
    p["2"]["inputs"]["fps"] = f64::from(FPS).into();
    p["3"]["inputs"]["filename_prefix"] = prefix.into();
    p
}

fn job_body(job_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "ainern2d.job.v1",
        "job_id": job_id,
        "kind": "video",
        "params": {"width": WIDTH, "height": HEIGHT, "fps": FPS, "duration_s": f64::from(FRAMES) / f64::from(FPS),
                   "workflow": TEMPLATE},
        "output": {"prefix": "bench"},
    }))
    .expect("json")
}

/// What one job of ours took, from its events.
struct Ours {
    total_ms: f64,
    /// `normalize` progress → end of `inference`.
    normalize_ms: f64,
    /// `download` progress → `normalize` progress.
    download_ms: Option<f64>,
    /// Start of `inference` → `download` progress: templating, WebSocket, `/history`, `/queue`, `/prompt`,
    /// ComfyUI's run, the history entry.
    prompt_ms: Option<f64>,
    /// Publish → succeeded seen, less the worker's own `total`: the broker both ways.
    broker_ms: f64,
    stages: Vec<(String, f64)>,
}

fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3
}

async fn one_job(ch: &Channel, tap: &mut lapin::Consumer, topo: &Topology, job_id: &str) -> anyhow::Result<Ours> {
    let queue = topo.job_queue(JobKind::Video);
    let props = BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into());
    let started = Instant::now();
    ch.basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &job_body(job_id), props)
        .await?;
    let mut seen: Vec<Event> = Vec::new();
    let done = loop {
        let d = tokio::time::timeout(T, tap.next())
            .await
            .map_err(|_| anyhow::anyhow!("job {job_id}: no outcome within {T:?}; events {seen:?}"))?
            .ok_or_else(|| anyhow::anyhow!("the event tap closed"))??;
        let event: Event = serde_json::from_slice(&d.data)?;
        if event.job_id != job_id {
            continue;
        }
        if event.status == EventStatus::Succeeded {
            break event;
        }
        anyhow::ensure!(
            !event.status.is_terminal() && event.status != EventStatus::Retrying,
            "job {job_id}: {event:?}"
        );
        seen.push(event);
    };
    let total_ms = started.elapsed().as_secs_f64() * 1e3;
    let stage = |name: &str| done.timings_ms.get(name).copied().unwrap_or(0.0);
    let progress_at = |name: &str| {
        seen.iter().filter(|e| e.progress.as_ref().is_some_and(|p| p.stage == name)).map(|e| e.emitted_at).next_back()
    };
    let normalize = progress_at("normalize")
        .ok_or_else(|| anyhow::anyhow!("job {job_id}: no `normalize` progress event among {seen:?}"))?;
    // Only the latest report is published when several come between two wake-ups: a quick download's
    // report may be skipped.
    let download = progress_at("download");
    // The stages run in order (queue, fetch, inference, upload) and `total` ends just before the outcome
    // is stamped, so on the events' clock the inference ends `after` before the outcome.
    let after = stage("total") - stage("queue") - stage("fetch") - stage("inference");
    Ok(Ours {
        total_ms,
        normalize_ms: ms(done.emitted_at - normalize) - after,
        download_ms: download.map(|d| ms(normalize - d)),
        prompt_ms: download.map(|d| stage("inference") - ms(done.emitted_at - d) + after),
        broker_ms: total_ms - stage("total"),
        stages: done.timings_ms.into_iter().collect(),
    })
}

/// The raw client's round trip: prompt, history until complete, the output file downloaded. Returns the
/// whole and the download's part, in ms.
/// With `websocket`, a WebSocket is opened first under the prompt's `client_id` and read until the end
/// (as ComfyUI's own API example and the worker do), its messages discarded; without, nobody listens.
async fn raw_round_trip(
    http: &reqwest::Client,
    url: &str,
    prompt: &Value,
    dest: &Path,
    websocket: bool,
) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let client_id = if websocket { "bench-raw-ws" } else { "bench-raw" };
    let listener = if websocket {
        let ws = format!("{}/ws?clientId={client_id}", url.replacen("http", "ws", 1));
        let (mut stream, _) = tokio_tungstenite::connect_async(ws).await?;
        Some(tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} }))
    } else {
        None
    };
    let body = serde_json::to_vec(&serde_json::json!({"prompt": prompt, "client_id": client_id}))?;
    let r = http
        .post(format!("{url}/prompt"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await?;
    let status = r.status();
    let answer: Value = serde_json::from_slice(&r.bytes().await?)?;
    anyhow::ensure!(status.is_success(), "POST /prompt: HTTP {status}: {answer}");
    let id = answer["prompt_id"].as_str().ok_or_else(|| anyhow::anyhow!("POST /prompt: no prompt_id in {answer}"))?;
    let entry = loop {
        let h: Value = serde_json::from_slice(&http.get(format!("{url}/history/{id}")).send().await?.bytes().await?)?;
        if let Some(entry) = h.get(id) {
            let s = &entry["status"];
            anyhow::ensure!(s["status_str"] != "error", "prompt {id} failed: {s}");
            if s["completed"].as_bool() == Some(true) {
                break entry.clone();
            }
        }
        anyhow::ensure!(started.elapsed() < T, "prompt {id} not done within {T:?}");
        tokio::time::sleep(POLL).await;
    };
    let downloading = Instant::now();
    let ui = &entry["outputs"]["3"];
    let file = ["videos", "gifs", "images"]
        .iter()
        .find_map(|k| ui[*k].as_array().and_then(|a| a.first()))
        .ok_or_else(|| anyhow::anyhow!("prompt {id}: node 3 wrote no file: {}", entry["outputs"]))?;
    let query = [("filename", &file["filename"]), ("subfolder", &file["subfolder"]), ("type", &file["type"])]
        .map(|(k, v)| (k, v.as_str().unwrap_or("").to_string()));
    let r = http.get(format!("{url}/view")).query(&query).send().await?;
    anyhow::ensure!(r.status().is_success(), "GET /view {}: HTTP {}", file["filename"], r.status());
    tokio::fs::write(dest, r.bytes().await?).await?;
    let now = Instant::now();
    if let Some(listener) = listener {
        listener.abort();
    }
    Ok(((now - started).as_secs_f64() * 1e3, (now - downloading).as_secs_f64() * 1e3))
}

fn median(v: &[f64]) -> f64 {
    crate::report::Stats::of(v).median
}

async fn measure(ctx: &Ctx, comfy: &Comfy, dir: &Path, scratch: &Path, mut row: Row) -> anyhow::Result<Row> {
    let templates = scratch.join("templates");
    std::fs::create_dir_all(&templates)?;
    for ext in ["json", "toml"] {
        let name = format!("{TEMPLATE}.{ext}");
        std::fs::copy(examples().join(&name), templates.join(&name))
            .map_err(|e| anyhow::anyhow!("{}: {e}", examples().join(&name).display()))?;
    }
    let workflow: Value = serde_json::from_slice(&std::fs::read(templates.join(format!("{TEMPLATE}.json")))?)?;

    let prefix = format!("bench-comfy-{}", std::process::id());
    let topo = Topology::new(prefix.as_str());
    let conn = lapin::Connection::connect(&ctx.amqp, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    support::declare(&ctx.amqp, &topo, JobKind::Video).await?;
    let mut tap = support::tap(&ch, &topo, "job.video.#").await?;
    let extra = format!(
        "[comfyui]\nurl = \"{}\"\ntemplates = \"{}\"\n[events]\nprogress_interval_ms = 0\n",
        comfy.url,
        templates.display()
    );
    let mut worker = support::Worker::start(
        Some(ctx.bin("ainern2d-worker")),
        &ctx.amqp,
        &prefix,
        JobKind::Video,
        "comfyui",
        1,
        "",
        &extra,
    )?;
    let result = async {
        let port = worker.port;
        support::until_ready(port, worker.child_mut()).await?;
        let http = reqwest::Client::new();
        let downloads = scratch.join("raw");
        std::fs::create_dir_all(&downloads)?;
        let raw_job = |n: usize, websocket: bool| {
            let prompt = raw_prompt(&workflow, &format!("bench-raw/{n}-{websocket}"));
            let (http, url, dest) = (http.clone(), comfy.url.clone(), downloads.join(format!("{n}-{websocket}.mp4")));
            async move { raw_round_trip(&http, &url, &prompt, &dest, websocket).await }
        };
        // Unmeasured warm-up of each: the first prompt runs every node (later ones find EmptyImage and
        // CreateVideo in ComfyUI's cache, alike for both), the worker's first job opens its connections.
        one_job(&ch, &mut tap, &topo, &format!("{prefix}-warm")).await?;
        raw_job(0, false).await?;
        raw_job(0, true).await?;
        let (mut ours, mut raw, mut raw_ws) = (Vec::new(), Vec::new(), Vec::new());
        let mut cpu_ms = 0.0;
        for round in 1..=ctx.rounds {
            let before = support::cpu_seconds(worker.pid());
            ours.push(one_job(&ch, &mut tap, &topo, &format!("{prefix}-{round}")).await?);
            cpu_ms += before.zip(support::cpu_seconds(worker.pid())).map_or(f64::NAN, |(a, b)| (b - a) * 1e3);
            raw.push(raw_job(round, false).await?);
            raw_ws.push(raw_job(round, true).await?.0);
        }
        // The worker's own CPU per job, which the load of the machine does not inflate the way it does
        // wall-clock time.
        let cpu = Some(cpu_ms / ctx.rounds as f64).filter(|c| c.is_finite());
        Ok::<_, anyhow::Error>((ours, raw, raw_ws, cpu))
    }
    .await;
    worker.stop();
    support::delete(&ch, &topo, JobKind::Video).await;
    let _ = conn.close(0, "done".into()).await;
    let (ours, raw, raw_ws, cpu) = result?;

    let commit = commit_of(dir).unwrap_or_else(|| "not a git checkout".into());
    row.conditions.push(format!(
        "{}; checkout {} at {commit}; started with `--cpu` on loopback",
        comfy.version(),
        dir.display()
    ));
    row.conditions.push(format!(
        "workflow `examples/comfyui/{TEMPLATE}.json`: EmptyImage {WIDTH}×{HEIGHT} × {FRAMES} frames → CreateVideo \
         {FPS} fps → SaveVideo (MP4, H.264); the worker fills it from a `video` job ({WIDTH}×{HEIGHT}, {FPS} fps, \
         {:.1} s), the raw client with the same values",
        f64::from(FRAMES) / f64::from(FPS)
    ));
    row.conditions.push(format!(
        "worker: {} ({} build), 1 video slot, `events.progress_interval_ms = 0`, local-directory store on {}; \
         RabbitMQ on the same host",
        ctx.bin("ainern2d-worker").display(),
        ctx.profile(),
        if Path::new("/dev/shm").is_dir() { "tmpfs" } else { "the temp dir" }
    ));
    row.conditions.push(format!(
        "raw: one reqwest client, `POST /prompt`, `GET /history/{{id}}` every {} ms until complete, `GET /view` into a \
         file; once with nobody listening, once with a WebSocket open under the prompt's `client_id` (as the \
         worker has); one job at a time, ours, raw, raw with the WebSocket in turn, after one unmeasured warm-up \
         of each",
        POLL.as_millis()
    ));
    let a: Vec<f64> = ours.iter().map(|o| o.total_ms).collect();
    let b: Vec<f64> = raw.iter().map(|r| r.0).collect();
    let norm: Vec<f64> = ours.iter().map(|o| o.normalize_ms).collect();
    let a = row.measure("worker: publish → `succeeded` seen", "ms", true, &a);
    let b = row.measure("raw ComfyUI API: /prompt → /history complete → /view", "ms", false, &b);
    let ws = row.measure("raw, with a WebSocket listening under the prompt's client_id", "ms", false, &raw_ws);
    let n = row.measure("of which normalisation (worker, `normalize` → end of inference)", "ms", true, &norm);
    row.checks.push(Check::at_most("overhead: median(ours) − median(raw) (ms)", a - b, 10.0 + n));

    let of = |f: fn(&Ours) -> Option<f64>| median(&ours.iter().filter_map(f).collect::<Vec<_>>());
    let mut stages: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for o in &ours {
        for (s, v) in &o.stages {
            stages.entry(s.as_str()).or_default().push(*v);
        }
    }
    let stages: Vec<String> = stages.iter().map(|(s, v)| format!("{s} {:.1}", median(v))).collect();
    let raw_download = median(&raw.iter().map(|r| r.1).collect::<Vec<_>>());
    row.notes.push(format!(
        "The overhead ({:.1} ms) is what the worker adds around the same ComfyUI work (medians): the broker both \
         ways (job in, `succeeded` confirmed and delivered to the tap: {:.1} ms); its stages (`timings_ms`: {}); \
         inside inference, from its start to the `download` report ({:.1} ms, against the raw client's {:.1} ms \
         from `POST /prompt` to a complete history entry): a new HTTP client, the template filled, a WebSocket \
         opened for the prompt, `/history` and `/queue` asked before queueing, `/prompt`, ComfyUI's run \
         reported over the WebSocket, `/history` read again; the `/view` download ({:.1} ms; raw {:.1} ms); and \
         normalisation ({n:.1} ms: ComfyUI's MP4 decoded, re-encoded to H.264 yuv420p, remuxed with the moov \
         atom first, the middle frame decoded again for the JPEG thumbnail, both outputs hashed), which the raw \
         client does not do and the target allows for. The worker records no timing of its own for \
         normalisation; it is read from the job's events. ComfyUI's cache serves EmptyImage and CreateVideo \
         after the warm-up (their inputs do not change), so each prompt runs SaveVideo alone, for both \
         contenders. The worker process used {} of CPU per job (user + system, normalisation included).",
        a - b,
        of(|o| Some(o.broker_ms)),
        stages.join(", "),
        of(|o| o.prompt_ms),
        b - raw_download,
        of(|o| o.download_ms),
        raw_download,
        cpu.map_or_else(|| "an unknown amount".to_string(), |ms| format!("{ms:.1} ms")),
    ));
    row.notes.push(format!(
        "ComfyUI itself is slower with a listener: the same raw round trip took {ws:.1} ms with a WebSocket open \
         under the prompt's `client_id` against {b:.1} ms with nobody listening ({:+.1} ms; why, inside ComfyUI, \
         was not profiled). The worker follows every prompt over a \
         WebSocket (progress, error classes, its watchdog), so that part of the overhead is ComfyUI's; against \
         the WebSocket round trip the worker adds {:.1} ms.",
        ws - b,
        a - ws
    ));
    Ok(row)
}
