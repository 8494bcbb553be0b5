//! One round: start a hub and the plan's workers on a fresh prefix, bucket and schema; submit the jobs
//! (through the hub's API, and one invalid message straight to a job queue); run the fault schedule
//! while a watchdog restarts whatever dies on its own; then settle (every fault over, every process up,
//! every job ended, every queue empty), stop the workers and the hub gracefully and hand the evidence to
//! the checker. The services that outlive rounds ([`Env`]: the broker, Postgres, the proxies) are
//! shared by all rounds of a run; the names of a round keep it apart from the others.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ainern2d_contract::{EventStatus, JobKind};
use lapin::options::*;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use super::check::{self, Evidence, Object, Row, Submitted};
use super::pg::PrivatePostgres;
use super::plan::{Fault, MockFailures, Phase, Plan, S3Fault};
use super::proxy::{FaultProxy, Mode, Seen};
use super::rng::SplitMix64;
use super::tap::DurableTap;
use crate::{PrivateBroker, S3_KEY, Worker, free_port, job, repo_root, s3_endpoint, small_params, unique};

mod evidence;
mod faults;

pub use super::figures::Figures;

pub struct RoundResult {
    pub plan: Plan,
    pub prefix: String,
    pub figures: Figures,
    pub violations: Vec<String>,
    /// The round's process logs (kept when it failed).
    pub log_dir: PathBuf,
}

/// What outlives rounds: a private broker and Postgres, one S3 proxy per worker slot.
pub struct Env {
    broker: tokio::sync::Mutex<PrivateBroker>,
    broker_url: String,
    pg: PrivatePostgres,
    proxies: Vec<FaultProxy>,
    seen: broadcast::Sender<Seen>,
    s3: aws_sdk_s3::Client,
    dir: tempfile::TempDir,
    token: String,
    rounds: AtomicUsize,
}

impl Env {
    pub async fn start() -> Arc<Env> {
        let broker = PrivateBroker::start().await;
        let broker_url = broker.url();
        let pg = tokio::task::block_in_place(PrivatePostgres::start);
        let endpoint = s3_endpoint();
        let upstream: SocketAddr = endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("AINERN2D_TEST_S3_ENDPOINT {endpoint} is not an http://host:port"));
        let (seen, _) = broadcast::channel(8192);
        let mut proxies = Vec::new();
        for slot in 0..super::plan::MAX_REPLICAS {
            let proxy = FaultProxy::start(slot, upstream).await;
            let mut rx = proxy.observe();
            let tx = seen.clone();
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(s) => {
                            let _ = tx.send(s);
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            });
            proxies.push(proxy);
        }
        let dir = tempfile::Builder::new().prefix("ainern2d-chaos-").tempdir().unwrap();
        let token = format!("chaos-{}", uuid::Uuid::new_v4().simple());
        std::fs::write(dir.path().join("admin-token"), &token).unwrap();
        Arc::new(Env {
            broker: tokio::sync::Mutex::new(broker),
            broker_url,
            pg,
            proxies,
            seen,
            s3: crate::s3().await,
            dir,
            token,
            rounds: AtomicUsize::new(0),
        })
    }
}

/// One round's processes and counters, shared by its tasks.
struct Round {
    env: Arc<Env>,
    plan: Plan,
    prefix: String,
    bucket: String,
    schema: String,
    slots: Vec<Mutex<Option<Worker>>>,
    /// Worker id → slot.
    ids: Mutex<HashMap<String, usize>>,
    hub: Mutex<Option<Worker>>,
    hub_port: AtomicU16,
    spawned: AtomicUsize,
    figures: Mutex<Figures>,
    log_dir: PathBuf,
    scratch: Vec<PathBuf>,
    tap: DurableTap,
    /// Set while the round stops its processes on purpose: the watchdog leaves them alone.
    stopping: AtomicBool,
}

