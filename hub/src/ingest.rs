//! Event ingestion: one durable queue (`<prefix>.hub.events`) bound to the events exchange; deliveries are
//! gathered into batches, applied in one Postgres transaction, and acked (`multiple`) only after the commit.
//! A batch is written by a task of its own while the next one is gathered and parsed (the database, the
//! broker and the hub work at once); batches are still committed one after the other, in order. A hub
//! killed before a commit loses nothing: the broker redelivers and the event ids deduplicate.

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
use crate::store::StoreError;

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
    let lost_reason = || session.lost_reason().unwrap_or_else(|| "the broker session was lost".into());
    // One batch is written while the next is gathered and parsed: the database works while the hub and
    // the broker do. Batches are still written one after the other, each acked after its commit.
    let mut writing: Option<Writing> = None;
    loop {
        let first = tokio::select! {
            d = consumer.next() => d,
            written = wait_for(&mut writing) => {
                let done = writing.take().expect("a batch was being written");
                if !settle(hub, done.held, written, &lost, shutdown).await? {
                    return Ok(());
                }
                continue;
            }
            _ = shutdown.cancelled() => return abandon(writing),
            _ = lost.cancelled() => anyhow::bail!(lost_reason()),
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
        let (events, heartbeats) = parse(hub, &batch);
        let spans = ingest_spans(&events, batch.len());
        // The previous batch first: committed and acked before this one is written.
        if let Some(mut done) = writing.take() {
            let written = tokio::select! {
                written = &mut done.task => written,
                _ = shutdown.cancelled() => return abandon(Some(done)),
            };
            if !settle(hub, done.held, written, &lost, shutdown).await? {
                return Ok(());
            }
        }
        writing = Some(Writing::start(hub, batch, events, heartbeats, spans));
    }
}

/// A batch being written by a task of its own.
struct Writing {
    held: Held,
    task: tokio::task::JoinHandle<Result<Written, StoreError>>,
}

/// What stays with the consumer while its batch is written: the deliveries, unacked until the commit.
struct Held {
    batch: Vec<ainern2d_queue::Delivery>,
    spans: Vec<tracing::Span>,
    started: Instant,
}

type Written = (crate::store::BatchStats, Vec<crate::store::Finished>, Vec<Heartbeat>);

impl Writing {
    fn start(
        hub: &Arc<Hub>,
        batch: Vec<ainern2d_queue::Delivery>,
        events: Vec<Event>,
        heartbeats: Vec<Heartbeat>,
        spans: Vec<tracing::Span>,
    ) -> Writing {
        let hub = hub.clone();
        let task = tokio::spawn(async move {
            // A database outage is waited out, not dropped: the batch stays unacked meanwhile.
            let write = || hub.store.apply_batch(&events, &heartbeats);
            let (stats, finished) = write
                .retry(backoff::database())
                .notify(|e, delay| {
                    hub.db_up(false);
                    tracing::warn!("writing a batch of {} events failed: {e}; retrying in {delay:?}", events.len());
                })
                .await?;
            Ok((stats, finished, heartbeats))
        });
        Writing { held: Held { batch, spans, started: Instant::now() }, task }
    }
}

/// The batch being written, done (pending forever when there is none).
async fn wait_for(writing: &mut Option<Writing>) -> Result<Result<Written, StoreError>, tokio::task::JoinError> {
    match writing {
        Some(w) => (&mut w.task).await,
        None => std::future::pending().await,
    }
}

/// Shutdown with a batch being written: the write is stopped; the batch, unacked, comes back to the next
/// hub (its event ids deduplicate, whether or not the transaction committed).
fn abandon(writing: Option<Writing>) -> anyhow::Result<()> {
    if let Some(w) = writing {
        w.task.abort();
    }
    Ok(())
}

/// Acks a committed batch and applies what it means (metrics, policy); false when shutting down first.
async fn settle(
    hub: &Arc<Hub>,
    done: Held,
    written: Result<Result<Written, StoreError>, tokio::task::JoinError>,
    lost: &CancellationToken,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let (stats, finished, heartbeats) = written.map_err(|e| anyhow::anyhow!("the batch writer failed: {e}"))??;
    hub.db_up(true);
    let last = done.batch.last().expect("a batch has at least one delivery");
    // An ack on a connection that died may never return: the session's loss ends the wait, and the batch
    // comes back on the next session (its event ids deduplicate).
    tokio::select! {
        acked = last.acker.ack(true) => acked?,
        _ = lost.cancelled() => anyhow::bail!("the broker session was lost before a batch was acked"),
        _ = shutdown.cancelled() => return Ok(false),
    }
    drop(done.spans);
    hub.metrics.batch_seconds.observe(done.started.elapsed().as_secs_f64());
    hub.metrics.events_applied.inc_by(stats.applied);
    hub.metrics.events_ignored.inc_by(stats.ignored);
    hub.metrics.events_duplicate.inc_by(stats.duplicates);
    hub.metrics.heartbeats.inc_by(stats.heartbeats);
    hub.on_batch(&finished, &heartbeats).await;
    Ok(true)
}

/// The batch's events and heartbeats; a message that is neither can never be applied: it is counted and
/// goes (acked) with the batch.
fn parse(hub: &Hub, batch: &[ainern2d_queue::Delivery]) -> (Vec<Event>, Vec<Heartbeat>) {
    let mut events = Vec::with_capacity(batch.len());
    let mut heartbeats = Vec::new();
    for d in batch {
        let parsed = if d.routing_key.starts_with("worker.heartbeat.") {
            serde_json::from_slice::<Heartbeat>(&d.message.body).map(|h| heartbeats.push(h))
        } else {
            serde_json::from_slice::<Event>(&d.message.body).map(|e| events.push(e))
        };
        if let Err(e) = parsed {
            hub.metrics.malformed.inc();
            tracing::warn!(routing_key = %d.routing_key, "dropping a malformed event: {e}");
        }
    }
    (events, heartbeats)
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
