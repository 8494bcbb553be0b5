//! `/v1/workers` (the registry, cordon / uncordon / drain) and `/v1/policy`.

use std::sync::Arc;

use ainern2d_contract::ControlCommand;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::{ApiError, ApiResult, not_found};
use crate::Hub;

pub(super) async fn workers(State(hub): State<Arc<Hub>>) -> ApiResult {
    let workers = hub.store.list_workers().await?;
    Ok(Json(serde_json::json!({"workers": workers})).into_response())
}

pub(super) async fn worker_action(
    State(hub): State<Arc<Hub>>,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult {
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
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("could not send `{action}`: {e}")))?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"worker_id": id, "action": action}))).into_response())
}

pub(super) async fn policy(State(hub): State<Arc<Hub>>) -> ApiResult {
    let decisions = hub.store.recent_decisions(50).await?;
    let downgraded = hub.store.downgraded_workers().await?;
    let body = serde_json::json!({"config": hub.config.policy, "downgraded_workers": downgraded, "recent_decisions": decisions});
    Ok(Json(body).into_response())
}
