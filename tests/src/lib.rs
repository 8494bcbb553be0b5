//! Helpers for the integration and end-to-end tests: the real worker binary as a child process, a tap on
//! the events exchange, S3 buckets and RabbitMQ names unique per test, and a private RabbitMQ node for
//! tests that restart the broker. Services are found through `AINERN2D_TEST_*` variables (set by
//! `scripts/test.sh`); a test that cannot reach one fails and says how to start it.

pub mod chaos;
pub mod comfy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ainern2d_contract::{Event, EventStatus, JobKind};
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

pub fn database_url() -> String {
    std::env::var("AINERN2D_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A hub config for a test: its own broker prefix and Postgres schema, `extra` TOML appended.
pub fn hub_config(amqp: &str, prefix: &str, schema: &str, http_port: u16, extra: &str) -> String {
    format!(
        "[broker]\nurl = \"{amqp}\"\nprefix = \"{prefix}\"\n[database]\nurl = \"{db}\"\nschema = \"{schema}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n{extra}\n",
        db = database_url()
    )
}

/// A pool on the test's schema.
pub async fn pg(schema: &str) -> sqlx::PgPool {
    let options: sqlx::postgres::PgConnectOptions = database_url().parse().unwrap();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.options([("search_path", schema)]))
        .await
        .unwrap_or_else(|e| {
            panic!("cannot reach Postgres at {} ({e}): run scripts/test.sh, which starts it", database_url())
        })
}

pub async fn drop_schema(schema: &str) {
    let pool = pg("public").await;
    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await;
}

pub fn amqp_url() -> String {
    std::env::var("AINERN2D_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn s3_endpoint() -> String {
    std::env::var("AINERN2D_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9000".into())
}

pub const S3_KEY: &str = "minioadmin";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `ffprobe`'s streams (frames counted) and format of a media file, as JSON.
pub fn ffprobe(path: &Path) -> serde_json::Value {
    let o = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-print_format", "json", "-show_streams", "-show_format"])
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "ffprobe {}: {}", path.display(), String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `clip.mp4` in `dir`: 2 s of FFmpeg's test pattern at 12 fps, 320×240, H.264 (what a ComfyUI SaveVideo
/// node of the tests writes).
pub fn test_clip(dir: &Path) -> PathBuf {
    let out = dir.join("clip.mp4");
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=12", "-frames:v", "24"])
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(ok.success(), "ffmpeg could not write {}", out.display());
    out
}

/// `t-<name>-<random>`: queue, exchange and bucket names no other test uses.
pub fn unique(name: &str) -> String {
    format!("t-{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// A binary of the workspace, from the target directory these tests were built into.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("cannot reach RabbitMQ at {url} ({e}): run scripts/test.sh, which starts it"))
}

pub async fn s3() -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(s3_endpoint())
        .force_path_style(true)
        .credentials_provider(Credentials::new(S3_KEY, S3_KEY, None, None, "tests"))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

pub async fn create_bucket(client: &aws_sdk_s3::Client, bucket: &str) {
    client.create_bucket().bucket(bucket).send().await.unwrap_or_else(|e| {
        panic!(
            "cannot create bucket on the S3 server at {} ({e:?}): run scripts/test.sh, which starts it",
            s3_endpoint()
        )
    });
}

pub async fn list_keys(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let out = client.list_objects_v2().bucket(bucket).prefix(prefix).send().await.unwrap();
    out.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect()
}

pub async fn delete_bucket(client: &aws_sdk_s3::Client, bucket: &str) {
    for key in list_keys(client, bucket, "").await {
        let _ = client.delete_object().bucket(bucket).key(key).send().await;
    }
    let _ = client.delete_bucket().bucket(bucket).send().await;
}

/// A worker process with its own config file and log.
pub struct Worker {
    pub child: Child,
    pub http_port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

/// A config for a test worker: broker, prefix and bucket of the test, fast heartbeats, and `extra` TOML
/// appended (later keys of a section must be given as `[section]` blocks in `extra`).
pub fn worker_config(amqp: &str, prefix: &str, bucket: &str, http_port: u16, extra: &str) -> String {
    format!(
        r#"worker_id = "{prefix}-w{http_port}"
scratch_dir = "{scratch}"
[broker]
url = "{amqp}"
prefix = "{prefix}"
reconnect_max_ms = 2000
[store]
kind = "s3"
bucket = "{bucket}"
endpoint = "{endpoint}"
access_key_id = "{key}"
secret_access_key = "{key}"
[http]
listen = "127.0.0.1:{http_port}"
[heartbeat]
interval_ms = 500
[events]
progress_interval_ms = 100
lifecycle_delay_ms = 0
{extra}
"#,
        scratch = std::env::temp_dir().join("ainern2d-test-scratch").display(),
        endpoint = s3_endpoint(),
        key = S3_KEY,
    )
}

impl Worker {
    pub fn spawn(config: &str) -> Worker {
        Self::spawn_bin("ainern2d-worker", config)
    }

    /// Any of the workspace's daemons (`ainern2d-worker`, `ainern2d-hub`) with a config file.
    pub fn spawn_bin(bin: &str, config: &str) -> Worker {
        Self::spawn_bin_env(bin, config, &[])
    }

    /// [`Worker::spawn_bin`] with extra environment variables for the process.
    pub fn spawn_bin_env(bin: &str, config: &str, env: &[(&str, &str)]) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.toml");
        std::fs::write(&path, config).unwrap();
        let port = config
            .lines()
            .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
            .and_then(|p| p.trim_end_matches('"').parse().ok())
            .unwrap_or(0);
        let log = dir.path().join("service.log");
        let child = Command::new(binary(bin))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info,ainern2d_worker=debug,ainern2d_hub=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Worker { child, http_port: port, log, _dir: dir }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `kB` line of the process's `/proc/<pid>/status`: `VmRSS` (resident now), `VmHWM` (the peak).
    pub fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix(" kB")?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status:\n{status}", self.pid()))
    }

    /// Waits until `/ready` answers 200 (broker connected, topology declared, store reachable).
    pub async fn wait_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/ready", self.http_port);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("worker exited early ({status}):\n{}", self.logs());
            }
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("worker not ready within 30 s:\n{}", self.logs());
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> i32 {
        let logs = self.log.clone();
        wait_child_exit(&mut self.child, within, || std::fs::read_to_string(&logs).unwrap_or_default()).await
    }
}

/// Waits for a child process to exit and returns its exit code; past `within` the test fails with `logs()`.
pub async fn wait_child_exit(child: &mut Child, within: Duration, logs: impl Fn() -> String) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "process did not exit within {within:?}:\n{}", logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything published on a test's events exchange (`job.#`), from the moment of creation.
pub struct EventTap {
    consumer: lapin::Consumer,
    pub seen: Vec<Event>,
}

/// An exclusive queue bound to the `<prefix>.events` exchange with `routing` (`job.#`,
/// `worker.heartbeat.#`); returns its name.
pub async fn events_queue(channel: &Channel, prefix: &str, routing: &str) -> String {
    let exchange = format!("{prefix}.events");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.as_str().into(),
            routing.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    queue.name().to_string()
}

impl EventTap {
    pub async fn new(channel: &Channel, prefix: &str) -> EventTap {
        let queue = events_queue(channel, prefix, "job.#").await;
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        EventTap { consumer, seen: Vec::new() }
    }

    /// Waits for the first event (seen before or arriving) that matches.
    pub async fn wait_for(&mut self, within: Duration, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        if let Some(e) = self.seen.iter().find(|e| pred(e)) {
            return e.clone();
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.consumer.next()).await;
            match next {
                Ok(Some(Ok(d))) => {
                    let event: Event = serde_json::from_slice(&d.data)
                        .unwrap_or_else(|e| panic!("event does not parse ({e}): {}", String::from_utf8_lossy(&d.data)));
                    self.seen.push(event.clone());
                    if pred(&event) {
                        return event;
                    }
                }
                Ok(other) => panic!("event stream ended: {other:?}"),
                Err(_) => panic!(
                    "no {what} event within {within:?}; saw: {:#?}",
                    self.seen.iter().map(|e| (&e.job_id, e.attempt, e.status)).collect::<Vec<_>>()
                ),
            }
        }
    }

    pub async fn terminal(&mut self, job_id: &str, within: Duration) -> Event {
        self.wait_for(within, &format!("terminal event of {job_id}"), |e| e.job_id == job_id && e.status.is_terminal())
            .await
    }

    /// Collects whatever arrives during `period`.
    pub async fn drain_for(&mut self, period: Duration) {
        let deadline = tokio::time::Instant::now() + period;
        while let Ok(Some(Ok(d))) = tokio::time::timeout_at(deadline, self.consumer.next()).await {
            if let Ok(event) = serde_json::from_slice::<Event>(&d.data) {
                self.seen.push(event);
            }
        }
    }

    pub fn count(&self, job_id: &str, status: EventStatus) -> usize {
        self.seen.iter().filter(|e| e.job_id == job_id && e.status == status).count()
    }
}

pub async fn publish_job(channel: &Channel, prefix: &str, kind: JobKind, body: &[u8]) {
    let confirm = channel
        .basic_publish(
            "".into(),
            format!("{prefix}.jobs.{kind}").as_str().into(),
            BasicPublishOptions { mandatory: true, ..Default::default() },
            body,
            BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "publish not confirmed");
    if let lapin::Confirmation::Ack(Some(returned)) = confirm {
        panic!("job was unroutable (is the worker's topology declared?): {returned:?}");
    }
}

/// A channel in confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    ch
}

/// Deletes every queue and exchange a worker declared under `prefix`.
pub async fn delete_topology(channel: &Channel, prefix: &str, retry_levels: usize) {
    for kind in JobKind::ALL {
        let _ =
            channel.queue_delete(format!("{prefix}.jobs.{kind}").as_str().into(), QueueDeleteOptions::default()).await;
        for level in 0..retry_levels {
            let _ = channel
                .queue_delete(
                    ainern2d_contract::topology::Topology::new(prefix).retry_queue(kind, level).as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await;
        }
    }
    let _ = channel.queue_delete(format!("{prefix}.dead").as_str().into(), QueueDeleteOptions::default()).await;
    for ex in ["events", "control", "dlx"] {
        let _ =
            channel.exchange_delete(format!("{prefix}.{ex}").as_str().into(), ExchangeDeleteOptions::default()).await;
    }
}

/// Messages ready in a queue (passive declare: the queue must exist).
pub async fn queue_len(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(queue.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

/// Waits until `queue` holds at least `n` ready messages.
pub async fn wait_queue_len(channel: &Channel, queue: &str, n: u32, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let len = queue_len(channel, queue).await;
        if len >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{queue} holds {len} messages, expected {n} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first heartbeat in `queue` (see [`events_queue`]) that `pred` accepts, taken within `within`;
/// `logs` explains a timeout.
pub async fn heartbeat_until(
    channel: &Channel,
    queue: &str,
    within: Duration,
    what: &str,
    logs: impl Fn() -> String,
    pred: impl Fn(&ainern2d_contract::Heartbeat) -> bool,
) -> ainern2d_contract::Heartbeat {
    let deadline = Instant::now() + within;
    loop {
        assert!(Instant::now() < deadline, "no heartbeat {what} within {within:?}\n{}", logs());
        match channel.basic_get(queue.into(), lapin::options::BasicGetOptions { no_ack: true }).await.unwrap() {
            Some(m) => {
                let beat: ainern2d_contract::Heartbeat = serde_json::from_slice(&m.delivery.data).unwrap();
                if pred(&beat) {
                    return beat;
                }
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Publishes a control command to one worker (`worker.<id>`) or all (`worker.all`).
/// A control message's body, as the hub sends it.
pub fn control_body(command: ainern2d_contract::ControlCommand) -> Vec<u8> {
    let control = ainern2d_contract::Control {
        schema: ainern2d_contract::CONTROL_SCHEMA.into(),
        command_id: uuid::Uuid::new_v4().to_string(),
        issued_at: chrono::Utc::now(),
        command,
    };
    serde_json::to_vec(&control).unwrap()
}

pub async fn send_control(channel: &Channel, prefix: &str, target: &str, command: ainern2d_contract::ControlCommand) {
    let confirm = channel
        .basic_publish(
            format!("{prefix}.control").as_str().into(),
            format!("worker.{target}").as_str().into(),
            BasicPublishOptions::default(),
            &control_body(command),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
}

/// The worker's state as its `/ready` endpoint reports it.
pub async fn worker_state(http_port: u16) -> String {
    let body: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{http_port}/ready")).await.unwrap().json().await.unwrap();
    body["state"].as_str().unwrap_or_default().to_string()
}

/// The first sample of `name` on the `/metrics` of the process listening on `port`.
pub async fn metric(port: u16, name: &str) -> f64 {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
    body.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

/// A job body for `kind` with the given id and output prefix.
pub fn job(kind: JobKind, job_id: &str, params: serde_json::Value, inputs: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "ainern2d.job.v1",
        "job_id": job_id,
        "kind": kind,
        "params": params,
        "inputs": inputs,
        "output": {"prefix": "out"},
    }))
    .unwrap()
}

pub fn small_params(kind: JobKind) -> serde_json::Value {
    match kind {
        JobKind::Llm => serde_json::json!({"prompt": "hello", "max_tokens": 16, "seed": 1}),
        JobKind::Audio => serde_json::json!({"text": "hello there", "duration_s": 0.5, "sample_rate": 16000}),
        JobKind::Video => serde_json::json!({"width": 64, "height": 48, "fps": 8, "duration_s": 1.0}),
        JobKind::Lipsync => serde_json::json!({}),
    }
}

/// The CLI that talks to a node this process started: Debian's `/usr/sbin/rabbitmqctl` switches to the
/// `rabbitmq` user, whose Erlang cookie is not the one our nodes (started as this user) use.
fn rabbitmqctl() -> &'static str {
    ["/usr/lib/rabbitmq/bin/rabbitmqctl"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("rabbitmqctl")
}

/// A RabbitMQ node of its own on free ports, for tests that restart the broker (never the shared one).
pub struct PrivateBroker {
    pub port: u16,
    pub node: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra `rabbitmq.conf` lines and an `advanced.config` term, if any.
    conf: String,
    advanced: Option<String>,
}

impl PrivateBroker {
    pub async fn start() -> PrivateBroker {
        Self::start_with("", None).await
    }

    /// A node with extra `rabbitmq.conf` lines and an `advanced.config` (Erlang terms), e.g. a short
    /// `consumer_timeout` checked every second (`{rabbit, [{channel_tick_interval, 1000}]}`).
    pub async fn start_with(conf: &str, advanced: Option<&str>) -> PrivateBroker {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let node = format!("ainern2d-test-{port}@localhost");
        let mut broker = PrivateBroker {
            port,
            node,
            dir,
            child: None,
            conf: conf.to_string(),
            advanced: advanced.map(str::to_string),
        };
        broker.boot().await;
        broker
    }

    /// `(name, ready messages, unacked messages)` of every queue, from `rabbitmqctl`.
    pub fn queues(&self) -> Vec<(String, u64, u64)> {
        let out = Command::new(rabbitmqctl())
            .args(["-n", &self.node, "-q", "list_queues", "name", "messages_ready", "messages_unacknowledged"])
            .output()
            .expect("rabbitmqctl runs");
        assert!(out.status.success(), "rabbitmqctl list_queues: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let mut cols = line.split_whitespace();
                let name = cols.next()?.to_string();
                let ready = cols.next()?.parse().ok()?;
                let unacked = cols.next()?.parse().ok()?;
                Some((name, ready, unacked))
            })
            .collect()
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    async fn boot(&mut self) {
        let base = self.dir.path();
        std::fs::write(
            base.join("rabbitmq.conf"),
            format!("listeners.tcp.default = {}\nloopback_users = none\n{}\n", self.port, self.conf),
        )
        .unwrap();
        if let Some(advanced) = &self.advanced {
            std::fs::write(base.join("advanced.config"), advanced).unwrap();
        }
        std::fs::write(base.join("enabled_plugins"), "[].\n").unwrap();
        let server = ["/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("rabbitmq-server");
        let child = Command::new(server)
            // Erlang writes crash dumps (MnesiaCore.*) to its working directory: keep them in the temp dir.
            .current_dir(base)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_CONFIG_FILE", base.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", base.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", base.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", base.join("log"))
            .env("RABBITMQ_PID_FILE", base.join("pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start a private rabbitmq-server ({e}): install rabbitmq-server (scripts/test.sh does)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if Connection::connect(&self.url(), ConnectionProperties::default()).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private RabbitMQ on port {} did not start within 60 s (logs in {})",
                self.port,
                base.join("log").display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub fn stop(&mut self) {
        let _ = Command::new(rabbitmqctl())
            .args(["-n", &self.node, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the node and starts it again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.stop();
        self.boot().await;
    }

    /// The Erlang VM's process id (the node writes it to its pid file while it boots).
    pub fn os_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("pid")).ok()?.trim().parse().ok()
    }

    fn signal_vm(&self, sig: &str) {
        let pid = self.os_pid().expect("the private RabbitMQ node has written its pid file");
        let ok = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap();
        assert!(ok.success(), "kill -{sig} {pid} (the private RabbitMQ node)");
    }

    /// SIGSTOP: the node keeps its sockets and answers nothing until [`PrivateBroker::resume`].
    pub fn pause(&self) {
        self.signal_vm("STOP");
    }

    pub fn resume(&self) {
        self.signal_vm("CONT");
    }

    /// SIGKILL of the VM (a crash: nothing is flushed or closed cleanly), then a start on the same data.
    pub async fn crash_restart(&mut self) {
        self.signal_vm("KILL");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        self.boot().await;
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test's own broker prefix, bucket and connections, with the worker and job helpers the worker and
/// control tests share. `cleanup` removes every queue, exchange and object it made.
pub struct Bed {
    pub prefix: String,
    pub bucket: String,
    pub conn: Connection,
    pub channel: Channel,
    pub s3: aws_sdk_s3::Client,
}

impl Bed {
    pub async fn new(name: &str) -> Bed {
        let prefix = unique(name);
        let bucket = prefix.to_lowercase();
        let s3 = s3().await;
        create_bucket(&s3, &bucket).await;
        let conn = connect(&amqp_url()).await;
        let channel = confirm_channel(&conn).await;
        Bed { prefix, bucket, conn, channel, s3 }
    }

    /// A worker config for this bed and the HTTP port it listens on.
    pub fn config(&self, extra: &str) -> (String, u16) {
        let port = free_port();
        (worker_config(&amqp_url(), &self.prefix, &self.bucket, port, extra), port)
    }

    /// A ready worker.
    pub async fn worker(&self, extra: &str) -> Worker {
        let (config, _) = self.config(extra);
        let mut w = Worker::spawn(&config);
        w.wait_ready().await;
        w
    }

    /// The id `worker_config` gives the worker listening on `http_port`.
    pub fn worker_id(&self, http_port: u16) -> String {
        format!("{}-w{http_port}", self.prefix)
    }

    /// Publishes a small job of `kind` with no inputs.
    pub async fn submit(&self, kind: JobKind, id: &str) {
        self.submit_with(kind, id, small_params(kind)).await;
    }

    pub async fn submit_with(&self, kind: JobKind, id: &str, params: serde_json::Value) {
        publish_job(&self.channel, &self.prefix, kind, &job(kind, id, params, serde_json::json!({}))).await;
    }

    pub async fn control(&self, target: &str, command: ainern2d_contract::ControlCommand) {
        send_control(&self.channel, &self.prefix, target, command).await;
    }

    pub async fn cleanup(self) {
        delete_topology(&self.channel, &self.prefix, 3).await;
        delete_bucket(&self.s3, &self.bucket).await;
        let _ = self.conn.close(200, "done".into()).await;
    }
}
