//! The first stage: a delivery that arrived after a cordon or drain goes back untouched; the body is
//! parsed and validated against the contract and the worker's bucket allowlist; a message that is not a
//! valid job is dead-lettered at once with a `failed` event naming the problem.

use std::collections::BTreeMap;

use ainern2d_contract::topology::{ATTEMPT_HEADER, ERROR_CODE_HEADER, REASON_HEADER};
use ainern2d_contract::{ContractError, ErrorInfo, EventStatus, Job, JobKind, WorkerState, parse_job};
use ainern2d_queue::{Delivery, HeaderValue, Message};
use sha2::{Digest, Sha256};

use super::SessionCtx;
use super::dispose;
use crate::Shared;
use crate::broker::BrokerError;
use crate::events::Emitter;

pub(super) enum Received {
    /// Prefetched before a cordon or drain took effect: another worker takes it.
    GiveBack,
    Invalid(ContractError),
    Job(Box<Job>),
}

pub(super) fn accept(shared: &Shared, kind: JobKind, delivery: &Delivery) -> Received {
    if matches!(shared.state(), WorkerState::Cordoned | WorkerState::Draining | WorkerState::Drained) {
        return Received::GiveBack;
    }
    let job = match parse_job(&delivery.message.body) {
        Ok(job) if job.kind() != kind => {
            Err(ContractError::field("kind", format!("a {} job was published to the {kind} queue", job.kind())))
        }
        // Checked before anything is looked up or stored: the worker's credentials reach more buckets
        // than a job may name.
        Ok(job) => match crate::store::check_output_bucket(&shared.config.store, job.output.bucket.as_deref()) {
            Ok(()) => Ok(job),
            Err(why) => Err(ContractError::field("output.bucket", why)),
        },
        other => other,
    };
    match job {
        Ok(job) => Received::Job(Box::new(job)),
        Err(err) => Received::Invalid(err),
    }
}

/// A readable, safe job id from an invalid body, or a stable id derived from the body, so a redelivery of
/// the same bad message reports under the same id.
fn job_id_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("job_id").and_then(|j| j.as_str()).map(str::to_owned))
        .filter(|id| {
            !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .unwrap_or_else(|| format!("invalid-{}", &hex::encode(Sha256::digest(body))[..16]))
}

/// The dead-letter copy of an invalid message: the message with the reason, the code and the attempt,
/// without its own headers when they are too large to copy (see [`super::copy`]).
fn dead_letter_copy(message: &Message, attempt: u32, err: &ContractError) -> Message {
    let (copy, dropped) = super::copy::copy_of(message);
    let mut copy = copy
        .with_header(REASON_HEADER, HeaderValue::Text(format!("{err}{}", super::copy::dropped_note(dropped))))
        .with_header(ERROR_CODE_HEADER, HeaderValue::Text(err.code.as_str().to_string()))
        .with_header(ATTEMPT_HEADER, HeaderValue::Int(attempt.into()));
    copy.content_type = Some("application/json".into());
    copy
}

/// Dead-letters a message that is not a valid job, with a `failed` event; when that fails the delivery
/// comes back (see `dispose::recover`).
pub(super) async fn reject_invalid(
    shared: &Shared,
    ctx: &SessionCtx,
    kind: JobKind,
    attempt: u32,
    delivery: &Delivery,
    err: ContractError,
) {
    let job_id = job_id_of(&delivery.message.body);
    tracing::warn!(%job_id, %kind, "invalid job message dead-lettered: {err}");
    let emitter = Emitter::new(
        ctx.publisher.clone(),
        shared.topology.events_exchange(),
        &job_id,
        Some(kind),
        attempt,
        &shared.config.worker_id,
    );
    let result: Result<(), BrokerError> = async {
        let copy = dead_letter_copy(&delivery.message, attempt, &err);
        ctx.publisher.publish(&shared.topology.dead_letter_exchange(), "", &copy).await?;
        let error = ErrorInfo { code: err.code, message: err.to_string(), retryable: false, field: err.field.clone() };
        emitter.outcome(EventStatus::Failed, Vec::new(), None, Some(error), BTreeMap::new()).await?;
        delivery.acker.ack(false).await
    }
    .await;
    match result {
        Ok(()) => {
            shared.outcome_published();
            shared.metrics.outcome(kind.as_str(), "invalid");
        }
        Err(e) => dispose::recover(shared, ctx, delivery, &job_id, e).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_messages_get_a_safe_stable_id() {
        assert_eq!(job_id_of(br#"{"job_id":"abc-1","kind":7}"#), "abc-1");
        let unsafe_id = job_id_of(br#"{"job_id":"../../etc"}"#);
        assert!(unsafe_id.starts_with("invalid-"), "{unsafe_id}");
        assert_eq!(unsafe_id, job_id_of(br#"{"job_id":"../../etc"}"#));
        assert_ne!(job_id_of(b"garbage"), job_id_of(b"other garbage"));
    }

    #[test]
    fn a_dead_letter_drops_headers_too_large_to_copy() {
        let err = ContractError::field("params.width", "must be even");
        let small = Message::json(&b"{}"[..]).with_header("x-tenant", HeaderValue::Text("a".into()));
        let copy = dead_letter_copy(&small, 2, &err);
        assert_eq!(copy.headers["x-tenant"], HeaderValue::Text("a".into()));
        assert_eq!(copy.headers[ATTEMPT_HEADER], HeaderValue::Int(2));
        // 48 KiB of bytes that are not UTF-8 arrive as 144 KiB of replacement characters.
        let big = Message::json(&b"{}"[..])
            .with_header("x-bytes", HeaderValue::Text(String::from_utf8_lossy(&[0xff; 48 * 1024]).into_owned()));
        let copy = dead_letter_copy(&big, 1, &err);
        assert!(!copy.headers.contains_key("x-bytes"));
        let reason = copy.headers[REASON_HEADER].as_text().unwrap();
        assert!(reason.starts_with("field `params.width`: must be even (its headers, "), "{reason}");
        assert_eq!(copy.headers[ERROR_CODE_HEADER], HeaderValue::Text("invalid_field".into()));
    }
}
