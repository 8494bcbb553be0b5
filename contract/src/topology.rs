//! Names and shapes of the RabbitMQ topology. Programs declare it themselves, idempotently, from these.
//!
//! | name | type | purpose |
//! |---|---|---|
//! | `<p>.jobs.<kind>` | durable classic queue, `x-max-priority` 9 | jobs of one kind |
//! | `<p>.retry.<kind>.<n>.quorum` | quorum queue, `x-message-ttl` = delay n, dead-letters at least once to `<p>.jobs.<kind>` | delayed retries |
//! | `<p>.dead` | durable queue bound to `<p>.dlx` | dead letters, with `x-ainern2d-reason` |
//! | `<p>.dlx` | fanout exchange | dead-letter exchange of the job queues |
//! | `<p>.events` | topic exchange | `job.<kind>.<status>`, `worker.heartbeat.<id>` |
//! | `<p>.control` | topic exchange | `worker.<id>`, `worker.all` |
//! | `<p>.lease.<worker>.<uuid>` | quorum queue (at-least-once dead-lettering), `x-message-ttl` = lease TTL, `x-expires` 3 × TTL, dead-letters to `<p>.jobs.<kind>` | a copy of a long job its worker holds (renewed as a new queue every third of the TTL) |

use crate::job::JobKind;

/// Header carrying the attempt number (1 on the first delivery).
pub const ATTEMPT_HEADER: &str = "x-ainern2d-attempt";
/// Header on dead letters: why the message was dead-lettered.
pub const REASON_HEADER: &str = "x-ainern2d-reason";
/// Header on dead letters: the error code.
pub const ERROR_CODE_HEADER: &str = "x-ainern2d-error-code";
/// Header on a job message that may have been published before (an outbox relay, the local mode's
/// restart): the worker looks for stored outputs before running it, as for a redelivery.
pub const REPLAY_HEADER: &str = "x-ainern2d-replay";
/// Header on the copy of a job a worker holds by a lease (the id of that worker): when the copy comes
/// back to its job queue, its worker died or lost the broker, and the job may have run (or be running).
pub const LEASE_HEADER: &str = "x-ainern2d-lease";
/// Header on the copy of a job given back because the replay check could not reach the store: how many
/// of its checks could not decide whether the job had already run. Its attempt is unchanged.
pub const UNDECIDED_HEADER: &str = "x-ainern2d-undecided";
/// Highest job priority (classic queues only on RabbitMQ 3.10).
pub const MAX_PRIORITY: u8 = 9;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Topology { prefix: prefix.into() }
    }

    pub fn job_queue(&self, kind: JobKind) -> String {
        format!("{}.jobs.{}", self.prefix, kind)
    }

    /// A quorum queue (at-least-once dead-lettering), hence the suffix: the classic `<p>.retry.<kind>.<n>` of
    /// earlier versions could not be redeclared with its new arguments.
    pub fn retry_queue(&self, kind: JobKind, level: usize) -> String {
        format!("{}.retry.{}.{}.quorum", self.prefix, kind, level)
    }

    /// A fresh lease queue of `worker_id` (`unique`: never reused, so no worker can touch another's copy).
    pub fn lease_queue(&self, worker_id: &str, unique: &str) -> String {
        format!("{}.lease.{worker_id}.{unique}", self.prefix)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.prefix)
    }

    pub fn heartbeat_routing_key(worker_id: &str) -> String {
        format!("worker.heartbeat.{worker_id}")
    }
}

/// Which retry queue (delay level) a job that failed on `attempt` goes to: level `attempt - 1`, capped at the
/// last configured delay.
pub fn retry_level(attempt: u32, levels: usize) -> usize {
    (attempt.saturating_sub(1) as usize).min(levels.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_levels_cap_at_the_last_delay() {
        assert_eq!(retry_level(1, 3), 0);
        assert_eq!(retry_level(2, 3), 1);
        assert_eq!(retry_level(9, 3), 2);
    }

    #[test]
    fn names() {
        let t = Topology::new("ainern2d");
        assert_eq!(t.job_queue(JobKind::Lipsync), "ainern2d.jobs.lipsync");
        assert_eq!(t.retry_queue(JobKind::Video, 2), "ainern2d.retry.video.2.quorum");
    }
}
