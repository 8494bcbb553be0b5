//! `/health`, `/ready`, `/metrics` and the `/v1` API (`api`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::Hub;

pub fn router(hub: Arc<Hub>) -> Router {
    let token = crate::api::load_admin_token(&hub);
    if token.is_none() {
        tracing::warn!(
            "no admin token (api.admin_token_file or AINERN2D_HUB_ADMIN_TOKEN): mutating endpoints answer 401"
        );
    }
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(crate::api::router(hub.clone(), token))
        .with_state(hub)
}

pub async fn serve(listener: tokio::net::TcpListener, hub: Arc<Hub>, stop: CancellationToken) {
    let app = router(hub).into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
        tracing::error!("http server stopped: {e}");
    }
}

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn ready(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    let (broker, db) = hub.ready();
    let word = |b: bool| if b { "ok" } else { "down" };
    let ok = broker && db;
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "components": {"broker": word(broker), "database": word(db)},
    });
    (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}

async fn metrics(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], hub.metrics.render())
}
