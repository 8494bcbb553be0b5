//! The daemon's supervisor: connect (with backoff), declare the topology, consume every served kind, and
//! on SIGTERM stop taking deliveries at once, let in-flight jobs finish within the grace period and return
//! the rest to the queue. A lost connection is re-established; a broker-side consumer cancel is noticed and
//! the consumer re-subscribes; a consumer's prefetch follows the inference slots in force.
//!
//! Jobs outlive the session that delivered them: when the connection is lost, a job minutes from done
//! finishes and stores its outputs (keys are deterministic), so its redelivery is re-announced, not re-run.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ainern2d_contract::{JobKind, WorkerState};
use ainern2d_queue::Session;
use backon::BackoffBuilder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Shared;
use crate::broker;
use crate::job::{SessionCtx, handle};

enum SessionEnd {
    Shutdown,
    Lost(String),
}

pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Every job of every session: the drain waits for all of them, and the abort stops all of them.
    let jobs = TaskTracker::new();
    let abort = CancellationToken::new();
    let max_backoff = Duration::from_millis(shared.config.broker.reconnect_max_ms);
    let policy = backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(max_backoff)
        .with_jitter()
        .without_max_times();
    let mut delays = policy.build();
    let mut first = true;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let name = format!("ainern2d-worker {}", shared.config.worker_id);
        let connected = tokio::select! {
            c = shared.broker.connect(&name) => c,
            _ = shutdown.cancelled() => break,
        };
        let session = match connected {
            Ok(session) => session,
            Err(e) => {
                let backoff = delays.next().unwrap_or(max_backoff);
                tracing::warn!("broker connection failed: {e}; retrying in {backoff:?}");
                tokio::select! { _ = tokio::time::sleep(backoff) => {}, _ = shutdown.cancelled() => break }
                continue;
            }
        };
        if !first {
            shared.metrics.reconnects.inc();
        }
        first = false;
        let started = Instant::now();
        match run_session(&shared, session, &shutdown, &jobs, &abort).await {
            SessionEnd::Shutdown => break,
            SessionEnd::Lost(reason) => {
                // A session that lived a while was a success: start the backoff over.
                if started.elapsed() > Duration::from_secs(30) {
                    delays = policy.build();
                }
                let backoff = delays.next().unwrap_or(max_backoff);
                tracing::warn!("broker session lost: {reason}; reconnecting in {backoff:?}");
                tokio::select! { _ = tokio::time::sleep(backoff) => {}, _ = shutdown.cancelled() => break }
            }
        }
    }
    shared.set_state(WorkerState::Stopping);
    tracing::info!("worker stopped");
    Ok(())
}

async fn run_session(
    shared: &Arc<Shared>,
    session: Arc<dyn Session>,
    shutdown: &CancellationToken,
    jobs: &TaskTracker,
    abort: &CancellationToken,
) -> SessionEnd {
    let declared = broker::declare_topology(
        session.as_ref(),
        &shared.topology,
        &shared.config.jobs.kinds,
        &shared.config.jobs.retry_delays_ms,
    )
    .await;
    if let Err(e) = declared {
        ainern2d_queue::close(session.as_ref()).await;
        return SessionEnd::Lost(format!("setting up the session failed: {e}"));
    }
    // Before the worker reports ready: a command sent to a ready worker must find its queue.
    let control_subscription = match crate::control::subscribe(shared, &session).await {
        Ok(s) => s,
        Err(e) => {
            ainern2d_queue::close(session.as_ref()).await;
            return SessionEnd::Lost(format!("subscribing to control commands failed: {e}"));
        }
    };
    let publisher = session.clone();
    // Fired by the broker session itself (connection error) or by any task of ours that finds it unusable.
    let lost = session.lost().child_token();
    let lost_reason: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let stop_consuming = CancellationToken::new();
    let ctx = SessionCtx {
        publisher: publisher.clone(),
        abort: abort.clone(),
        lost: lost.clone(),
        lost_reason: lost_reason.clone(),
    };
    let consumers = TaskTracker::new();

    for kind in shared.config.jobs.kinds.clone() {
        consumers.spawn(consume(
            shared.clone(),
            session.clone(),
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
    let control = {
        let (lost, lost_reason) = (lost.clone(), lost_reason.clone());
        let subscription = control_subscription;
        tokio::spawn(crate::control::run(shared.clone(), session.clone(), subscription, jobs.clone(), move |why| {
            let _ = lost_reason.set(why);
            lost.cancel();
        }))
    };
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
                abort.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(10), jobs.wait()).await;
            }
            shared.set_state(WorkerState::Drained);
            // The exit must not wait on a broker that does not answer: the last heartbeat is a courtesy.
            if tokio::time::timeout(Duration::from_secs(2), crate::heartbeat::send(shared, &publisher)).await.is_err() {
                tracing::warn!("the drained heartbeat was not sent within 2 s");
            }
            SessionEnd::Shutdown
        }
        _ = lost.cancelled() => {
            // The jobs go on (see the module doc); only this session's consumers stop.
            stop_consuming.cancel();
            consumers.close();
            consumers.wait().await;
            let reason = lost_reason.get().cloned().or_else(|| session.lost_reason());
            SessionEnd::Lost(reason.unwrap_or_else(|| "connection lost".into()))
        }
    };
    shared.broker_up(false);
    heartbeat.abort();
    control.abort();
    // Unsettled deliveries go back to their queues when the connection drops, answered close or not.
    if tokio::time::timeout(Duration::from_secs(5), session.close()).await.is_err() {
        tracing::warn!("the broker did not answer the session's close within 5 s; dropping the connection");
    } else {
        tracing::debug!("broker session closed");
    }
    end
}

