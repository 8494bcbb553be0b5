//! The worker's use of the job-queue boundary (`ainern2d-queue`): declaring the topology idempotently and
//! the message shapes it publishes. Which broker sits behind the boundary (RabbitMQ, or the in-process one
//! of the local mode) is decided once, in `Shared::new`.

use std::sync::Arc;

use ainern2d_contract::JobKind;
use ainern2d_contract::topology::{MAX_PRIORITY, Topology};
pub use ainern2d_queue::QueueError as BrokerError;
use ainern2d_queue::{ExchangeKind, QueueSpec, Session};

/// The session every publish of a job goes through (confirmed unless said otherwise).
pub type Publisher = Arc<dyn Session>;

/// Declares exchanges and queues for `kinds`. Safe to run from every process at every start: declarations
/// with the same arguments are no-ops.
pub async fn declare_topology(
    session: &dyn Session,
    topo: &Topology,
    kinds: &[JobKind],
    retry_delays_ms: &[u64],
) -> Result<(), BrokerError> {
    session.declare_exchange(&topo.events_exchange(), ExchangeKind::Topic).await?;
    session.declare_exchange(&topo.control_exchange(), ExchangeKind::Topic).await?;
    session.declare_exchange(&topo.dead_letter_exchange(), ExchangeKind::Fanout).await?;
    session.declare_queue(&QueueSpec::durable(topo.dead_letter_queue())).await?;
    session.bind(&topo.dead_letter_queue(), &topo.dead_letter_exchange(), "").await?;
    for kind in kinds {
        let jobs = topo.job_queue(*kind);
        session
            .declare_queue(&QueueSpec {
                max_priority: Some(MAX_PRIORITY),
                // What the broker itself rejects (e.g. a message nacked without requeue) still lands in the DLQ.
                dead_letter_exchange: Some(topo.dead_letter_exchange()),
                ..QueueSpec::durable(&jobs)
            })
            .await?;
        for (level, delay) in retry_delays_ms.iter().enumerate() {
            session
                .declare_queue(&QueueSpec {
                    message_ttl_ms: Some(*delay),
                    dead_letter_exchange: Some(String::new()),
                    dead_letter_routing_key: Some(jobs.clone()),
                    ..QueueSpec::durable(topo.retry_queue(*kind, level))
                })
                .await?;
        }
    }
    Ok(())
}
