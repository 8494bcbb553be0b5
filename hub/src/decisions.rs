//! Acting on the fleet policy: committed outcomes and heartbeats go in, and each decision that comes out is
//! recorded, turned into a control command where it has one, and queued for the alert webhook.

use ainern2d_contract::{ControlCommand, Heartbeat};
use chrono::{DateTime, Utc};

use crate::Hub;
use crate::policy::Decision;
use crate::status::JobStatus;
use crate::store::Finished;

impl Hub {
    /// Feeds committed outcomes and heartbeats to the fleet policy and acts on its decisions.
    pub(crate) async fn on_batch(&self, finished: &[Finished], heartbeats: &[Heartbeat]) {
        let now = Utc::now();
        let mut decisions = Vec::new();
        {
            let mut policy = self.policy.lock().await;
            for f in finished {
                decisions.extend(policy.outcome(now, f.status == JobStatus::Succeeded, f.e2e_s));
            }
            for hb in heartbeats {
                if let Some(busiest) =
                    hb.gpus.iter().filter(|g| g.source.is_none()).map(|g| f64::from(g.utilization_pct)).reduce(f64::max)
                    && let Some(d) = policy.gpu_sample(hb.sent_at, &hb.worker_id, busiest)
                {
                    decisions.push(d);
                }
            }
        }
        for d in decisions {
            self.record(now, d).await;
        }
    }

    pub(crate) async fn record(&self, at: DateTime<Utc>, decision: Decision) {
        let (subject, reason) = match &decision {
            Decision::Downgrade { worker_id, reason, .. } | Decision::ClearDowngrade { worker_id, reason } => {
                (worker_id.clone(), reason.clone())
            }
            Decision::ScaleOut { kind, reason, .. } | Decision::ScaleOutCleared { kind, reason } => {
                (kind.clone(), reason.clone())
            }
            Decision::Alert { rule, reason, .. } => (rule.clone(), reason.clone()),
        };
        tracing::warn!(%subject, "fleet policy: {reason}");
        self.metrics.decisions.inc();
        let value = serde_json::to_value(&decision).expect("decisions serialize");
        if let Err(e) = self.store.record_decision(at, &subject, &value, &reason).await {
            tracing::warn!("could not record a policy decision: {e}");
        }
        let command = match &decision {
            Decision::Downgrade { worker_id, profile, .. } => {
                self.config.profile(profile).map(|p| (worker_id, ControlCommand::ApplyDowngrade { profile: p.clone() }))
            }
            Decision::ClearDowngrade { worker_id, .. } => Some((worker_id, ControlCommand::ClearDowngrade)),
            _ => None,
        };
        if let Some((worker_id, command)) = command {
            match &command {
                ControlCommand::ApplyDowngrade { .. } => self.metrics.downgraded_workers.inc(),
                _ => self.metrics.downgraded_workers.dec(),
            };
            if let Err(e) = self.send_control(&format!("worker.{worker_id}"), command).await {
                tracing::warn!(%worker_id, "could not send the policy's control command: {e}");
            }
        }
        self.alerts.notify(&self.metrics, at, &decision, &subject, &reason);
    }
}
