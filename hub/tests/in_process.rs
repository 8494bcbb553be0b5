//! The hub over the in-process broker and an in-memory SQLite store: the API, the outbox, the alert queue
//! and the limits, with no services to start. (`tests/tests/hub.rs` runs the real binary against RabbitMQ
//! and Postgres.)

use std::sync::Arc;
use std::time::Duration;

use ainern2d_contract::topology::{REPLAY_HEADER, Topology};
use ainern2d_contract::{
    Event, EventStatus, HEARTBEAT_SCHEMA, Heartbeat, JobKind, OutputObject, SlotUsage, WorkerState,
};
use ainern2d_hub::Hub;
use ainern2d_hub::config::Config;
use ainern2d_hub::store::{self, DatabaseConfig, StatusStore};
use ainern2d_queue::embedded::EmbeddedBroker;
use ainern2d_queue::{Broker, Delivery, Message};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "admin-secret";
const T: Duration = Duration::from_secs(10);

struct Local {
    hub: Arc<Hub>,
    broker: Arc<EmbeddedBroker>,
    base: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

fn config(extra: &str) -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, format!("{ADMIN}\n")).unwrap();
    // A file, not `sqlite::memory:`: sqlx replaces a connection whose query was dropped half-way (an event
    // stream's client going away), and a replaced in-memory connection is an empty database.
    let toml = format!(
        "[broker]\nprefix = \"t\"\n[database]\nurl = \"sqlite://{}\"\n[api]\nadmin_token_file = \"{}\"\n{extra}",
        dir.path().join("hub.db").display(),
        token.display()
    );
    (Config::from_toml(&toml).unwrap(), dir)
}

