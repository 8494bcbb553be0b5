//! Row 6: the hub applying queued events into Postgres, events/s: the real `ainern2d-hub` binary as
//! configured by default (batches of up to `ingest.batch_max` = 500 events, one transaction each) against
//! the same binary with `batch_max = 1` (one transaction per event, the naive way), and a consumer that
//! parses and acks the same events without a database (the broker's rate, for scale). Each job's events
//! are running, progress, succeeded; every run drains events queued beforehand and is checked: each job
//! ends `succeeded`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ainern2d_contract::{Event, EventStatus, JobKind};
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::Ctx;
use crate::report::{Check, Row};
use crate::support;

fn events(n: usize) -> Vec<Event> {
    (0..n / 3)
        .flat_map(|j| {
            let id = format!("job-{j}");
            [EventStatus::Running, EventStatus::Progress, EventStatus::Succeeded]
                .into_iter()
                .enumerate()
                .map(move |(seq, status)| Event::new(&id, Some(JobKind::Llm), 1, "bench", status, seq as u32))
        })
        .collect()
}

async fn publish(ch: &Channel, exchange: &str, events: &[Event]) -> anyhow::Result<()> {
    let messages = events.iter().map(|e| (exchange.to_string(), e.routing_key(), serde_json::to_vec(e).expect("json")));
    support::publish_all(ch, messages).await
}

