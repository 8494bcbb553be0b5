//! Row 7: the worker's memory. Idle: the resident set of the real binary (mock pipelines, no model
//! loaded) once it is ready and has settled for a second, against `ainern2d-worker --version`'s
//! peak RSS (the binary and its shared libraries mapped in: the floor). Growth: the resident set while
//! it runs N mock `llm` jobs that publish a progress event per token (`events.progress_interval_ms = 0`),
//! against the same worker with progress off, sampled at every 10 % of the jobs; the figure is the growth
//! from the sample after the warm-up (20 %: allocator arenas and pools settle before it) to the last.

use std::process::Command;
use std::time::Duration;

use ainern2d_contract::JobKind;
use ainern2d_contract::topology::Topology;
use futures_util::StreamExt;
use lapin::{Connection, ConnectionProperties};

use crate::Ctx;
use crate::report::{Check, Row, Stats};
use crate::support;

const TOKENS: u32 = 4;
const SLOTS: u32 = 16;

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Peak RSS of `<bin> --version`, from GNU time's wait4 figures (`/proc` is gone by the time it exits).
fn version_peak_kb(bin: &std::path::Path) -> Option<u64> {
    let out = Command::new("/usr/bin/time").arg("-f").arg("%M").arg(bin).arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stderr).lines().last()?.trim().parse().ok()
}

async fn idle_kb(ctx: &Ctx, prefix: &str) -> anyhow::Result<(u64, Option<support::RssParts>)> {
    let mut w =
        support::Worker::start(Some(ctx.bin("ainern2d-worker")), &ctx.amqp, prefix, JobKind::Llm, "mock", 4, "", "")?;
    support::until_ready(w.port, w.child_mut()).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (kb, parts) = (support::rss_kb(w.pid()), support::rss_parts(w.pid()));
    w.stop();
    Ok((kb.ok_or_else(|| anyhow::anyhow!("no VmRSS for the worker"))?, parts))
}

/// RSS samples `(jobs done, KiB)` over `n` jobs.
async fn run(
    ctx: &Ctx,
    conn: &Connection,
    prefix: &str,
    n: usize,
    progress: bool,
) -> anyhow::Result<Vec<(usize, u64)>> {
    let ch = conn.create_channel().await?;
    let topo = Topology::new(prefix);
    support::declare(&ctx.amqp, &topo, JobKind::Llm).await?;
    let mut tap = support::tap(&ch, &topo, "job.#").await?;
    let body = |i: usize| {
        serde_json::to_vec(&serde_json::json!({"schema": "ainern2d.job.v1", "job_id": format!("rss-{i}"),
            "kind": "llm", "params": {"prompt": "hello", "max_tokens": TOKENS, "seed": 1},
            "output": {"prefix": "rss"}}))
        .expect("json")
    };
    support::fill(&ch, &topo.job_queue(JobKind::Llm), n, body).await?;
    let interval = if progress { 0 } else { 3_600_000 };
    let extra =
        format!("[events]\nprogress_interval_ms = {interval}\nlifecycle_delay_ms = 0\n[mock]\nlatency_ms = {TOKENS}\n");
    let worker = support::Worker::start(
        Some(ctx.bin("ainern2d-worker")),
        &ctx.amqp,
        prefix,
        JobKind::Llm,
        "mock",
        SLOTS,
        "",
        &extra,
    )?;
    let (mut done, mut samples) = (0, Vec::new());
    let step = (n / 10).max(1);
    while done < n {
        let d = tokio::time::timeout(Duration::from_secs(120), tap.next()).await?.expect("tap open")?;
        if d.routing_key.as_str().ends_with(".succeeded") {
            done += 1;
            if done % step == 0 {
                samples.push((done, support::rss_kb(worker.pid()).unwrap_or(0)));
            }
        }
    }
    worker.stop();
    support::delete(&ch, &topo, JobKind::Llm).await;
    let _ = ch.close(200, "done".into()).await;
    Ok(samples)
}

fn growth_mb(samples: &[(usize, u64)], warmup: usize) -> f64 {
    let after = samples.iter().find(|s| s.0 >= warmup).or(samples.first()).map_or(0, |s| s.1);
    mb(samples.last().map_or(0, |s| s.1)) - mb(after)
}

