//! Jobs longer than the broker's consumer timeout (issue 12, item 2) on private RabbitMQ nodes: the real
//! worker binary, a job of 12 s, and a `consumer_timeout` of 5 s checked every second (RabbitMQ checks it
//! on its channel tick, 60 s by default).

use std::time::{Duration, Instant};

use ainern2d_contract::{EventStatus, JobKind};
use ainern2d_tests::*;

const SHORT_CONSUMER_TIMEOUT: &str = "[{rabbit, [{consumer_timeout, 5000}, {channel_tick_interval, 1000}]}].";

/// Lines RabbitMQ's consumer-timeout channel close puts in the worker's log (through lapin's error).
fn timed_out(logs: &str) -> bool {
    logs.contains("acknowledgement") && logs.contains("timed out")
}

async fn until(what: &str, within: Duration, logs: impl Fn() -> String, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}\n{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Node {
    broker: PrivateBroker,
    prefix: String,
    bucket: String,
    s3: aws_sdk_s3::Client,
    conn: lapin::Connection,
    channel: lapin::Channel,
}

impl Node {
    async fn new(name: &str, advanced: Option<&str>) -> Node {
        let broker = PrivateBroker::start_with("", advanced).await;
        let prefix = unique(name);
        let bucket = prefix.to_lowercase();
        let s3 = s3().await;
        create_bucket(&s3, &bucket).await;
        let conn = connect(&broker.url()).await;
        let channel = confirm_channel(&conn).await;
        Node { broker, prefix, bucket, s3, conn, channel }
    }

    async fn tap(&self) -> EventTap {
        EventTap::new(&self.channel, &self.prefix).await
    }

    async fn submit(&self, id: &str) {
        let body = job(JobKind::Llm, id, small_params(JobKind::Llm), serde_json::json!({}));
        publish_job(&self.channel, &self.prefix, JobKind::Llm, &body).await;
    }

    /// A ready worker and its id.
    async fn worker(&self, extra: &str) -> (Worker, String) {
        let port = free_port();
        let mut w = Worker::spawn(&worker_config(&self.broker.url(), &self.prefix, &self.bucket, port, extra));
        w.wait_ready().await;
        (w, format!("{}-w{port}", self.prefix))
    }

    fn lease_queues(&self) -> Vec<(String, u64, u64)> {
        let lease = format!("{}.lease.", self.prefix);
        self.broker.queues().into_iter().filter(|(name, ..)| name.starts_with(&lease)).collect()
    }

    fn job_queue(&self) -> (u64, u64) {
        let name = format!("{}.jobs.llm", self.prefix);
        self.broker.queues().into_iter().find(|(n, ..)| *n == name).map(|(_, r, u)| (r, u)).expect("the job queue")
    }

    async fn cleanup(self) {
        let _ = self.conn.close(200, "done".into()).await;
        delete_bucket(&self.s3, &self.bucket).await;
    }
}

fn config(lease_after_s: u64, lease_ttl_s: u64, latency_ms: u64) -> String {
    format!(
        "[jobs]\nkinds = [\"llm\"]\nlease_after_s = {lease_after_s}\nlease_ttl_s = {lease_ttl_s}\n\
         [mock]\nlatency_ms = {latency_ms}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_longer_than_the_consumer_timeout_finishes_once_with_a_lease_and_is_taken_back_without() {
    // The control: without a lease, the broker closes the channel of the 12 s job after about 6 s (and
    // redelivers it) — the loop a lease exists for. Were the node's timeout not in force, this would fail.
    let node = Node::new("lease-control", Some(SHORT_CONSUMER_TIMEOUT)).await;
    let (mut w, _) = node.worker(&config(0, 60, 12_000)).await;
    let mut tap = node.tap().await;
    node.submit("control-1").await;
    tap.wait_for(Duration::from_secs(10), "control-1 running", |e| {
        e.job_id == "control-1" && e.status == EventStatus::Running
    })
    .await;
    until(
        "the broker's consumer timeout closes the channel",
        Duration::from_secs(20),
        || w.logs(),
        || timed_out(&w.logs()),
    )
    .await;
    w.kill9();
    node.cleanup().await;

    // With a lease taken after 2 s, the same job runs once, is never taken back, and leaves nothing behind.
    let node = Node::new("lease", Some(SHORT_CONSUMER_TIMEOUT)).await;
    let (mut w, _) = node.worker(&config(2, 6, 12_000)).await;
    let mut tap = node.tap().await;
    node.submit("leased-1").await;
    until("the lease is taken", Duration::from_secs(10), || w.logs(), || w.logs().contains("held by a lease")).await;
    assert_eq!(node.lease_queues().len(), 1, "one lease queue holds the copy: {:?}", node.lease_queues());
    assert_eq!(node.job_queue(), (0, 0), "the delivery was acked: nothing ready or unacked");
    let done = tap.terminal("leased-1", Duration::from_secs(40)).await;
    assert_eq!(done.status, EventStatus::Succeeded, "{}", w.logs());
    tap.drain_for(Duration::from_secs(1)).await;
    assert_eq!(tap.count("leased-1", EventStatus::Running), 1, "one run\n{}", w.logs());
    assert_eq!(tap.count("leased-1", EventStatus::Succeeded), 1);
    assert!(!timed_out(&w.logs()), "the consumer timeout fired:\n{}", w.logs());
    assert!(node.lease_queues().is_empty(), "the outcome deletes the lease queue: {:?}", node.lease_queues());
    // Past the lease's TTL nothing comes back.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(node.job_queue(), (0, 0));
    w.kill9();
    node.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_leased_job_comes_back_within_the_ttl_and_no_lease_queue_stays() {
    let node = Node::new("lease-killed", None).await;
    let (mut first, first_id) = node.worker(&config(1, 4, 60_000)).await;
    let mut tap = node.tap().await;
    node.submit("killed-1").await;
    until("the lease is taken", Duration::from_secs(10), || first.logs(), || first.logs().contains("held by a lease"))
        .await;
    first.kill9();
    let killed = Instant::now();
    let (second, second_id) = node.worker(&config(1, 4, 200)).await;
    let done = tap.terminal("killed-1", Duration::from_secs(20)).await;
    assert_eq!(done.status, EventStatus::Succeeded, "{}", second.logs());
    assert!(
        killed.elapsed() < Duration::from_secs(4 + 5),
        "back within the 4 s TTL (+ the run): {:?}",
        killed.elapsed()
    );
    assert_eq!(done.worker_id, second_id, "run by the second worker, not {first_id}");
    // The dead worker's last lease queue expires (x-expires, 3 × TTL) once its copy has gone.
    until("the dead worker's lease queues expire", Duration::from_secs(20), String::new, || {
        node.lease_queues().is_empty()
    })
    .await;
    assert_eq!(node.job_queue(), (0, 0));
    node.cleanup().await;
}
