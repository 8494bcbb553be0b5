//! Worker throughput against a bare lapin loop on the same broker, measured in one run.
//!
//! Baseline: consume (prefetch P) → publish a 1 KB result with a publisher confirm → ack, P in flight.
//! Worker: the real `ainern2d-worker` binary on no-op `llm` jobs (mock pipeline, 1 token, no latency,
//! local-directory store), P deliveries in flight, every event it normally publishes.
//! Both are timed from the first to the last completion of N jobs that were queued beforehand.
//!
//! Run: `cargo run --release -p ainern2d-benches --bin throughput -- --jobs 5000`
//! (build the worker first: `cargo build --release -p ainern2d-worker`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ainern2d_contract::JobKind;
use ainern2d_contract::topology::Topology;
use clap::Parser;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

mod support;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    #[arg(long, default_value_t = 100)]
    prefetch: u16,
    /// Interleaved rounds of (bare loop, worker no-op, worker mock); medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The worker binary; defaults to the one next to this benchmark.
    #[arg(long)]
    worker: Option<PathBuf>,
}

fn job_body(i: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "ainern2d.job.v1",
        "job_id": format!("bench-{i}"),
        "kind": "llm",
        "params": {"prompt": "x".repeat(800), "max_tokens": 1, "seed": 1},
        "output": {"prefix": "bench"},
    }))
    .unwrap()
}

async fn bare_loop(conn: &Connection, prefix: &str, n: usize, prefetch: u16) -> anyhow::Result<Duration> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let queue = format!("{prefix}.bare");
    let sink = format!("{prefix}.bare-results");
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        sink.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await?;
    let results = format!("{prefix}.bare-results-q");
    ch.queue_declare(
        results.as_str().into(),
        QueueDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        results.as_str().into(),
        sink.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    support::fill(&ch, &queue, n, job_body).await?;
    let consume = conn.create_channel().await?;
    consume.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = consume
        .basic_consume(queue.as_str().into(), "bare".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut first = None;
    let mut received = 0;
    while received < n {
        let d = consumer.next().await.expect("consumer open")?;
        first.get_or_insert_with(Instant::now);
        received += 1;
        let (ch, sink, done) = (ch.clone(), sink.clone(), done_tx.clone());
        tokio::spawn(async move {
            let body = vec![b'r'; 1024];
            let props = BasicProperties::default().with_delivery_mode(2);
            ch.basic_publish(
                sink.as_str().into(),
                "job.llm.succeeded".into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
            d.acker.ack(BasicAckOptions::default()).await.unwrap();
            let _ = done.send(());
        });
    }
    for _ in 0..n {
        done_rx.recv().await;
    }
    let elapsed = first.unwrap().elapsed();
    for q in [&queue, &results] {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await?;
    }
    ch.exchange_delete(sink.as_str().into(), ExchangeDeleteOptions::default()).await?;
    Ok(elapsed)
}

/// Median of a Prometheus histogram family member, interpolated within its bucket.
fn histogram_median(metrics: &str, name: &str) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    let (mut lo, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= total / 2.0 {
            let frac = if count > below { (total / 2.0 - below) / (count - below) } else { 0.0 };
            return Some(lo + (le.min(lo * 2.0 + 1e-3) - lo) * frac);
        }
        (lo, below) = (le, count);
    }
    None
}

async fn worker_run(
    conn: &Connection,
    args: &Args,
    prefix: &str,
    backend: &str,
) -> anyhow::Result<(Duration, Option<f64>)> {
    let ch = conn.create_channel().await?;
    let topo = Topology::new(prefix);
    support::declare(&args.amqp, &topo).await?;
    // The tap exists before the worker starts: no event is published before it can be seen.
    let mut consumer = support::tap(&ch, &topo, "job.*.succeeded").await?;
    support::fill(&ch, &topo.job_queue(JobKind::Llm), args.jobs, job_body).await?;
    let worker =
        support::Worker::start(args.worker.clone(), &args.amqp, prefix, backend, u32::from(args.prefetch), "")?;
    let mut first = None;
    let mut stages: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for _ in 0..args.jobs {
        let d = tokio::time::timeout(Duration::from_secs(120), consumer.next()).await?.expect("tap open")?;
        first.get_or_insert_with(Instant::now);
        let event: ainern2d_contract::Event = serde_json::from_slice(&d.data)?;
        for (stage, ms) in event.timings_ms {
            stages.entry(stage).or_default().push(ms);
        }
    }
    let elapsed = first.unwrap().elapsed();
    for (stage, mut v) in stages {
        v.sort_by(f64::total_cmp);
        println!("    stage {stage:<10} median {:.3} ms", v[v.len() / 2]);
    }
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", worker.port)).await?.text().await?;
    let overhead = histogram_median(&metrics, "ainern2d_worker_overhead_seconds");
    if let Some(cpu) = support::cpu_seconds(worker.pid()) {
        println!("    worker CPU {:.3} ms per job", cpu * 1e3 / args.jobs as f64);
    }
    worker.stop();
    support::delete(&ch, &topo).await;
    Ok((elapsed, overhead))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let conn = Connection::connect(&args.amqp, ConnectionProperties::default()).await?;
    let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let rate = |d: Duration| args.jobs as f64 / d.as_secs_f64();
    println!("jobs per run: {}, prefetch: {}, rounds: {}", args.jobs, args.prefetch, args.rounds);
    // Rounds interleave the three runs so that drift on a shared machine hits all of them alike.
    let mut ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut overheads = Vec::new();
    for round in 0..args.rounds {
        println!("round {}", round + 1);
        let bare = rate(bare_loop(&conn, &format!("{prefix}-{round}"), args.jobs, args.prefetch).await?);
        println!("  bare lapin loop: {bare:.0} jobs/s");
        for (i, (backend, what)) in
            [("noop", "no-op pipeline"), ("mock", "mock llm + local store")].into_iter().enumerate()
        {
            let (worker, overhead) = worker_run(&conn, &args, &format!("{prefix}-{round}-{backend}"), backend).await?;
            let worker = rate(worker);
            println!("  ainern2d-worker, {what}: {worker:.0} jobs/s, ratio {:.2}", worker / bare);
            ratios[i].push(worker / bare);
            if let (0, Some(s)) = (i, overhead) {
                overheads.push(s * 1e3);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("median ratio worker/bare, no-op jobs: {:.2}", median(&mut ratios[0]));
    println!("median ratio worker/bare, mock llm jobs with an output: {:.2}", median(&mut ratios[1]));
    if !overheads.is_empty() {
        println!(
            "median runtime overhead per no-op job (ainern2d_worker_overhead_seconds): {:.3} ms",
            median(&mut overheads)
        );
    }
    Ok(())
}