async fn open_store(config: &Config) -> Arc<dyn StatusStore> {
    let store = store::open(&DatabaseConfig { max_connections: 1, ..config.database.clone() }).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// Starts a hub over `store` and waits until it is ready.
async fn start(config: Config, dir: tempfile::TempDir, store: Arc<dyn StatusStore>) -> Local {
    let broker = Arc::new(EmbeddedBroker::new());
    let hub = Hub::new(config, store, broker.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let task = tokio::spawn(ainern2d_hub::run(hub.clone(), listener, stop.clone()));
    let local = Local { hub, broker, base, stop, task, _dir: dir };
    local.wait_ready().await;
    local
}

impl Local {
    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + T;
        while !self.hub.readiness().ok() {
            assert!(tokio::time::Instant::now() < deadline, "the hub is not ready: {:?}", self.hub.readiness());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn http(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    async fn submit(&self, body: &serde_json::Value) -> reqwest::Response {
        self.http().post(format!("{}/v1/jobs", self.base)).bearer_auth(ADMIN).json(body).send().await.unwrap()
    }

    /// The next job on `kind`'s queue.
    async fn next_job(&self, kind: JobKind) -> Delivery {
        let session = self.broker.connect("test consumer").await.unwrap();
        let queue = Topology::new("t").job_queue(kind);
        let deadline = tokio::time::Instant::now() + T;
        // The queue may be on its way back (a publishing session declaring the topology again).
        let mut sub = loop {
            match session.subscribe(&queue, "test", 1).await {
                Ok(sub) => break sub,
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "cannot consume {queue}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let delivery = tokio::time::timeout(T, sub.next()).await.expect("no job on the queue").unwrap().unwrap();
        delivery.acker.ack(false).await.unwrap();
        delivery
    }

    async fn publish_event(&self, routing_key: &str, body: Vec<u8>) {
        let session = self.broker.connect("test publisher").await.unwrap();
        session.publish("t.events", routing_key, &Message::json(body)).await.unwrap();
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn job(id: &str) -> serde_json::Value {
    serde_json::json!({
        "schema": "ainern2d.job.v1", "job_id": id, "kind": "audio",
        "params": {"text": "hello there", "duration_s": 0.5, "sample_rate": 16000},
        "inputs": {}, "output": {"prefix": "out"}
    })
}

#[tokio::test]
async fn a_job_submitted_before_any_worker_waits_in_its_queue() {
    let (config, dir) = config("");
    let store = open_store(&config).await;
    let local = start(config, dir, store).await;
    // No worker has declared anything: the hub declared the job queues itself.
    let r = local.submit(&job("fresh-1")).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let delivery = local.next_job(JobKind::Audio).await;
    let sent: serde_json::Value = serde_json::from_slice(&delivery.message.body).unwrap();
    assert_eq!(sent["job_id"], "fresh-1");
    assert!(!delivery.message.headers.contains_key(REPLAY_HEADER), "a first publish is not a replay");
    // Published and marked: a resubmission is a duplicate and publishes nothing.
    assert_eq!(local.submit(&job("fresh-1")).await.status(), 200);
    local.stop().await;
}

#[tokio::test]
async fn an_unroutable_job_is_a_503_naming_the_queue_and_the_relay_enqueues_it_later() {
    let (config, dir) = config("[outbox]\nrelay_after_ms = 200\nrelay_interval_ms = 50\n");
    let store = open_store(&config).await;
    let local = start(config, dir, store).await;
    // The queue disappears under the hub (an operator deleted it).
    let admin = local.broker.connect("operator").await.unwrap();
    admin.delete_queue("t.jobs.audio").await.unwrap();
    let r = local.submit(&job("gone-1")).await;
    assert_eq!(r.status(), 503);
    let error = r.json::<serde_json::Value>().await.unwrap()["error"].as_str().unwrap().to_string();
    assert!(error.contains("t.jobs.audio") && error.contains("not enqueued"), "{error}");
    // The failed publish replaced the publishing session, which declared the queue again; the relay
    // publishes the recorded job, flagged as a replay.
    let delivery = local.next_job(JobKind::Audio).await;
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&delivery.message.body).unwrap()["job_id"], "gone-1");
    assert!(delivery.message.headers.contains_key(REPLAY_HEADER));
    local.stop().await;
}

#[tokio::test]
async fn a_job_recorded_by_a_hub_that_died_before_publishing_is_published_by_the_relay() {
    let (config, dir) = config("[outbox]\nrelay_after_ms = 100\nrelay_interval_ms = 50\n");
    let store = open_store(&config).await;
    // What a hub killed between its insert and its publish leaves behind.
    let spec: serde_json::Value =
        serde_json::to_value(ainern2d_contract::parse_job(job("crashed-1").to_string().as_bytes()).unwrap()).unwrap();
    assert!(store.insert_submitted("crashed-1", "audio", &spec).await.unwrap());
    let local = start(config, dir, store).await;
    let delivery = local.next_job(JobKind::Audio).await;
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&delivery.message.body).unwrap()["job_id"], "crashed-1");
    assert!(delivery.message.headers.contains_key(REPLAY_HEADER), "it may have been published before");
    let deadline = tokio::time::Instant::now() + T;
    while !local.hub.store.submission("crashed-1").await.unwrap().unwrap().published {
        assert!(tokio::time::Instant::now() < deadline, "the relay did not mark the job published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(local.submit(&job("crashed-1")).await.status(), 200);
    local.stop().await;
}

#[tokio::test]
async fn a_resubmission_of_a_job_never_published_publishes_it() {
    // The relay waits for a minute: only the resubmission can publish the job.
    let (config, dir) = config("[outbox]\nrelay_after_ms = 60000\n");
    let store = open_store(&config).await;
    let spec: serde_json::Value =
        serde_json::to_value(ainern2d_contract::parse_job(job("again-1").to_string().as_bytes()).unwrap()).unwrap();
    assert!(store.insert_submitted("again-1", "audio", &spec).await.unwrap());
    let local = start(config, dir, store).await;
    let r = local.submit(&job("again-1")).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let delivery = local.next_job(JobKind::Audio).await;
    assert!(delivery.message.headers.contains_key(REPLAY_HEADER), "it may have been published before");
    local.stop().await;
}

fn hot_heartbeats(worker: &str) -> Vec<Heartbeat> {
    let start = chrono::Utc::now() - chrono::Duration::minutes(16);
    (0..=32)
        .map(|i| Heartbeat {
            schema: HEARTBEAT_SCHEMA.into(),
            worker_id: worker.into(),
            host: "gpu".into(),
            version: "0".into(),
            state: WorkerState::Ready,
            sent_at: start + chrono::Duration::seconds(30 * i),
            slots: [("video".to_string(), SlotUsage { total: 1, busy: 0 })].into(),
            models_loaded: Vec::new(),
            gpus: vec![ainern2d_contract::GpuStats {
                index: 0,
                name: "synthetic".into(),
                uuid: "GPU-test".into(),
                utilization_pct: 95,
                memory_used_bytes: 1,
                memory_total_bytes: 2,
                temperature_c: None,
                power_w: None,
                source: None,
            }],
            downgrade: None,
            backends: Default::default(),
        })
        .collect()
}

#[tokio::test]
async fn a_webhook_that_never_answers_does_not_hold_up_ingestion() {
    // Accepts connections, reads nothing, answers nothing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v2/alerts", silent.local_addr().unwrap());
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = silent.accept().await {
            keep.lock().unwrap().push(conn);
        }
    });
    let (config, dir) = config(&format!("[alerts]\nwebhook_url = \"{url}\"\nqueue_capacity = 1\ntimeout_ms = 30000\n"));
    let store = open_store(&config).await;
    let local = start(config, dir, store).await;
    // Three hot workers: three downgrade decisions, each an alert for the silent webhook.
    for worker in ["hot-1", "hot-2", "hot-3"] {
        for hb in hot_heartbeats(worker) {
            local.publish_event(&format!("worker.heartbeat.{worker}"), serde_json::to_vec(&hb).unwrap()).await;
        }
    }
    let deadline = tokio::time::Instant::now() + T;
    while local.hub.store.recent_decisions(10).await.unwrap().len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the policy did not decide three downgrades");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Ingestion goes on while the first alert waits on the webhook.
    let event = Event::new("after-alerts", Some(JobKind::Video), 1, "hot-1", EventStatus::Succeeded, 0);
    local.publish_event(&event.routing_key(), serde_json::to_vec(&event).unwrap()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while local.hub.store.job_status("after-alerts").await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "ingestion is blocked behind the webhook");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One alert in flight, one queued, the third dropped and counted.
    assert!(
        local.hub.metrics.render().contains("ainern2d_hub_alerts_dropped_total 1"),
        "{}",
        local.hub.metrics.render()
    );
    local.stop().await;
}

async fn with_outputs(store: &Arc<dyn StatusStore>, job_id: &str) {
    let mut done = Event::new(job_id, Some(JobKind::Audio), 1, "w-1", EventStatus::Succeeded, 0);
    done.outputs = vec![OutputObject {
        name: "audio.wav".into(),
        bucket: "out".into(),
        key: format!("p/{job_id}/audio.wav"),
        size: 1,
        sha256: "00".into(),
        content_type: "audio/wav".into(),
        presigned_url: Some("https://s3.example/p/audio.wav?X-Amz-Signature=secret".into()),
    }];
    store.apply_batch(&[done], &[]).await.unwrap();
}

#[tokio::test]
async fn without_a_read_token_reads_are_open_but_presigned_urls_are_for_token_holders() {
    let (config, dir) = config("");
    let store = open_store(&config).await;
    with_outputs(&store, "out-1").await;
    let local = start(config, dir, store).await;
    let http = local.http();
    for url in [format!("{}/v1/jobs/out-1", local.base), format!("{}/v1/jobs", local.base)] {
        let anonymous = http.get(&url).send().await.unwrap().text().await.unwrap();
        assert!(anonymous.contains("p/out-1/audio.wav") && !anonymous.contains("X-Amz-Signature"), "{anonymous}");
        let admin = http.get(&url).bearer_auth(ADMIN).send().await.unwrap().text().await.unwrap();
        assert!(admin.contains("X-Amz-Signature"), "{admin}");
    }
    let events = http.get(format!("{}/v1/jobs/out-1/events", local.base)).send().await.unwrap().text().await.unwrap();
    assert!(events.contains("event: succeeded") && !events.contains("X-Amz-Signature"), "{events}");
    local.stop().await;
}

#[tokio::test]
async fn with_a_read_token_every_read_needs_it_or_the_admin_token() {
    let (mut config, dir) = config("");
    let read = dir.path().join("read-token");
    std::fs::write(&read, "reader\n").unwrap();
    config.api.read_token_file = read.display().to_string();
    let store = open_store(&config).await;
    with_outputs(&store, "out-2").await;
    let local = start(config, dir, store).await;
    let http = local.http();
    for path in ["/v1/jobs", "/v1/jobs/out-2", "/v1/jobs/out-2/events", "/v1/workers", "/v1/policy"] {
        let url = format!("{}{path}", local.base);
        assert_eq!(http.get(&url).send().await.unwrap().status(), 401, "{path} anonymous");
        assert_eq!(http.get(&url).bearer_auth("wrong").send().await.unwrap().status(), 401, "{path} wrong token");
        for token in ["reader", ADMIN] {
            let r = http.get(&url).bearer_auth(token).send().await.unwrap();
            let status = r.status();
            assert_eq!(status, 200, "{path} with {token}: {}", r.text().await.unwrap_or_default());
        }
    }
    let job = http.get(format!("{}/v1/jobs/out-2", local.base)).bearer_auth("reader").send().await.unwrap();
    assert!(job.text().await.unwrap().contains("X-Amz-Signature"), "a read token holder sees presigned URLs");
    // The probes stay open.
    assert_eq!(http.get(format!("{}/ready", local.base)).send().await.unwrap().status(), 200);
    // A read token does not mutate.
    let r = http.post(format!("{}/v1/jobs", local.base)).bearer_auth("reader").json(&job_body()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    local.stop().await;
}

fn job_body() -> serde_json::Value {
    job("body-1")
}

#[tokio::test]
async fn oversized_bodies_are_413_and_event_streams_are_capped() {
    let (mut config, dir) = config("");
    config.api.max_body_bytes = 4096;
    config.api.max_sse_clients = 1;
    let store = open_store(&config).await;
    let local = start(config, dir, store).await;
    let mut big = job("big-1");
    big["params"]["text"] = "x".repeat(8192).into();
    assert_eq!(local.submit(&big).await.status(), 413);
    // A stream of a job that has not ended stays open and holds the one slot.
    assert_eq!(local.submit(&job("open-1")).await.status(), 202);
    let url = format!("{}/v1/jobs/open-1/events", local.base);
    let first = local.http().get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let second = local.http().get(&url).send().await.unwrap();
    assert_eq!(second.status(), 503);
    assert!(second.text().await.unwrap().contains("api.max_sse_clients"));
    drop(first);
    // The server sees the client gone at its next write (a keep-alive comment, every 15 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let again = local.http().get(&url).send().await.unwrap();
        if again.status() == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "a closed stream did not give its slot back");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    local.stop().await;
}

#[tokio::test]
async fn an_unreadable_admin_token_file_stops_the_start_naming_the_key() {
    let (mut config, dir) = config("");
    config.api.admin_token_file = dir.path().join("missing").display().to_string();
    let store = open_store(&config).await;
    let hub = Hub::new(config, store, Arc::new(EmbeddedBroker::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = ainern2d_hub::run(hub, listener, CancellationToken::new()).await.unwrap_err().to_string();
    assert!(err.contains("`api.admin_token_file`") && err.contains("missing"), "{err}");
}

/// Found by chaos round `0x58567b048dbe8bd4`: after a broker crash the hub's ack of a batch never returned
/// (lapin can wait for ever on a connection it has lost), so ingestion stopped for good — 20 jobs stayed
/// `queued` with their events waiting in the hub's queue — and the hub did not exit on SIGTERM.
#[tokio::test]
async fn an_ack_that_never_returns_does_not_stop_ingestion_when_the_session_is_lost() {
    let (config, _dir) = config("");
    let store = open_store(&config).await;
    let embedded = Arc::new(EmbeddedBroker::new());
    let faulty = Arc::new(ainern2d_queue::faults::FaultyBroker::new(embedded.clone()));
    let faults = faulty.faults.clone();
    let hub = Hub::new(config, store, faulty);
    let (stop, task) = run_until_ready(&hub).await;
    let publish = |id: &str| {
        let event = Event::new(id, Some(JobKind::Llm), 1, "w-1", EventStatus::Succeeded, 0);
        let embedded = embedded.clone();
        async move {
            let session = embedded.connect("test publisher").await.unwrap();
            session
                .publish("t.events", &event.routing_key(), &Message::json(serde_json::to_vec(&event).unwrap()))
                .await
                .unwrap();
        }
    };
    let applied = |id: &'static str, within: Duration| {
        let hub = hub.clone();
        async move {
            let deadline = tokio::time::Instant::now() + within;
            while hub.store.job_status(id).await.unwrap().is_none() {
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            true
        }
    };
    faults.hang_acks(1);
    publish("hung-ack-1").await;
    assert!(applied("hung-ack-1", T).await, "the first batch was not applied");
    // The connection dies while that batch's ack hangs.
    faults.lose_sessions().await;
    publish("hung-ack-2").await;
    assert!(applied("hung-ack-2", T).await, "ingestion stopped behind an ack that never returned");
    // And the hub still stops.
    stop.cancel();
    tokio::time::timeout(T, task).await.expect("the hub did not stop").unwrap().unwrap();
}

/// Found by chaos round `0x2daa3530f39c7b62`: a hub did not exit within 20 s of SIGTERM; closing a broker
/// session can wait for ever for an answer on a connection that is going away. Every close is bounded.
#[tokio::test]
async fn a_session_close_that_never_returns_does_not_hold_up_the_stop() {
    let (config, _dir) = config("");
    let store = open_store(&config).await;
    let faulty = Arc::new(ainern2d_queue::faults::FaultyBroker::new(Arc::new(EmbeddedBroker::new())));
    faulty.faults.hang_closes(100);
    let hub = Hub::new(config, store, faulty);
    let (stop, task) = run_until_ready(&hub).await;
    let started = tokio::time::Instant::now();
    stop.cancel();
    tokio::time::timeout(T, task).await.expect("the hub did not stop").unwrap().unwrap();
    let took = started.elapsed();
    assert!(took < ainern2d_queue::CLOSE_WAIT * 2, "the stop took {took:?}");
}

/// Runs `hub` (over whatever broker it was built with) until it is ready; the token stops it.
async fn run_until_ready(hub: &Arc<Hub>) -> (CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(ainern2d_hub::run(hub.clone(), listener, stop.clone()));
    let deadline = tokio::time::Instant::now() + T;
    while !hub.readiness().ok() {
        assert!(tokio::time::Instant::now() < deadline, "the hub is not ready: {:?}", hub.readiness());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (stop, task)
}
