//! The daemon's supervisor: connect (with backoff), declare the topology, consume every served kind, and
//! on SIGTERM stop taking deliveries at once, let in-flight jobs finish within the grace period and return
//! the rest to the queue. A lost connection is re-established; a broker-side consumer cancel is noticed and
//! the consumer re-subscribes.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ainern2d_contract::{JobKind, WorkerState};
use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Shared;
use crate::broker::{self, Publisher};
use crate::job::{SessionCtx, handle};
use crate::lifecycle::Interruption;

enum SessionEnd {
    Shutdown,
    Lost(String),
}

pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let max_backoff = Duration::from_millis(shared.config.broker.reconnect_max_ms);
    let mut backoff = Duration::from_millis(250);
    let mut first = true;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let name = format!("ainern2d-worker {}", shared.config.worker_id);
        let connected = tokio::select! {
            c = broker::connect(&shared.config.broker.url, &name) => c,
            _ = shutdown.cancelled() => break,
        };
        let conn = match connected {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("broker connection failed: {e}; retrying in {backoff:?}");
                tokio::select! { _ = tokio::time::sleep(backoff) => {}, _ = shutdown.cancelled() => break }
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
        };
        if !first {
            shared.metrics.reconnects.inc();
        }
        first = false;
        let started = Instant::now();
        match session(&shared, conn, &shutdown).await {
            SessionEnd::Shutdown => break,
            SessionEnd::Lost(reason) => {
                tracing::warn!("broker session lost: {reason}; reconnecting in {backoff:?}");
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(250);
                }
                tokio::select! { _ = tokio::time::sleep(backoff) => {}, _ = shutdown.cancelled() => break }
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
    shared.set_state(WorkerState::Stopping);
    tracing::info!("worker stopped");
    Ok(())
}

async fn session(shared: &Arc<Shared>, conn: Connection, shutdown: &CancellationToken) -> SessionEnd {
    let conn = Arc::new(conn);
    let setup = async {
        let publisher = Publisher::new(&conn).await?;
        broker::declare_topology(
            publisher.channel(),
            &shared.topology,
            &shared.config.jobs.kinds,
            &shared.config.jobs.retry_delays_ms,
        )
        .await?;
        Ok::<_, broker::BrokerError>(publisher)
    };
    let publisher = match setup.await {
        Ok(p) => p,
        Err(e) => return SessionEnd::Lost(format!("setting up the session failed: {e}")),
    };
    let lost = CancellationToken::new();
    let lost_reason: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let stop_consuming = CancellationToken::new();
    let ctx = SessionCtx {
        publisher: publisher.clone(),
        abort: CancellationToken::new(),
        abort_reason: Arc::new(OnceLock::new()),
    };
    let jobs = TaskTracker::new();
    let consumers = TaskTracker::new();

    {
        let (lost, lost_reason) = (lost.clone(), lost_reason.clone());
        let mut events = conn.events_listener();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let lapin::Event::Error(e) = event {
                    let _ = lost_reason.set(format!("connection error: {e}"));
                    lost.cancel();
                    break;
                }
            }
        });
    }
    for kind in shared.config.jobs.kinds.clone() {
        consumers.spawn(consume(
            shared.clone(),
            conn.clone(),
            kind,
            ctx.clone(),
            jobs.clone(),
            stop_consuming.clone(),
            lost.clone(),
            lost_reason.clone(),
        ));
    }
    shared.broker_up(true);
    if shared.state() == WorkerState::Starting {
        shared.set_state(WorkerState::Ready);
    }
    let heartbeat = tokio::spawn(crate::heartbeat::run(shared.clone(), publisher.clone(), lost.clone()));
    let control = tokio::spawn(crate::control::run(
        shared.clone(),
        conn.clone(),
        publisher.clone(),
        jobs.clone(),
        lost.clone(),
        lost_reason.clone(),
    ));
    tracing::info!(kinds = ?shared.config.jobs.kinds, "consuming");

    let end = tokio::select! {
        _ = shutdown.cancelled() => {
            shared.stopping.store(true, Ordering::Relaxed);
            // Stop new deliveries at once; prefetched-but-unstarted messages return to the queue when the
            // channel closes.
            shared.set_state(WorkerState::Draining);
            stop_consuming.cancel();
            consumers.close();
            consumers.wait().await;
            jobs.close();
            let grace = Duration::from_secs(shared.config.shutdown.grace_s);
            tracing::info!(in_flight = jobs.len(), ?grace, "draining in-flight jobs");
            if tokio::time::timeout(grace, jobs.wait()).await.is_err() {
                tracing::warn!(left = jobs.len(), "grace period over; returning the remaining jobs to the queue");
                let _ = ctx.abort_reason.set(Interruption::Shutdown);
                ctx.abort.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(10), jobs.wait()).await;
            }
            shared.set_state(WorkerState::Drained);
            crate::heartbeat::send(shared, &publisher).await;
            SessionEnd::Shutdown
        }
        _ = lost.cancelled() => {
            let _ = ctx.abort_reason.set(Interruption::ConnectionLost);
            ctx.abort.cancel();
            stop_consuming.cancel();
            jobs.close();
            let _ = tokio::time::timeout(Duration::from_secs(10), jobs.wait()).await;
            SessionEnd::Lost(lost_reason.get().cloned().unwrap_or_else(|| "connection lost".into()))
        }
    };
    shared.broker_up(false);
    heartbeat.abort();
    control.abort();
    let _ = conn.close(200, "worker stopping".into()).await;
    end
}

