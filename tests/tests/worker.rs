//! The worker against real RabbitMQ and a real S3 API, running the real binary.

use std::time::{Duration, Instant};

use ainern2d_contract::{ErrorCode, EventStatus, JobKind};
use ainern2d_tests::*;
use sha2_free::sha256_hex;

mod sha2_free {
    /// SHA-256 via the system `sha256sum`, so the tests do not re-implement what the worker computes.
    pub fn sha256_hex(bytes: &[u8]) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
    }
}

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn a_job_of_each_kind_ends_as_an_object_and_a_succeeded_event() {
    let s = Bed::new("kinds").await;
    let media = repo_root().join("examples/media");
    for (name, file) in [("face.mp4", "face.mp4"), ("line.wav", "line.wav"), ("still.png", "still.png")] {
        let body = aws_sdk_s3::primitives::ByteStream::from_path(media.join(file)).await.unwrap();
        s.s3.put_object().bucket(&s.bucket).key(format!("in/{name}")).body(body).send().await.unwrap();
    }
    let mut w = s.worker("").await;
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    let b = &s.bucket;
    let inputs = |kind| match kind {
        JobKind::Video => serde_json::json!({"image": format!("s3://{b}/in/still.png")}),
        JobKind::Lipsync => {
            serde_json::json!({"video": format!("s3://{b}/in/face.mp4"), "audio": format!("s3://{b}/in/line.wav")})
        }
        _ => serde_json::json!({}),
    };
    for kind in JobKind::ALL {
        publish_job(&s.channel, &s.prefix, kind, &job(kind, &format!("job-{kind}"), small_params(kind), inputs(kind)))
            .await;
    }
    for (kind, name, content_type) in [
        (JobKind::Llm, "completion.json", "application/json"),
        (JobKind::Audio, "audio.wav", "audio/wav"),
        (JobKind::Video, "video.mp4", "video/mp4"),
        (JobKind::Lipsync, "lipsync.mp4", "video/mp4"),
    ] {
        let id = format!("job-{kind}");
        let event = tap.terminal(&id, T).await;
        assert_eq!(event.status, EventStatus::Succeeded, "{kind}: {event:?}\n{}", w.logs());
        assert_eq!(event.outputs.len(), 1);
        let out = &event.outputs[0];
        assert_eq!(
            (out.name.as_str(), out.key.as_str(), out.content_type.as_str()),
            (name, format!("out/{id}/{name}").as_str(), content_type)
        );
        // The object is in the bucket, and the presigned URL serves exactly the bytes the checksum names.
        let head = s.s3.head_object().bucket(&s.bucket).key(&out.key).send().await.unwrap();
        assert_eq!(head.content_length(), Some(out.size as i64));
        let url = out.presigned_url.as_ref().expect("presigned URL");
        let bytes = reqwest::get(url).await.unwrap().error_for_status().unwrap().bytes().await.unwrap();
        assert_eq!(sha256_hex(&bytes), out.sha256, "{kind}: checksum of the served bytes");
        assert!(
            event.timings_ms.contains_key("inference") && event.timings_ms.contains_key("total"),
            "{:?}",
            event.timings_ms
        );
        // `running` once (lifecycle_delay_ms = 0 in tests); `accepted` only if the job waited for a slot.
        assert_eq!(tap.count(&id, EventStatus::Running), 1, "{kind}: one running event");
        assert!(tap.count(&id, EventStatus::Accepted) <= 1, "{kind}: at most one accepted event");
        let mine: Vec<_> = tap.seen.iter().filter(|e| e.job_id == id).collect();
        assert!(mine.last().unwrap().status.is_terminal(), "{kind}: nothing after the outcome: {mine:?}");
        assert!(mine.windows(2).all(|w| w[0].seq < w[1].seq), "{kind}: seq increases");
    }
    // The metrics endpoint reports what happened.
    let metrics =
        reqwest::get(format!("http://127.0.0.1:{}/metrics", w.http_port)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ainern2d_worker_jobs_total{kind=\"video\",outcome=\"succeeded\"} 1"), "{metrics}");
    w.kill9();
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_message_is_dead_lettered_with_a_failed_event_naming_the_field() {
    let s = Bed::new("invalid").await;
    let _w = s.worker("").await;
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    let mut bad = serde_json::from_slice::<serde_json::Value>(&job(
        JobKind::Video,
        "bad-width",
        small_params(JobKind::Video),
        serde_json::json!({}),
    ))
    .unwrap();
    bad["params"]["width"] = 65.into();
    publish_job(&s.channel, &s.prefix, JobKind::Video, &serde_json::to_vec(&bad).unwrap()).await;
    publish_job(&s.channel, &s.prefix, JobKind::Video, b"\x00\x01 not json").await;
    let mut v2 = bad.clone();
    v2["schema"] = "ainern2d.job.v2".into();
    v2["job_id"] = "future-schema".into();
    publish_job(&s.channel, &s.prefix, JobKind::Video, &serde_json::to_vec(&v2).unwrap()).await;

    let event = tap.terminal("bad-width", T).await;
    assert_eq!(event.status, EventStatus::Failed);
    let error = event.error.unwrap();
    assert_eq!(
        (error.code, error.field.as_deref(), error.retryable),
        (ErrorCode::InvalidField, Some("params.width"), false)
    );
    assert!(error.message.contains("even"), "{}", error.message);
    let event = tap.terminal("future-schema", T).await;
    assert_eq!(event.error.unwrap().code, ErrorCode::UnsupportedSchema);
    let garbage = tap.wait_for(T, "failed event of the non-JSON message", |e| e.job_id.starts_with("invalid-")).await;
    assert_eq!(garbage.error.unwrap().code, ErrorCode::MalformedMessage);

    // All three are in the dead-letter queue with the reason, none is lost. They are dead-lettered as they
    // are handled, concurrently, so in any order: the bad width's is found by its reason.
    let dead = format!("{}.dead", s.prefix);
    wait_queue_len(&s.channel, &dead, 3, T).await;
    let mut reasons = Vec::new();
    for _ in 0..3 {
        let got = s
            .channel
            .basic_get(dead.as_str().into(), lapin::options::BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("three dead letters");
        let headers = got.properties.headers().clone().unwrap();
        reasons.push(match headers.inner().get("x-ainern2d-reason").unwrap() {
            lapin::types::AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("reason header is {other:?}"),
        });
    }
    assert!(reasons.iter().any(|r| r.contains("params.width")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("not valid JSON")), "{reasons:?}");
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retryable_failure_is_retried_with_backoff_then_dead_lettered() {
    let s = Bed::new("retry").await;
    let _w = s.worker("[jobs]\nmax_attempts = 3\nretry_delays_ms = [400, 800]\n[mock]\nfailure_rate = 1.0\nfailure = \"retryable\"\n").await;
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    s.submit(JobKind::Llm, "flaky").await;
    let end = tap.terminal("flaky", T).await;
    assert_eq!(end.status, EventStatus::DeadLettered);
    assert_eq!(end.attempt, 3);
    assert_eq!(end.error.as_ref().unwrap().code, ErrorCode::RetriesExhausted);
    let retrying: Vec<_> =
        tap.seen.iter().filter(|e| e.job_id == "flaky" && e.status == EventStatus::Retrying).cloned().collect();
    assert_eq!(retrying.iter().map(|e| e.attempt).collect::<Vec<_>>(), vec![1, 2]);
    // Backoff: each attempt starts no earlier than its delay after the previous failure.
    let started = |attempt| {
        tap.seen
            .iter()
            .find(|e| e.job_id == "flaky" && e.status == EventStatus::Running && e.attempt == attempt)
            .unwrap()
            .emitted_at
    };
    let gap2 = (started(2) - retrying[0].emitted_at).num_milliseconds();
    let gap3 = (started(3) - retrying[1].emitted_at).num_milliseconds();
    assert!(gap2 >= 350 && gap3 >= 750, "backoff gaps {gap2} ms and {gap3} ms");
    let dead = format!("{}.dead", s.prefix);
    wait_queue_len(&s.channel, &dead, 1, T).await;
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_redelivered_after_its_worker_was_killed_produces_one_object_and_one_outcome() {
    let s = Bed::new("kill").await;
    let mut slow = s.worker("[mock]\nlatency_ms = 4000\n").await;
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    s.submit(JobKind::Video, "survivor").await;
    tap.wait_for(T, "running", |e| e.job_id == "survivor" && e.status == EventStatus::Running).await;
    slow.kill9();
    let _fresh = s.worker("").await;
    let event = tap.terminal("survivor", T).await;
    assert_eq!(event.status, EventStatus::Succeeded);
    // No second outcome arrives later (the killed delivery was the only copy, now acked).
    tap.drain_for(Duration::from_secs(2)).await;
    let terminal = tap.seen.iter().filter(|e| e.job_id == "survivor" && e.status.is_terminal()).count();
    assert_eq!(terminal, 1, "{:?}", tap.seen);
    assert_eq!(list_keys(&s.s3, &s.bucket, "out/survivor/").await, vec!["out/survivor/video.mp4".to_string()]);
    assert_eq!(queue_len(&s.channel, &format!("{}.jobs.video", s.prefix)).await, 0);
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_job_whose_outputs_are_stored_is_not_run_again() {
    // The worker died after uploading but before acking: the redelivery re-announces the same outcome.
    let s = Bed::new("replay").await;
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    let mut first = s.worker("").await;
    s.submit(JobKind::Audio, "once").await;
    let done = tap.terminal("once", T).await;
    first.kill9();
    // Simulate the lost ack by publishing the same job again as a retry (attempt 2 takes the replay path too).
    let props = lapin::BasicProperties::default().with_delivery_mode(2).with_headers({
        let mut t = lapin::types::FieldTable::default();
        t.insert("x-ainern2d-attempt".into(), lapin::types::AMQPValue::LongLongInt(2));
        t
    });
    s.channel
        .basic_publish(
            "".into(),
            format!("{}.jobs.audio", s.prefix).as_str().into(),
            Default::default(),
            &job(JobKind::Audio, "once", small_params(JobKind::Audio), serde_json::json!({})),
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _second = s.worker("[mock]\nlatency_ms = 3000\n").await;
    let replay =
        tap.wait_for(T, "replayed success", |e| e.job_id == "once" && e.attempt == 2 && e.status.is_terminal()).await;
    assert_eq!(replay.status, EventStatus::Succeeded);
    assert_eq!(replay.outputs[0].sha256, done.outputs[0].sha256);
    assert_eq!(tap.count("once", EventStatus::Running), 1, "the replay must not run the pipeline again");
    assert_eq!(list_keys(&s.s3, &s.bucket, "out/once/").await.len(), 1);
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_job_loses_nothing() {
    let s = Bed::new("sigterm").await;
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    // Within the grace period: the in-flight job finishes, the worker exits 0.
    let mut w = s.worker("[mock]\nlatency_ms = 1500\n[shutdown]\ngrace_s = 20\n").await;
    s.submit(JobKind::Llm, "finishes").await;
    tap.wait_for(T, "running", |e| e.job_id == "finishes" && e.status == EventStatus::Running).await;
    w.signal("TERM");
    assert_eq!(w.wait_exit(T).await, 0, "{}", w.logs());
    assert_eq!(tap.terminal("finishes", T).await.status, EventStatus::Succeeded);

    // Past the grace period: the job goes back to the queue, untouched, and a later worker finishes it.
    let mut w = s.worker("[mock]\nlatency_ms = 30000\n[shutdown]\ngrace_s = 1\n").await;
    s.submit(JobKind::Llm, "requeued").await;
    tap.wait_for(T, "running", |e| e.job_id == "requeued" && e.status == EventStatus::Running).await;
    w.signal("TERM");
    assert_eq!(w.wait_exit(T).await, 0, "{}", w.logs());
    assert_eq!(
        queue_len(&s.channel, &format!("{}.jobs.llm", s.prefix)).await,
        1,
        "the unfinished job is back in its queue"
    );
    assert!(tap.seen.iter().all(|e| !(e.job_id == "requeued" && e.status.is_terminal())));
    let _next = s.worker("").await;
    assert_eq!(tap.terminal("requeued", T).await.status, EventStatus::Succeeded);
    s.cleanup().await;
}

/// A pipeline thread that ignores its cancellation (a wedged GPU call) must not keep the process alive:
/// the exit waits for it a bounded time (the runtime dropped as is would wait for it as long as it runs).
#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_that_ignores_its_cancellation_does_not_hold_up_the_exit() {
    let s = Bed::new("wedged").await;
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    let mut w = s.worker("[mock]\nlatency_ms = 90000\nwedge_rate = 1.0\n[shutdown]\ngrace_s = 1\n").await;
    s.submit(JobKind::Llm, "wedged").await;
    tap.wait_for(T, "running", |e| e.job_id == "wedged" && e.status == EventStatus::Running).await;
    let signalled = Instant::now();
    w.signal("TERM");
    // grace 1 s + 10 s for the aborted jobs + 5 s for their threads, with room for a loaded machine.
    assert_eq!(w.wait_exit(Duration::from_secs(30)).await, 0, "{}", w.logs());
    assert!(signalled.elapsed() < Duration::from_secs(30));
    assert_eq!(queue_len(&s.channel, &format!("{}.jobs.llm", s.prefix)).await, 1, "the job is back in its queue");
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_urls_are_refused_with_a_clear_error() {
    use axum::response::Redirect;
    let png = std::fs::read(repo_root().join("examples/media/still.png")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route("/still.png", axum::routing::get(move || async move { png.clone() }))
        .route(
            "/to-metadata",
            axum::routing::get(|| async { Redirect::temporary("http://169.254.169.254/latest/meta-data/") }),
        )
        .route(
            "/to-loopback",
            axum::routing::get(
                move || async move { Redirect::temporary(&format!("http://127.0.0.1:{port}/still.png")) },
            ),
        )
        .route(
            "/to-ipv6-loopback",
            axum::routing::get(move || async move { Redirect::temporary(&format!("http://[::1]:{port}/still.png")) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let s = Bed::new("ssrf").await;
    // `localhost` is trusted here only so the test server is reachable at all: every refusal below is of an
    // address the job chose, and the control job proves the server itself is fine.
    let _w = s.worker("[fetch]\nallow_http = true\ntrusted_hosts = [\"localhost\"]\n").await;
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    let cases = [
        ("control", format!("http://localhost:{port}/still.png"), None),
        ("loopback", format!("http://127.0.0.1:{port}/still.png"), Some("127.0.0.1")),
        ("metadata", "http://169.254.169.254/latest/meta-data/".to_string(), Some("169.254.169.254")),
        ("redirect-metadata", format!("http://localhost:{port}/to-metadata"), Some("169.254.169.254")),
        ("redirect-loopback", format!("http://localhost:{port}/to-loopback"), Some("127.0.0.1")),
        ("redirect-ipv6", format!("http://localhost:{port}/to-ipv6-loopback"), Some("::1")),
        ("local-path", "examples/media/still.png".to_string(), Some("only read by")),
    ];
    for (id, url, _) in &cases {
        publish_job(
            &s.channel,
            &s.prefix,
            JobKind::Video,
            &job(JobKind::Video, id, small_params(JobKind::Video), serde_json::json!({"image": url})),
        )
        .await;
    }
    for (id, _, refusal) in &cases {
        let event = tap.terminal(id, T).await;
        match refusal {
            None => assert_eq!(event.status, EventStatus::Succeeded, "{id}: {event:?}"),
            Some(needle) => {
                assert_eq!(event.status, EventStatus::Failed, "{id}");
                let error = event.error.unwrap();
                assert_eq!(error.code, ErrorCode::InputRefused, "{id}: {}", error.message);
                assert!(!error.retryable);
                assert!(error.message.contains(needle), "{id}: {}", error.message);
            }
        }
    }
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_side_consumer_cancel_is_recovered_from() {
    let s = Bed::new("cancel").await;
    let w = s.worker("").await;
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    // Deleting the queue makes the broker cancel the worker's consumer.
    s.channel.queue_delete(format!("{}.jobs.audio", s.prefix).as_str().into(), Default::default()).await.unwrap();
    // The worker reacts, redeclares and subscribes again within 5 s of the cancel (issue 12's bound).
    let cancelled = Instant::now();
    let deadline = cancelled + Duration::from_secs(5);
    let url = format!("http://127.0.0.1:{}/metrics", w.http_port);
    loop {
        let metrics = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if metrics.contains("ainern2d_worker_consumer_resubscribes_total 1")
            || metrics.contains("ainern2d_worker_broker_reconnects_total 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the worker did not react to the cancel:\n{}", w.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The worker redeclares its topology and consumes again.
    let ready = cancelled + Duration::from_secs(5);
    loop {
        let declared = s.conn.create_channel().await.unwrap();
        if declared
            .queue_declare(
                format!("{}.jobs.audio", s.prefix).as_str().into(),
                lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                Default::default(),
            )
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < ready, "queue was not redeclared within 5 s:\n{}", w.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("consuming again {:?} after the broker-side cancel", cancelled.elapsed());
    s.submit(JobKind::Audio, "after-cancel").await;
    assert_eq!(tap.terminal("after-cancel", T).await.status, EventStatus::Succeeded, "{}", w.logs());
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_keeps_consuming_after_the_broker_restarts() {
    let mut broker = PrivateBroker::start().await;
    let prefix = unique("restart");
    let bucket = prefix.to_lowercase();
    let s3 = s3().await;
    create_bucket(&s3, &bucket).await;
    let port = free_port();
    let mut w = Worker::spawn(&worker_config(&broker.url(), &prefix, &bucket, port, ""));
    w.wait_ready().await;
    for round in 0..2 {
        let conn = connect(&broker.url()).await;
        let channel = confirm_channel(&conn).await;
        let mut tap = EventTap::new(&channel, &prefix).await;
        let id = format!("round-{round}");
        publish_job(
            &channel,
            &prefix,
            JobKind::Llm,
            &job(JobKind::Llm, &id, small_params(JobKind::Llm), serde_json::json!({})),
        )
        .await;
        assert_eq!(tap.terminal(&id, T).await.status, EventStatus::Succeeded, "{}", w.logs());
        let _ = conn.close(200, "restart".into()).await;
        if round == 0 {
            broker.restart().await;
            // Wait until the worker is connected again.
            w.wait_ready().await;
        }
    }
    w.kill9();
    delete_bucket(&s3, &bucket).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_is_published_when_a_job_waits_for_a_slot_and_running_after_the_lifecycle_delay() {
    let s = Bed::new("lifecycle").await;
    // A delay well above a loaded 2-core machine's start-up jitter (50 ms was not: `first` was seen
    // `accepted` in CI), and jobs well above the delay.
    let (config, _) = s.config("[jobs.slots]\nllm = 1\n[mock]\nlatency_ms = 1000\n");
    let mut w = Worker::spawn(&config.replace("lifecycle_delay_ms = 0", "lifecycle_delay_ms = 250"));
    w.wait_ready().await;
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    for id in ["first", "second"] {
        s.submit(JobKind::Llm, id).await;
    }
    for id in ["first", "second"] {
        assert_eq!(tap.terminal(id, T).await.status, EventStatus::Succeeded);
    }
    // One slot: the first job starts at once (no `accepted`), the second waits for the slot (`accepted`).
    assert_eq!(tap.count("first", EventStatus::Accepted), 0);
    assert_eq!(tap.count("second", EventStatus::Accepted), 1);
    // Both ran longer than the 250 ms lifecycle delay, so both reported `running`.
    assert_eq!((tap.count("first", EventStatus::Running), tap.count("second", EventStatus::Running)), (1, 1));
    w.kill9();
    s.cleanup().await;
}
