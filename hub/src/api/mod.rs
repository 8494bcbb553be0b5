//! The hub's HTTP API (`/v1`), documented in `hub/openapi.yaml`. Reads are open; mutations need
//! `Authorization: Bearer <admin token>` (compared in constant time) and, when configured, an allowed
//! client address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ainern2d_contract::topology::{ATTEMPT_HEADER, Topology};
use ainern2d_contract::{ControlCommand, parse_job};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::Hub;
use crate::store::{JobFilter, StoreError};

type ApiResult = Result<Response, ApiError>;

#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({"error": self.1}))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))
    }
}

fn not_found(what: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("{what} not found"))
}

/// The admin token: the file named by `api.admin_token_file`, else `AINERN2D_HUB_ADMIN_TOKEN`.
pub fn load_admin_token(hub: &Hub) -> Option<String> {
    let from_file = (!hub.config.api.admin_token_file.is_empty())
        .then(|| std::fs::read_to_string(&hub.config.api.admin_token_file).ok())
        .flatten();
    from_file
        .or_else(|| std::env::var("AINERN2D_HUB_ADMIN_TOKEN").ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

pub fn router(hub: Arc<Hub>, admin_token: Option<String>) -> Router<Arc<Hub>> {
    let token = Arc::new(admin_token);
    let allowed = Arc::new(hub.config.api.allowed_ips.clone());
    let guard = axum::middleware::from_fn(move |req: Request, next: Next| {
        let (token, allowed) = (token.clone(), allowed.clone());
        async move { authorize(&token, &allowed, req, next).await }
    });
    Router::new()
        .route("/v1/jobs", get(list_jobs).merge(post(submit).layer(guard.clone())))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel).layer(guard.clone()))
        .route("/v1/jobs/{id}/events", get(stream_events))
        .route("/v1/workers", get(list_workers))
        .route("/v1/workers/{id}/{action}", post(worker_action).layer(guard))
        .route("/v1/policy", get(policy))
}

async fn authorize(token: &Option<String>, allowed: &[std::net::IpAddr], req: Request, next: Next) -> Response {
    if !allowed.is_empty() {
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        if !peer.is_some_and(|ip| allowed.contains(&ip)) {
            return ApiError(StatusCode::FORBIDDEN, "client address not in api.allowed_ips".into()).into_response();
        }
    }
    let presented =
        req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let ok = match (token, presented) {
        (Some(expected), Some(given)) => bool::from(expected.as_bytes().ct_eq(given.as_bytes())),
        _ => false,
    };
    if !ok {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token (Authorization: Bearer <token>)".into(),
        )
        .into_response();
    }
    next.run(req).await
}

async fn submit(State(hub): State<Arc<Hub>>, body: axum::body::Bytes) -> ApiResult {
    let job = match parse_job(&body) {
        Ok(job) => job,
        Err(e) => {
            let body = serde_json::json!({"error": e.to_string(), "code": e.code, "field": e.field});
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response());
        }
    };
    let spec = serde_json::to_value(&job).expect("jobs serialize");
    if !hub.store.insert_submitted(&job.job_id, job.kind().as_str(), &spec).await? {
        // Idempotent resubmission of the same job is fine; a different job under the same id is not.
        let existing = hub.store.existing_spec(&job.job_id).await?;
        if existing.as_ref() != Some(&spec) {
            return Err(ApiError(StatusCode::CONFLICT, format!("job `{}` exists with a different spec", job.job_id)));
        }
        return Ok((StatusCode::OK, Json(serde_json::json!({"job_id": job.job_id, "duplicate": true}))).into_response());
    }
    let message = ainern2d_queue::Message::json(body)
        .with_priority(Some(job.priority))
        .with_header(ATTEMPT_HEADER, ainern2d_queue::HeaderValue::Int(1));
    let queue = Topology::new(hub.config.broker.prefix.clone()).job_queue(job.kind());
    if let Err(e) = hub.publish("", &queue, &message).await {
        // Not enqueued: forget the row so the client can retry the same submission.
        let _ = hub.store.delete_if_queued(&job.job_id).await;
        return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("could not enqueue the job: {e}")));
    }
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"job_id": job.job_id, "status": "queued"}))).into_response())
}