#[allow(clippy::too_many_arguments)]
async fn consume(
    shared: Arc<Shared>,
    conn: Arc<Connection>,
    kind: JobKind,
    ctx: SessionCtx,
    jobs: TaskTracker,
    stop: CancellationToken,
    lost: CancellationToken,
    lost_reason: Arc<OnceLock<String>>,
) {
    let fail = |why: String| {
        let _ = lost_reason.set(why);
        lost.cancel();
    };
    let channel = match conn.create_channel().await {
        Ok(c) => c,
        Err(e) => return fail(format!("opening the {kind} channel: {e}")),
    };
    // Prefetch = free slots + the upload overlap: the broker never hands this worker more than it can start.
    let prefetch = shared.config.slots(kind) + shared.config.jobs.upload_overlap;
    if let Err(e) = channel.basic_qos(prefetch.min(u16::MAX as u32) as u16, BasicQosOptions::default()).await {
        return fail(format!("setting prefetch on the {kind} channel: {e}"));
    }
    let queue = shared.topology.job_queue(kind);
    let mut generation = 0u32;
    let mut accepting = shared.accepting.subscribe();
    loop {
        // Cordoned or draining: hold no subscription until told otherwise.
        while !*accepting.borrow_and_update() {
            tokio::select! {
                _ = accepting.changed() => {}
                _ = stop.cancelled() => return,
                _ = lost.cancelled() => return,
            }
        }
        let tag = format!("{}.{kind}.{generation}", shared.config.worker_id);
        generation += 1;
        let mut consumer = match channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return fail(format!("subscribing to {queue}: {e}")),
        };
        let cancelled_by_broker = loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    return;
                }
                _ = lost.cancelled() => return,
                _ = accepting.changed() => {
                    if !*accepting.borrow() {
                        let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                        break false;
                    }
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        jobs.spawn(handle(shared.clone(), ctx.clone(), kind, delivery));
                    }
                    Some(Err(e)) => return fail(format!("consuming {queue}: {e}")),
                    None => break true,
                }
            }
        };
        if stop.is_cancelled() || lost.is_cancelled() || shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        if cancelled_by_broker {
            // The broker cancelled our consumer (queue deleted, consumer timeout, node maintenance):
            // subscribe again rather than going quiet. If the channel is gone too, basic_consume fails and
            // the session reconnects.
            shared.metrics.consumer_resubscribes.inc();
            tracing::warn!(%queue, "the broker cancelled the consumer; re-subscribing");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
