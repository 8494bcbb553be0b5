//! Heartbeats under load (issue 12, item 3): with every core saturated — the worker encoding H.264 in
//! process and busy loops beside it — the worker's AMQP heartbeats (negotiated down to 2 s, so two missed
//! ones drop the connection within about 4 s) and its hub heartbeats (every 500 ms) keep flowing, and a
//! hub that marks workers lost after 3 s without one never marks it lost. The control at the end pauses
//! the worker (SIGSTOP) to show both limits are in force.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ainern2d_contract::{EventStatus, JobKind};
use ainern2d_tests::*;
use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;

/// CPU time (busy, total) over all cores, from /proc/stat.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cols: Vec<u64> =
        stat.lines().next().unwrap().split_whitespace().skip(1).filter_map(|c| c.parse().ok()).collect();
    let idle = cols[3] + cols.get(4).copied().unwrap_or(0);
    let total: u64 = cols.iter().take(8).sum();
    (total - idle, total)
}

struct Burners(Vec<Child>);

impl Burners {
    /// Two busy loops per core, at the worker's own priority.
    fn start() -> Burners {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Burners(
            (0..cores * 2)
                .map(|_| Command::new("sh").args(["-c", "while :; do :; done"]).stdout(Stdio::null()).spawn().unwrap())
                .collect(),
        )
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_keep_flowing_while_every_core_is_busy() {
    let bed = Bed::new("load").await;
    let schema = bed.prefix.replace('-', "_");
    let hub_port = free_port();
    let hub_config = hub_config(
        &amqp_url(),
        &bed.prefix,
        &schema,
        hub_port,
        "[registry]\nheartbeat_stale_s = 3\ncheck_interval_ms = 500\n",
    );
    let mut hub = Worker::spawn_bin("ainern2d-hub", &hub_config);
    hub.wait_ready().await;
    // The AMQP heartbeat is the lower of the two peers' offers: 2 s instead of the broker's 60 s.
    let sep = if amqp_url().contains('?') { '&' } else { '?' };
    let port = free_port();
    let config = worker_config(
        &format!("{}{sep}heartbeat=2", amqp_url()),
        &bed.prefix,
        &bed.bucket,
        port,
        "[jobs]\nkinds = [\"video\"]\n",
    );
    let mut w = Worker::spawn(&config);
    w.wait_ready().await;
    let worker_id = bed.worker_id(port);
    let beats = events_queue(&bed.channel, &bed.prefix, &format!("worker.heartbeat.{worker_id}")).await;
    let mut consumer = bed
        .channel
        .basic_consume(
            beats.as_str().into(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut tap = EventTap::new(&bed.channel, &bed.prefix).await;

    let burners = Burners::start();
    let (busy0, total0) = cpu_ticks();
    // About 20 s of 1280×720 H.264 encoding on the worker's blocking threads, two jobs after each other.
    let params = serde_json::json!({"width": 1280, "height": 720, "fps": 30, "duration_s": 12.0});
    for id in ["load-1", "load-2"] {
        bed.submit_with(JobKind::Video, id, params.clone()).await;
    }
    let started = Instant::now();
    let mut arrivals = Vec::new();
    let window = Duration::from_secs(20);
    while started.elapsed() < window {
        match tokio::time::timeout(Duration::from_secs(1), consumer.next()).await {
            Ok(Some(Ok(_))) => arrivals.push(started.elapsed()),
            Ok(other) => panic!("the heartbeat consumer ended: {other:?}"),
            Err(_) => {}
        }
    }
    let (busy1, total1) = cpu_ticks();
    drop(burners);
    let busy = (busy1 - busy0) as f64 / (total1 - total0) as f64;
    assert!(busy > 0.9, "the machine was not saturated ({:.0} % busy): the test proves nothing", busy * 100.0);

    let gaps: Vec<f64> = arrivals.windows(2).map(|p| (p[1] - p[0]).as_secs_f64()).collect();
    let max_gap = gaps.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "under load ({:.0} % busy): {} heartbeats in {window:?}, max gap {max_gap:.3} s",
        busy * 100.0,
        arrivals.len()
    );
    assert!(arrivals.len() >= 20, "{} heartbeats in {window:?} (every 500 ms expected)\n{}", arrivals.len(), w.logs());
    assert!(max_gap < 2.0, "a {max_gap:.3} s gap between heartbeats (every 500 ms expected)\n{}", w.logs());
    assert_eq!(
        metric(port, "ainern2d_worker_broker_reconnects_total").await,
        0.0,
        "the AMQP connection dropped:\n{}",
        w.logs()
    );
    assert_eq!(
        metric(hub_port, "ainern2d_hub_workers_lost_total").await,
        0.0,
        "the hub marked the worker lost:\n{}",
        hub.logs()
    );
    for id in ["load-1", "load-2"] {
        assert_eq!(tap.terminal(id, Duration::from_secs(120)).await.status, EventStatus::Succeeded, "{}", w.logs());
    }
    // The control: the 2 s AMQP heartbeat is really in force — a worker paused for 7 s loses its
    // connection (and the hub marks it lost), then reconnects when it runs again.
    w.signal("STOP");
    tokio::time::sleep(Duration::from_secs(7)).await;
    w.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(port, "ainern2d_worker_broker_reconnects_total").await < 1.0 {
        assert!(Instant::now() < deadline, "a paused worker kept its connection: is the heartbeat 2 s?\n{}", w.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric(hub_port, "ainern2d_hub_workers_lost_total").await >= 1.0, "the hub's 3 s rule is in force");
    w.kill9();
    hub.kill9();
    bed.cleanup().await;
    drop_schema(&schema).await;
}
