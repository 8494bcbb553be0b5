//! Periodic checks: the backlog of every job queue (for the backlog rule and the autoscaling gauges) and
//! workers whose heartbeats stopped.

use std::sync::Arc;
use std::time::Duration;

use ainern2d_contract::topology::Topology;
use tokio_util::sync::CancellationToken;

use crate::Hub;
use crate::metrics::KindLabel;

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
        let Some(ready) = session.queue_depth(&topo.job_queue(kind)).await? else { continue };
        let in_flight = hub.store.in_flight(kind.as_str()).await?;
        let replicas = hub.store.replicas(kind.as_str()).await?;
        let backlog = u64::from(ready) + in_flight;
        let label = KindLabel { kind: kind.as_str().into() };
        hub.metrics.backlog.get_or_create(&label).set(backlog as i64);
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
