//! The ainern2d hub: the system of record for jobs and workers. It consumes the workers' events into
//! Postgres, keeps the worker registry, and enforces the fleet policy.
//!
//! The hub must never link inference code (candle, ort, FFmpeg); it knows the contract, the broker and the
//! database.

pub mod config;
pub mod db;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod policy;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ainern2d_contract::Heartbeat;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::{Decision, Policy};
use crate::status::JobStatus;

pub struct Hub {
    pub config: Config,
    pub pool: PgPool,
    pub metrics: Metrics,
    pub policy: Mutex<Policy>,
    broker_connected: AtomicBool,
    db_ok: AtomicBool,
}

impl Hub {
    pub async fn connect(config: Config) -> anyhow::Result<Arc<Hub>> {
        let pool = db::connect(&config.database.url, &config.database.schema, config.database.max_connections)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to database.url: {e}"))?;
        db::migrate(&pool).await?;
        Ok(Arc::new(Hub {
            policy: Mutex::new(Policy::new(config.policy.clone())),
            config,
            pool,
            metrics: Metrics::new(),
            broker_connected: AtomicBool::new(false),
            db_ok: AtomicBool::new(true),
        }))
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
    async fn on_batch(&self, finished: &[db::Finished], heartbeats: &[Heartbeat]) {
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
        if let Err(e) = db::record_decision(&self.pool, at, &subject, &value, &reason).await {
            tracing::warn!("could not record a policy decision: {e}");
        }
    }
}

/// Marks workers lost when their heartbeat is older than `registry.heartbeat_stale_s`.
pub async fn watch_registry(hub: Arc<Hub>, shutdown: CancellationToken) {
    let stale = chrono::Duration::seconds(hub.config.registry.heartbeat_stale_s as i64);
    loop {
        match db::mark_lost(&hub.pool, chrono::Utc::now() - stale).await {
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
    tracing::info!(listen = %listener.local_addr()?, "ainern2d hub starting");
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(http::serve(listener, hub.clone(), http_stop.clone()));
    let registry = tokio::spawn(watch_registry(hub.clone(), shutdown.clone()));
    ingest::run(hub.clone(), shutdown).await;
    let _ = registry.await;
    http_stop.cancel();
    let _ = http.await;
    hub.pool.close().await;
    Ok(())
}
