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
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ainern2d_contract::JobKind;
use ainern2d_contract::topology::Topology;
use clap::Parser;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

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

async fn fill(ch: &Channel, queue: &str, n: usize) -> anyhow::Result<()> {
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let props = BasicProperties::default().with_delivery_mode(2);
        pending.push(
            ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &job_body(i), props).await?,
        );
    }
    for p in pending {
        p.await?;
    }
    Ok(())
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
    fill(&ch, &queue, n).await?;
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
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let topo = Topology::new(prefix);
    {
        use ainern2d_queue::Broker;
        let session = ainern2d_queue::amqp::AmqpBroker::new(args.amqp.clone()).connect("bench setup").await?;
        ainern2d_worker::broker::declare_topology(session.as_ref(), &topo, &[JobKind::Llm], &[1000]).await?;
        session.close().await;
    }
    let tap = ch
        .queue_declare("".into(), QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default())
        .await?;
    ch.queue_bind(
        tap.name().clone(),
        topo.events_exchange().as_str().into(),
        "job.*.succeeded".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    fill(&ch, &topo.job_queue(JobKind::Llm), args.jobs).await?;

    // Scratch and output directories on tmpfs when there is one: this measures the runtime, not the disk
    // (on the reference machine a mkdir+write+link+rename sequence costs ~3 ms in /tmp, 0.07 ms on tmpfs).
    let dir = match std::path::Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm")?,
        false => tempfile::tempdir()?,
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = format!(
        "worker_id = \"bench\"\nscratch_dir = \"{scratch}\"\n[broker]\nurl = \"{amqp}\"\nprefix = \"{prefix}\"\n[jobs]\nkinds = [\"llm\"]\nbackend = \"{backend}\"\nupload_overlap = 0\nretry_delays_ms = [1000]\n[jobs.slots]\nllm = {slots}\n[store]\nkind = \"local\"\nbucket = \"bench\"\nlocal_dir = \"{out}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[log]\nfilter = \"warn\"\n",
        scratch = dir.path().join("scratch").display(),
        out = dir.path().join("out").display(),
        amqp = args.amqp,
        slots = args.prefetch,
    );
    std::fs::write(dir.path().join("w.toml"), config)?;
    let bin = args.worker.clone().unwrap_or_else(|| std::env::current_exe().unwrap().with_file_name("ainern2d-worker"));
    let mut child =
        Command::new(&bin).args(["run", "--config"]).arg(dir.path().join("w.toml")).stderr(Stdio::null()).spawn()?;
    let mut consumer = ch
        .basic_consume(
            tap.name().clone(),
            "tap".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
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
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await?.text().await?;
    let overhead = histogram_median(&metrics, "ainern2d_worker_overhead_seconds");
    if let Some(cpu) = cpu_seconds(child.id()) {
        println!("    worker CPU {:.3} ms per job", cpu * 1e3 / args.jobs as f64);
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    for q in [topo.job_queue(JobKind::Llm), topo.retry_queue(JobKind::Llm, 0), topo.dead_letter_queue()] {
        let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
    }
    for e in [topo.events_exchange(), topo.control_exchange(), topo.dead_letter_exchange()] {
        let _ = ch.exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default()).await;
    }
    Ok((elapsed, overhead))
}

/// User + system CPU seconds of a process (Linux `/proc`), for the per-job cost line.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
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
