//! Prometheus metrics, prefixed `ainern2d_worker_`, with bounded label sets (kind, outcome, stage).

use std::sync::atomic::AtomicU64;

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
pub struct OutcomeLabels {
    pub kind: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub kind: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// jobs, rss, vram
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabels {
    pub kind: String,
    /// taken, renewed, released, failed
    pub event: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub jobs: Family<OutcomeLabels, Counter>,
    pub stage_seconds: Family<StageLabels, Histogram>,
    pub overhead_seconds: Family<KindLabel, Histogram>,
    pub in_flight: Family<KindLabel, Gauge>,
    pub retries: Family<KindLabel, Counter>,
    pub upload_bytes: Family<KindLabel, Counter>,
    pub broker_connected: Gauge,
    pub backend_up: Family<KindLabel, Gauge>,
    pub reconnects: Counter,
    pub consumer_resubscribes: Counter,
    pub outcome_failures: Counter,
    pub unroutable: Counter,
    pub leases: Family<LeaseLabels, Counter>,
    pub leased: Family<KindLabel, Gauge>,
    pub stalled: Gauge,
    pub recycles: Family<ReasonLabel, Counter>,
    /// Set at each scrape ([`Metrics::sample`]): what `/ready` would answer, the state, slots and GPUs.
    pub ready: Gauge,
    pub state: Family<StateLabel, Gauge>,
    pub slots: Family<KindLabel, Gauge>,
    pub slots_busy: Family<KindLabel, Gauge>,
    pub gpu_utilization: Family<GpuLabels, Gauge<f64, AtomicU64>>,
    pub gpu_memory_used: Family<GpuLabels, Gauge>,
    pub gpu_memory_total: Family<GpuLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

/// A GPU as NVML names it; `gpu` is its index, as in dcgm-exporter's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabels {
    pub gpu: String,
    pub uuid: String,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ainern2d_worker");
        let jobs = Family::<OutcomeLabels, Counter>::default();
        // 1 ms .. ~9 h: covers a no-op job and a long video render.
        let stage_seconds = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.5, 18))
        });
        let overhead_seconds = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        let in_flight = Family::<KindLabel, Gauge>::default();
        let retries = Family::<KindLabel, Counter>::default();
        let upload_bytes = Family::<KindLabel, Counter>::default();
        let broker_connected = Gauge::default();
        let backend_up = Family::<KindLabel, Gauge>::default();
        let reconnects = Counter::default();
        let consumer_resubscribes = Counter::default();
        let outcome_failures = Counter::default();
        let unroutable = Counter::default();
        let leases = Family::<LeaseLabels, Counter>::default();
        let leased = Family::<KindLabel, Gauge>::default();
        registry.register("jobs", "Jobs finished, by kind and outcome", jobs.clone());
        registry.register(
            "stage_duration_seconds",
            "Time per job stage (queue, fetch, inference, upload, total)",
            stage_seconds.clone(),
        );
        registry.register(
            "overhead_seconds",
            "Runtime time per job outside fetch, inference and upload",
            overhead_seconds.clone(),
        );
        registry.register("jobs_in_flight", "Deliveries being handled", in_flight.clone());
        registry.register("retries", "Jobs sent to a retry queue", retries.clone());
        registry.register("upload_bytes", "Bytes uploaded to the artifact store", upload_bytes.clone());
        registry.register("broker_connected", "1 while the broker connection is up", broker_connected.clone());
        registry.register(
            "backend_up",
            "1 while the server a kind's pipeline runs on (ComfyUI) answers; absent for in-process pipelines",
            backend_up.clone(),
        );
        registry.register("broker_reconnects", "Broker connections re-established", reconnects.clone());
        registry.register(
            "consumer_resubscribes",
            "Consumers re-subscribed after a broker-side cancel",
            consumer_resubscribes.clone(),
        );
        registry.register(
            "outcome_failures",
            "Outcomes that could not be reported (publish or settle failed); the job went back to its queue",
            outcome_failures.clone(),
        );
        registry.register(
            "unroutable_publishes",
            "Mandatory publishes (retry and dead-letter copies) that no queue took",
            unroutable.clone(),
        );
        registry.register(
            "leases",
            "Job leases taken, renewed, released, and lease operations that failed (retried)",
            leases.clone(),
        );
        registry.register("leased_jobs", "Jobs held by a lease (their deliveries settled)", leased.clone());
        let stalled = Gauge::default();
        registry.register(
            "stalled_jobs",
            "Jobs whose pipeline has reported nothing for longer than liveness.stall_after_s (/health fails)",
            stalled.clone(),
        );
        let recycles = Family::<ReasonLabel, Counter>::default();
        registry.register("recycles", "Drains begun to replace this process (liveness.recycle_*)", recycles.clone());
        let ready = Gauge::default();
        registry.register("ready", "1 while /ready answers 200 (taking jobs)", ready.clone());
        let state = Family::<StateLabel, Gauge>::default();
        registry.register("state", "1 for the worker's state (starting, ready, cordoned, draining, …)", state.clone());
        let slots = Family::<KindLabel, Gauge>::default();
        registry.register("slots", "Inference slots per kind (lowered by a downgrade)", slots.clone());
        let slots_busy = Family::<KindLabel, Gauge>::default();
        registry.register("slots_busy", "Inference slots running a job", slots_busy.clone());
        let gpu_utilization = Family::<GpuLabels, Gauge<f64, AtomicU64>>::default();
        registry.register("gpu_utilization_ratio", "GPU busy share, from NVML (0-1)", gpu_utilization.clone());
        let gpu_memory_used = Family::<GpuLabels, Gauge>::default();
        registry.register("gpu_memory_used_bytes", "GPU memory in use, from NVML", gpu_memory_used.clone());
        let gpu_memory_total = Family::<GpuLabels, Gauge>::default();
        registry.register("gpu_memory_total_bytes", "GPU memory, from NVML", gpu_memory_total.clone());
        Metrics {
            registry,
            jobs,
            stage_seconds,
            overhead_seconds,
            in_flight,
            retries,
            upload_bytes,
            broker_connected,
            backend_up,
            reconnects,
            consumer_resubscribes,
            outcome_failures,
            unroutable,
            leases,
            leased,
            stalled,
            recycles,
            ready,
            state,
            slots,
            slots_busy,
            gpu_utilization,
            gpu_memory_used,
            gpu_memory_total,
        }
    }

    pub fn reason(reason: &str) -> ReasonLabel {
        ReasonLabel { reason: reason.to_string() }
    }

    pub fn kind(kind: &str) -> KindLabel {
        KindLabel { kind: kind.to_string() }
    }

    pub fn stage(&self, kind: &str, stage: &str, seconds: f64) {
        self.stage_seconds.get_or_create(&StageLabels { kind: kind.into(), stage: stage.into() }).observe(seconds);
    }

    pub fn outcome(&self, kind: &str, outcome: &str) {
        self.jobs.get_or_create(&OutcomeLabels { kind: kind.into(), outcome: outcome.into() }).inc();
    }

    pub fn lease(&self, kind: &str, event: &str) {
        self.leases.get_or_create(&LeaseLabels { kind: kind.into(), event: event.into() }).inc();
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
