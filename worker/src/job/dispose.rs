//! The last stage: the outcome's broker effects, in the order that loses nothing, and what happens when
//! they fail.
//!
//! - success, failure, cancel: the copy (dead letter) if any, then the outcome event, both confirmed, then
//!   the ack;
//! - retry: the `retrying` event, then the retry copy, then the ack — so a failed event never leaves a
//!   confirmed copy behind whose original is redelivered and run again (two attempt chains);
//! - an undecided replay check (the store did not answer): no event, since whether the job already
//!   succeeded is unknown; the copy to a retry queue (same attempt, checks counted), then the ack;
//! - a failed publish or settle brings the delivery back at once (nack with requeue; if even that fails,
//!   the session ends and the broker requeues it) and shows in readiness until an outcome goes through;
//! - a lost session: nothing can be settled; the broker has requeued the delivery, and its redelivery finds
//!   the outputs this run stored.

use std::collections::BTreeMap;

use ainern2d_contract::topology::{ATTEMPT_HEADER, ERROR_CODE_HEADER, REASON_HEADER, UNDECIDED_HEADER};
use ainern2d_contract::{ErrorCode, ErrorInfo, EventStatus, Job};
use ainern2d_queue::{Delivery, HeaderValue};

use super::{Done, SessionCtx, Stop};
use crate::Shared;
use crate::broker::BrokerError;
use crate::events::Emitter;
use crate::lifecycle::{Disposition, Interruption, Outcome, dispose};
use crate::metrics::Metrics;

/// Consecutive failed outcomes after which the session is replaced (a channel that nacks everything).
const FAILURES_BEFORE_RECONNECT: u32 = 3;

pub(super) async fn finish(
    shared: &Shared,
    ctx: &SessionCtx,
    emitter: &Emitter,
    job: &Job,
    attempt: u32,
    delivery: &Delivery,
    result: Result<Done, Stop>,
) {
    let kind = job.kind();
    let mut undecided = None;
    let (outcome, failure, done) = match result {
        Ok(done) => (Outcome::Succeeded, None, Some(done)),
        Err(Stop::Undecided(why)) => {
            let checks = super::replay::undecided(delivery) + 1;
            undecided = Some(why);
            (Outcome::Undecided { checks }, None, None)
        }
        Err(Stop::Interrupted(why)) => (Outcome::Interrupted(why), None, None),
        Err(Stop::Cancelled) => (Outcome::Interrupted(Interruption::Requested), None, None),
        Err(Stop::Failed(f)) => (Outcome::Failed { code: f.code, retryable: f.retryable }, Some(f), None),
    };
    let mut disposition =
        dispose(&outcome, attempt, shared.config.jobs.max_attempts, shared.config.jobs.retry_delays_ms.len());
    if ctx.lost.is_cancelled() {
        tracing::warn!(job_id = %job.job_id, "the broker session was lost before the outcome could be reported; \
            the broker redelivers the job, and the redelivery finds what this run stored");
        disposition = Disposition::Abandon;
    }
    let outcome_label = match &disposition {
        Disposition::Finish { status } => status.as_str(),
        Disposition::Retry { .. } => "retried",
        Disposition::DeadLetter { status, .. } => status.as_str(),
        Disposition::Recheck { .. } => "rechecked",
        Disposition::Requeue => "requeued",
        Disposition::Abandon => "abandoned",
    };
    if let Some(f) = &failure {
        tracing::warn!(job_id = %job.job_id, %kind, attempt, code = f.code.as_str(), retryable = f.retryable, "job failed: {}", f.message);
    }
    let result: Result<(), BrokerError> = async {
        match disposition {
            Disposition::Finish { status } => {
                let Done { outputs, execution, timings } =
                    done.unwrap_or(Done { outputs: Vec::new(), execution: None, timings: BTreeMap::new() });
                emitter.outcome(status, outputs, execution, None, timings).await?;
                delivery.acker.ack(false).await
            }
            Disposition::Retry { next_attempt, level } => {
                let f = failure.expect("a retry follows a failure");
                let error = ErrorInfo {
                    code: f.code,
                    message: format!("{} (attempt {attempt}, retrying as attempt {next_attempt})", f.message),
                    retryable: true,
                    field: f.field,
                };
                emitter.outcome(EventStatus::Retrying, Vec::new(), None, Some(error), BTreeMap::new()).await?;
                // The copy keeps the job's headers and priority; only the attempt changes. Mandatory: a
                // retry queue that is not there must fail the publish, not swallow the job.
                let (copy, _) = super::copy::copy_of(&delivery.message);
                let copy = copy.with_header(ATTEMPT_HEADER, HeaderValue::Int(next_attempt.into()));
                ctx.publisher.publish("", &shared.topology.retry_queue(kind, level), &copy).await?;
                shared.metrics.retries.get_or_create(&Metrics::kind(kind.as_str())).inc();
                delivery.acker.ack(false).await
            }
            Disposition::DeadLetter { status, code } => {
                let f = failure.expect("a dead letter follows a failure");
                let message = if code == ErrorCode::RetriesExhausted {
                    format!("gave up after {attempt} attempts: {}", f.message)
                } else {
                    f.message
                };
                dead_letter(shared, ctx, delivery, attempt, code, &message).await?;
                let error = ErrorInfo { code, message, retryable: false, field: f.field };
                emitter.outcome(status, Vec::new(), None, Some(error), BTreeMap::new()).await?;
                delivery.acker.ack(false).await
            }
            Disposition::Recheck { checks, level } => {
                let why = undecided.as_deref().unwrap_or_default();
                tracing::warn!(job_id = %job.job_id, %kind, attempt, checks, "{why}; checking again later (no outcome \
                    is reported while it is unknown whether the job already ran)");
                let (copy, _) = super::copy::copy_of(&delivery.message);
                let copy = copy
                    .with_header(ATTEMPT_HEADER, HeaderValue::Int(attempt.into()))
                    .with_header(UNDECIDED_HEADER, HeaderValue::Int(checks.into()));
                ctx.publisher.publish("", &shared.topology.retry_queue(kind, level), &copy).await?;
                delivery.acker.ack(false).await
            }
            Disposition::Requeue => delivery.acker.nack(true).await,
            Disposition::Abandon => Ok(()),
        }
    }
    .await;
    match result {
        Ok(()) => {
            if !ctx.lost.is_cancelled() {
                shared.outcome_published();
            }
            shared.metrics.outcome(kind.as_str(), outcome_label);
        }
        Err(e) => recover(shared, ctx, delivery, &job.job_id, e).await,
    }
}

