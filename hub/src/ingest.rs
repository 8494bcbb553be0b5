//! Event ingestion: one durable queue (`<prefix>.hub.events`) bound to the events exchange; deliveries are
//! gathered into batches, applied in one Postgres transaction, and acked (`multiple`) only after the commit.
//! A hub killed before the commit loses nothing: the broker redelivers and the event ids deduplicate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ainern2d_contract::topology::Topology;
use ainern2d_contract::{Event, Heartbeat};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tokio_util::sync::CancellationToken;

use crate::Hub;

pub fn queue_name(prefix: &str) -> String {
    format!("{prefix}.hub.events")
}

/// Runs until `shutdown`; reconnects to the broker with backoff.
pub async fn run(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(250);
    while !shutdown.is_cancelled() {
        match session(&hub, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                hub.broker_up(false);
                tracing::warn!("event ingestion interrupted: {e}; reconnecting in {backoff:?}");
                tokio::select! { _ = tokio::time::sleep(backoff) => {}, _ = shutdown.cancelled() => break }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    hub.broker_up(false);
}

async fn session(hub: &Arc<Hub>, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let cfg = &hub.config;
    let conn = Connection::connect(
        &cfg.broker.url,
        ConnectionProperties::default().with_connection_name("ainern2d-hub".into()),
    )
    .await?;
    let ch = conn.create_channel().await?;
    let topo = Topology::new(cfg.broker.prefix.clone());
    let events = topo.events_exchange();
    ch.exchange_declare(
        events.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        topo.control_exchange().as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await?;
    let queue = queue_name(&cfg.broker.prefix);
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await?;
    for key in ["job.#", "worker.heartbeat.#"] {
        ch.queue_bind(
            queue.as_str().into(),
            events.as_str().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    ch.basic_qos(cfg.ingest.prefetch, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "ainern2d-hub".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let control = conn.create_channel().await?;
    control.confirm_select(lapin::options::ConfirmSelectOptions::default()).await?;
    *hub.control.lock().await = Some(control);
    hub.broker_up(true);
    tracing::info!(%queue, "ingesting events");
    let wait = Duration::from_millis(cfg.ingest.batch_wait_ms);
    loop {
        let first = tokio::select! {
            d = consumer.next() => d,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let Some(first) = first else { anyhow::bail!("the broker cancelled the hub's consumer") };
        let mut batch = vec![first?];
        let deadline = tokio::time::Instant::now() + wait;
        while batch.len() < cfg.ingest.batch_max {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(d)) => batch.push(d?),
                Ok(None) => anyhow::bail!("the broker cancelled the hub's consumer"),
                Err(_) => break,
            }
        }
        let mut events = Vec::with_capacity(batch.len());
        let mut heartbeats = Vec::new();
        for d in &batch {
            let parsed = if d.routing_key.as_str().starts_with("worker.heartbeat.") {
                serde_json::from_slice::<Heartbeat>(&d.data).map(|h| heartbeats.push(h))
            } else {
                serde_json::from_slice::<Event>(&d.data).map(|e| events.push(e))
            };
            if let Err(e) = parsed {
                // A message that is not an event can never be applied: count it and let it go with the batch.
                hub.metrics.malformed.inc();
                tracing::warn!(routing_key = %d.routing_key, "dropping a malformed event: {e}");
            }
        }
        let started = Instant::now();
        // The batch stays unacked until it is committed; a database outage is waited out, not dropped.
        let mut retry = Duration::from_millis(200);
        let (stats, finished) = loop {
            match hub.store.apply_batch(&events, &heartbeats).await {
                Ok(r) => {
                    hub.db_up(true);
                    break r;
                }
                Err(e) => {
                    hub.db_up(false);
                    tracing::warn!("writing a batch of {} events failed: {e}; retrying in {retry:?}", events.len());
                    tokio::select! { _ = tokio::time::sleep(retry) => {}, _ = shutdown.cancelled() => return Ok(()) }
                    retry = (retry * 2).min(Duration::from_secs(10));
                }
            }
        };
        let last = batch.last().expect("a batch has at least one delivery");
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
        hub.metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
        hub.metrics.events_applied.inc_by(stats.applied);
        hub.metrics.events_ignored.inc_by(stats.ignored);
        hub.metrics.events_duplicate.inc_by(stats.duplicates);
        hub.metrics.heartbeats.inc_by(stats.heartbeats);
        hub.on_batch(&finished, &heartbeats).await;
    }
}
