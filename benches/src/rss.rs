//! Worker memory over many jobs: resident set size of the real `ainern2d-worker` binary while it runs N
//! mock `llm` jobs that publish progress events (every token, `events.progress_interval_ms = 0`), against
//! the same worker in the same run with progress events off (the baseline). Memory must stay flat: every
//! unawaited publish's confirm is resolved, none is kept (lapin keeps a dropped, unresolved one forever).
//!
//! RSS is sampled at every 10 % of the jobs; the figure is the growth from the sample at the end of the
//! warm-up (`--warmup`, 20 % of the jobs by default: allocator arenas and pools still settle before it)
//! to the last one.
//!
//! Run: `cargo build --release -p ainern2d-worker -p ainern2d-benches &&
//!       target/release/rss --jobs 100000`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ainern2d_contract::JobKind;
use ainern2d_contract::topology::Topology;
use clap::Parser;
use futures_util::StreamExt;
use lapin::{Connection, ConnectionProperties};

mod support;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// Tokens per mock llm job: one progress report each.
    #[arg(long, default_value_t = 4)]
    tokens: u32,
    #[arg(long, default_value_t = 16)]
    slots: u32,
    /// Percent of the jobs that count as warm-up (a multiple of 10).
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// The worker binary; defaults to the one next to this benchmark.
    #[arg(long)]
    worker: Option<PathBuf>,
}

struct Run {
    samples: Vec<(usize, u64)>,
    events: usize,
    elapsed: Duration,
}

async fn run(conn: &Connection, args: &Args, prefix: &str, progress: bool) -> anyhow::Result<Run> {
    let ch = conn.create_channel().await?;
    let topo = Topology::new(prefix);
    support::declare(&args.amqp, &topo).await?;
    // The tap exists before the worker starts: no event is published before it can be seen.
    let mut consumer = support::tap(&ch, &topo, "job.#").await?;
    let body = |i: usize| {
        serde_json::to_vec(&serde_json::json!({"schema": "ainern2d.job.v1", "job_id": format!("rss-{i}"),
            "kind": "llm", "params": {"prompt": "hello", "max_tokens": args.tokens, "seed": 1},
            "output": {"prefix": "rss"}}))
        .unwrap()
    };
    support::fill(&ch, &topo.job_queue(JobKind::Llm), args.jobs, body).await?;
    let interval = if progress { 0 } else { 3_600_000 };
    let extra = format!(
        "[events]\nprogress_interval_ms = {interval}\nlifecycle_delay_ms = 0\n[mock]\nlatency_ms = {}\n",
        args.tokens
    );
    let worker = support::Worker::start(args.worker.clone(), &args.amqp, prefix, "mock", args.slots, &extra)?;
    let (mut done, mut events, mut samples) = (0, 0, Vec::new());
    let step = (args.jobs / 10).max(1);
    let started = Instant::now();
    while done < args.jobs {
        let d = tokio::time::timeout(Duration::from_secs(120), consumer.next()).await?.expect("tap open")?;
        events += 1;
        if d.routing_key.as_str().ends_with(".succeeded") {
            done += 1;
            if done % step == 0 {
                let rss = support::rss_kb(worker.pid()).unwrap_or(0);
                println!("    {done:>7} jobs  RSS {:>8.1} MB", rss as f64 / 1024.0);
                samples.push((done, rss));
            }
        }
    }
    let elapsed = started.elapsed();
    worker.stop();
    support::delete(&ch, &topo).await;
    Ok(Run { samples, events, elapsed })
}

fn growth_mb(run: &Run, warmup_jobs: usize) -> f64 {
    let after = run.samples.iter().find(|s| s.0 >= warmup_jobs).or(run.samples.first()).map(|s| s.1).unwrap_or(0);
    let last = run.samples.last().map(|s| s.1).unwrap_or(0);
    (last as f64 - after as f64) / 1024.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let conn = Connection::connect(&args.amqp, ConnectionProperties::default()).await?;
    let prefix = format!("bench-rss-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    println!("jobs: {}, tokens per job: {}, slots: {}", args.jobs, args.tokens, args.slots);
    println!("baseline: progress events off");
    let base = run(&conn, &args, &format!("{prefix}-base"), false).await?;
    println!("with progress events (every token)");
    let prog = run(&conn, &args, &format!("{prefix}-progress"), true).await?;
    let warmup = args.jobs * args.warmup / 100;
    for (what, r) in [("baseline (no progress)", &base), ("with progress", &prog)] {
        println!(
            "{what}: {:.0} jobs/s, {:.1} events per job, RSS growth after {warmup} jobs of warm-up {:+.2} MB",
            args.jobs as f64 / r.elapsed.as_secs_f64(),
            r.events as f64 / args.jobs as f64,
            growth_mb(r, warmup),
        );
    }
    println!("growth with progress minus baseline: {:+.2} MB", growth_mb(&prog, warmup) - growth_mb(&base, warmup));
    Ok(())
}