#[allow(clippy::too_many_arguments)]
async fn consume(
    shared: Arc<Shared>,
    session: Arc<dyn Session>,
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
    // Prefetch = slots in force + the upload overlap - jobs held by a lease (their deliveries are settled,
    // but they are still this worker's): the broker never hands this worker more than it can start,
    // before or after a downgrade lowers the slots. 0: no subscription until that changes.
    let overlap = shared.config.jobs.upload_overlap;
    let prefetch_of =
        |slots: u32, leased: u32| (slots + overlap).saturating_sub(leased).min(u32::from(u16::MAX)) as u16;
    let slots = &shared.slots[&kind];
    let mut limit = slots.watch_limit();
    let mut leased = slots.watch_leased();
    let queue = shared.topology.job_queue(kind);
    let mut generation = 0u32;
    let mut accepting = shared.accepting.subscribe();
    let mut backend_up = shared.backends.watch_up(kind);
    loop {
        // Cordoned or draining, the kind's server (ComfyUI) not answering, or every place taken by leased
        // jobs: hold no subscription until that changes.
        let prefetch = loop {
            let (held, version) = *leased.borrow_and_update();
            let prefetch = prefetch_of(*limit.borrow_and_update(), held);
            if *accepting.borrow_and_update() && *backend_up.borrow_and_update() && prefetch > 0 {
                break prefetch;
            }
            slots.reflect(version);
            tokio::select! {
                _ = accepting.changed() => {}
                Ok(()) = backend_up.changed() => {}
                Ok(()) = leased.changed() => {}
                Ok(()) = limit.changed() => {}
                _ = stop.cancelled() => return,
                _ = lost.cancelled() => return,
            }
        };
        let tag = format!("{}.{kind}.{generation}", shared.config.worker_id);
        generation += 1;
        let mut subscription = match session.subscribe(&queue, &tag, prefetch).await {
            Ok(s) => s,
            Err(e) => return fail(format!("subscribing to {queue}: {e}")),
        };
        slots.reflect(leased.borrow().1);
        let cancelled_by_broker = loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = subscription.cancel().await;
                    return;
                }
                _ = lost.cancelled() => return,
                _ = accepting.changed() => {
                    if !*accepting.borrow() {
                        let _ = subscription.cancel().await;
                        break false;
                    }
                }
                Ok(()) = backend_up.changed() => {
                    if !*backend_up.borrow() {
                        let _ = subscription.cancel().await;
                        break false;
                    }
                }
                Ok(()) = changed(&mut limit, &mut leased) => {
                    let (held, version) = *leased.borrow_and_update();
                    let prefetch = prefetch_of(*limit.borrow_and_update(), held);
                    if prefetch == 0 {
                        let _ = subscription.cancel().await;
                        slots.reflect(version);
                        tracing::info!(%queue, leased = held, "every place is held by a leased job; not consuming");
                        break false;
                    }
                    if let Err(e) = subscription.set_prefetch(prefetch).await {
                        return fail(format!("changing the prefetch of {queue} to {prefetch}: {e}"));
                    }
                    slots.reflect(version);
                    tracing::info!(%queue, prefetch, leased = held, "prefetch follows the slots in force and the leased jobs");
                }
                next = subscription.next() => match next {
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

/// Either watch changed (the slots in force or the leased jobs).
async fn changed(
    limit: &mut tokio::sync::watch::Receiver<u32>,
    leased: &mut tokio::sync::watch::Receiver<(u32, u64)>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    tokio::select! {
        r = limit.changed() => r,
        r = leased.changed() => r,
    }
}
