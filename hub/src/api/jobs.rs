//! `/v1/jobs`: submit (through the outbox), read, list, cancel, and stream a job's events.

use std::sync::Arc;
use std::time::Duration;

use ainern2d_contract::{ControlCommand, parse_job};
use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use serde::Deserialize;

use super::auth::{Access, redact_outputs};
use super::{ApiError, ApiResult, not_found};
use crate::Hub;
use crate::outbox::job_message;
use crate::status::JobStatus;
use crate::store::JobFilter;

/// `POST /v1/jobs`: validate, commit the outbox row, publish, mark published. 202 once the broker has
/// confirmed the job; 200 for a job already published under this id with the same spec; 503 when the
/// job could not be enqueued (it stays recorded and the outbox relay keeps trying).
pub(super) async fn submit(State(hub): State<Arc<Hub>>, body: axum::body::Bytes) -> ApiResult {
    let job = match parse_job(&body) {
        Ok(job) => job,
        Err(e) => {
            let body = serde_json::json!({"error": e.to_string(), "code": e.code, "field": e.field});
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response());
        }
    };
    let spec = serde_json::to_value(&job).expect("jobs serialize");
    let fresh = hub.store.insert_submitted(&job.job_id, job.kind().as_str(), &spec).await?;
    if !fresh {
        // Idempotent resubmission of the same job is fine; a different job under the same id is not.
        match hub.store.submission(&job.job_id).await? {
            Some(s) if s.spec == spec && s.published => {
                let body = serde_json::json!({"job_id": job.job_id, "duplicate": true});
                return Ok((StatusCode::OK, Json(body)).into_response());
            }
            // Recorded but never published (a crash, a broker outage): publish it now.
            Some(s) if s.spec == spec => {}
            _ => {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!("job `{}` exists with a different spec", job.job_id),
                ));
            }
        }
    }
    // While this request publishes, the relay leaves the job alone (and the other way round).
    let Some(_claim) = hub.outbox.claim(&job.job_id) else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "job `{}` is being published by the outbox relay right now; submit it again to learn the outcome",
                job.job_id
            ),
        ));
    };
    // A resubmitted job may have been published by a hub that died before marking it.
    let message = job_message(&job, body, !fresh);
    if let Err((queue, e)) = hub.publish_job(&job, &message).await {
        hub.metrics.submit_publish_failed.inc();
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "job `{}` is recorded but not enqueued on queue `{queue}`: {e}; the hub keeps retrying it, and \
                 submitting it again is safe",
                job.job_id
            ),
        ));
    }
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"job_id": job.job_id, "status": "queued"}))).into_response())
}

pub(super) async fn get(
    State(hub): State<Arc<Hub>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult {
    let mut job = hub.store.get_job(&id).await?.ok_or_else(|| not_found(&format!("job `{id}`")))?;
    if !access.sees_presigned_urls()
        && let Some(outputs) = job.outputs.as_mut()
    {
        redact_outputs(outputs);
    }
    Ok(Json(serde_json::to_value(job).expect("jobs serialize")).into_response())
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    kind: Option<String>,
    /// Keyset pagination: jobs with an id after this one.
    after: Option<String>,
    limit: Option<i64>,
    /// `id` (the default, pageable with `after`) or `recent`: the most recently changed first.
    order: Option<String>,
}

pub(super) async fn list(
    State(hub): State<Arc<Hub>>,
    Extension(access): Extension<Access>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError(StatusCode::BAD_REQUEST, "limit must be between 1 and 1000".into()));
    }
    let recent = match q.order.as_deref() {
        None | Some("id") => false,
        Some("recent") if q.after.is_none() => true,
        Some("recent") => {
            return Err(ApiError(StatusCode::BAD_REQUEST, "order=recent does not page: drop `after`".into()));
        }
        Some(other) => {
            return Err(ApiError(StatusCode::BAD_REQUEST, format!("order must be `id` or `recent` (got `{other}`)")));
        }
    };
    let filter = JobFilter { status: q.status, kind: q.kind, after: q.after, limit: limit as u32, recent };
    let mut jobs = hub.store.list_jobs(&filter).await?;
    if !access.sees_presigned_urls() {
        jobs.iter_mut().filter_map(|j| j.outputs.as_mut()).for_each(redact_outputs);
    }
    let next = (!recent && jobs.len() as i64 == limit).then(|| jobs.last().map(|j| j.job_id.clone())).flatten();
    Ok(Json(serde_json::json!({"jobs": jobs, "next_after": next})).into_response())
}

pub(super) async fn cancel(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> ApiResult {
    let status = hub.store.job_status(&id).await?;
    let status = status.ok_or_else(|| not_found(&format!("job `{id}`")))?;
    if JobStatus::parse(&status).is_some_and(|s| s.is_terminal()) {
        return Err(ApiError(StatusCode::CONFLICT, format!("job `{id}` has already ended ({status})")));
    }
    // Every worker hears it: the one running the job stops it; the one that receives it later skips it.
    hub.send_control("worker.all", ControlCommand::Cancel { job_id: id.clone() })
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("could not send the cancel: {e}")))?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"job_id": id, "cancel": "requested"}))).into_response())
}

/// Server-sent events: every recorded event of the job, in order, until it ends.
pub(super) async fn stream_events(
    State(hub): State<Arc<Hub>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult {
    let Ok(permit) = hub.sse_slots.clone().try_acquire_owned() else {
        hub.metrics.sse_rejected.inc();
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many open event streams (api.max_sse_clients = {}); try again later",
                hub.config.api.max_sse_clients
            ),
        ));
    };
    let exists = hub.store.job_status(&id).await?;
    exists.ok_or_else(|| not_found(&format!("job `{id}`")))?;
    let stream = async_stream::stream! {
        // The slot is held for as long as the client stays connected.
        let _permit = permit;
        let mut sent = std::collections::HashSet::new();
        loop {
            let rows = hub.store.job_events(&id).await.unwrap_or_default();
            for r in rows {
                if sent.insert(r.event_id.clone()) {
                    let mut body = r.body;
                    if !access.sees_presigned_urls() && let Some(outputs) = body.get_mut("outputs") {
                        redact_outputs(outputs);
                    }
                    yield Ok::<_, std::convert::Infallible>(SseEvent::default().id(r.event_id).event(r.status).data(body.to_string()));
                }
            }
            let status = hub.store.job_status(&id).await.ok().flatten();
            if status.and_then(|s| JobStatus::parse(&s)).is_some_and(|s| s.is_terminal()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}
