//! The servers pipelines run on (ComfyUI), probed every few seconds on a blocking thread. What the last
//! probe found is in `/ready` and in heartbeats; while a kind's server does not answer, the worker holds
//! no subscription to that kind's queue, so its jobs wait for a worker that can run them instead of
//! being taken, failed and retried here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ainern2d_contract::{BackendStatus, GpuStats, JobKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Probes in a row that must fail before a kind's server counts as down: one slow answer from a busy
/// server should not make the worker let go of its queue.
const DOWN_AFTER: u32 = 2;

/// Per kind: the last probe's answer and whether the kind's jobs may be taken.
pub struct Backends {
    last: Mutex<BTreeMap<JobKind, BackendStatus>>,
    up: BTreeMap<JobKind, watch::Sender<bool>>,
}

impl Backends {
    pub fn new(kinds: &[JobKind]) -> Backends {
        Backends { last: Mutex::default(), up: kinds.iter().map(|k| (*k, watch::Sender::new(true))).collect() }
    }

    /// What the last probe of each kind's server found (kinds with an in-process pipeline are absent).
    pub fn statuses(&self) -> BTreeMap<JobKind, BackendStatus> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Follows whether `kind`'s server answers (always true for in-process pipelines).
    pub fn watch_up(&self, kind: JobKind) -> watch::Receiver<bool> {
        self.up.get(&kind).map_or_else(|| watch::Sender::new(true).subscribe(), watch::Sender::subscribe)
    }

    fn record(&self, kind: JobKind, status: BackendStatus, up: bool) {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).insert(kind, status);
        if let Some(tx) = self.up.get(&kind) {
            tx.send_if_modified(|was| std::mem::replace(was, up) != up);
        }
    }

    /// GPU memory as backend servers report it, for heartbeats of a worker without NVML.
    pub fn gpus(&self) -> Vec<GpuStats> {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let mut seen = std::collections::BTreeSet::new();
        last.values()
            .filter(|s| s.reachable)
            .flat_map(|s| s.devices.iter().map(move |d| (s, d)))
            .filter(|(_, d)| d.kind != "cpu" && d.vram_total_bytes > 0 && seen.insert((d.index, d.name.clone())))
            .map(|(s, d)| GpuStats {
                index: d.index,
                name: d.name.clone(),
                uuid: String::new(),
                utilization_pct: 0,
                memory_used_bytes: d.vram_total_bytes.saturating_sub(d.vram_free_bytes),
                memory_total_bytes: d.vram_total_bytes,
                temperature_c: None,
                power_w: None,
                source: Some(s.backend.clone()),
            })
            .collect()
    }
}

/// How often servers are probed: the heartbeat interval, at most 5 s.
pub fn interval(shared: &Shared) -> Duration {
    Duration::from_millis(shared.config.heartbeat.interval_ms.clamp(100, 5_000))
}

/// Probes every pipeline that has a server until `stop` fires.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut failures: BTreeMap<JobKind, u32> = BTreeMap::new();
    let mut tick = tokio::time::interval(interval(&shared));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        for (kind, pipeline) in &shared.pipelines {
            let p = pipeline.clone();
            let Ok(Some(status)) = tokio::task::spawn_blocking(move || p.probe()).await else { continue };
            let failed = failures.entry(*kind).or_default();
            *failed = if status.reachable { 0 } else { *failed + 1 };
            let up = *failed < DOWN_AFTER;
            let was_up = *shared.backends.watch_up(*kind).borrow();
            if was_up && !up {
                tracing::warn!(kind = %kind, backend = %status.backend, url = %status.url, error = status.error.as_deref().unwrap_or(""), "backend unreachable; taking no {kind} jobs until it answers");
            } else if !was_up && up {
                tracing::info!(kind = %kind, backend = %status.backend, "backend answers again; taking {kind} jobs");
            }
            shared.metrics.backend_up.get_or_create(&crate::metrics::Metrics::kind(kind.as_str())).set(i64::from(up));
            shared.backends.record(*kind, status, up);
        }
    }
}