pub async fn run(env: &Arc<Env>, plan: Plan) -> RoundResult {
    let started = Instant::now();
    let n = env.rounds.fetch_add(1, Ordering::SeqCst);
    let prefix = unique("chaos");
    let bucket = prefix.to_lowercase();
    let schema = prefix.replace('-', "_");
    let round_dir = env.dir.path().join(format!("round-{n}"));
    let log_dir = std::env::temp_dir().join("ainern2d-chaos-logs").join(format!("{:016x}-{prefix}", plan.seed));
    std::fs::create_dir_all(&log_dir).unwrap();
    let scratch: Vec<PathBuf> = (0..plan.replicas).map(|s| round_dir.join(format!("scratch-{s}"))).collect();
    for proxy in &env.proxies {
        proxy.set_mode(Mode::Pass);
    }
    crate::create_bucket(&env.s3, &bucket).await;
    let media = repo_root().join("examples/media");
    for file in ["face.mp4", "line.wav", "still.png"] {
        let body = aws_sdk_s3::primitives::ByteStream::from_path(media.join(file)).await.unwrap();
        env.s3.put_object().bucket(&bucket).key(format!("in/{file}")).body(body).send().await.unwrap();
    }
    let tap = DurableTap::start(&env.broker_url, &prefix).await;
    let round = Arc::new(Round {
        env: env.clone(),
        prefix: prefix.clone(),
        bucket,
        schema,
        slots: (0..plan.replicas).map(|_| Mutex::new(None)).collect(),
        ids: Mutex::new(HashMap::new()),
        hub: Mutex::new(None),
        hub_port: AtomicU16::new(0),
        spawned: AtomicUsize::new(0),
        figures: Mutex::new(Figures::default()),
        log_dir: log_dir.clone(),
        scratch,
        tap,
        stopping: AtomicBool::new(false),
        plan: plan.clone(),
    });
    let mut violations = Vec::new();
    round.clone().drive(&mut violations).await;
    round.cleanup().await;
    let mut figures = round.figures.lock().unwrap().clone();
    figures.took = started.elapsed();
    if violations.is_empty() && std::env::var_os("AINERN2D_CHAOS_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&log_dir);
    }
    let _ = std::fs::remove_dir_all(&round_dir);
    RoundResult { plan, prefix, figures, violations, log_dir }
}

/// The jobs of a round, from its seed: every kind, one in parts when the plan says so, inputs from the
/// round's bucket (so fetching goes through the proxy), submission times spread over `submit_over`.
fn jobs(plan: &Plan, bucket: &str) -> Vec<Submitted> {
    let mut r = SplitMix64::new(plan.seed ^ 0x6A09_E667_F3BC_C908);
    let mut jobs = Vec::new();
    let mut big_audio = plan.multipart;
    for i in 0..plan.jobs {
        let kind = JobKind::ALL[i % JobKind::ALL.len()];
        let id = format!("{kind}-{i}");
        let mut params = small_params(kind);
        let inputs = match kind {
            JobKind::Lipsync => serde_json::json!({
                "video": format!("s3://{bucket}/in/face.mp4"),
                "audio": format!("s3://{bucket}/in/line.wav"),
            }),
            JobKind::Video if r.chance(0.5) => serde_json::json!({"image": format!("s3://{bucket}/in/still.png")}),
            _ => serde_json::json!({}),
        };
        if kind == JobKind::Audio && big_audio {
            // 60 s at 48 kHz, 16-bit: 5.76 MB, two parts of the 5 MiB the workers are configured for.
            params = serde_json::json!({"text": "a long line read slowly", "duration_s": 60.0, "sample_rate": 48000});
            big_audio = false;
        }
        let at = r.millis(0, plan.submit_over.as_millis() as u64);
        let body = job(kind, &id, params, inputs);
        jobs.push(Submitted { id, kind, body, at, invalid: false });
    }
    if plan.invalid_job {
        let mut bad: serde_json::Value = serde_json::from_slice(&job(
            JobKind::Video,
            "invalid-0",
            small_params(JobKind::Video),
            serde_json::json!({}),
        ))
        .unwrap();
        bad["params"]["width"] = 65.into();
        let at = r.millis(0, plan.submit_over.as_millis() as u64);
        jobs.push(Submitted {
            id: "invalid-0".into(),
            kind: JobKind::Video,
            body: serde_json::to_vec(&bad).unwrap(),
            at,
            invalid: true,
        });
    }
    jobs.sort_by_key(|j| j.at);
    jobs
}

