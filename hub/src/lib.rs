//! The ainern2d hub: the system of record for jobs and workers. It consumes the workers' events into the
//! status store (Postgres, or SQLite in local mode), keeps the worker registry, enforces the fleet policy,
//! and takes jobs and commands through its API.
//!
//! The hub must never link inference code (candle, ort, FFmpeg); it knows the contract, the job-queue
//! boundary (`ainern2d-queue`) and the status store (only through `store::StatusStore`).

mod alerts;
pub mod api;
pub mod backoff;
pub mod config;
mod decisions;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod outbox;
pub mod policy;
pub mod publisher;
pub mod status;
pub mod store;
mod ui;
mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ainern2d_contract::{CONTROL_SCHEMA, Control, ControlCommand};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::publisher::PublishError;
use crate::store::StatusStore;

pub struct Hub {
    pub config: Config,
    pub store: Arc<dyn StatusStore>,
    pub metrics: Metrics,
    pub policy: Mutex<Policy>,
    /// Where jobs, control commands and events travel (RabbitMQ, or in-process in the local mode).
    pub broker: Arc<dyn ainern2d_queue::Broker>,
    /// The ingestion session is subscribed.
    ingesting: AtomicBool,
    db_ok: AtomicBool,
    /// The session that API publishes, the outbox relay and control commands use (not the ingestion one).
    pub(crate) publisher: publisher::Publisher,
    pub(crate) outbox: outbox::InFlight,
    alerts: alerts::Alerts,
    /// One permit per open `/v1/jobs/{id}/events` stream (`api.max_sse_clients`).
    pub(crate) sse_slots: Arc<Semaphore>,
}

/// What `/ready` reports, component by component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// The ingestion session is subscribed to the hub's event queue.
    pub ingest: bool,
    /// The publishing session is open and has declared the job topology.
    pub publish: bool,
    pub database: bool,
}

impl Readiness {
    pub fn ok(&self) -> bool {
        self.ingest && self.publish && self.database
    }
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
            alerts: alerts::Alerts::new(&config.alerts.webhook_url, config.alerts.queue_capacity),
            sse_slots: Arc::new(Semaphore::new(config.api.max_sse_clients)),
            config,
            store,
            metrics: Metrics::new(),
            ingesting: AtomicBool::new(false),
            db_ok: AtomicBool::new(true),
            broker,
            publisher: publisher::Publisher::default(),
            outbox: outbox::InFlight::default(),
        })
    }

    pub(crate) fn ingest_up(&self, up: bool) {
        self.ingesting.store(up, Ordering::Relaxed);
    }

    pub(crate) fn db_up(&self, up: bool) {
        self.db_ok.store(up, Ordering::Relaxed);
    }

    pub fn readiness(&self) -> Readiness {
        Readiness {
            ingest: self.ingesting.load(Ordering::Relaxed),
            publish: self.publisher.is_up(),
            database: self.db_ok.load(Ordering::Relaxed),
        }
    }

    /// `(broker, database)`: the broker is ready when both of the hub's sessions are.
    pub fn ready(&self) -> (bool, bool) {
        let r = self.readiness();
        (r.ingest && r.publish, r.database)
    }

    /// Publishes a message with a publisher confirm on the hub's publishing session.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &ainern2d_queue::Message,
    ) -> Result<(), PublishError> {
        self.publisher.publish(exchange, routing_key, message).await
    }

    /// Publishes a control command with a publisher confirm.
    pub async fn send_control(&self, routing_key: &str, command: ControlCommand) -> Result<(), PublishError> {
        let control = Control {
            schema: CONTROL_SCHEMA.into(),
            command_id: uuid::Uuid::new_v4().to_string(),
            issued_at: chrono::Utc::now(),
            command,
        };
        let exchange = ainern2d_contract::topology::Topology::new(self.config.broker.prefix.clone()).control_exchange();
        let mut message =
            ainern2d_queue::Message::json(serde_json::to_vec(&control).expect("control commands serialize"));
        // Commands are for the workers alive now; a broker restart may forget them.
        message.persistent = false;
        self.publish(&exchange, routing_key, &message).await
    }
}

/// Runs the hub until `shutdown`.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Bad token files are configuration errors: find them before connecting to anything.
    api::Tokens::load(&config.api)?;
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on http.listen {}: {e}", config.http.listen))?;
    let hub = Hub::connect(config).await?;
    run(hub, listener, shutdown).await
}

/// Runs a built hub (HTTP API on `listener`, event ingestion, the publishing session, the outbox relay,
/// the alert webhook, registry and backlog watchers) until `shutdown`.
pub async fn run(hub: Arc<Hub>, listener: tokio::net::TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tokens = api::Tokens::load(&hub.config.api)?;
    tracing::info!(listen = %listener.local_addr()?, broker = %hub.broker.describe(), "ainern2d hub starting");
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(http::serve(listener, hub.clone(), tokens, http_stop.clone()));
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(publisher::run(hub.clone(), shutdown.clone()));
    tasks.spawn(outbox::relay(hub.clone(), shutdown.clone()));
    tasks.spawn(alerts::run(hub.clone(), shutdown.clone()));
    tasks.spawn(watch::registry(hub.clone(), shutdown.clone()));
    tasks.spawn(watch::backlog(hub.clone(), shutdown.clone()));
    tasks.close();
    ingest::run(hub.clone(), shutdown).await;
    tasks.wait().await;
    http_stop.cancel();
    let _ = http.await;
    hub.store.close().await;
    Ok(())
}
