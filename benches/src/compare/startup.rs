//! Row 8: process start to `/ready` answering 200, for the worker (mock pipelines: broker connected,
//! topology declared, store reachable, consuming) and the hub (both broker sessions, the database
//! migrated and reachable). The floor beside them is the worker binary's `--version`: executing and
//! linking it, which no start of it can beat. Polled every 2 ms.

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use ainern2d_contract::JobKind;

use crate::Ctx;
use crate::report::{Check, Row};
use crate::support;

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

fn version_ms(bin: &std::path::Path) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = Command::new(bin).arg("--version").stdout(Stdio::null()).status()?;
    anyhow::ensure!(status.success(), "{} --version failed", bin.display());
    Ok(ms(started))
}

async fn worker_ms(ctx: &Ctx, prefix: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut w =
        support::Worker::start(Some(ctx.bin("ainern2d-worker")), &ctx.amqp, prefix, JobKind::Llm, "mock", 1, "", "")?;
    let took = support::until_ready(w.port, w.child_mut()).await.map(|()| ms(started));
    w.stop();
    took
}

async fn hub_ms(ctx: &Ctx, config: &std::path::Path, port: u16) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut child =
        Command::new(ctx.bin("ainern2d-hub")).args(["run", "--config"]).arg(config).stderr(Stdio::null()).spawn()?;
    let took = support::until_ready(port, &mut child).await.map(|()| ms(started));
    stop(child);
    took
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Row> {
    let mut row = Row::new(8, "Start to `/ready`: worker (mock pipelines) and hub", "≤ 300 ms each");
    let prefix = format!("bench-start-{}", std::process::id());
    let schema = prefix.replace('-', "_");
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nurl = \"{}\"\nprefix = \"{prefix}\"\n[database]\nurl = \"{}\"\nschema = \"{schema}\"\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n[log]\nfilter = \"warn\"\n",
            ctx.amqp, ctx.database
        ),
    )?;
    // Not measured: the first start creates the schema and applies the migrations; every later start of
    // a release finds them applied.
    hub_ms(ctx, &config, port).await?;
    worker_ms(ctx, &prefix).await?;
    let (mut floor, mut worker, mut hub) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ctx.rounds {
        // A B C, then C B A: each contender goes first as often as last.
        for which in if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] } {
            match which {
                0 => floor.push(version_ms(&ctx.bin("ainern2d-worker"))?),
                1 => worker.push(worker_ms(ctx, &prefix).await?),
                _ => hub.push(hub_ms(ctx, &config, port).await?),
            }
        }
    }
    row.conditions.push(format!("binaries: {} ({} build)", ctx.bins.display(), ctx.profile()));
    row.conditions.push("RabbitMQ and Postgres on the same host; the worker on a local-directory store".into());
    let floor = row.measure("`ainern2d-worker --version` (exec floor)", "ms", false, &floor);
    let w = row.measure("worker start → /ready", "ms", true, &worker);
    let h = row.measure("hub start → /ready", "ms", true, &hub);
    row.checks.push(Check::at_most("worker median (ms)", w, 300.0));
    row.checks.push(Check::at_most("hub median (ms)", h, 300.0));
    row.notes.push(format!(
        "The worker's figure includes its binary's exec floor (median {floor:.1} ms to print its version and \
         exit: loading and relocating the binary and its shared libraries, FFmpeg's among them); the hub's \
         binary links none of those."
    ));
    cleanup(ctx, &prefix, &schema).await;
    Ok(row)
}

async fn cleanup(ctx: &Ctx, prefix: &str, schema: &str) {
    use ainern2d_contract::topology::Topology;
    if let Ok(conn) = lapin::Connection::connect(&ctx.amqp, lapin::ConnectionProperties::default()).await
        && let Ok(ch) = conn.create_channel().await
    {
        let topo = Topology::new(prefix.to_string());
        support::delete(&ch, &topo, JobKind::Llm).await;
        for kind in ainern2d_contract::JobKind::ALL {
            let retries = (0..8).map(|level| topo.retry_queue(kind, level));
            for q in std::iter::once(topo.job_queue(kind)).chain(retries) {
                let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
            }
        }
        let _ = ch.queue_delete(format!("{prefix}.hub.events").as_str().into(), Default::default()).await;
    }
    if let Ok(pool) = sqlx::PgPool::connect(&ctx.database).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await;
    }
}
