//! Hub event-ingest rate against a baseline measured in the same run.
//!
//! Baseline: a bare lapin consumer that acks each batch of the same events without touching Postgres (the
//! broker's delivery rate). Hub: the real `ainern2d-hub` binary applying the events (each job: running,
//! progress, succeeded) into Postgres. Both drain the same number of events queued beforehand.
//!
//! Run: `cargo build --release -p ainern2d-hub -p ainern2d-benches && target/release/ingest --events 30000`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ainern2d_contract::{Event, EventStatus, JobKind};
use clap::Parser;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database: String,
    /// Events per run (a multiple of 3: running, progress, succeeded per job).
    #[arg(long, default_value_t = 30_000)]
    events: usize,
}

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

async fn fill(ch: &Channel, exchange: &str, events: &[Event]) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    for e in events {
        let body = serde_json::to_vec(e)?;
        let props = BasicProperties::default().with_delivery_mode(2);
        pending.push(
            ch.basic_publish(
                exchange.into(),
                e.routing_key().as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await?,
        );
    }
    for p in pending {
        p.await?;
    }
    Ok(())
}

async fn baseline(conn: &Connection, prefix: &str, events: &[Event]) -> anyhow::Result<Duration> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let exchange = format!("{prefix}.base-events");
    let queue = format!("{prefix}.base-q");
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    fill(&ch, &exchange, events).await?;
    let consume = conn.create_channel().await?;
    consume.basic_qos(2000, BasicQosOptions::default()).await?;
    let mut consumer = consume
        .basic_consume(queue.as_str().into(), "base".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let mut first = None;
    for i in 0..events.len() {
        let d = consumer.next().await.expect("consumer open")?;
        first.get_or_insert_with(Instant::now);
        // Parse like the hub does and ack in batches of 500, like the hub's default.
        let _: Event = serde_json::from_slice(&d.data)?;
        if i % 500 == 499 || i + 1 == events.len() {
            d.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    let took = first.unwrap().elapsed();
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
    Ok(took)
}

async fn hub(conn: &Connection, args: &Args, prefix: &str, events: &[Event]) -> anyhow::Result<Duration> {
    let schema = prefix.replace('-', "_");
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = format!(
        "[broker]\nurl = \"{}\"\nprefix = \"{prefix}\"\n[database]\nurl = \"{}\"\nschema = \"{schema}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[log]\nfilter = \"warn\"\n",
        args.amqp, args.database
    );
    std::fs::write(dir.path().join("hub.toml"), config)?;
    let bin = std::env::current_exe()?.with_file_name("ainern2d-hub");
    // Start the hub once so it declares its queue, stop it, queue the events, then time the drain.
    let run =
        || Command::new(&bin).args(["run", "--config"]).arg(dir.path().join("hub.toml")).stderr(Stdio::null()).spawn();
    let mut child = run()?;
    let ready = format!("http://127.0.0.1:{port}/ready");
    while !reqwest::get(&ready).await.is_ok_and(|r| r.status().is_success()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    child.wait()?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    fill(&ch, &format!("{prefix}.events"), events).await?;
    let options: sqlx::postgres::PgConnectOptions = args.database.parse()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.options([("search_path", schema.as_str())]))
        .await?;
    let mut child = run()?;
    let started = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events").fetch_one(&pool).await?;
        if n as usize >= events.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'succeeded'").fetch_one(&pool).await?;
    assert_eq!(done as usize, events.len() / 3, "every job ends succeeded");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    child.wait()?;
    ch.queue_delete(format!("{prefix}.hub.events").as_str().into(), QueueDeleteOptions::default()).await?;
    for ex in ["events", "control"] {
        ch.exchange_delete(format!("{prefix}.{ex}").as_str().into(), ExchangeDeleteOptions::default()).await?;
    }
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE")).execute(&pool).await?;
    Ok(took)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let conn = Connection::connect(&args.amqp, ConnectionProperties::default()).await?;
    let prefix = format!("bench-ingest-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let events = events(args.events);
    let base = baseline(&conn, &prefix, &events).await?;
    let hub = hub(&conn, &args, &prefix, &events).await?;
    let rate = |d: Duration| events.len() as f64 / d.as_secs_f64();
    println!("events: {}", events.len());
    println!("baseline (consume + parse + batched ack, no database): {:>8.0} events/s", rate(base));
    println!("ainern2d-hub (applied into Postgres, acked after commit): {:>8.0} events/s", rate(hub));
    println!("ratio hub/baseline: {:.2}", rate(hub) / rate(base));
    Ok(())
}
