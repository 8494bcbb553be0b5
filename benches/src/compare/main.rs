//! `compare`: this runtime side by side with what users would pick instead, on the same machine and
//! services, in one run, contenders alternating round by round. Writes `benches/results.json` and
//! `docs/BENCHMARKS.md` (tables with min / median / max, the conditions, the command, each target).
//!
//! `--quick` (CI, under two minutes): a few rounds, small sizes, every row producing a number (not held
//! to its target: timings on a shared machine flake); peers whose install is slow are left out, and the
//! report says which. The full run (`scripts/bench.sh`) installs and runs them all on release builds.
//!
//! The rows of issue 14, a module each or per group: 1–3 `jobs` (through RabbitMQ, against a bare lapin
//! loop and Celery), 4 `s3` (s5cmd, aws-cli), 5 `llm` (llama.cpp, through `llm-bench`), 6 `ingest`,
//! 7 `memory`, 8 `startup`, 9 `local`, 10 `comfy` (a real ComfyUI given by `--comfyui`), 11 `speech`
//! (piper-tts, through `speech-bench`). A row that cannot run says why in the report.

use std::path::PathBuf;

use clap::Parser;

mod comfy;
mod ingest;
mod jobs;
mod llm;
mod local;
mod memory;
mod peers;
mod report;
mod s3;
mod speech;
mod startup;
mod support;

use report::{Report, Row};

#[derive(Parser)]
struct Args {
    /// Few rounds and small sizes; slow peers left out.
    #[arg(long)]
    quick: bool,
    /// Alternating rounds per row (default: 3 quick, 7 full).
    #[arg(long)]
    rounds: Option<usize>,
    /// Only these rows (`--only 4,8`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
    /// Where the worker and hub binaries are (default: beside this one).
    #[arg(long)]
    bins: Option<PathBuf>,
    /// Where the figures go (scripts/bench.sh sends the quick mode's elsewhere).
    #[arg(long, default_value = "benches/results.json")]
    json: PathBuf,
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    markdown: PathBuf,
    /// Keep the rows of the existing `--json` report that this run does not measure (with `--only`).
    #[arg(long)]
    merge: bool,
    /// A ComfyUI checkout to run row 10 against.
    #[arg(long, env = "AINERN2D_BENCH_COMFYUI")]
    comfyui: Option<PathBuf>,
}

/// The services and binaries every row uses (the test suite's variables, with its defaults).
pub struct Ctx {
    pub quick: bool,
    pub rounds: usize,
    pub bins: PathBuf,
    pub amqp: String,
    pub database: String,
    pub s3: String,
    pub s3_key: String,
}

impl Ctx {
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bins.join(name)
    }

    /// `release` or `debug`, from the binaries' directory.
    pub fn profile(&self) -> &str {
        if self.bins.ends_with("release") { "release" } else { "debug" }
    }
}

fn env(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bins = match args.bins {
        Some(b) => b,
        None => std::env::current_exe()?.parent().map(PathBuf::from).unwrap_or_default(),
    };
    let ctx = Ctx {
        quick: args.quick,
        rounds: args.rounds.unwrap_or(if args.quick { 3 } else { 7 }),
        bins,
        amqp: env("AINERN2D_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        database: env("AINERN2D_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        s3: env("AINERN2D_TEST_S3_ENDPOINT", "http://127.0.0.1:9000"),
        s3_key: env("AINERN2D_TEST_S3_KEY", "minioadmin"),
    };
    let wanted = |id: u32| args.only.is_empty() || args.only.contains(&id);
    let peers = peers::Peers::ensure(peers::QUICK)?;
    let mut rows: Vec<Row> = Vec::new();
    if wanted(1) {
        eprintln!("compare: row 1 (no-op jobs/s)");
        rows.push(jobs::throughput(&ctx, &peers).await?);
    }
    if wanted(2) {
        eprintln!("compare: row 2 (overhead per job)");
        rows.push(jobs::overhead(&ctx).await?);
    }
    if wanted(3) {
        eprintln!("compare: row 3 (busy share)");
        rows.push(jobs::busy_share(&ctx).await?);
    }
    if wanted(4) {
        eprintln!("compare: row 4 (S3 upload)");
        rows.push(s3::run(&ctx, &peers).await?);
    }
    if wanted(5) {
        eprintln!("compare: row 5 (LLM tokens/s vs llama.cpp)");
        rows.push(llm::run(&ctx, &peers).await?);
    }
    if wanted(6) {
        eprintln!("compare: row 6 (hub ingest)");
        rows.push(ingest::run(&ctx).await?);
    }
    if wanted(7) {
        eprintln!("compare: row 7 (worker memory)");
        rows.push(memory::run_row(&ctx).await?);
    }
    if wanted(8) {
        eprintln!("compare: row 8 (start to ready)");
        rows.push(startup::run(&ctx).await?);
    }
    if wanted(9) {
        eprintln!("compare: row 9 (local mode round trip)");
        rows.push(local::run(&ctx).await?);
    }
    if wanted(10) {
        eprintln!("compare: row 10 (ComfyUI round trip)");
        rows.push(comfy::run(&ctx, args.comfyui.as_deref()).await?);
    }
    if wanted(11) {
        eprintln!("compare: row 11 (TTS vs piper-tts)");
        rows.push(speech::run(&ctx, &peers).await?);
    }
    rows.sort_by_key(|r| r.id);
    for row in &rows {
        for c in &row.checks {
            eprintln!(
                "row {}: {} = {:.3} ({} {}) {}",
                row.id,
                c.what,
                c.value,
                c.op,
                c.bound,
                if c.met { "met" } else { "MISSED" }
            );
        }
    }
    // Quick mode proves every measured row produced a number; targets are for the full run.
    let empty: Vec<_> = rows
        .iter()
        .filter(|r| r.skipped.is_none())
        .flat_map(|r| r.measures.iter().map(move |m| (r.id, m)))
        .filter(|(_, m)| !m.stats.median.is_finite())
        .map(|(id, m)| format!("row {id}: {}", m.name))
        .collect();
    anyhow::ensure!(empty.is_empty(), "rows without a number: {empty:?}");
    let generated_at = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let mode = if ctx.quick { "quick" } else { "full" };
    let command = std::iter::once("compare".to_string()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" ");
    for row in &mut rows {
        row.measured = format!("{generated_at}, {mode} mode, {} rounds, by `{command}`", ctx.rounds);
    }
    if args.merge && args.json.exists() {
        let earlier: Report = serde_json::from_slice(&std::fs::read(&args.json)?)
            .map_err(|e| anyhow::anyhow!("{} is not a report to merge into: {e}", args.json.display()))?;
        let ids: Vec<u32> = rows.iter().map(|r| r.id).collect();
        rows.extend(earlier.rows.into_iter().filter(|r| !ids.contains(&r.id)));
        rows.sort_by_key(|r| r.id);
    }
    let report = Report { generated_at, mode: mode.into(), rounds: ctx.rounds, command, machine: machine(), rows };
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)? + "\n")?;
    std::fs::write(&args.markdown, report.markdown())?;
    eprintln!("compare: wrote {} and {}", args.json.display(), args.markdown.display());
    Ok(())
}

/// CPU model and count, memory, kernel.
fn machine() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']));
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<u64>().ok()))
        .map(|kb| format!("{:.0} GiB memory", kb as f64 / 1048576.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|k| format!("Linux {}", k.trim()));
    [Some(format!("{cpus} CPUs ({})", model.unwrap_or("unknown"))), mem, kernel].into_iter().flatten().collect()
}