pub async fn run_row(ctx: &Ctx) -> anyhow::Result<Row> {
    let mut row = Row::new(
        7,
        "Worker memory: idle RSS; growth over 100,000 jobs with progress events",
        "≤ 30 MB idle; ≤ 1 MB growth",
    );
    let prefix = format!("bench-mem-{}", std::process::id());
    let bin = ctx.bin("ainern2d-worker");
    let (mut floor, mut idle, mut parts) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ctx.rounds {
        floor.extend(version_peak_kb(&bin).map(mb));
        let (kb, p) = idle_kb(ctx, &format!("{prefix}-idle-{round}")).await?;
        idle.push(mb(kb));
        parts.extend(p);
    }
    // The growth runs are long (100,000 jobs each): one of each, with progress first and then without.
    let n = if ctx.quick { 5_000 } else { 100_000 };
    let conn = Connection::connect(&ctx.amqp, ConnectionProperties::default()).await?;
    let with = run(ctx, &conn, &format!("{prefix}-progress"), n, true).await?;
    let without = run(ctx, &conn, &format!("{prefix}-quiet"), n, false).await?;
    let warmup = n / 5;
    row.conditions.push(format!(
        "{} build; idle: mock pipelines, 4 `llm` slots, ready and then 1 s idle, over {} starts",
        ctx.profile(),
        ctx.rounds
    ));
    row.conditions.push(format!("growth: {n} mock `llm` jobs of {TOKENS} tokens, {SLOTS} slots, RSS sampled every {} jobs, growth from job {warmup} to the last; one run of each", n / 10));
    if !floor.is_empty() {
        row.measure("`ainern2d-worker --version`, peak RSS (the floor)", "MB", false, &floor);
    }
    let idle = row.measure("ainern2d-worker idle RSS", "MB", true, &idle);
    if let Some(last) = parts.last() {
        let of = |f: fn(&support::RssParts) -> u64| parts.iter().map(|p| mb(f(p))).collect::<Vec<_>>();
        row.measure("  of which anonymous (heap, stacks)", "MB", false, &of(|p| p.anon_kb));
        row.measure("  of which the executable's pages", "MB", false, &of(|p| p.exe_kb));
        row.measure(
            &format!("  of which {} shared libraries and other files", last.libs),
            "MB",
            false,
            &of(|p| p.libs_kb),
        );
        row.measure("ainern2d-worker idle, private pages only (USS)", "MB", false, &of(|p| p.private_kb));
    }
    let grown = row.measure("RSS growth with a progress event per token", "MB", true, &[growth_mb(&with, warmup)]);
    row.measure("RSS growth with progress off", "MB", false, &[growth_mb(&without, warmup)]);
    row.measure("RSS at the end, with progress", "MB", false, &[mb(with.last().map_or(0, |s| s.1))]);
    row.checks.push(Check::at_most("idle RSS (MB)", idle, 30.0));
    if let (Some(last), true) = (parts.last(), idle > 30.0) {
        let floor = Stats::of(&floor).median;
        row.notes.push(format!(
            "Where the idle resident set is: {:.1} MB are pages of the {} shared libraries the worker maps — \
             Debian's FFmpeg and everything its codecs and filters link (x264/x265, librsvg, gnutls, flite's \
             voices for a filter nobody here uses, …), {:.1} MB the executable's pages, {:.1} MB anonymous \
             memory (heap, stacks). `--version`, which does nothing but load, peaks at {floor:.1} MB: that is \
             the floor of any program linking these libraries, and the library pages are shared with every \
             other process mapping them (the private set, USS, is {:.1} MB). Tried: FFmpeg without \
             libavdevice (`ffmpeg-next` without its `device` feature; nothing here captures devices) took the \
             worker from 214 to {} libraries — before it, the release worker idled at 63.1 MB with 41.6 MB \
             of them in libraries (measured on this machine). Meeting 30 MB needs an FFmpeg built with only \
             the codecs the pipelines use (H.264, AAC, Opus, MP3, PNG/JPEG/WebP decoding), linked \
             statically, or FFmpeg loaded only when a media job comes; neither is done.",
            mb(last.libs_kb),
            last.libs,
            mb(last.exe_kb),
            mb(last.anon_kb),
            mb(last.private_kb),
            last.libs,
        ));
    }
    row.checks.push(Check::at_most("growth with progress (MB)", grown, 1.0));
    Ok(row)
}
