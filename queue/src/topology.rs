//! The job topology of the contract (`ainern2d_contract::topology`), declared through this boundary. The
//! worker and the hub both declare it, with the same arguments, so a job published before any worker has
//! started is kept by its queue instead of being dropped unrouted. Declarations are idempotent: every
//! program runs them at every (re)connect.

use ainern2d_contract::JobKind;
use ainern2d_contract::topology::{MAX_PRIORITY, Topology};

use crate::{ExchangeKind, QueueSpec, Result, Session};

/// The queue jobs of `kind` are published to: priorities, and whatever the broker itself rejects (a
/// message nacked without requeue) dead-lettered to the DLQ.
pub fn job_queue(topo: &Topology, kind: JobKind) -> QueueSpec {
    QueueSpec {
        max_priority: Some(MAX_PRIORITY),
        dead_letter_exchange: Some(topo.dead_letter_exchange()),
        ..QueueSpec::durable(topo.job_queue(kind))
    }
}

/// Retry queue `level` of `kind`: holds a copy for `delay_ms`, then dead-letters it back to the job queue —
/// at least once (`durable_dead_letters`): on a classic queue a broker crash just after the move could lose
/// the job (chaos round `0xcfd24ad0d292d207`).
pub fn retry_queue(topo: &Topology, kind: JobKind, level: usize, delay_ms: u64) -> QueueSpec {
    QueueSpec {
        message_ttl_ms: Some(delay_ms),
        durable_dead_letters: true,
        dead_letter_exchange: Some(String::new()),
        dead_letter_routing_key: Some(topo.job_queue(kind)),
        ..QueueSpec::durable(topo.retry_queue(kind, level))
    }
}

/// The exchanges (events, control, dead letters), the dead-letter queue, and the job queue of every kind
/// in `kinds`: what a publisher of jobs needs.
pub async fn declare_jobs(session: &dyn Session, topo: &Topology, kinds: &[JobKind]) -> Result<()> {
    session.declare_exchange(&topo.events_exchange(), ExchangeKind::Topic).await?;
    session.declare_exchange(&topo.control_exchange(), ExchangeKind::Topic).await?;
    session.declare_exchange(&topo.dead_letter_exchange(), ExchangeKind::Fanout).await?;
    session.declare_queue(&QueueSpec::durable(topo.dead_letter_queue())).await?;
    session.bind(&topo.dead_letter_queue(), &topo.dead_letter_exchange(), "").await?;
    for kind in kinds {
        session.declare_queue(&job_queue(topo, *kind)).await?;
    }
    Ok(())
}

/// `declare_jobs` plus the retry queues, one per delay: what a worker needs.
pub async fn declare_worker(
    session: &dyn Session,
    topo: &Topology,
    kinds: &[JobKind],
    retry_delays_ms: &[u64],
) -> Result<()> {
    declare_jobs(session, topo, kinds).await?;
    for kind in kinds {
        for (level, delay) in retry_delays_ms.iter().enumerate() {
            session.declare_queue(&retry_queue(topo, *kind, level, *delay)).await?;
        }
    }
    Ok(())
}
