//! Chaos rounds (issue 12, item 1): the real worker (2–3 replicas) and hub binaries against a private
//! RabbitMQ node, a private Postgres and the S3 server behind a fault proxy, with workers killed in every
//! phase of a job and the broker, S3, Postgres and the hub failing at seeded moments; after each round a
//! checker proves that nothing was lost or done twice (see `ainern2d_tests::chaos`).
//!
//! - `AINERN2D_CHAOS_ROUNDS` (default 30): how many rounds;
//! - `AINERN2D_CHAOS_SEED`: run exactly that round (the seed a report or a failure printed);
//! - `AINERN2D_CHAOS_BASE_SEED`: the run's first seed (default: from the clock, printed);
//! - `AINERN2D_CHAOS_LONG=1`: long rounds (more jobs, faults up to 60 s) for the report;
//! - `AINERN2D_CHAOS_KEEP_GOING=1`: run every round and fail at the end, instead of at the first failure;
//! - `AINERN2D_CHAOS_KEEP_LOGS=1`: keep every round's process logs, not only a failing round's.
//!
//! `cargo test -p ainern2d-tests --test chaos -- --nocapture` shows each round's plan and figures.

use std::time::Instant;

use ainern2d_tests::chaos::plan::Plan;
use ainern2d_tests::chaos::rng::round_seed;
use ainern2d_tests::chaos::round::{self, Env, Figures};

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1" || v == "true")
}

fn parse_seed(s: &str) -> u64 {
    let s = s.trim();
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("AINERN2D_CHAOS_SEED / _BASE_SEED `{s}` is not a u64 ({e})"))
}

fn replay_command(seed: u64, long: bool) -> String {
    format!(
        "AINERN2D_CHAOS_SEED={seed:#018x}{} cargo test -p ainern2d-tests --test chaos -- --nocapture",
        if long { " AINERN2D_CHAOS_LONG=1" } else { "" }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_rounds() {
    let long = env_flag("AINERN2D_CHAOS_LONG");
    let keep_going = env_flag("AINERN2D_CHAOS_KEEP_GOING");
    let seeds: Vec<u64> = match std::env::var("AINERN2D_CHAOS_SEED") {
        Ok(seed) => vec![parse_seed(&seed)],
        Err(_) => {
            let rounds: u64 = std::env::var("AINERN2D_CHAOS_ROUNDS")
                .map(|r| r.parse().expect("AINERN2D_CHAOS_ROUNDS is a number"))
                .unwrap_or(30);
            let base = std::env::var("AINERN2D_CHAOS_BASE_SEED").map(|s| parse_seed(&s)).unwrap_or_else(|_| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
            });
            println!("chaos: {rounds} rounds from base seed {base:#018x} (AINERN2D_CHAOS_BASE_SEED replays the run)");
            (0..rounds).map(|i| round_seed(base, i)).collect()
        }
    };
    let env = Env::start().await;
    let started = Instant::now();
    let mut totals = Figures::default();
    let mut failures = Vec::new();
    for (i, seed) in seeds.iter().copied().enumerate() {
        let plan = Plan::new(seed, long);
        println!("chaos round {}/{}: {plan}", i + 1, seeds.len());
        let result = round::run(&env, plan).await;
        println!(
            "chaos round {}/{} {:#018x} [{}]: {}; multipart check: {}",
            i + 1,
            seeds.len(),
            seed,
            if result.violations.is_empty() { "ok" } else { "FAILED" },
            result.figures,
            result.figures.multipart_check
        );
        for exit in &result.figures.unexpected_exits {
            println!("  unexpected exit: {exit}");
        }
        totals.add(&result.figures);
        if !result.violations.is_empty() {
            let message = format!(
                "chaos round with seed {seed:#018x} (prefix {}) failed:\n  - {}\nlogs: {}\nreplay: {}",
                result.prefix,
                result.violations.join("\n  - "),
                result.log_dir.display(),
                replay_command(seed, long)
            );
            println!("{message}");
            failures.push(message);
            if !keep_going {
                break;
            }
        }
    }
    let rounds = seeds.len();
    println!(
        "chaos totals over {rounds} rounds in {:.0}s ({:.1}s per round): {totals}",
        started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64() / rounds.max(1) as f64
    );
    assert!(failures.is_empty(), "{} chaos rounds failed:\n{}", failures.len(), failures.join("\n\n"));
}