impl Round {
    fn worker_toml(&self, slot: usize, port: u16, id: &str) -> String {
        let p = &self.plan;
        let (rate, failure, fault_attempts) = match p.failures {
            MockFailures::None => (0.0, "retryable", 0),
            MockFailures::Permanent(rate) => (rate, "permanent", 0),
            MockFailures::FirstAttempt(rate) => (rate, "retryable", 1),
        };
        format!(
            r#"worker_id = "{id}"
scratch_dir = "{scratch}"
[broker]
url = "{amqp}"
prefix = "{prefix}"
reconnect_max_ms = 1000
[jobs]
max_attempts = 5
retry_delays_ms = [300, 1000, 3000]
lease_after_s = {lease_after}
lease_ttl_s = {lease_ttl}
[store]
kind = "s3"
bucket = "{bucket}"
endpoint = "{endpoint}"
access_key_id = "{key}"
secret_access_key = "{key}"
multipart_threshold_bytes = 5242880
part_size_bytes = 5242880
request_timeout_s = 3
[http]
listen = "127.0.0.1:{port}"
[heartbeat]
interval_ms = 1000
[events]
progress_interval_ms = 100
lifecycle_delay_ms = 0
[mock]
latency_ms = {latency}
upload_delay_ms = {upload_delay}
failure_rate = {rate}
failure = "{failure}"
fault_attempts = {fault_attempts}
[shutdown]
grace_s = 1
"#,
            scratch = self.scratch[slot].display(),
            amqp = self.env.broker_url,
            prefix = self.prefix,
            lease_after = p.lease_after_s,
            lease_ttl = p.lease_ttl_s,
            bucket = self.bucket,
            endpoint = self.env.proxies[slot].url(),
            key = S3_KEY,
            latency = p.latency_ms,
            upload_delay = p.upload_delay_ms,
        )
    }

    fn hub_toml(&self, port: u16) -> String {
        format!(
            r#"[broker]
url = "{amqp}"
prefix = "{prefix}"
[database]
url = "{db}"
schema = "{schema}"
[http]
listen = "127.0.0.1:{port}"
[api]
admin_token_file = "{token}"
[outbox]
relay_after_ms = 1000
relay_interval_ms = 250
"#,
            amqp = self.env.broker_url,
            prefix = self.prefix,
            db = self.env.pg.url(),
            schema = self.schema,
            token = self.env.dir.path().join("admin-token").display(),
        )
    }

    fn spawn_worker(&self, slot: usize) {
        let port = free_port();
        let id = format!("{}-s{slot}-{port}", self.prefix);
        let worker = Worker::spawn(&self.worker_toml(slot, port, &id));
        self.ids.lock().unwrap().insert(id, slot);
        *self.slots[slot].lock().unwrap() = Some(worker);
    }

    fn spawn_hub(&self) {
        let port = free_port();
        let hub = Worker::spawn_bin("ainern2d-hub", &self.hub_toml(port));
        self.hub_port.store(port, Ordering::SeqCst);
        *self.hub.lock().unwrap() = Some(hub);
    }

