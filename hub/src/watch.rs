//! Periodic checks: the backlog of every job queue (for the backlog rule and the autoscaling gauges) and
//! workers whose heartbeats stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ainern2d_contract::WorkerState;
use ainern2d_contract::topology::Topology;
use tokio_util::sync::CancellationToken;

use crate::Hub;
use crate::metrics::{KindLabel, StateLabel};

/// Samples every job queue's backlog (ready, by passive declare, plus in flight, from the jobs table) and the
/// replicas serving each kind, for the backlog rule and the autoscaling gauges.
pub async fn backlog(hub: Arc<Hub>, shutdown: CancellationToken) {
    let topo = Topology::new(hub.config.broker.prefix.clone());
    loop {
        if let Err(e) = sample_backlog(&hub, &topo).await {
            tracing::debug!("backlog sample skipped: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(hub.config.alerts.sample_interval_ms)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn sample_backlog(hub: &Hub, topo: &Topology) -> anyhow::Result<()> {
    // Depths are read on the publishing session: the ingestion session only consumes.
    let session = hub.publisher.session().ok_or(crate::publisher::PublishError::NotConnected)?;
    let now = chrono::Utc::now();
    for kind in ainern2d_contract::JobKind::ALL {
        let Some(stats) = session.queue_stats(&topo.job_queue(kind)).await? else { continue };
        let in_flight = hub.store.in_flight(kind.as_str()).await?;
        let replicas = hub.store.replicas(kind.as_str()).await?;
        let backlog = u64::from(stats.ready) + in_flight;
        let label = KindLabel { kind: kind.as_str().into() };
        hub.metrics.backlog.get_or_create(&label).set(backlog as i64);
        hub.metrics.queue_ready.get_or_create(&label).set(i64::from(stats.ready));
        hub.metrics.queue_consumers.get_or_create(&label).set(i64::from(stats.consumers));
        let decision = {
            let mut policy = hub.policy.lock().await;
            let d = policy.backlog_sample(now, kind.as_str(), backlog, replicas);
            hub.metrics.desired_replicas.get_or_create(&label).set(policy.desired_replicas(
                kind.as_str(),
                backlog,
                replicas,
            ) as i64);
            d
        };
        if let Some(d) = decision {
            hub.record(now, d).await;
        }
    }
    if let Some(dead) = session.queue_depth(&topo.dead_letter_queue()).await? {
        hub.metrics.dead_letters.set(i64::from(dead));
    }
    // Every state is written each time, so one nobody is in any more reads 0. A lost worker is `lost`
    // whatever its last heartbeat said.
    let mut states: BTreeMap<String, i64> =
        WorkerState::ALL.iter().map(|s| s.as_str()).chain(["lost"]).map(|s| (s.to_string(), 0)).collect();
    for w in hub.store.list_workers().await? {
        *states.entry(if w.lost { "lost".into() } else { w.state }).or_default() += 1;
    }
    for (state, n) in states {
        hub.metrics.workers.get_or_create(&StateLabel { state }).set(n);
    }
    Ok(())
}

/// Marks workers lost when their heartbeat is older than `registry.heartbeat_stale_s`.
pub async fn registry(hub: Arc<Hub>, shutdown: CancellationToken) {
    let stale = chrono::Duration::seconds(hub.config.registry.heartbeat_stale_s as i64);
    loop {
        match hub.store.mark_lost(chrono::Utc::now() - stale).await {
            Ok(lost) => {
                for worker in lost {
                    tracing::warn!(%worker, "worker lost: no heartbeat for {} s", stale.num_seconds());
                    hub.metrics.workers_lost.inc();
                }
            }
            Err(e) => tracing::warn!("registry check failed: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(hub.config.registry.check_interval_ms)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
