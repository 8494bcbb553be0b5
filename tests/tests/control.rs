//! Control commands obeyed by the real worker binary: cordon, drain, cancel, downgrade.

use std::time::{Duration, Instant};

use ainern2d_contract::{ControlCommand, DowngradeProfile, EventStatus, JobKind};
use ainern2d_tests::*;

const T: Duration = Duration::from_secs(60);

/// Waits until the worker's `/ready` reports this downgrade profile (or none).
async fn wait_downgrade(port: u16, profile: Option<&str>) {
    let deadline = Instant::now() + T;
    loop {
        let body: serde_json::Value =
            reqwest::get(format!("http://127.0.0.1:{port}/ready")).await.unwrap().json().await.unwrap();
        if body["downgrade"].as_str() == profile {
            return;
        }
        assert!(Instant::now() < deadline, "worker never reported downgrade {profile:?}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_state(port: u16, state: &str) {
    let deadline = Instant::now() + T;
    while worker_state(port).await != state {
        assert!(Instant::now() < deadline, "worker never reached state {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cordoned_worker_takes_no_new_job_until_uncordoned() {
    let s = Bed::new("cordon").await;
    let w = s.worker("").await;
    let id = s.worker_id(w.http_port);
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    s.control(&id, ControlCommand::Cordon).await;
    wait_state(w.http_port, "cordoned").await;
    s.submit(JobKind::Llm, "waits").await;
    // A delivery that raced the cordon is handed back; either way the job ends up waiting in the queue.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    wait_queue_len(&s.channel, &format!("{}.jobs.llm", s.prefix), 1, T).await;
    assert_eq!(tap.count("waits", EventStatus::Running), 0);
    s.control("all", ControlCommand::Uncordon).await;
    assert_eq!(tap.terminal("waits", T).await.status, EventStatus::Succeeded);
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_finishes_the_job_in_flight_takes_no_more_and_reports_drained() {
    let s = Bed::new("drain").await;
    let w = s.worker("[mock]\nlatency_ms = 1500\n").await;
    let id = s.worker_id(w.http_port);
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    s.submit(JobKind::Llm, "in-flight").await;
    tap.wait_for(T, "running", |e| e.job_id == "in-flight" && e.status == EventStatus::Running).await;
    s.control(&id, ControlCommand::Drain).await;
    wait_state(w.http_port, "draining").await;
    s.submit(JobKind::Llm, "after-drain").await;
    assert_eq!(tap.terminal("in-flight", T).await.status, EventStatus::Succeeded);
    wait_state(w.http_port, "drained").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        queue_len(&s.channel, &format!("{}.jobs.llm", s.prefix)).await,
        1,
        "the job after the drain stays queued"
    );
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_running_job_and_skips_a_queued_one() {
    let s = Bed::new("cancel-job").await;
    let w = s.worker("[mock]\nlatency_ms = 60000\n").await;
    let id = s.worker_id(w.http_port);
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    s.submit(JobKind::Llm, "long").await;
    tap.wait_for(T, "running", |e| e.job_id == "long" && e.status == EventStatus::Running).await;
    let started = Instant::now();
    s.control(&id, ControlCommand::Cancel { job_id: "long".into() }).await;
    assert_eq!(tap.terminal("long", T).await.status, EventStatus::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(5), "cancellation took {:?}", started.elapsed());

    // Cancelled before delivery (the worker is cordoned while the job waits in the queue).
    s.control(&id, ControlCommand::Cordon).await;
    wait_state(w.http_port, "cordoned").await;
    s.submit(JobKind::Llm, "queued").await;
    s.control("all", ControlCommand::Cancel { job_id: "queued".into() }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.control(&id, ControlCommand::Uncordon).await;
    assert_eq!(tap.terminal("queued", T).await.status, EventStatus::Cancelled);
    assert_eq!(tap.count("queued", EventStatus::Running), 0, "a cancelled job never runs");
    assert_eq!(queue_len(&s.channel, &format!("{}.jobs.llm", s.prefix)).await, 0);
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downgrade_profile_applies_to_new_jobs_and_is_named_in_their_events() {
    let s = Bed::new("downgrade").await;
    let w = s.worker("").await;
    let id = s.worker_id(w.http_port);
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    let profile = DowngradeProfile {
        name: "gpu-hot".into(),
        llm_max_tokens: Some(4),
        slots: [("llm".to_string(), 1)].into(),
        ..Default::default()
    };
    s.control(&id, ControlCommand::ApplyDowngrade { profile }).await;
    wait_downgrade(w.http_port, Some("gpu-hot")).await;
    // The profile's slots lower the kind's concurrency (4 configured).
    wait_slots(w.http_port, "llm", 1).await;
    let params = serde_json::json!({"prompt": "hello", "max_tokens": 32});
    s.submit_with(JobKind::Llm, "capped", params.clone()).await;
    let capped = tap.terminal("capped", T).await;
    assert_eq!(capped.downgrade.as_deref(), Some("gpu-hot"));
    assert_eq!(capped.status, EventStatus::Succeeded, "{capped:?}\n{}", w.logs());
    let url = capped.outputs[0].presigned_url.clone().unwrap();
    let body: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 4, "{body}");

    s.control(&id, ControlCommand::ClearDowngrade).await;
    wait_downgrade(w.http_port, None).await;
    wait_slots(w.http_port, "llm", 4).await;
    s.submit_with(JobKind::Llm, "full", params).await;
    let full = tap.terminal("full", T).await;
    assert_eq!(full.downgrade, None);
    let body: serde_json::Value =
        reqwest::get(full.outputs[0].presigned_url.clone().unwrap()).await.unwrap().json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 32);
    s.cleanup().await;
}

async fn wait_slots(http_port: u16, kind: &str, total: u64) {
    let url = format!("http://127.0.0.1:{http_port}/ready");
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        last = reqwest::get(&url).await.unwrap().json().await.unwrap();
        if last["slots"][kind]["total"] == total {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{kind} slots never became {total}: {last}");
}

/// The moment `/ready` first answers 200, a command sent to the worker must find its control queue: it
/// is bound before the worker reports ready (it once was bound after, and a command sent in between, to
/// a worker the hub had just seen, was dropped by the exchange). Several starts, `/ready` polled every
/// millisecond, the command published `mandatory` so an unroutable one comes back.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_sent_the_moment_the_worker_is_ready_reaches_it() {
    use lapin::BasicProperties;
    use lapin::options::BasicPublishOptions;
    let s = Bed::new("ready-control").await;
    for attempt in 0..8 {
        let (config, port) = s.config("");
        let mut w = Worker::spawn(&config);
        let http = reqwest::Client::new();
        let deadline = Instant::now() + T;
        loop {
            if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/ready")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "not ready:\n{}", w.logs());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let confirm = s
            .channel
            .basic_publish(
                format!("{}.control", s.prefix).as_str().into(),
                format!("worker.{}", s.worker_id(port)).as_str().into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &control_body(ControlCommand::Cordon),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.take_message().is_none(), "start {attempt}: ready, but no control queue bound yet");
        wait_state(port, "cordoned").await;
        w.signal("TERM");
        assert_eq!(w.wait_exit(T).await, 0);
    }
    s.cleanup().await;
}
