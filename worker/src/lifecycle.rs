//! The job lifecycle as a pure function: how a job's outcome turns into broker effects. The async shell in
//! `job/dispose.rs` performs them in the order that keeps "nothing lost, nothing twice": the dead-letter
//! copy, then the event (for a retry: the `retrying` event, then the retry copy), each confirmed, and only
//! then is the delivery acked.

use ainern2d_contract::{ErrorCode, EventStatus};

/// Why a job stopped without an outcome of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// Return the job to its queue: the shutdown's grace period ran out, or the worker was cordoned or
    /// drained while the job waited for a slot.
    Shutdown,
    /// The broker connection died: the broker redelivers the job by itself; nothing to do.
    ConnectionLost,
    /// An operator or the control plane cancelled the job.
    Requested,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded,
    Failed {
        code: ErrorCode,
        retryable: bool,
    },
    Interrupted(Interruption),
    /// The replay check could not reach the store, for the `checks`-th time for this job: whether it
    /// already ran is unknown.
    Undecided {
        checks: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Publish the terminal event `status`, then ack.
    Finish { status: EventStatus },
    /// Publish a `retrying` event, then a copy to retry queue `level` with attempt `next_attempt`, then ack.
    Retry { next_attempt: u32, level: usize },
    /// Publish a copy to the dead-letter queue, then the event `status` with error `code`, then ack.
    DeadLetter { status: EventStatus, code: ErrorCode },
    /// No event (no outcome is known): a copy to retry queue `level`, its attempt unchanged and its
    /// undecided checks counted (`checks`), then ack.
    Recheck { checks: u32, level: usize },
    /// Nack with requeue: the job goes back to its queue untouched.
    Requeue,
    /// Do nothing: the delivery is already void.
    Abandon,
}

pub fn dispose(outcome: &Outcome, attempt: u32, max_attempts: u32, retry_levels: usize) -> Disposition {
    match outcome {
        Outcome::Succeeded => Disposition::Finish { status: EventStatus::Succeeded },
        Outcome::Interrupted(Interruption::Requested) => Disposition::Finish { status: EventStatus::Cancelled },
        Outcome::Interrupted(Interruption::Shutdown) => Disposition::Requeue,
        Outcome::Interrupted(Interruption::ConnectionLost) => Disposition::Abandon,
        Outcome::Undecided { checks } => Disposition::Recheck {
            checks: *checks,
            level: ainern2d_contract::topology::retry_level(*checks, retry_levels),
        },
        Outcome::Failed { code, retryable: true } if attempt < max_attempts => {
            let _ = code;
            Disposition::Retry {
                next_attempt: attempt + 1,
                level: ainern2d_contract::topology::retry_level(attempt, retry_levels),
            }
        }
        Outcome::Failed { retryable: true, .. } => {
            Disposition::DeadLetter { status: EventStatus::DeadLettered, code: ErrorCode::RetriesExhausted }
        }
        Outcome::Failed { code, retryable: false } => {
            Disposition::DeadLetter { status: EventStatus::Failed, code: *code }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let fail = |retryable| Outcome::Failed { code: ErrorCode::PipelineFailed, retryable };
        let cases = [
            (Outcome::Succeeded, 1, Disposition::Finish { status: EventStatus::Succeeded }),
            (Outcome::Succeeded, 3, Disposition::Finish { status: EventStatus::Succeeded }),
            (fail(true), 1, Disposition::Retry { next_attempt: 2, level: 0 }),
            (fail(true), 2, Disposition::Retry { next_attempt: 3, level: 1 }),
            (
                fail(true),
                3,
                Disposition::DeadLetter { status: EventStatus::DeadLettered, code: ErrorCode::RetriesExhausted },
            ),
            (fail(false), 1, Disposition::DeadLetter { status: EventStatus::Failed, code: ErrorCode::PipelineFailed }),
            (Outcome::Interrupted(Interruption::Shutdown), 1, Disposition::Requeue),
            (Outcome::Interrupted(Interruption::ConnectionLost), 2, Disposition::Abandon),
            (Outcome::Interrupted(Interruption::Requested), 1, Disposition::Finish { status: EventStatus::Cancelled }),
            // Undecided checks climb the retry levels whatever the attempt, and never finish the job.
            (Outcome::Undecided { checks: 1 }, 3, Disposition::Recheck { checks: 1, level: 0 }),
            (Outcome::Undecided { checks: 2 }, 3, Disposition::Recheck { checks: 2, level: 1 }),
            (Outcome::Undecided { checks: 9 }, 1, Disposition::Recheck { checks: 9, level: 1 }),
        ];
        for (outcome, attempt, expected) in cases {
            assert_eq!(dispose(&outcome, attempt, 3, 2), expected, "{outcome:?} at attempt {attempt}");
        }
    }

    #[test]
    fn retry_level_caps_at_the_last_queue() {
        let fail = Outcome::Failed { code: ErrorCode::UploadFailed, retryable: true };
        assert_eq!(dispose(&fail, 7, 10, 2), Disposition::Retry { next_attempt: 8, level: 1 });
    }
}