async fn get_job(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> ApiResult {
    let job = hub.store.get_job(&id).await?.ok_or_else(|| not_found(&format!("job `{id}`")))?;
    Ok(Json(serde_json::to_value(job).expect("jobs serialize")).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    kind: Option<String>,
    /// Keyset pagination: jobs with an id after this one.
    after: Option<String>,
    limit: Option<i64>,
}

async fn list_jobs(State(hub): State<Arc<Hub>>, Query(q): Query<ListQuery>) -> ApiResult {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError(StatusCode::BAD_REQUEST, "limit must be between 1 and 1000".into()));
    }
    let filter = JobFilter { status: q.status, kind: q.kind, after: q.after, limit: limit as u32 };
    let jobs = hub.store.list_jobs(&filter).await?;
    let next = (jobs.len() as i64 == limit).then(|| jobs.last().map(|j| j.job_id.clone())).flatten();
    Ok(Json(serde_json::json!({"jobs": jobs, "next_after": next})).into_response())
}

async fn cancel(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> ApiResult {
    let status = hub.store.job_status(&id).await?;
    let status = status.ok_or_else(|| not_found(&format!("job `{id}`")))?;
    if crate::status::JobStatus::parse(&status).is_some_and(|s| s.is_terminal()) {
        return Err(ApiError(StatusCode::CONFLICT, format!("job `{id}` has already ended ({status})")));
    }
    // Every worker hears it: the one running the job stops it; the one that receives it later skips it.
    hub.send_control("worker.all", ControlCommand::Cancel { job_id: id.clone() })
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"job_id": id, "cancel": "requested"}))).into_response())
}

/// Server-sent events: every recorded event of the job, in order, until it ends.
async fn stream_events(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> ApiResult {
    let exists = hub.store.job_status(&id).await?;
    exists.ok_or_else(|| not_found(&format!("job `{id}`")))?;
    let stream = async_stream::stream! {
        let mut sent = std::collections::HashSet::new();
        loop {
            let rows = hub.store.job_events(&id).await.unwrap_or_default();
            let mut ended = false;
            for r in rows {
                if sent.insert(r.event_id.clone()) {
                    yield Ok::<_, std::convert::Infallible>(SseEvent::default().id(r.event_id).event(r.status).data(r.body.to_string()));
                }
            }
            let status = hub.store.job_status(&id).await.ok().flatten();
            if status.and_then(|s| crate::status::JobStatus::parse(&s)).is_some_and(|s| s.is_terminal()) {
                ended = true;
            }
            if ended {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

async fn list_workers(State(hub): State<Arc<Hub>>) -> ApiResult {
    let workers = hub.store.list_workers().await?;
    Ok(Json(serde_json::json!({"workers": workers})).into_response())
}

async fn worker_action(State(hub): State<Arc<Hub>>, Path((id, action)): Path<(String, String)>) -> ApiResult {
    let command = match action.as_str() {
        "cordon" => ControlCommand::Cordon,
        "uncordon" => ControlCommand::Uncordon,
        "drain" => ControlCommand::Drain,
        other => {
            return Err(ApiError(StatusCode::NOT_FOUND, format!("unknown action `{other}` (cordon, uncordon, drain)")));
        }
    };
    if !hub.store.worker_exists(&id).await? {
        return Err(not_found(&format!("worker `{id}`")));
    }
    hub.send_control(&format!("worker.{id}"), command)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"worker_id": id, "action": action}))).into_response())
}

async fn policy(State(hub): State<Arc<Hub>>, _headers: HeaderMap) -> ApiResult {
    let decisions = hub.store.recent_decisions(50).await?;
    let downgraded = hub.store.downgraded_workers().await?;
    Ok(Json(serde_json::json!({"config": hub.config.policy, "downgraded_workers": downgraded, "recent_decisions": decisions})).into_response())
}
