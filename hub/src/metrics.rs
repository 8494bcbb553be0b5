//! Prometheus metrics, prefixed `ainern2d_hub_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

pub struct Metrics {
    /// Ready + in-flight jobs per kind, as last sampled.
    pub backlog: Family<KindLabel, Gauge>,
    /// Messages ready in each kind's job queue, as last sampled.
    pub queue_ready: Family<KindLabel, Gauge>,
    /// Subscriptions on each kind's job queue (every worker consuming the kind), as last sampled.
    pub queue_consumers: Family<KindLabel, Gauge>,
    /// Messages ready in the dead-letter queue, as last sampled.
    pub dead_letters: Gauge,
    /// Registered workers by state (`idle`, `busy`, `cordoned`, `draining`, … and `lost`).
    pub workers: Family<StateLabel, Gauge>,
    /// What an autoscaler should run per kind (current replicas while the backlog rule is quiet).
    pub desired_replicas: Family<KindLabel, Gauge>,
    pub downgraded_workers: Gauge,
    pub registry: Registry,
    pub events_applied: Counter,
    pub events_ignored: Counter,
    pub events_duplicate: Counter,
    pub malformed: Counter,
    pub heartbeats: Counter,
    pub workers_lost: Counter,
    pub decisions: Counter,
    pub batch_seconds: Histogram,
    pub alerts_sent: Counter,
    pub alerts_failed: Counter,
    pub alerts_dropped: Counter,
    /// Submitted jobs whose publish from the API failed (they stay in the outbox).
    pub submit_publish_failed: Counter,
    /// Jobs the outbox relay published.
    pub outbox_relayed: Counter,
    /// Jobs unpublished for longer than `outbox.relay_after_ms`, as last seen by the relay.
    pub outbox_pending: Gauge,
    pub sse_rejected: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ainern2d_hub");
        let m = Metrics {
            backlog: Family::default(),
            queue_ready: Family::default(),
            queue_consumers: Family::default(),
            dead_letters: Gauge::default(),
            workers: Family::default(),
            desired_replicas: Family::default(),
            downgraded_workers: Gauge::default(),
            events_applied: Counter::default(),
            events_ignored: Counter::default(),
            events_duplicate: Counter::default(),
            malformed: Counter::default(),
            heartbeats: Counter::default(),
            workers_lost: Counter::default(),
            decisions: Counter::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            alerts_sent: Counter::default(),
            alerts_failed: Counter::default(),
            alerts_dropped: Counter::default(),
            submit_publish_failed: Counter::default(),
            outbox_relayed: Counter::default(),
            outbox_pending: Gauge::default(),
            sse_rejected: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("events_applied", "Events that moved a job", m.events_applied.clone());
        registry.register(
            "events_ignored",
            "Events logged but stale or late (older attempt, after the end)",
            m.events_ignored.clone(),
        );
        registry.register(
            "events_duplicate",
            "Events received again (same event id) and skipped",
            m.events_duplicate.clone(),
        );
        registry.register(
            "events_malformed",
            "Messages on the events exchange that are not events",
            m.malformed.clone(),
        );
        registry.register("heartbeats", "Worker heartbeats recorded", m.heartbeats.clone());
        registry.register("workers_lost", "Workers marked lost for missing heartbeats", m.workers_lost.clone());
        registry.register("policy_decisions", "Fleet policy decisions", m.decisions.clone());
        registry.register("ingest_batch_seconds", "Time to write one batch of events", m.batch_seconds.clone());
        registry.register("backlog", "Ready plus in-flight jobs per kind", m.backlog.clone());
        registry.register("queue_ready", "Messages ready in each kind's job queue", m.queue_ready.clone());
        registry.register(
            "queue_consumers",
            "Consumers on each kind's job queue (0 while jobs wait: nothing takes them)",
            m.queue_consumers.clone(),
        );
        registry.register("dead_letters", "Messages ready in the dead-letter queue", m.dead_letters.clone());
        registry.register("workers", "Registered workers by state (lost: no heartbeat)", m.workers.clone());
        registry.register(
            "desired_replicas",
            "Worker replicas the fleet policy asks for, per kind",
            m.desired_replicas.clone(),
        );
        registry.register(
            "downgraded_workers",
            "Workers running under a downgrade profile",
            m.downgraded_workers.clone(),
        );
        registry.register("alerts_sent", "Alerts the webhook accepted", m.alerts_sent.clone());
        registry.register(
            "alerts_failed",
            "Alerts the webhook refused or did not answer in time",
            m.alerts_failed.clone(),
        );
        registry.register(
            "alerts_dropped",
            "Alerts dropped because the webhook queue was full (alerts.queue_capacity)",
            m.alerts_dropped.clone(),
        );
        registry.register(
            "submit_publish_failed",
            "Submitted jobs the API could not publish (kept in the outbox for the relay)",
            m.submit_publish_failed.clone(),
        );
        registry.register("outbox_relayed", "Jobs the outbox relay published", m.outbox_relayed.clone());
        registry.register(
            "outbox_pending",
            "Jobs unpublished for longer than outbox.relay_after_ms, at the relay's last look",
            m.outbox_pending.clone(),
        );
        registry.register(
            "sse_rejected",
            "Event streams refused because api.max_sse_clients were open",
            m.sse_rejected.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
