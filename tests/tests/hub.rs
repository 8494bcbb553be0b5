//! The hub against real RabbitMQ and Postgres, running the real binary.

use std::time::{Duration, Instant};

use ainern2d_contract::{EventStatus, JobKind};
use ainern2d_tests::*;

mod hub_support;
use hub_support::*;

#[tokio::test(flavor = "multi_thread")]
async fn events_are_applied_exactly_once_under_duplicates_and_reordering() {
    let s = setup("hub-once").await;
    let _hub = s.hub("").await;
    let pool = pg(&s.schema).await;
    // A retried job, delivered out of order and every event twice; a late progress after the end; a job
    // whose second, conflicting outcome must not win; and a message that is not an event at all.
    let mut retried = vec![
        event("retried", 2, EventStatus::Succeeded, 1),
        event("retried", 1, EventStatus::Progress, 1),
        event("retried", 1, EventStatus::Running, 0),
        event("retried", 2, EventStatus::Running, 0),
        event("retried", 1, EventStatus::Retrying, 2),
    ];
    retried.extend(retried.clone());
    for e in &retried {
        s.send(e).await;
    }
    s.send(&event("retried", 2, EventStatus::Progress, 9)).await;
    s.send(&event("conflict", 1, EventStatus::Succeeded, 3)).await;
    s.send(&event("conflict", 1, EventStatus::Failed, 4)).await;
    s.publish("job.video.failed", b"not an event").await;

    // 5 distinct events of `retried` + 1 late progress + 2 of `conflict`.
    wait_count(&pool, "SELECT count(*) FROM job_events", 8).await;
    assert_eq!(job_row(&pool, "retried").await, ("succeeded".into(), 2));
    assert_eq!(job_row(&pool, "conflict").await, ("succeeded".into(), 1));
    let ignored: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM job_events WHERE NOT applied ORDER BY event_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    // Everything that arrived after `retried` ended (it ended first) is logged but did not move it.
    assert!(ignored.contains(&"conflict/1/failed".to_string()), "{ignored:?}");
    assert!(ignored.contains(&"retried/2/9".to_string()), "{ignored:?}");
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_killed_between_receiving_and_committing_loses_no_event() {
    let s = setup("hub-kill").await;
    // A long batch window: the hub holds the events, uncommitted and unacked, when it is killed.
    let mut hub = s.hub("[ingest]\nbatch_wait_ms = 10000\nbatch_max = 1000\n").await;
    let pool = pg(&s.schema).await;
    for i in 0..50 {
        s.send(&event(&format!("job-{i}"), 1, EventStatus::Succeeded, 0)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events").fetch_one(&pool).await.unwrap();
    assert_eq!(committed, 0, "the batch must still be open when the hub is killed");
    hub.kill9();
    let _hub = s.hub("").await;
    wait_count(&pool, "SELECT count(*) FROM jobs WHERE status = 'succeeded'", 50).await;
    wait_count(&pool, "SELECT count(*) FROM job_events", 50).await;
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_heartbeats_mark_a_worker_lost() {
    let s = setup("hub-stale").await;
    let _hub = s.hub("[registry]\nheartbeat_stale_s = 2\ncheck_interval_ms = 200\n").await;
    let pool = pg(&s.schema).await;
    let send = |worker: &'static str, at| {
        let body = serde_json::to_vec(&heartbeat(worker, at)).unwrap();
        let key = format!("worker.heartbeat.{worker}");
        let s = &s;
        async move { s.publish(&key, &body).await }
    };
    send("alive", chrono::Utc::now()).await;
    send("silent", chrono::Utc::now()).await;
    wait_count(&pool, "SELECT count(*) FROM workers WHERE NOT lost", 2).await;
    // `alive` keeps beating; `silent` stops.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        send("alive", chrono::Utc::now()).await;
    }
    wait_count(&pool, "SELECT count(*) FROM workers WHERE lost AND worker_id = 'silent'", 1).await;
    wait_count(&pool, "SELECT count(*) FROM workers WHERE NOT lost AND worker_id = 'alive'", 1).await;
    // A heartbeat brings a lost worker back; an older (reordered) one never overwrites a newer one.
    send("silent", chrono::Utc::now()).await;
    wait_count(&pool, "SELECT count(*) FROM workers WHERE NOT lost AND worker_id = 'silent'", 1).await;
    send("silent", chrono::Utc::now() - chrono::Duration::seconds(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let age: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM now() - last_heartbeat_at)::float8 FROM workers WHERE worker_id = 'silent'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(age < 10.0, "an older heartbeat overwrote a newer one (age {age} s)");
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_run_by_a_worker_end_in_postgres() {
    let s = setup("hub-e2e").await;
    let _hub = s.hub("").await;
    let (worker, _, _) = s.worker().await;
    for kind in [JobKind::Llm, JobKind::Audio] {
        publish_job(
            &s.channel,
            &s.prefix,
            kind,
            &job(kind, &format!("e2e-{kind}"), small_params(kind), serde_json::json!({})),
        )
        .await;
    }
    let pool = pg(&s.schema).await;
    wait_count(&pool, "SELECT count(*) FROM jobs WHERE status = 'succeeded' AND outputs IS NOT NULL", 2).await;
    wait_count(&pool, "SELECT count(*) FROM workers WHERE state = 'ready'", 1).await;
    s.stop_worker(worker).await;
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sixteen_minute_trace_over_92_percent_downgrades_the_worker_and_the_worker_applies_it() {
    use std::sync::{Arc, Mutex};
    // An Alertmanager stand-in that records what it receives.
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let webhook = format!("http://{}/api/v2/alerts", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/api/v2/alerts",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move { sink.lock().unwrap().push(body) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let s = setup("hub-downgrade").await;
    let _hub = s.hub(&format!("[alerts]\nwebhook_url = \"{webhook}\"\n")).await;
    let (worker, worker_id, _) = s.worker().await;

    // The synthetic trace: GPU telemetry at 95% every 30 s for 16 minutes, under the real worker's id.
    let start = chrono::Utc::now() - chrono::Duration::minutes(16);
    s.hot_gpu_trace(&worker_id, start).await;
    let pool = pg(&s.schema).await;
    wait_count(&pool, "SELECT count(*) FROM policy_decisions WHERE decision->>'decision' = 'downgrade'", 1).await;
    let reason: String = sqlx::query_scalar("SELECT reason FROM policy_decisions").fetch_one(&pool).await.unwrap();
    assert!(reason.contains("above 92%") && reason.contains("15 min"), "{reason}");

    // The worker applied the profile: the next job runs under it and says so.
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    let deadline = Instant::now() + T;
    loop {
        let id = format!("after-{}", Instant::now().elapsed().as_nanos());
        publish_job(
            &s.channel,
            &s.prefix,
            JobKind::Llm,
            &job(JobKind::Llm, &id, small_params(JobKind::Llm), serde_json::json!({})),
        )
        .await;
        let event = tap.terminal(&id, T).await;
        if event.downgrade.as_deref() == Some("gpu-hot") {
            break;
        }
        assert!(Instant::now() < deadline, "the worker never applied the downgrade:\n{}", worker.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let alerts = received.lock().unwrap().clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0][0]["labels"]["alertname"], "GpuDowngrade");
    assert_eq!(alerts[0][0]["labels"]["subject"], worker_id.as_str());
    s.stop_worker(worker).await;
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_submits_reads_lists_streams_and_controls_and_guards_every_mutation() {
    let s = setup("hub-api").await;
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "s3cret-token\n").unwrap();
    let hub = s.hub(&format!("[api]\nadmin_token_file = \"{}\"\n", token_file.path().display())).await;
    let base = format!("http://127.0.0.1:{}", hub.http_port);
    let (worker, worker_id, port) = s.worker().await;
    let http = reqwest::Client::new();
    let body = job(JobKind::Audio, "api-1", small_params(JobKind::Audio), serde_json::json!({}));

    // Every mutating endpoint: 401 without a token and with a wrong one.
    let mutations = [
        format!("{base}/v1/jobs"),
        format!("{base}/v1/jobs/api-1/cancel"),
        format!("{base}/v1/workers/{worker_id}/cordon"),
        format!("{base}/v1/workers/{worker_id}/uncordon"),
        format!("{base}/v1/workers/{worker_id}/drain"),
    ];
    for url in &mutations {
        for auth in [None, Some("Bearer wrong"), Some("s3cret-token")] {
            let mut req = http.post(url).body(body.clone());
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            assert_eq!(req.send().await.unwrap().status(), 401, "{url} with {auth:?}");
        }
    }
    let admin = |req: reqwest::RequestBuilder| req.header("authorization", "Bearer s3cret-token");

    // Submit: validated, recorded, published; the worker runs it; the hub records the outcome.
    let mut bad = serde_json::from_slice::<serde_json::Value>(&body).unwrap();
    bad["params"]["sample_rate"] = 3.into();
    let r = admin(http.post(format!("{base}/v1/jobs")).json(&bad)).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["field"], "params.sample_rate");
    let r = admin(http.post(format!("{base}/v1/jobs")).body(body.clone())).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        admin(http.post(format!("{base}/v1/jobs")).body(body.clone())).send().await.unwrap().status(),
        200,
        "idempotent"
    );
    let pool = pg(&s.schema).await;
    wait_count(&pool, "SELECT count(*) FROM jobs WHERE job_id = 'api-1' AND status = 'succeeded'", 1).await;
    let got: serde_json::Value = http.get(format!("{base}/v1/jobs/api-1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(got["status"], "succeeded");
    assert!(got["submitted_at"].is_string() && got["outputs"][0]["key"].is_string(), "{got}");
    assert_eq!(http.get(format!("{base}/v1/jobs/nope")).send().await.unwrap().status(), 404);
    let list: serde_json::Value = http
        .get(format!("{base}/v1/jobs?status=succeeded&kind=audio&limit=10"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(1), "{list}");
    let recent: serde_json::Value =
        http.get(format!("{base}/v1/jobs?order=recent&limit=1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (recent["jobs"][0]["job_id"].as_str(), &recent["next_after"]),
        (Some("api-1"), &serde_json::Value::Null)
    );
    for bad in ["order=newest", "order=recent&after=a"] {
        let r = http.get(format!("{base}/v1/jobs?{bad}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    // The event stream of a finished job replays its events and ends.
    let sse = http.get(format!("{base}/v1/jobs/api-1/events")).send().await.unwrap().text().await.unwrap();
    assert!(sse.contains("event: succeeded"), "{sse}");
    assert_eq!(admin(http.post(format!("{base}/v1/jobs/api-1/cancel"))).send().await.unwrap().status(), 409);

    // Workers: listed, cordoned through the API (the worker obeys), uncordoned.
    wait_count(&pool, &format!("SELECT count(*) FROM workers WHERE worker_id = '{worker_id}'"), 1).await;
    let workers: serde_json::Value = http.get(format!("{base}/v1/workers")).send().await.unwrap().json().await.unwrap();
    assert!(workers["workers"].as_array().unwrap().iter().any(|w| w["worker_id"] == worker_id.as_str()));
    assert_eq!(admin(http.post(format!("{base}/v1/workers/{worker_id}/cordon"))).send().await.unwrap().status(), 202);
    let deadline = Instant::now() + T;
    while worker_state(port).await != "cordoned" {
        assert!(Instant::now() < deadline, "the worker did not obey the API's cordon");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(admin(http.post(format!("{base}/v1/workers/{worker_id}/uncordon"))).send().await.unwrap().status(), 202);
    assert_eq!(admin(http.post(format!("{base}/v1/workers/ghost/drain"))).send().await.unwrap().status(), 404);
    let policy: serde_json::Value = http.get(format!("{base}/v1/policy")).send().await.unwrap().json().await.unwrap();
    assert_eq!(policy["config"]["gpu"]["high_pct"], 92.0);
    s.stop_worker(worker).await;
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sustained_backlog_produces_a_scale_out_signal_and_a_desired_replicas_gauge() {
    let s = setup("hub-backlog").await;
    // No worker consumes: 12 queued video jobs stay above a threshold of 5 for the 1 s window. The hub
    // declares the queue (with the worker's arguments) before anything is published to it.
    let hub = s
        .hub("[alerts]\nsample_interval_ms = 200\n[policy.backlog]\nthreshold = 5\nsustain_s = 1\nper_replica = 4\n")
        .await;
    let queue = format!("{}.jobs.video", s.prefix);
    for i in 0..12 {
        s.channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                Default::default(),
                format!("{i}").as_bytes(),
                Default::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let pool = pg(&s.schema).await;
    wait_count(
        &pool,
        "SELECT count(*) FROM policy_decisions WHERE decision->>'decision' = 'scale_out' AND subject = 'video'",
        1,
    )
    .await;
    let decision: serde_json::Value =
        sqlx::query_scalar("SELECT decision FROM policy_decisions").fetch_one(&pool).await.unwrap();
    assert_eq!(decision["backlog"], 12);
    assert_eq!(decision["desired_replicas"], 3, "ceil(12 / 4)");
    let metrics =
        reqwest::get(format!("http://127.0.0.1:{}/metrics", hub.http_port)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ainern2d_hub_desired_replicas{kind=\"video\"} 3"), "{metrics}");
    assert!(metrics.contains("ainern2d_hub_backlog{kind=\"video\"} 12"), "{metrics}");
    let _ = s.channel.queue_delete(queue.as_str().into(), Default::default()).await;
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_stopped_mid_drain_with_a_batch_being_written_loses_nothing() {
    let s = setup("hub-term").await;
    // Small batches: one is being written while the next is gathered whenever the hub is stopped.
    let config = "[ingest]\nbatch_max = 50\nprefetch = 200\n";
    let mut hub = s.hub(config).await;
    hub.signal("TERM");
    assert_eq!(hub.wait_exit(T).await, 0);
    let jobs = 1000;
    for j in 0..jobs {
        for (seq, status) in
            [EventStatus::Running, EventStatus::Progress, EventStatus::Succeeded].into_iter().enumerate()
        {
            s.send(&event(&format!("job-{j}"), 1, status, seq as u32)).await;
        }
    }
    let pool = pg(&s.schema).await;
    let mut hub = s.hub(config).await;
    let deadline = Instant::now() + T;
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events").fetch_one(&pool).await.unwrap();
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the hub applied nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    hub.signal("TERM");
    assert_eq!(hub.wait_exit(T).await, 0, "a stop mid-drain is a clean exit");
    let _hub = s.hub(config).await;
    wait_count(&pool, "SELECT count(*) FROM job_events", 3 * jobs).await;
    wait_count(&pool, "SELECT count(*) FROM jobs WHERE status = 'succeeded'", jobs).await;
    s.cleanup().await;
}
