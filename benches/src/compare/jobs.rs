//! Rows 1, 2 and 3: jobs through the same RabbitMQ, with the worker's semantics everywhere (a persistent
//! job of about 1 KB; its result published persistent with a publisher confirm; the job acked after the
//! confirm).
//!
//! - Row 1, no-op jobs/s, queued beforehand and timed from the first completion to the last: the real
//!   worker (`noop` backend) against a bare lapin loop (consume → publish-with-confirm → ack, the broker's
//!   limit) and Celery (`benches/peers/celery_bench.py`: `acks_late`, the `rpc://` result backend,
//!   persistent results with confirms), prefork and threads.
//! - Row 2, overhead per job with a 10 ms inference step, one job at a time: end-to-end latency (publish
//!   → outcome event seen) minus the job's inference time, for the worker (mock pipeline) and for the bare
//!   loop sleeping 10 ms (which shows the broker's share).
//! - Row 3, the inference slot's busy share when the queue is full and uploading takes as long as
//!   inferring: the worker as configured by default (`upload_overlap = 1`) and with the overlap off.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ainern2d_contract::JobKind;
use ainern2d_contract::topology::Topology;
use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};

use crate::Ctx;
use crate::peers::Peers;
use crate::report::{Check, Row};
use crate::support;

/// The prompt that makes a job about 1 KB.
fn job_body(id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "ainern2d.job.v1",
        "job_id": id,
        "kind": "llm",
        "params": {"prompt": "x".repeat(800), "max_tokens": 1, "seed": 1},
        "output": {"prefix": "bench"},
    }))
    .expect("json")
}

/// One contender's queues: the worker's topology under a prefix of its own, and a tap on its outcome
/// events (bound before anything runs, so none is missed).
struct Lane {
    topo: Topology,
    ch: Channel,
    tap: Consumer,
}

impl Lane {
    async fn new(ctx: &Ctx, conn: &Connection, prefix: &str) -> anyhow::Result<Lane> {
        let topo = Topology::new(prefix);
        support::declare(&ctx.amqp, &topo, JobKind::Llm).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let tap = support::tap(&ch, &topo, "job.*.succeeded").await?;
        Ok(Lane { topo, ch, tap })
    }

    async fn fill(&self, n: usize) -> anyhow::Result<()> {
        support::fill(&self.ch, &self.topo.job_queue(JobKind::Llm), n, |i| job_body(&format!("job-{i}"))).await
    }

    /// The next outcome: its job id and the inference time it reports.
    async fn next(&mut self) -> anyhow::Result<(String, f64)> {
        let d = tokio::time::timeout(Duration::from_secs(120), self.tap.next())
            .await
            .context("no outcome event within 120 s")?
            .context("the tap closed")??;
        let event: serde_json::Value = serde_json::from_slice(&d.data)?;
        let id = event["job_id"].as_str().unwrap_or_default().to_string();
        Ok((id, event["timings_ms"]["inference"].as_f64().unwrap_or(f64::NAN)))
    }

    /// First to last of `n` completions, and the inference times reported after the first.
    async fn drain(&mut self, n: usize) -> anyhow::Result<(Duration, f64)> {
        self.next().await?;
        let first = Instant::now();
        let mut inference = 0.0;
        for _ in 1..n {
            inference += self.next().await?.1;
        }
        Ok((first.elapsed(), inference))
    }

    async fn delete(self) {
        support::delete(&self.ch, &self.topo, JobKind::Llm).await;
        let _ = self.ch.close(200, "done".into()).await;
    }
}

