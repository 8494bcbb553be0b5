//! The ainern2d hub: the system of record for jobs and workers. It consumes the workers' events into the
//! status store (Postgres, or SQLite in local mode), keeps the worker registry, and enforces the fleet policy.
//!
//! The hub must never link inference code (candle, ort, FFmpeg); it knows the contract, the job-queue
//! boundary (`ainern2d-queue`) and the status store (only through `store::StatusStore`).

pub mod api;
pub mod config;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod policy;
pub mod status;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ainern2d_contract::{CONTROL_SCHEMA, Control, ControlCommand, Heartbeat};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::{Decision, Policy};
use crate::status::JobStatus;
use crate::store::StatusStore;

pub struct Hub {
    pub config: Config,
    pub store: Arc<dyn StatusStore>,
    pub metrics: Metrics,
    pub policy: Mutex<Policy>,
    broker_connected: AtomicBool,
    db_ok: AtomicBool,
    /// Where jobs, control commands and events travel (RabbitMQ, or in-process in the local mode).
    pub broker: Arc<dyn ainern2d_queue::Broker>,
    /// The ingestion session, also used to publish jobs and control commands (with confirms).
    pub(crate) session: Mutex<Option<Arc<dyn ainern2d_queue::Session>>>,
    http: reqwest::Client,
}

impl Hub {
    /// Opens the status store `database.url` names, applies its migrations, and builds the hub.
    pub async fn connect(config: Config) -> anyhow::Result<Arc<Hub>> {
        let store = store::open(&config.database).await?;
        store.migrate().await?;
        let broker = Arc::new(ainern2d_queue::amqp::AmqpBroker::new(config.broker.url.clone()));
        Ok(Hub::new(config, store, broker))
    }

    /// A hub over an open, migrated store and a broker (no I/O).
    pub fn new(config: Config, store: Arc<dyn StatusStore>, broker: Arc<dyn ainern2d_queue::Broker>) -> Arc<Hub> {
        Arc::new(Hub {
            policy: Mutex::new(Policy::new(config.policy.clone())),
            config,
            store,
            metrics: Metrics::new(),
            broker_connected: AtomicBool::new(false),
            db_ok: AtomicBool::new(true),
            broker,
            session: Mutex::new(None),
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("static client config"),
        })
    }

    pub(crate) fn broker_up(&self, up: bool) {
        self.broker_connected.store(up, Ordering::Relaxed);
    }

    pub(crate) fn db_up(&self, up: bool) {
        self.db_ok.store(up, Ordering::Relaxed);
    }

    pub fn ready(&self) -> (bool, bool) {
        (self.broker_connected.load(Ordering::Relaxed), self.db_ok.load(Ordering::Relaxed))
    }

