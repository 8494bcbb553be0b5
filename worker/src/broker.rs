//! The worker's use of the job-queue boundary (`ainern2d-queue`): declaring the topology idempotently and
//! the message shapes it publishes. Which broker sits behind the boundary (RabbitMQ, or the in-process one
//! of the local mode) is decided once, in `Shared::new`.

use std::sync::Arc;

use ainern2d_contract::JobKind;
use ainern2d_contract::topology::Topology;
pub use ainern2d_queue::QueueError as BrokerError;
use ainern2d_queue::Session;

/// The session every publish of a job goes through (confirmed unless said otherwise).
pub type Publisher = Arc<dyn Session>;

/// Declares exchanges and queues for `kinds`, the retry queues included. Safe to run from every process at
/// every start: declarations with the same arguments are no-ops.
pub async fn declare_topology(
    session: &dyn Session,
    topo: &Topology,
    kinds: &[JobKind],
    retry_delays_ms: &[u64],
) -> Result<(), BrokerError> {
    ainern2d_queue::topology::declare_worker(session, topo, kinds, retry_delays_ms).await
}