/// An outcome could not be reported: bring the delivery back now rather than when the broker's consumer
/// timeout fires, and let readiness say so. The redelivery finds the stored outputs (re-announced, same
/// event id) or runs the job again.
pub(super) async fn recover(shared: &Shared, ctx: &SessionCtx, delivery: &Delivery, job_id: &str, e: BrokerError) {
    let failures = shared.outcome_failed(&e);
    if matches!(e, BrokerError::Unroutable(_)) {
        shared.metrics.unroutable.inc();
    }
    tracing::warn!(%job_id, error = %e, failures, "could not report the outcome; returning the job to its queue");
    if ctx.lost.is_cancelled() {
        return;
    }
    match delivery.acker.nack(true).await {
        Ok(()) if failures < FAILURES_BEFORE_RECONNECT => {}
        Ok(()) => ctx.end(format!("{failures} outcomes in a row could not be reported (last: {e})")),
        Err(nack) => ctx.end(format!("could not return job {job_id} to its queue ({nack}) after: {e}")),
    }
}

/// Gives back a delivery that arrived after a cordon or drain, untouched; if that cannot be sent, the
/// session ends so the broker requeues it.
pub(super) async fn give_back(ctx: &SessionCtx, delivery: &Delivery) {
    if let Err(e) = delivery.acker.nack(true).await {
        ctx.end(format!("could not give a delivery back to its queue: {e}"));
    }
}

/// Publishes the dead-letter copy (confirmed, mandatory, headers too large to copy left out) with why it died.
pub(super) async fn dead_letter(
    shared: &Shared,
    ctx: &SessionCtx,
    delivery: &Delivery,
    attempt: u32,
    code: ErrorCode,
    reason: &str,
) -> Result<(), BrokerError> {
    let (copy, dropped) = super::copy::copy_of(&delivery.message);
    let mut copy = copy
        .with_header(REASON_HEADER, HeaderValue::Text(format!("{reason}{}", super::copy::dropped_note(dropped))))
        .with_header(ERROR_CODE_HEADER, HeaderValue::Text(code.as_str().to_string()))
        .with_header(ATTEMPT_HEADER, HeaderValue::Int(attempt.into()));
    copy.content_type = Some("application/json".into());
    ctx.publisher.publish(&shared.topology.dead_letter_exchange(), "", &copy).await
}
