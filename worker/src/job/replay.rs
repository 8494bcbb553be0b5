//! The replay check: every delivery — a job may have run before (a redelivery, a retry, a lapsed lease's
//! copy, a message republished by an outbox or by the local mode's restart, or a redelivery a crashed
//! broker did not flag) — looks for the outputs of an earlier complete run. When every
//! expected object is stored with a well-formed checksum, that success is re-announced (same event id)
//! instead of producing a second object or a conflicting event.

use std::time::Duration;

use ainern2d_contract::topology::{LEASE_HEADER, REPLAY_HEADER, UNDECIDED_HEADER};
use ainern2d_contract::{Job, OutputObject};
use ainern2d_queue::Delivery;

use crate::Shared;
use crate::store::StoreError;

/// Replay checks of one job that may fail to reach the store before an attempt counts as failed. While the
/// store cannot answer, whether the job already succeeded is unknown, so no outcome may be reported: the
/// job goes back (to a retry queue, its attempt unchanged) to be checked again. The bound keeps a job
/// whose check fails for a reason of its own from circling for ever: with the default delays (1, 10,
/// 60 s) that is about 27 minutes of checks.
pub(super) const UNDECIDED_LIMIT: u32 = 30;

/// Whether this delivery says it may follow an earlier run of the job. Only a hint: the check runs for
/// every delivery, because a broker that crashed can redeliver a job it had delivered without the
/// `redelivered` flag (chaos round `0x281b6795ba5ad10f`: a job ran again after its success was announced).
pub(super) fn may_have_run(delivery: &Delivery, attempt: u32) -> bool {
    let headers = &delivery.message.headers;
    delivery.redelivered
        || attempt > 1
        || [REPLAY_HEADER, LEASE_HEADER, UNDECIDED_HEADER].iter().any(|h| headers.contains_key(*h))
}

/// The replay checks of this job that could not decide so far (its copy's header).
pub(super) fn undecided(delivery: &Delivery) -> u32 {
    delivery.message.header_u32(UNDECIDED_HEADER).unwrap_or(0)
}

pub(super) async fn stored_outputs(
    shared: &Shared,
    job: &Job,
    delivery: &Delivery,
    attempt: u32,
) -> Result<Option<Vec<OutputObject>>, StoreError> {
    let flagged = may_have_run(delivery, attempt);
    let bucket = super::upload::bucket_of(shared, job);
    let ttl = Duration::from_secs(shared.config.store.presign_ttl_s);
    let mut outputs = Vec::new();
    for name in shared.pipelines[&job.kind()].output_names(job) {
        let key = job.output_key(&name);
        // A store that cannot answer is not a store without the outputs: running the job again would give
        // a job that already succeeded a second, perhaps different, outcome.
        let Some(object) = shared.store.head(bucket, &key).await? else { return Ok(None) };
        // Only a checksum this worker wrote is trusted; anything else means "run it again".
        let Some(sha256) = object.sha256.filter(|s| is_sha256(s)) else { return Ok(None) };
        let presigned_url = shared.store.presign_get(bucket, &key, ttl).await.ok();
        outputs.push(OutputObject {
            name,
            bucket: bucket.to_string(),
            key,
            size: object.size,
            sha256,
            content_type: object.content_type.unwrap_or_else(|| "application/octet-stream".into()),
            presigned_url,
        });
    }
    if !outputs.is_empty() && !flagged {
        tracing::warn!(job_id = %job.job_id, attempt, "a delivery the broker did not flag as a redelivery has stored outputs \
            (the broker may have restarted after a crash): re-announcing them instead of running the job again");
    }
    // A pipeline that names no outputs (noop) has nothing to find: run it.
    Ok((!outputs.is_empty()).then_some(outputs))
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}
