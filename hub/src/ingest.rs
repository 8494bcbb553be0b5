//! Event ingestion: one durable queue (`<prefix>.hub.events`) bound to the events exchange; deliveries are
//! gathered into batches, applied in one Postgres transaction, and acked (`multiple`) only after the commit.
//! A hub killed before the commit loses nothing: the broker redelivers and the event ids deduplicate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ainern2d_contract::topology::Topology;
use ainern2d_contract::{Event, Heartbeat};
use ainern2d_queue::{ExchangeKind, QueueSpec, Session};
use backon::Retryable;
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::Hub;
use crate::backoff::{self, Resettable};

pub fn queue_name(prefix: &str) -> String {
    format!("{prefix}.hub.events")
}

/// Runs until `shutdown`; reconnects to the broker with backoff.
pub async fn run(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut backoff = Resettable::new(backoff::reconnect());
    while !shutdown.is_cancelled() {
        match session(&hub, &shutdown, &mut backoff).await {
            Ok(()) => break,
            Err(e) => {
                hub.ingest_up(false);
                let delay = backoff.next_delay();
                tracing::warn!("event ingestion interrupted: {e}; reconnecting in {delay:?}");
                tokio::select! { _ = tokio::time::sleep(delay) => {}, _ = shutdown.cancelled() => break }
            }
        }
    }
    hub.ingest_up(false);
}

/// One ingestion session: subscribe, then batch, commit and ack until the session ends.
async fn session(hub: &Arc<Hub>, shutdown: &CancellationToken, backoff: &mut Resettable) -> anyhow::Result<()> {
    let session = hub.broker.connect("ainern2d-hub ingest").await?;
    let result = consume(hub, session.as_ref(), shutdown, backoff).await;
    ainern2d_queue::close(session.as_ref()).await;
    result
}

async fn consume(
    hub: &Arc<Hub>,
    session: &dyn Session,
    shutdown: &CancellationToken,
    backoff: &mut Resettable,
) -> anyhow::Result<()> {
    let cfg = &hub.config;
    let topo = Topology::new(cfg.broker.prefix.clone());
    let events = topo.events_exchange();
    session.declare_exchange(&events, ExchangeKind::Topic).await?;
    session.declare_exchange(&topo.control_exchange(), ExchangeKind::Topic).await?;
    let queue = session.declare_queue(&QueueSpec::durable(queue_name(&cfg.broker.prefix))).await?;
    for key in ["job.#", "worker.heartbeat.#"] {
        session.bind(&queue, &events, key).await?;
    }
    let mut consumer = session.subscribe(&queue, "ainern2d-hub", cfg.ingest.prefetch).await?;
    let lost = session.lost();
    hub.ingest_up(true);
    backoff.reset();
    tracing::info!(%queue, broker = %hub.broker.describe(), "ingesting events");
    let wait = Duration::from_millis(cfg.ingest.batch_wait_ms);
    loop {
        let first = tokio::select! {
            d = consumer.next() => d,
            _ = shutdown.cancelled() => return Ok(()),
            _ = lost.cancelled() => {
                anyhow::bail!(session.lost_reason().unwrap_or_else(|| "the broker session was lost".into()))
            }
        };
        let Some(first) = first else { anyhow::bail!("the broker cancelled the hub's consumer") };
        let mut batch = vec![first?];
        // What the broker has handed over already joins the batch at once. Under load that is a full
        // batch: deliveries pile up (up to the prefetch) while the previous batch is written. Idle, an
        // event is written as soon as it comes, unless `batch_wait_ms` asks to wait for company.
        while batch.len() < cfg.ingest.batch_max {
            match consumer.next().now_or_never() {
                Some(Some(d)) => batch.push(d?),
                Some(None) => anyhow::bail!("the broker cancelled the hub's consumer"),
                None => break,
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        while batch.len() < cfg.ingest.batch_max && !wait.is_zero() {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(d)) => batch.push(d?),
                Ok(None) => anyhow::bail!("the broker cancelled the hub's consumer"),
                Err(_) => break,
            }
        }
        let mut events = Vec::with_capacity(batch.len());
        let mut heartbeats = Vec::new();
        for d in &batch {
            let parsed = if d.routing_key.starts_with("worker.heartbeat.") {
                serde_json::from_slice::<Heartbeat>(&d.message.body).map(|h| heartbeats.push(h))
            } else {
                serde_json::from_slice::<Event>(&d.message.body).map(|e| events.push(e))
            };
            if let Err(e) = parsed {
                // A message that is not an event can never be applied: count it and let it go with the batch.
                hub.metrics.malformed.inc();
                tracing::warn!(routing_key = %d.routing_key, "dropping a malformed event: {e}");
            }
        }
        let spans = ingest_spans(&events, batch.len());
        let started = Instant::now();
        // The batch stays unacked until it is committed; a database outage is waited out, not dropped.
        let write = (|| hub.store.apply_batch(&events, &heartbeats)).retry(backoff::database()).notify(|e, delay| {
            hub.db_up(false);
            tracing::warn!("writing a batch of {} events failed: {e}; retrying in {delay:?}", events.len());
        });
        let (stats, finished) = tokio::select! {
            written = write => written?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        hub.db_up(true);
        let last = batch.last().expect("a batch has at least one delivery");
        // An ack on a connection that died may never return: the session's loss ends the wait, and the
        // batch comes back on the next session (its event ids deduplicate).
        tokio::select! {
            acked = last.acker.ack(true) => acked?,
            _ = lost.cancelled() => {
                anyhow::bail!(session.lost_reason().unwrap_or_else(|| "the broker session was lost".into()))
            }
            _ = shutdown.cancelled() => return Ok(()),
        }
        drop(spans);
        hub.metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
        hub.metrics.events_applied.inc_by(stats.applied);
        hub.metrics.events_ignored.inc_by(stats.ignored);
        hub.metrics.events_duplicate.inc_by(stats.duplicates);
        hub.metrics.heartbeats.inc_by(stats.heartbeats);
        hub.on_batch(&finished, &heartbeats).await;
    }
}

/// With traces on, one `ingest` span per event that carries a `traceparent`, a child of the worker's span
/// for the job: it lasts from the batch's parsing to its ack (the event is then in the status store).
fn ingest_spans(events: &[Event], batch: usize) -> Vec<tracing::Span> {
    if !ainern2d_cli::trace::enabled() {
        return Vec::new();
    }
    let traced = events.iter().filter_map(|e| e.traceparent.as_deref().map(|tp| (e, tp)));
    traced
        .map(|(e, tp)| {
            let span = tracing::info_span!(
                "ingest",
                otel.kind = "consumer",
                job_id = %e.job_id,
                status = e.status.as_str(),
                event_id = %e.event_id,
                batch,
            );
            ainern2d_cli::trace::set_parent(&span, Some(tp));
            span
        })
        .collect()
}