    /// Feeds committed outcomes and heartbeats to the fleet policy and records its decisions.
    async fn on_batch(&self, finished: &[store::Finished], heartbeats: &[Heartbeat]) {
        let now = chrono::Utc::now();
        let mut decisions = Vec::new();
        {
            let mut policy = self.policy.lock().await;
            for f in finished {
                decisions.extend(policy.outcome(now, f.status == JobStatus::Succeeded, f.e2e_s));
            }
            for hb in heartbeats {
                if let Some(busiest) = hb.gpus.iter().map(|g| f64::from(g.utilization_pct)).reduce(f64::max)
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

    async fn record(&self, at: chrono::DateTime<chrono::Utc>, decision: Decision) {
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
        self.notify(at, &decision, &subject, &reason).await;
    }

    /// Publishes a message with a publisher confirm on the hub's session.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &ainern2d_queue::Message,
    ) -> anyhow::Result<()> {
        let session =
            self.session.lock().await.clone().ok_or_else(|| anyhow::anyhow!("not connected to the broker"))?;
        session.publish(exchange, routing_key, message).await?;
        Ok(())
    }

    /// Publishes a control command with a publisher confirm.
    pub async fn send_control(&self, routing_key: &str, command: ControlCommand) -> anyhow::Result<()> {
        let control = Control {
            schema: CONTROL_SCHEMA.into(),
            command_id: uuid::Uuid::new_v4().to_string(),
            issued_at: chrono::Utc::now(),
            command,
        };
        let exchange = ainern2d_contract::topology::Topology::new(self.config.broker.prefix.clone()).control_exchange();
        let mut message = ainern2d_queue::Message::json(serde_json::to_vec(&control)?);
        // Commands are for the workers alive now; a broker restart may forget them.
        message.persistent = false;
        self.publish(&exchange, routing_key, &message).await
    }

    /// Sends a decision to the Alertmanager-compatible webhook, if configured.
    async fn notify(&self, at: chrono::DateTime<chrono::Utc>, decision: &Decision, subject: &str, reason: &str) {
        let url = &self.config.alerts.webhook_url;
        if url.is_empty() {
            return;
        }
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
        match self.http.post(url).json(&[alert]).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!("alert webhook answered {}", r.status()),
            Err(e) => tracing::warn!("alert webhook failed: {e}"),
        }
    }
}

/// Samples every job queue's backlog (ready, by passive declare, plus in flight, from the jobs table) and the
/// replicas serving each kind, for the backlog rule and the autoscaling gauges.
pub async fn watch_backlog(hub: Arc<Hub>, shutdown: CancellationToken) {
    let topo = ainern2d_contract::topology::Topology::new(hub.config.broker.prefix.clone());
    loop {
        if let Err(e) = sample_backlog(&hub, &topo).await {
            tracing::debug!("backlog sample skipped: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(hub.config.alerts.sample_interval_ms)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn sample_backlog(hub: &Hub, topo: &ainern2d_contract::topology::Topology) -> anyhow::Result<()> {
    let session = hub.session.lock().await.clone().ok_or_else(|| anyhow::anyhow!("not connected to the broker"))?;
    let now = chrono::Utc::now();
    for kind in ainern2d_contract::JobKind::ALL {
        let Some(ready) = session.queue_depth(&topo.job_queue(kind)).await? else { continue };
        let in_flight = hub.store.in_flight(kind.as_str()).await?;
        let replicas = hub.store.replicas(kind.as_str()).await?;
        let backlog = u64::from(ready) + in_flight;
        let label = metrics::KindLabel { kind: kind.as_str().into() };
        hub.metrics.backlog.get_or_create(&label).set(backlog as i64);
        let decision = {
            let mut policy = hub.policy.lock().await;
            let d = policy.backlog_sample(now, kind.as_str(), backlog, replicas);
            hub.metrics.desired_replicas.get_or_create(&label).set(policy.desired_replicas(
                kind.as_str(),
                backlog,
                replicas,
            ) as i64);
            d
        };
        if let Some(d) = decision {
            hub.record(now, d).await;
        }
    }
    Ok(())
}

/// Marks workers lost when their heartbeat is older than `registry.heartbeat_stale_s`.
pub async fn watch_registry(hub: Arc<Hub>, shutdown: CancellationToken) {
    let stale = chrono::Duration::seconds(hub.config.registry.heartbeat_stale_s as i64);
    loop {
        match hub.store.mark_lost(chrono::Utc::now() - stale).await {
            Ok(lost) => {
                for worker in lost {
                    tracing::warn!(%worker, "worker lost: no heartbeat for {} s", stale.num_seconds());
                    hub.metrics.workers_lost.inc();
                }
            }
            Err(e) => tracing::warn!("registry check failed: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(hub.config.registry.check_interval_ms)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Runs the hub until `shutdown`.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on http.listen {}: {e}", config.http.listen))?;
    let hub = Hub::connect(config).await?;
    run(hub, listener, shutdown).await
}

/// Runs a built hub (HTTP API on `listener`, event ingestion, registry and backlog watchers) until
/// `shutdown`.
pub async fn run(hub: Arc<Hub>, listener: tokio::net::TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(listen = %listener.local_addr()?, broker = %hub.broker.describe(), "ainern2d hub starting");
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(http::serve(listener, hub.clone(), http_stop.clone()));
    let registry = tokio::spawn(watch_registry(hub.clone(), shutdown.clone()));
    let backlog = tokio::spawn(watch_backlog(hub.clone(), shutdown.clone()));
    ingest::run(hub.clone(), shutdown).await;
    let _ = registry.await;
    let _ = backlog.await;
    http_stop.cancel();
    let _ = http.await;
    hub.store.close().await;
    Ok(())
}