/// Consume, parse like the hub, ack in batches of 500 (the hub's default): no database.
async fn broker_only(conn: &Connection, prefix: &str, events: &[Event]) -> anyhow::Result<Duration> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let (exchange, queue) = (format!("{prefix}.base-events"), format!("{prefix}.base-q"));
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(queue.as_str().into(), durable, FieldTable::default()).await?;
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    publish(&ch, &exchange, events).await?;
    let consume = conn.create_channel().await?;
    consume.basic_qos(2000, BasicQosOptions::default()).await?;
    let mut consumer = consume
        .basic_consume(queue.as_str().into(), "base".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let started = Instant::now();
    for i in 0..events.len() {
        let d = consumer.next().await.expect("consumer open")?;
        let _: Event = serde_json::from_slice(&d.data)?;
        if i % 500 == 499 || i + 1 == events.len() {
            d.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    let took = started.elapsed();
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
    let _ = consume.close(200, "done".into()).await;
    let _ = ch.close(200, "done".into()).await;
    Ok(took)
}

fn stop(mut child: Child) -> anyhow::Result<()> {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    child.wait()?;
    Ok(())
}

/// Who burns the CPU while the hub drains: the hub, the database, the broker.
const PROCESSES: &[&str] = &["ainern2d-hub", "postgres", "beam.smp"];

/// The hub with `ingest` settings, draining `events` queued while it was stopped; the drain's time and
/// the CPU seconds of `PROCESSES` during it.
async fn hub(
    ctx: &Ctx,
    conn: &Connection,
    prefix: &str,
    ingest: &str,
    events: &[Event],
) -> anyhow::Result<(Duration, std::collections::BTreeMap<String, f64>)> {
    let schema = prefix.replace('-', "_");
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = format!(
        "[broker]\nurl = \"{}\"\nprefix = \"{prefix}\"\n[database]\nurl = \"{}\"\nschema = \"{schema}\"\n\
         [http]\nlisten = \"127.0.0.1:{port}\"\n[log]\nfilter = \"warn\"\n[ingest]\n{ingest}\n",
        ctx.amqp, ctx.database
    );
    let file = dir.path().join("hub.toml");
    std::fs::write(&file, config)?;
    let start = |file: &Path| -> anyhow::Result<Child> {
        Ok(Command::new(ctx.bin("ainern2d-hub")).args(["run", "--config"]).arg(file).stderr(Stdio::null()).spawn()?)
    };
    // Started once to declare its queue and migrate its schema, stopped; the events are queued; then the drain is timed.
    let mut child = start(&file)?;
    support::until_ready(port, &mut child).await?;
    stop(child)?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    publish(&ch, &format!("{prefix}.events"), events).await?;
    let options: sqlx::postgres::PgConnectOptions = ctx.database.parse()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.options([("search_path", schema.as_str())]))
        .await?;
    let cpu_before = support::cpu_of(PROCESSES);
    let child = start(&file)?;
    let started = Instant::now();
    let drained = async {
        loop {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events").fetch_one(&pool).await?;
            if n as usize >= events.len() {
                return Ok::<_, anyhow::Error>(started.elapsed());
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(300),
                "{n} of {} events applied in 300 s",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    .await;
    let cpu = support::cpu_between(&cpu_before, &support::cpu_of(PROCESSES));
    let done: Result<i64, _> =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'succeeded'").fetch_one(&pool).await;
    stop(child)?;
    let _ = ch.queue_delete(format!("{prefix}.hub.events").as_str().into(), QueueDeleteOptions::default()).await;
    for ex in ["events", "control"] {
        let _ = ch.exchange_delete(format!("{prefix}.{ex}").as_str().into(), ExchangeDeleteOptions::default()).await;
    }
    let _ = ch.close(200, "done".into()).await;
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE")).execute(&pool).await?;
    let took = drained?;
    anyhow::ensure!(done? as usize == events.len() / 3, "every job ends succeeded");
    Ok((took, cpu))
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Row> {
    let mut row = Row::new(
        6,
        "Hub event ingest into Postgres: batched vs one transaction per event",
        "≥ 15,000 events/s; ≥ 10× naive",
    );
    // The naive hub is an order of magnitude slower: it drains fewer events per round.
    let (many, few) = if ctx.quick { (3_000, 900) } else { (30_000, 6_000) };
    let (batched_events, naive_events) = (events(many), events(few));
    let conn = Connection::connect(&ctx.amqp, ConnectionProperties::default()).await?;
    let base = format!("bench-ingest-{}", std::process::id());
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut cpu: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for round in 0..ctx.rounds {
        for which in if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] } {
            let prefix = format!("{base}-{round}-{which}");
            let (took, n) = match which {
                0 => (broker_only(&conn, &prefix, &batched_events).await?, many),
                1 => {
                    let (took, used) = hub(ctx, &conn, &prefix, "", &batched_events).await?;
                    for (name, seconds) in used {
                        cpu.entry(name).or_default().push(seconds * 1e6 / many as f64);
                    }
                    (took, many)
                }
                _ => (hub(ctx, &conn, &prefix, "batch_max = 1", &naive_events).await?.0, few),
            };
            rates[which].push(n as f64 / took.as_secs_f64());
        }
    }
    row.conditions.push(format!(
        "{many} events per round ({few} for the naive hub), queued beforehand: running, progress, succeeded per job"
    ));
    row.conditions.push(format!(
        "hub: {} build, Postgres and RabbitMQ on the same host, acked after commit; timed from the hub's start \
         (its start to ready, row 8, included) to the last event in `job_events`",
        ctx.profile()
    ));
    row.conditions
        .push("CPU per event: user + system seconds of each process during the drain, over the events".into());
    row.measure("consume + parse + batched ack, no database (the broker's rate)", "events/s", false, &rates[0]);
    let batched =
        row.measure("ainern2d-hub, batches (`ingest.batch_max = 500`, the default)", "events/s", true, &rates[1]);
    let naive = row.measure("ainern2d-hub, `batch_max = 1` (a transaction per event)", "events/s", false, &rates[2]);
    for (name, us) in &cpu {
        row.measure(&format!("CPU per event applied in batches: {name}"), "µs", false, us);
    }
    row.checks.push(Check::at_least("batched events/s", batched, 15_000.0));
    row.checks.push(Check::at_least("batched / naive", batched / naive, 10.0));
    Ok(row)
}