/// The broker's limit: consume (prefetch `prefetch`) → [sleep `inference`] → publish a 1 KB result with a
/// confirm → ack, nothing else. Runs until its channels close.
struct BareLoop {
    consume: Channel,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl BareLoop {
    async fn start(conn: &Connection, topo: &Topology, prefetch: u16, inference: Duration) -> anyhow::Result<BareLoop> {
        let publish = conn.create_channel().await?;
        publish.confirm_select(ConfirmSelectOptions::default()).await?;
        let consume = conn.create_channel().await?;
        consume.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let queue = topo.job_queue(JobKind::Llm);
        let mut consumer = consume
            .basic_consume(queue.as_str().into(), "bare".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        let exchange = topo.events_exchange();
        let task = tokio::spawn(async move {
            while let Some(d) = consumer.next().await {
                let Ok(d) = d else { break };
                let (publish, exchange) = (publish.clone(), exchange.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    if !inference.is_zero() {
                        tokio::time::sleep(inference).await;
                    }
                    let job: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
                    let body = serde_json::to_vec(&serde_json::json!({
                        "job_id": job["job_id"],
                        "timings_ms": {"inference": started.elapsed().as_secs_f64() * 1e3},
                        "pad": "r".repeat(900),
                    }))
                    .expect("json");
                    let props = BasicProperties::default().with_delivery_mode(2);
                    let confirm = publish
                        .basic_publish(
                            exchange.as_str().into(),
                            "job.llm.succeeded".into(),
                            BasicPublishOptions::default(),
                            &body,
                            props,
                        )
                        .await;
                    if let Ok(confirm) = confirm
                        && confirm.await.is_ok()
                    {
                        let _ = d.acker.ack(BasicAckOptions::default()).await;
                    }
                });
            }
            Ok(())
        });
        Ok(BareLoop { consume, task })
    }

    async fn stop(self) {
        let _ = self.consume.close(200, "done".into()).await;
        let _ = self.task.await;
    }
}

fn worker(
    ctx: &Ctx,
    prefix: &str,
    backend: &str,
    slots: u32,
    jobs: &str,
    extra: &str,
) -> anyhow::Result<support::Worker> {
    support::Worker::start(
        Some(ctx.bin("ainern2d-worker")),
        &ctx.amqp,
        prefix,
        JobKind::Llm,
        backend,
        slots,
        jobs,
        extra,
    )
}

const PREFETCH: u16 = 100;

/// Celery with `pool` and `concurrency`, its prefetch multiplier chosen so that it holds about as many
/// unacked jobs as the others (`PREFETCH`). Publishes the jobs in Celery's own message format (protocol 2),
/// then starts the worker and times its results, first to last.
async fn celery(
    ctx: &Ctx,
    peers: &Peers,
    conn: &Connection,
    prefix: &str,
    pool: &str,
    concurrency: u16,
    n: usize,
) -> anyhow::Result<Duration> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let (queue, replies) = (format!("{prefix}.celery"), format!("{prefix}.celery-results"));
    for q in [&queue, &replies] {
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(q.as_str().into(), durable, FieldTable::default()).await?;
    }
    let mut pending = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let (props, body) = celery_message(&id, &replies);
        pending.push(
            ch.basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &body, props).await?,
        );
    }
    for p in pending {
        p.await?;
    }
    let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut results = ch.basic_consume(replies.as_str().into(), "tap".into(), no_ack, FieldTable::default()).await?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers");
    let child = Command::new(peers.bin("celery"))
        .current_dir(&dir)
        .env("BENCH_BROKER", &ctx.amqp)
        .env("BENCH_QUEUE", &queue)
        .env("BENCH_PREFETCH_MULTIPLIER", (PREFETCH / concurrency).max(1).to_string())
        .args(["-A", "celery_bench", "worker", "--pool", pool, "--concurrency", &concurrency.to_string()])
        .args(["--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel", "WARNING"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting celery")?;
    let timed = async {
        let mut first = None;
        for _ in 0..n {
            let d = tokio::time::timeout(Duration::from_secs(60), results.next())
                .await
                .context("no Celery result within 60 s")?
                .context("the result queue closed")??;
            first.get_or_insert_with(Instant::now);
            let r: serde_json::Value = serde_json::from_slice(&d.data)?;
            anyhow::ensure!(r["status"] == "SUCCESS", "a Celery task did not succeed: {r}");
        }
        Ok::<_, anyhow::Error>(first.map(|f| f.elapsed()).unwrap_or_default())
    }
    .await;
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    for q in [&queue, &replies] {
        let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
    }
    let _ = ch.close(200, "done".into()).await;
    timed.with_context(|| format!("celery --pool {pool} printed:\n{}", String::from_utf8_lossy(&out.stderr)))
}

/// A Celery task message (protocol 2) for `bench.noop` with about 1 KB of arguments, its result sent to
/// `reply_to`.
fn celery_message(id: &str, reply_to: &str) -> (BasicProperties, Vec<u8>) {
    let s = |v: &str| AMQPValue::LongString(v.into());
    let mut h = FieldTable::default();
    for (k, v) in [
        ("lang", s("py")),
        ("task", s("bench.noop")),
        ("id", s(id)),
        ("root_id", s(id)),
        ("retries", AMQPValue::LongInt(0)),
        ("timelimit", AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void, AMQPValue::Void]))),
        ("argsrepr", s("(...)")),
        ("kwargsrepr", s("{}")),
        ("origin", s("compare")),
        ("ignore_result", AMQPValue::Boolean(false)),
    ] {
        h.insert(k.into(), v);
    }
    for k in ["shadow", "eta", "expires", "group", "group_index", "parent_id"] {
        h.insert(k.into(), AMQPValue::Void);
    }
    let body =
        serde_json::json!([["x".repeat(900)], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]);
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_correlation_id(id.into())
        .with_reply_to(reply_to.into())
        .with_headers(h);
    (props, serde_json::to_vec(&body).expect("json"))
}

