//! `/health` (liveness), `/ready` (readiness with components) and `/metrics` (Prometheus) on one port.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::metrics::Metrics;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// Serves until `stop` fires. The caller fires it after the drain, so probes keep answering while the
/// worker drains (readiness says `draining`).
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    if let Err(e) = axum::serve(listener, router(shared)).with_graceful_shutdown(stop.cancelled_owned()).await {
        tracing::error!("http server stopped: {e}");
    }
}

/// Live unless a job's pipeline has reported nothing for `liveness.stall_after_s` (`liveness.rs`); a
/// draining, cordoned or unready worker is live.
async fn health(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let stalled = shared.stalled();
    if stalled.is_empty() {
        (StatusCode::OK, Json(serde_json::json!({"status": "ok"})))
    } else {
        let body = serde_json::json!({
            "status": "stalled",
            "stall_after_s": shared.config.liveness.stall_after_s,
            "stalled": stalled,
        });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let (ok, body) = readiness(&shared);
    (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}

/// What `/ready` answers: whether the worker takes jobs, and why not.
fn readiness(shared: &Shared) -> (bool, serde_json::Value) {
    let broker = shared.broker_connected();
    let store = shared.store_ready();
    let state = shared.state();
    let outcomes = shared.outcome_trouble();
    let accepting = matches!(state, ainern2d_contract::WorkerState::Ready);
    let backends = shared.backends.statuses();
    let backends_ok = backends.keys().all(|k| *shared.backends.watch_up(*k).borrow());
    let ok = broker && store && accepting && backends_ok && outcomes.is_none();
    let word = |b: bool| if b { "ok" } else { "down" };
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "state": state,
        "downgrade": shared.downgrade().map(|d| d.name),
        "slots": shared.slots.iter().map(|(k, s)| {
            let (total, busy) = s.usage();
            (k.as_str(), serde_json::json!({"total": total, "busy": busy}))
        }).collect::<std::collections::BTreeMap<_, _>>(),
        "components": {
            "broker": word(broker),
            "outcomes": outcomes.unwrap_or_else(|| "ok".into()),
            "store": word(store),
            "pipelines": shared.pipelines.iter().map(|(k, p)| (k.as_str(), p.backend())).collect::<std::collections::BTreeMap<_, _>>(),
            "backends": backends.iter().map(|(k, s)| {
                let up = *shared.backends.watch_up(*k).borrow();
                let word = match (&s.error, up) {
                    (None, _) => "ok".to_string(),
                    (Some(e), true) => format!("not answering (once): {e}"),
                    (Some(e), false) => format!("down: {e}"),
                };
                (k.as_str(), word)
            }).collect::<std::collections::BTreeMap<_, _>>(),
        },
        "backends": backends.iter().map(|(k, s)| (k.as_str(), s)).collect::<std::collections::BTreeMap<_, _>>(),
    });
    (ok, body)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    sample(&shared);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], shared.metrics.render())
}

/// The gauges read at each scrape: readiness, state, slots, and the GPUs NVML sees.
fn sample(shared: &Shared) {
    use crate::metrics::{GpuLabels, StateLabel};
    let m = &shared.metrics;
    m.ready.set(i64::from(readiness(shared).0));
    let state = shared.state();
    for s in ainern2d_contract::WorkerState::ALL {
        m.state.get_or_create(&StateLabel { state: s.as_str().into() }).set(i64::from(s == state));
    }
    for (kind, slots) in &shared.slots {
        let (total, busy) = slots.usage();
        let label = Metrics::kind(kind.as_str());
        m.slots.get_or_create(&label).set(i64::from(total));
        m.slots_busy.get_or_create(&label).set(i64::from(busy));
    }
    for gpu in shared.gpus.stats() {
        let labels = GpuLabels { gpu: gpu.index.to_string(), uuid: gpu.uuid.clone() };
        m.gpu_utilization.get_or_create(&labels).set(f64::from(gpu.utilization_pct) / 100.0);
        m.gpu_memory_used.get_or_create(&labels).set(gpu.memory_used_bytes as i64);
        m.gpu_memory_total.get_or_create(&labels).set(gpu.memory_total_bytes as i64);
    }
}
