//! The hub's HTTP API (`/v1`), documented in `hub/openapi.yaml`. Who may call what is `auth`; jobs (submit,
//! read, list, cancel, event streams) are `jobs`; the worker registry and the policy are `fleet`.
//!
//! Every route but the event streams runs under a request timeout and a concurrency limit (`http.*`);
//! request bodies are capped (`api.max_body_bytes`, 413 beyond); event streams are capped in number
//! (`api.max_sse_clients`, 503 beyond) instead, since they are meant to stay open.

pub mod auth;
mod fleet;
mod jobs;
mod queues;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

pub use auth::{Access, TokenError, Tokens};

use crate::Hub;
use crate::store::StoreError;

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

/// The `/v1` routes (and whatever `bounded` holds: the probes) under the timeout and concurrency limits,
/// plus the event streams outside them.
pub fn router(hub: &Hub, tokens: Tokens, bounded: Router<Arc<Hub>>) -> Router<Arc<Hub>> {
    let tokens = Arc::new(tokens);
    let allowed = Arc::new(hub.config.api.allowed_ips.clone());
    let admin = {
        let tokens = tokens.clone();
        axum::middleware::from_fn(move |req: Request, next: Next| {
            auth::admin(tokens.clone(), allowed.clone(), req, next)
        })
    };
    let read = {
        let tokens = tokens.clone();
        axum::middleware::from_fn(move |req: Request, next: Next| auth::read(tokens.clone(), req, next))
    };
    let api = &hub.config.api;
    let http = &hub.config.http;
    let bounded = bounded
        .route(
            "/v1/jobs",
            get(jobs::list).layer::<_, Infallible>(read.clone()).merge(
                post(jobs::submit)
                    .layer::<_, Infallible>(admin.clone())
                    .layer::<_, Infallible>(RequestBodyLimitLayer::new(api.max_body_bytes)),
            ),
        )
        .route("/v1/jobs/{id}", get(jobs::get).layer(read.clone()))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel).layer(admin.clone()))
        .route("/v1/workers", get(fleet::workers).layer(read.clone()))
        .route("/v1/workers/{id}/{action}", post(fleet::worker_action).layer(admin))
        .route("/v1/policy", get(fleet::policy).layer(read.clone()))
        .route("/v1/queues", get(queues::queues).layer(read.clone()))
        // Outermost last: a request waiting for a turn counts against its timeout.
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(http.max_concurrent_requests))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(http.request_timeout_ms),
        ));
    bounded.route("/v1/jobs/{id}/events", get(jobs::stream_events).layer(read))
}