pub async fn throughput(ctx: &Ctx, peers: &Peers) -> anyhow::Result<Row> {
    let mut row = Row::new(
        1,
        "No-op jobs/s: worker vs a bare lapin loop and Celery 5.7",
        "≥ 0.9× the bare loop; ≥ 5× Celery's best",
    );
    let n = if ctx.quick { 1000 } else { 5000 };
    let conn = Connection::connect(&ctx.amqp, ConnectionProperties::default()).await?;
    let base = format!("bench-jobs-{}", std::process::id());
    let rate = |d: Duration| (n - 1) as f64 / d.as_secs_f64().max(1e-9);
    let mut rates: [Vec<f64>; 4] = Default::default();
    let mut cpu = Vec::new();
    for round in 0..ctx.rounds {
        let order = if round % 2 == 0 { [0, 1, 2, 3] } else { [3, 2, 1, 0] };
        for which in order {
            let prefix = format!("{base}-{round}-{which}");
            let took = match which {
                0 => {
                    let mut lane = Lane::new(ctx, &conn, &prefix).await?;
                    lane.fill(n).await?;
                    let bare = BareLoop::start(&conn, &lane.topo, PREFETCH, Duration::ZERO).await?;
                    let took = lane.drain(n).await?.0;
                    bare.stop().await;
                    lane.delete().await;
                    took
                }
                1 => {
                    let mut lane = Lane::new(ctx, &conn, &prefix).await?;
                    lane.fill(n).await?;
                    let w = worker(ctx, &prefix, "noop", u32::from(PREFETCH), "", "")?;
                    let took = lane.drain(n).await?.0;
                    cpu.extend(support::cpu_seconds(w.pid()).map(|s| s * 1e3 / n as f64));
                    w.stop();
                    lane.delete().await;
                    took
                }
                2 => celery(ctx, peers, &conn, &prefix, "prefork", 2, n).await?,
                _ => celery(ctx, peers, &conn, &prefix, "threads", 8, n).await?,
            };
            rates[which].push(rate(took));
        }
    }
    row.conditions.push(format!("{n} jobs queued beforehand per contender and round, timed first completion → last"));
    row.conditions.push(format!("about {PREFETCH} unacked jobs each: the bare loop's prefetch, the worker's `noop` slots, Celery's concurrency × prefetch multiplier"));
    row.conditions.push(format!(
        "worker: {} build, `noop` backend; Celery {}, py-amqp, `acks_late`, `rpc://` results, `confirm_publish`",
        ctx.profile(),
        peers.version("celery", &["--version"])
    ));
    let bare = row.measure("bare lapin loop (the broker's limit)", "jobs/s", false, &rates[0]);
    let ours = row.measure("ainern2d-worker, noop backend", "jobs/s", true, &rates[1]);
    let prefork = row.measure("Celery, prefork pool, 2 processes", "jobs/s", false, &rates[2]);
    let threads = row.measure("Celery, threads pool, 8 threads", "jobs/s", false, &rates[3]);
    if !cpu.is_empty() {
        row.measure("ainern2d-worker CPU per job (user + system, start included)", "ms", true, &cpu);
    }
    row.checks.push(Check::at_least("worker / bare loop", ours / bare, 0.9));
    row.checks.push(Check::at_least("worker / Celery's best", ours / prefork.max(threads), 5.0));
    Ok(row)
}

/// `q` quantile (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
}

/// `n` jobs one at a time through a lane: each one's end-to-end latency minus the inference it reports.
async fn overheads(lane: &mut Lane, name: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let queue = lane.topo.job_queue(JobKind::Llm);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{name}-{i}");
        let started = Instant::now();
        let props = BasicProperties::default().with_delivery_mode(2);
        let confirm = lane
            .ch
            .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &job_body(&id), props)
            .await?;
        let (got, inference) = lane.next().await?;
        let e2e = started.elapsed().as_secs_f64() * 1e3;
        confirm.await?;
        anyhow::ensure!(got == id, "outcome of {got} while waiting for {id}");
        out.push(e2e - inference);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

