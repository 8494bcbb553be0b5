//! Liveness that proves progress, and recycling (issue 13, item 9), on the real worker binary against
//! RabbitMQ and S3: `/health` fails while a job's pipeline reports nothing for `liveness.stall_after_s`
//! and not while one reports steadily; a draining worker stays live; a worker recycles (drains, exits 0)
//! after `recycle_after_jobs` outcomes or above `recycle_above_rss_mb`, losing nothing.

use std::time::{Duration, Instant};

use ainern2d_contract::{EventStatus, JobKind};
use ainern2d_tests::*;

async fn health(port: u16) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/health")).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

const LIVENESS: &str = "[liveness]\nstall_after_s = 2\ncheck_interval_s = 1\n";

#[tokio::test(flavor = "multi_thread")]
async fn health_fails_while_a_pipeline_is_silent_and_not_while_it_reports() {
    let bed = Bed::new("live").await;
    let mut tap = EventTap::new(&bed.channel, &bed.prefix).await;

    // The control: 12 tokens over 6 s, a report every 0.5 s, three times the limit in all.
    let (config, port) = bed.config(&format!("{LIVENESS}[jobs]\nkinds = [\"llm\"]\n[mock]\nlatency_ms = 6000\n"));
    let mut steady = Worker::spawn(&config);
    steady.wait_ready().await;
    bed.submit_with(JobKind::Llm, "live-steady", serde_json::json!({"prompt": "go", "max_tokens": 12})).await;
    tap.wait_for(Duration::from_secs(10), "running", |e| e.job_id == "live-steady" && e.status == EventStatus::Running)
        .await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let (status, body) = health(port).await;
        assert_eq!(status, 200, "a job reporting every 0.5 s made /health fail: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(tap.terminal("live-steady", Duration::from_secs(20)).await.status, EventStatus::Succeeded);
    steady.signal("TERM");
    assert_eq!(steady.wait_exit(Duration::from_secs(20)).await, 0);

    // A pipeline that hangs without a word (the mock's `hang_rate`, a wedged GPU call).
    let extra = format!("{LIVENESS}[jobs]\nkinds = [\"llm\"]\n[mock]\nhang_rate = 1.0\n[shutdown]\ngrace_s = 1\n");
    let (config, port) = bed.config(&extra);
    let mut silent = Worker::spawn(&config);
    silent.wait_ready().await;
    bed.submit(JobKind::Llm, "live-silent").await;
    tap.wait_for(Duration::from_secs(10), "running", |e| e.job_id == "live-silent" && e.status == EventStatus::Running)
        .await;
    let running = Instant::now();
    let (status, body) = health(port).await;
    assert_eq!(status, 200, "stalled at once: {body}");
    let body = loop {
        let (status, body) = health(port).await;
        if status == 503 {
            break body;
        }
        assert!(running.elapsed() < Duration::from_secs(6), "/health still passes after 6 s of silence: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let failed_after = running.elapsed();
    assert!(failed_after >= Duration::from_millis(1500), "failed after {failed_after:?}, before the 2 s limit");
    assert_eq!(body["status"], "stalled");
    assert_eq!(body["stalled"][0]["job_id"], "live-silent", "{body}");
    assert_eq!(body["stalled"][0]["kind"], "llm", "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(metric(port, "ainern2d_worker_stalled_jobs").await, 1.0);
    println!("a silent pipeline failed /health after {failed_after:?} (limit 2 s)");

    // Draining is not dying: cordoned, the worker is unready and still live (here: still stalled).
    send_control(&bed.channel, &bed.prefix, &bed.worker_id(port), ainern2d_contract::ControlCommand::Cordon).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while worker_state(port).await != "cordoned" {
        assert!(Instant::now() < deadline, "the worker was not cordoned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/ready")).await.unwrap().status().as_u16();
    assert_eq!(ready, 503);
    assert_eq!(health(port).await.0, 503, "the stall is what fails /health, whatever the state");

    // The restart the orchestrator does: SIGTERM returns the hung job (it honours its cancel).
    silent.signal("TERM");
    assert_eq!(silent.wait_exit(Duration::from_secs(30)).await, 0);
    assert_eq!(queue_len(&bed.channel, &format!("{}.jobs.llm", bed.prefix)).await, 1, "the job was not returned");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_draining_for_a_cordon_stays_live() {
    let bed = Bed::new("live-drain").await;
    let (config, port) = bed.config("[jobs]\nkinds = [\"llm\"]\n");
    let mut w = Worker::spawn(&config);
    w.wait_ready().await;
    send_control(&bed.channel, &bed.prefix, &bed.worker_id(port), ainern2d_contract::ControlCommand::Drain).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = worker_state(port).await;
        if state == "drained" || state == "draining" {
            break;
        }
        assert!(Instant::now() < deadline, "the worker did not drain (state {state})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(health(port).await.0, 200);
    w.signal("TERM");
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_recycles_after_its_jobs_and_above_its_memory_limit() {
    let bed = Bed::new("recycle").await;
    let mut tap = EventTap::new(&bed.channel, &bed.prefix).await;
    let (config, port) =
        bed.config("[liveness]\nrecycle_after_jobs = 2\ncheck_interval_s = 1\n[jobs]\nkinds = [\"llm\"]\n");
    let mut w = Worker::spawn(&config);
    w.wait_ready().await;
    for id in ["recycle-1", "recycle-2", "recycle-3"] {
        bed.submit(JobKind::Llm, id).await;
    }
    let code = w.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(code, 0, "a recycle is a clean exit:\n{}", w.logs());
    assert!(w.logs().contains("recycling this worker"), "{}", w.logs());
    tap.drain_for(Duration::from_millis(500)).await;
    let succeeded =
        ["recycle-1", "recycle-2", "recycle-3"].iter().filter(|id| tap.count(id, EventStatus::Succeeded) == 1).count();
    let left = queue_len(&bed.channel, &format!("{}.jobs.llm", bed.prefix)).await as usize;
    // It stops after the check that sees 2 outcomes; a third job may have run before it. None is lost: each
    // succeeded or is back in its queue (one whose ack did not reach the broker before the exit is both,
    // and its next delivery finds its outputs).
    let logs = w.logs();
    assert!(succeeded + left >= 3, "succeeded {succeeded}, left in the queue {left}:\n{logs}");
    let reported = logs
        .lines()
        .find(|l| l.contains("recycling this worker"))
        .and_then(|l| l.split(" outcomes reported").next()?.rsplit(' ').next()?.parse::<u32>().ok());
    assert!(reported.is_some_and(|n| n >= 2), "the recycle did not wait for 2 outcomes:\n{logs}");
    let _ = port;

    // Above the memory limit (1 MiB: at once), before any job.
    let (config, _) =
        bed.config("[liveness]\nrecycle_above_rss_mb = 1\ncheck_interval_s = 1\n[jobs]\nkinds = [\"llm\"]\n");
    let mut w = Worker::spawn(&config);
    let code = w.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(code, 0, "{}", w.logs());
    assert!(w.logs().contains("resident memory"), "{}", w.logs());
}
