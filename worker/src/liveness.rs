//! Liveness that proves progress, and recycling.
//!
//! `/health` fails while a job's pipeline has reported nothing (no progress, no token) for
//! `liveness.stall_after_s`: a wedged GPU call or a ComfyUI that hangs keeps the process alive but useless,
//! and only a restart helps (its job comes back to its queue). The limit is the debounce: one slow step
//! shorter than it never fails the probe, and the probe's own failure threshold adds to it. Liveness is
//! separate from readiness: a draining or cordoned worker is live, and a worker without a job in a
//! pipeline is never stalled.
//!
//! Recycling: after `recycle_after_jobs` outcomes, or with this process's resident memory above
//! `recycle_above_rss_mb`, or its GPU memory (NVML's per-process accounting) above
//! `recycle_above_vram_mb`, the worker drains as on SIGTERM and exits 0, for its supervisor to start a
//! fresh process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ainern2d_contract::JobKind;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::metrics::Metrics;

/// The pipelines running now and when each last reported.
#[derive(Default)]
pub struct Progressing {
    running: Mutex<HashMap<u64, Silent>>,
    ids: AtomicU64,
}

struct Silent {
    job_id: String,
    kind: JobKind,
    since: Instant,
}

/// A job whose pipeline has been silent longer than the limit.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Stalled {
    pub job_id: String,
    pub kind: JobKind,
    pub silent_s: u64,
}

impl Progressing {
    /// Watches a pipeline run from now until the returned value is dropped.
    pub fn watch(self: &Arc<Self>, job_id: &str, kind: JobKind) -> Watched {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let silent = Silent { job_id: job_id.to_string(), kind, since: Instant::now() };
        self.running.lock().expect("progress lock").insert(id, silent);
        Watched { owner: self.clone(), id }
    }

    /// The runs silent for longer than `after`, the longest first.
    pub fn stalled(&self, after: Duration) -> Vec<Stalled> {
        let running = self.running.lock().expect("progress lock");
        let mut stalled: Vec<_> = running
            .values()
            .filter(|s| s.since.elapsed() > after)
            .map(|s| Stalled { job_id: s.job_id.clone(), kind: s.kind, silent_s: s.since.elapsed().as_secs() })
            .collect();
        stalled.sort_by_key(|s| std::cmp::Reverse(s.silent_s));
        stalled
    }
}

pub struct Watched {
    owner: Arc<Progressing>,
    id: u64,
}

impl Watched {
    /// The pipeline reported something: its silence starts again.
    pub fn reported(&self) {
        if let Some(s) = self.owner.running.lock().expect("progress lock").get_mut(&self.id) {
            s.since = Instant::now();
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.owner.running.lock().expect("progress lock").remove(&self.id);
    }
}

impl Shared {
    /// The stalled runs `/health` reports (none when `liveness.stall_after_s` is 0).
    pub fn stalled(&self) -> Vec<Stalled> {
        match self.config.liveness.stall_after_s {
            0 => Vec::new(),
            s => self.progressing.stalled(Duration::from_secs(s)),
        }
    }
}

/// Why this process should be replaced by a fresh one, if it should.
fn recycle_reason(shared: &Shared) -> Option<(&'static str, String)> {
    let cfg = &shared.config.liveness;
    let done = shared.outcomes_reported();
    if cfg.recycle_after_jobs > 0 && done >= cfg.recycle_after_jobs {
        return Some((
            "jobs",
            format!("{done} outcomes reported (liveness.recycle_after_jobs = {})", cfg.recycle_after_jobs),
        ));
    }
    if cfg.recycle_above_rss_mb > 0
        && let Some(rss) = resident_bytes()
        && rss > cfg.recycle_above_rss_mb * MIB
    {
        let why =
            format!("resident memory {} MiB (liveness.recycle_above_rss_mb = {})", rss / MIB, cfg.recycle_above_rss_mb);
        return Some(("rss", why));
    }
    if cfg.recycle_above_vram_mb > 0
        && let Some(vram) = shared.gpus.process_memory(std::process::id())
        && vram > cfg.recycle_above_vram_mb * MIB
    {
        let why =
            format!("GPU memory {} MiB (liveness.recycle_above_vram_mb = {})", vram / MIB, cfg.recycle_above_vram_mb);
        return Some(("vram", why));
    }
    None
}

const MIB: u64 = 1024 * 1024;

/// This process's resident memory (Linux: `VmRSS` of `/proc/self/status`); `None` elsewhere.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix(" kB")?.parse().ok())?;
    Some(kb * 1024)
}

/// Every `liveness.check_interval_s`: the stalled-jobs gauge, and a recycle (the shutdown token, which
/// drains as SIGTERM does) when a limit is reached.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let cfg = shared.config.liveness.clone();
    if cfg.recycle_above_vram_mb > 0 && shared.gpus.process_memory(std::process::id()).is_none() {
        tracing::warn!("liveness.recycle_above_vram_mb is set, but NVML is not available: GPU memory is not watched");
    }
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.check_interval_s));
    let mut reported = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let stalled = shared.stalled();
        shared.metrics.stalled.set(i64::try_from(stalled.len()).unwrap_or(i64::MAX));
        // Logged when the count grows, not at every check.
        if stalled.len() > reported
            && let Some(first) = stalled.first()
        {
            tracing::error!(job_id = %first.job_id, kind = %first.kind, silent_s = first.silent_s, stalled = stalled.len(),
                "a pipeline has reported no progress for longer than liveness.stall_after_s; /health fails");
        }
        reported = stalled.len();
        if let Some((reason, why)) = recycle_reason(&shared) {
            tracing::warn!(
                reason,
                "recycling this worker: {why}; draining, then exiting 0 for the supervisor to restart it"
            );
            shared.metrics.recycles.get_or_create(&Metrics::reason(reason)).inc();
            shutdown.cancel();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_stalled_only_while_silent_past_the_limit() {
        let p = Arc::new(Progressing::default());
        let limit = Duration::from_millis(40);
        let quiet = p.watch("quiet", JobKind::Video);
        let busy = p.watch("busy", JobKind::Llm);
        assert!(p.stalled(limit).is_empty(), "nothing is stalled at its start");
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(15));
            busy.reported();
        }
        let stalled = p.stalled(limit);
        assert_eq!(stalled.iter().map(|s| s.job_id.as_str()).collect::<Vec<_>>(), ["quiet"]);
        assert_eq!(stalled[0].kind, JobKind::Video);
        quiet.reported();
        assert!(p.stalled(limit).is_empty(), "a report ends the stall");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(p.stalled(limit).len(), 2);
        drop((quiet, busy));
        assert!(p.stalled(Duration::ZERO).is_empty(), "a finished run is never stalled");
    }

    #[test]
    fn resident_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let rss = resident_bytes().expect("statm");
            assert!(rss > MIB && rss < 64 * 1024 * MIB, "{rss}");
        }
    }
}
