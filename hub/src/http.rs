//! `/health`, `/ready`, `/metrics` and the `/v1` API (`api`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::Hub;
use crate::api::Tokens;

pub fn router(hub: Arc<Hub>, tokens: Tokens) -> Router {
    if tokens.admin.is_none() {
        tracing::warn!(
            "no admin token (api.admin_token_file or AINERN2D_HUB_ADMIN_TOKEN): mutating endpoints answer 401"
        );
    }
    if tokens.read.is_none() {
        tracing::info!(
            "no read token (api.read_token_file or AINERN2D_HUB_READ_TOKEN): reads are open, without presigned URLs"
        );
    }
    let probes =
        Router::new().route("/health", get(health)).route("/ready", get(ready)).route("/metrics", get(metrics));
    let probes = probes.merge(crate::ui::router());
    crate::api::router(&hub, tokens, probes).with_state(hub)
}

pub async fn serve(listener: tokio::net::TcpListener, hub: Arc<Hub>, tokens: Tokens, stop: CancellationToken) {
    let app = router(hub, tokens).into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
        tracing::error!("http server stopped: {e}");
    }
}

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn ready(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    let r = hub.readiness();
    let word = |b: bool| if b { "ok" } else { "down" };
    let body = serde_json::json!({
        "status": if r.ok() { "ok" } else { "unavailable" },
        "components": {
            "broker": word(r.ingest && r.publish),
            "broker_ingest": word(r.ingest),
            "broker_publish": word(r.publish),
            "database": word(r.database),
        },
    });
    (if r.ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}

async fn metrics(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], hub.metrics.render())
}
