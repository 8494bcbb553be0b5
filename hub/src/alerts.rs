//! Policy decisions to an Alertmanager-compatible webhook, off the ingestion path: ingestion only puts an
//! alert on a bounded queue; one task posts them. A webhook that is slow or never answers costs alerts
//! (dropped when the queue is full, counted in `ainern2d_hub_alerts_dropped`), never ingestion.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::policy::Decision;

pub(crate) struct Alerts {
    tx: mpsc::Sender<serde_json::Value>,
    /// Taken by the task that posts them (`run`).
    rx: std::sync::Mutex<Option<mpsc::Receiver<serde_json::Value>>>,
    enabled: bool,
}

impl Alerts {
    pub(crate) fn new(webhook_url: &str, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Alerts { tx, rx: std::sync::Mutex::new(Some(rx)), enabled: !webhook_url.is_empty() }
    }

    /// Queues the alert for a decision; never waits.
    pub(crate) fn notify(
        &self,
        metrics: &Metrics,
        at: DateTime<Utc>,
        decision: &Decision,
        subject: &str,
        reason: &str,
    ) {
        if !self.enabled {
            return;
        }
        if self.tx.try_send(alert(at, decision, subject, reason)).is_err() {
            metrics.alerts_dropped.inc();
            tracing::warn!(%subject, "alert dropped: the webhook is not keeping up (alerts.queue_capacity is full)");
        }
    }
}

/// Posts queued alerts to `url` one at a time until `shutdown`.
pub(crate) async fn run(hub: Arc<crate::Hub>, shutdown: CancellationToken) {
    let Some(mut rx) = hub.alerts.rx.lock().expect("alerts lock").take() else { return };
    if !hub.alerts.enabled {
        return;
    }
    let url = hub.config.alerts.webhook_url.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(hub.config.alerts.timeout_ms))
        .build()
        .expect("static client config");
    loop {
        let alert = tokio::select! {
            a = rx.recv() => match a { Some(a) => a, None => return },
            _ = shutdown.cancelled() => return,
        };
        let sent = tokio::select! {
            r = http.post(&url).json(&[alert]).send() => r,
            _ = shutdown.cancelled() => return,
        };
        match sent {
            Ok(r) if r.status().is_success() => {
                hub.metrics.alerts_sent.inc();
            }
            Ok(r) => {
                hub.metrics.alerts_failed.inc();
                tracing::warn!("alert webhook answered {}", r.status());
            }
            Err(e) => {
                hub.metrics.alerts_failed.inc();
                tracing::warn!("alert webhook failed: {e}");
            }
        };
    }
}

/// One Alertmanager alert (`POST /api/v2/alerts` takes a list of them).
fn alert(at: DateTime<Utc>, decision: &Decision, subject: &str, reason: &str) -> serde_json::Value {
    let (name, resolved) = match decision {
        Decision::Downgrade { .. } => ("GpuDowngrade", false),
        Decision::ClearDowngrade { .. } => ("GpuDowngrade", true),
        Decision::ScaleOut { .. } => ("BacklogScaleOut", false),
        Decision::ScaleOutCleared { .. } => ("BacklogScaleOut", true),
        Decision::Alert { rule, firing, .. } => {
            (if rule == "success_rate" { "RunSuccessRateLow" } else { "EndToEndP95High" }, !firing)
        }
    };
    let mut alert = serde_json::json!({
        "labels": {"alertname": name, "subject": subject, "service": "ainern2d-hub", "severity": "warning"},
        "annotations": {"summary": reason, "decision": decision},
        "startsAt": at.to_rfc3339(),
    });
    if resolved {
        alert["endsAt"] = at.to_rfc3339().into();
    }
    alert
}