    /// Keeps a process's log in the round's log directory.
    fn keep_log(&self, process: &Worker, name: &str) {
        let n = self.spawned.fetch_add(1, Ordering::SeqCst);
        let _ = std::fs::copy(&process.log, self.log_dir.join(format!("{n:03}-{name}.log")));
        // What the worker cleaned up after others: multipart uploads dead workers left open.
        let recovered: usize = process
            .logs()
            .lines()
            .filter(|l| l.contains("aborted multipart uploads"))
            .filter_map(|l| {
                l.split("\"aborted\":").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse::<usize>().ok()
            })
            .sum();
        let unresolved: Vec<String> = process
            .logs()
            .lines()
            .filter(|l| l.contains("cannot find the id of a multipart upload"))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["bucket"] == self.bucket.as_str())
            .filter_map(|l| l["key"].as_str().map(str::to_owned))
            .collect();
        let mut figures = self.figures.lock().unwrap();
        figures.uploads_aborted += recovered;
        figures.unresolved_uploads.extend(unresolved);
    }

    fn count_fault(&self, label: &str) {
        *self.figures.lock().unwrap().faults.entry(label.to_string()).or_default() += 1;
    }

    async fn drive(self: Arc<Self>, violations: &mut Vec<String>) {
        self.spawn_hub();
        for slot in 0..self.plan.replicas {
            self.spawn_worker(slot);
        }
        let mut ports = vec![self.hub_port.load(Ordering::SeqCst)];
        for slot in &self.slots {
            ports.push(slot.lock().unwrap().as_ref().unwrap().http_port);
        }
        for port in ports {
            if !wait_ready(port, Duration::from_secs(60)).await {
                violations.push(format!("a process on port {port} was not ready within 60 s at the start"));
                return;
            }
        }
        let jobs = jobs(&self.plan, &self.bucket);
        self.figures.lock().unwrap().jobs = jobs.len();
        let watchdog = tokio::spawn(self.clone().watchdog());
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(self.clone().submit_all(jobs.clone(), start)));
        for scheduled in self.plan.faults.clone() {
            let round = self.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(start + scheduled.at).await;
                round.inject(scheduled.fault).await;
            }));
        }
        for task in tasks {
            if let Err(e) = task.await {
                violations.push(format!("a fault or submission task panicked: {e}"));
            }
        }
        // Every fault is over (each one undoes itself); the watchdog keeps every process up.
        let settling = Instant::now();
        let deadline = settling + self.plan.settle_within;
        let unended = self.wait_all_ended(&jobs, deadline).await;
        if !unended.is_empty() {
            violations.push(format!(
                "{} jobs had no terminal status {}s after the faults ended: {unended:?}",
                unended.len(),
                self.plan.settle_within.as_secs()
            ));
        }
        let busy = self.wait_queues_idle(deadline, false).await;
        self.figures.lock().unwrap().settle = settling.elapsed();
        if !busy.is_empty() {
            violations.push(format!("job, retry or lease queues still hold messages: {busy:?}"));
        }
        // Let the tap take the last events, then stop everything the graceful way.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.stopping.store(true, Ordering::SeqCst);
        watchdog.abort();
        self.stop_workers(violations).await;
        for (slot, root) in self.scratch.iter().enumerate() {
            let left = files_under(root);
            if !left.is_empty() {
                violations.push(format!("orphaned scratch files of slot {slot} after every worker stopped: {left:?}"));
            }
        }
        let busy = self.wait_queues_idle(Instant::now() + Duration::from_secs(15), true).await;
        if !busy.is_empty() {
            violations.push(format!("queues not empty after the workers stopped: {busy:?}"));
        }
        self.stop_hub(violations).await;
        let evidence = self.evidence(jobs).await;
        let mut figures = self.figures.lock().unwrap();
        violations.extend(check::check(&self.plan, &evidence, &mut figures));
    }

    /// Restarts any process that exited without being killed by the round.
    async fn watchdog(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            for slot in 0..self.slots.len() {
                let exited = {
                    let mut guard = self.slots[slot].lock().unwrap();
                    match guard.as_mut().map(|w| w.child.try_wait()) {
                        Some(Ok(Some(status))) => guard.take().map(|w| (w, status)),
                        _ => None,
                    }
                };
                if let Some((w, status)) = exited {
                    self.keep_log(&w, &format!("worker{slot}-exited"));
                    let tail = log_tail(&w.logs(), 5);
                    self.figures.lock().unwrap().unexpected_exits.push(format!("worker slot {slot}: {status}: {tail}"));
                    drop(w);
                    self.spawn_worker(slot);
                }
            }
            let exited = {
                let mut guard = self.hub.lock().unwrap();
                match guard.as_mut().map(|h| h.child.try_wait()) {
                    Some(Ok(Some(status))) => guard.take().map(|h| (h, status)),
                    _ => None,
                }
            };
            if let Some((h, status)) = exited {
                self.keep_log(&h, "hub-exited");
                let tail = log_tail(&h.logs(), 5);
                self.figures.lock().unwrap().unexpected_exits.push(format!("hub: {status}: {tail}"));
                drop(h);
                // Restarted at once, like a supervisor would (its start fails while Postgres is down).
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.spawn_hub();
            }
        }
    }

    async fn submit_all(self: Arc<Self>, jobs: Vec<Submitted>, start: tokio::time::Instant) {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        for job in jobs {
            tokio::time::sleep_until(start + job.at).await;
            if job.invalid {
                self.publish_direct(&job).await;
                continue;
            }
            // Until the hub answers 2xx: a resubmission is idempotent, and a 503 means "recorded, not yet
            // published" — asking again is what a client does.
            let mut tries = 0;
            loop {
                let url = format!("http://127.0.0.1:{}/v1/jobs", self.hub_port.load(Ordering::SeqCst));
                let sent = http
                    .post(&url)
                    .bearer_auth(&self.env.token)
                    .header("content-type", "application/json")
                    .body(job.body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => break,
                    Ok(r) if r.status().is_client_error() => {
                        panic!("the hub refused job {}: {} {}", job.id, r.status(), r.text().await.unwrap_or_default())
                    }
                    _ => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
            self.figures.lock().unwrap().submit_retries += tries;
        }
    }

    /// An invalid message, published as any AMQP client would (the hub's API would refuse it).
    async fn publish_direct(&self, job: &Submitted) {
        loop {
            let sent = async {
                let conn = tokio::time::timeout(
                    Duration::from_secs(5),
                    Connection::connect(&self.env.broker_url, ConnectionProperties::default()),
                )
                .await??;
                let channel = conn.create_channel().await?;
                channel.confirm_select(ConfirmSelectOptions::default()).await?;
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        format!("{}.jobs.{}", self.prefix, job.kind).as_str().into(),
                        BasicPublishOptions { mandatory: true, ..Default::default() },
                        &job.body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await?;
                let _ = conn.close(200, "sent".into()).await;
                anyhow::ensure!(
                    matches!(confirm, lapin::Confirmation::Ack(None)),
                    "not confirmed or unroutable: {confirm:?}"
                );
                Ok::<_, anyhow::Error>(())
            };
            match tokio::time::timeout(Duration::from_secs(10), sent).await {
                Ok(Ok(())) => return,
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    fn pool(&self) -> sqlx::PgPool {
        let options: sqlx::postgres::PgConnectOptions = self.env.pg.url().parse().unwrap();
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options.options([("search_path", self.schema.as_str())]))
    }

    /// The jobs without a terminal status in the hub by `deadline`, with their status.
    async fn wait_all_ended(&self, jobs: &[Submitted], deadline: Instant) -> Vec<(String, String)> {
        let pool = self.pool();
        loop {
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT job_id, status FROM jobs").fetch_all(&pool).await.unwrap_or_default();
            let status: HashMap<_, _> = rows.into_iter().collect();
            let unended: Vec<(String, String)> = jobs
                .iter()
                .filter_map(|j| match status.get(&j.id).map(String::as_str) {
                    Some("succeeded" | "failed" | "cancelled" | "dead_lettered") => None,
                    other => Some((j.id.clone(), other.unwrap_or("no row").to_string())),
                })
                .collect();
            if unended.is_empty() || Instant::now() > deadline {
                pool.close().await;
                return unended;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until the round's job, retry and lease queues (and, with `all`, the hub's event queue) hold
    /// nothing ready or unacked; returns what they still held at `deadline`.
    async fn wait_queues_idle(&self, deadline: Instant, all: bool) -> Vec<(String, u64, u64)> {
        loop {
            let queues = {
                let broker = self.env.broker.lock().await;
                tokio::task::block_in_place(|| broker.queues())
            };
            let p = &self.prefix;
            let busy: Vec<_> = queues
                .into_iter()
                .filter(|(name, _, _)| {
                    name.starts_with(&format!("{p}.jobs."))
                        || name.starts_with(&format!("{p}.retry."))
                        || name.starts_with(&format!("{p}.lease."))
                        || (all && *name == format!("{p}.hub.events"))
                })
                .filter(|(_, ready, unacked)| ready + unacked > 0)
                .collect();
            if busy.is_empty() || Instant::now() > deadline {
                return busy;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn stop_workers(&self, violations: &mut Vec<String>) {
        let mut workers: Vec<(usize, Worker)> =
            self.slots.iter().enumerate().filter_map(|(s, w)| w.lock().unwrap().take().map(|w| (s, w))).collect();
        for (_, w) in &workers {
            w.signal("TERM");
        }
        for (slot, w) in &mut workers {
            match exit_within(w, Duration::from_secs(20)).await {
                Some(0) => {}
                Some(code) => violations.push(format!("worker slot {slot} exited {code} on SIGTERM")),
                None => violations.push(format!("worker slot {slot} did not exit within 20 s of SIGTERM")),
            }
            self.keep_log(w, &format!("worker{slot}-stopped"));
        }
    }

    async fn stop_hub(&self, violations: &mut Vec<String>) {
        let taken = self.hub.lock().unwrap().take();
        if let Some(mut hub) = taken {
            hub.signal("TERM");
            match exit_within(&mut hub, Duration::from_secs(20)).await {
                Some(0) => {}
                Some(code) => violations.push(format!("the hub exited {code} on SIGTERM")),
                None => violations.push("the hub did not exit within 20 s of SIGTERM".into()),
            }
            self.keep_log(&hub, "hub-stopped");
        }
    }

    async fn cleanup(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for slot in &self.slots {
            drop(slot.lock().unwrap().take());
        }
        drop(self.hub.lock().unwrap().take());
        let names: Vec<String> = {
            let broker = self.env.broker.lock().await;
            tokio::task::block_in_place(|| broker.queues())
        }
        .into_iter()
        .map(|(name, _, _)| name)
        .filter(|n| n.starts_with(&format!("{}.", self.prefix)))
        .collect();
        if let Ok(Ok(conn)) = tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(&self.env.broker_url, ConnectionProperties::default()),
        )
        .await
        {
            if let Ok(channel) = conn.create_channel().await {
                for name in names {
                    let _ = channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await;
                }
                for ex in ["events", "control", "dlx"] {
                    let _ = channel
                        .exchange_delete(
                            format!("{}.{ex}", self.prefix).as_str().into(),
                            ExchangeDeleteOptions::default(),
                        )
                        .await;
                }
            }
            let _ = conn.close(200, "done".into()).await;
        }
        crate::delete_bucket(&self.env.s3, &self.bucket).await;
        let pool = self.pool();
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema)).execute(&pool).await;
        pool.close().await;
    }
}

async fn wait_ready(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let url = format!("http://127.0.0.1:{port}/ready");
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(&url).await
            && r.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn exit_within(process: &mut Worker, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = process.child.try_wait() {
            return Some(status.code().unwrap_or(-1));
        }
        if Instant::now() > deadline {
            process.kill9();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The files under a scratch root, and any process directory (`w-*`) left there; the empty `uploads/`
/// journal directory is expected.
fn files_under(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let shown = path.strip_prefix(root).unwrap_or(&path).display().to_string();
            if path.is_dir() {
                if dir == root && entry.file_name().to_string_lossy().starts_with("w-") {
                    found.push(format!("{shown}/"));
                }
                stack.push(path);
            } else {
                found.push(shown);
            }
        }
    }
    found.sort();
    found
}

fn log_tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}