pub async fn overhead(ctx: &Ctx) -> anyhow::Result<Row> {
    let mut row = Row::new(2, "Runtime overhead per job with a 10 ms inference step", "p50 ≤ 1 ms, p99 ≤ 5 ms");
    let n = if ctx.quick { 40 } else { 300 };
    let conn = Connection::connect(&ctx.amqp, ConnectionProperties::default()).await?;
    let base = format!("bench-overhead-{}", std::process::id());
    let mut p: [Vec<f64>; 4] = Default::default();
    for round in 0..ctx.rounds {
        for which in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            let prefix = format!("{base}-{round}-{which}");
            let mut lane = Lane::new(ctx, &conn, &prefix).await?;
            let values = if which == 0 {
                let bare = BareLoop::start(&conn, &lane.topo, 1, Duration::from_millis(10)).await?;
                let v = overheads(&mut lane, "lat", n).await;
                bare.stop().await;
                v?
            } else {
                let mut w = worker(ctx, &prefix, "mock", 1, "", "[mock]\nlatency_ms = 10\n")?;
                support::until_ready(w.port, w.child_mut()).await?;
                overheads(&mut lane, "warm", 5).await?; // a job id once each: a second one would be a replay
                let v = overheads(&mut lane, "lat", n).await;
                w.stop();
                v?
            };
            lane.delete().await;
            p[which * 2].push(quantile(&values, 0.5));
            p[which * 2 + 1].push(quantile(&values, 0.99));
        }
    }
    row.conditions.push(format!("{n} jobs per contender and round, one at a time; overhead = (publish → outcome event seen) − the inference time the outcome reports"));
    row.conditions.push(format!("worker: {} build, mock `llm` pipeline sleeping 10 ms, one slot, local store; default events (progress, the `running` delay)", ctx.profile()));
    let bare50 = row.measure("bare lapin loop sleeping 10 ms, p50", "ms", false, &p[0]);
    row.measure("bare lapin loop sleeping 10 ms, p99", "ms", false, &p[1]);
    let p50 = row.measure("ainern2d-worker, p50", "ms", true, &p[2]);
    let p99 = row.measure("ainern2d-worker, p99", "ms", true, &p[3]);
    row.checks.push(Check::at_most("worker p50 (ms)", p50, 1.0));
    row.checks.push(Check::at_most("worker p99 (ms)", p99, 5.0));
    row.notes.push(format!(
        "The bare loop's figures are the broker's share: two hops through RabbitMQ, a persistent publish with \
         its confirm, the ack. The runtime's own part of the p50 is the difference, {:.2} ms.",
        p50 - bare50
    ));
    Ok(row)
}

pub async fn busy_share(ctx: &Ctx) -> anyhow::Result<Row> {
    let mut row =
        Row::new(3, "Inference slot's busy share with a full queue and uploads as long as inference", "≥ 0.95");
    let (n, ms) = if ctx.quick { (40, 10) } else { (200, 20) };
    let conn = Connection::connect(&ctx.amqp, ConnectionProperties::default()).await?;
    let base = format!("bench-busy-{}", std::process::id());
    // The default (one delivery beyond the slots), none, and two.
    let overlaps = [1, 0, 2];
    let mut shares: [Vec<f64>; 3] = Default::default();
    for round in 0..ctx.rounds {
        for which in if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] } {
            let prefix = format!("{base}-{round}-{which}");
            let mut lane = Lane::new(ctx, &conn, &prefix).await?;
            lane.fill(n).await?;
            let mock = format!("[mock]\nlatency_ms = {ms}\nupload_delay_ms = {ms}\n");
            let w = worker(ctx, &prefix, "mock", 1, &format!("upload_overlap = {}", overlaps[which]), &mock)?;
            let (took, inference) = lane.drain(n).await?;
            w.stop();
            lane.delete().await;
            shares[which].push(inference / (took.as_secs_f64() * 1e3));
        }
    }
    row.conditions.push(format!("{n} mock `llm` jobs queued beforehand per round, one inference slot; inference {ms} ms, upload {ms} ms (`mock.upload_delay_ms`)"));
    row.conditions.push("busy share = the inference times the outcomes report, after the first, over the time from the first outcome to the last".into());
    let ours = row.measure("ainern2d-worker (`upload_overlap = 1`, the default)", "share", true, &shares[0]);
    row.measure("ainern2d-worker, `upload_overlap = 0` (no overlap)", "share", false, &shares[1]);
    let two = row.measure("ainern2d-worker, `upload_overlap = 2`", "share", false, &shares[2]);
    row.checks.push(Check::at_least("busy share", ours, 0.95));
    if ours < 0.95 {
        row.notes.push(format!(
            "With one delivery beyond the slot, the next job arrives only once the previous one is settled: its \
             outcome confirmed, its ack sent, the broker's next delivery received and parsed. When uploading \
             takes exactly as long as inferring, that round trip ({:.2} ms a job here, from the share) is the \
             slot's idle time; it does not grow with the job, so it is {:.1} % of a {ms} ms job and 0.1 % of a \
             second-long one. `upload_overlap = 2` hides it ({two:.3}) at the price of one more job held by the \
             worker while it could run elsewhere, which is why the default stays 1.",
            f64::from(ms) * (1.0 / ours - 1.0),
            (1.0 - ours) * 100.0,
        ));
    }
    Ok(row)
}
