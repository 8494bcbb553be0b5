//! Heartbeats with GPU telemetry from NVML, and what the servers pipelines run on (ComfyUI) last said of
//! themselves. No NVML (no GPU, no driver, a Mac) means the GPU memory ComfyUI reports, if any, or no GPU
//! fields; not an error.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ainern2d_contract::topology::Topology;
use ainern2d_contract::{GpuStats, HEARTBEAT_SCHEMA, Heartbeat, SlotUsage};
use tokio_util::sync::CancellationToken;

use crate::Shared;
use ainern2d_queue::Message;

use crate::broker::Publisher;

/// NVML, opened once. `None` when the library or a GPU is absent.
pub struct Gpus(Option<nvml_wrapper::Nvml>);

impl Gpus {
    pub fn open() -> Self {
        match nvml_wrapper::Nvml::init() {
            Ok(nvml) => Gpus(Some(nvml)),
            Err(e) => {
                tracing::info!("NVML not available ({e}); heartbeats carry no GPU telemetry");
                Gpus(None)
            }
        }
    }

    pub fn stats(&self) -> Vec<GpuStats> {
        let Some(nvml) = &self.0 else { return Vec::new() };
        let count = nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let d = nvml.device_by_index(index).ok()?;
                let memory = d.memory_info().ok()?;
                Some(GpuStats {
                    index,
                    name: d.name().unwrap_or_default(),
                    uuid: d.uuid().unwrap_or_default(),
                    utilization_pct: d.utilization_rates().map(|u| u.gpu).unwrap_or(0),
                    memory_used_bytes: memory.used,
                    memory_total_bytes: memory.total,
                    temperature_c: d.temperature(nvml_wrapper::enum_wrappers::device::TemperatureSensor::Gpu).ok(),
                    power_w: d.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
                    source: None,
                })
            })
            .collect()
    }

    /// The GPU memory process `pid` holds on every GPU (NVML's per-process accounting); `None` without NVML.
    pub fn process_memory(&self, pid: u32) -> Option<u64> {
        use nvml_wrapper::enums::device::UsedGpuMemory;
        let nvml = self.0.as_ref()?;
        let count = nvml.device_count().ok()?;
        let mut total = 0;
        for index in 0..count {
            let Ok(device) = nvml.device_by_index(index) else { continue };
            for p in device.running_compute_processes().unwrap_or_default() {
                if let (true, UsedGpuMemory::Used(bytes)) = (p.pid == pid, p.used_gpu_memory) {
                    total += bytes;
                }
            }
        }
        Some(total)
    }
}

pub fn build(shared: &Shared) -> Heartbeat {
    let slots: BTreeMap<String, SlotUsage> = shared
        .config
        .jobs
        .kinds
        .iter()
        .map(|k| {
            let (total, busy) = shared.slots[k].usage();
            (k.as_str().to_string(), SlotUsage { total, busy })
        })
        .collect();
    Heartbeat {
        schema: HEARTBEAT_SCHEMA.into(),
        worker_id: shared.config.worker_id.clone(),
        host: hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        version: env!("CARGO_PKG_VERSION").into(),
        state: shared.state(),
        sent_at: chrono::Utc::now(),
        slots,
        models_loaded: shared
            .models
            .as_ref()
            .map(|m| m.cache.resident().into_iter().map(|r| r.name).collect())
            .unwrap_or_default(),
        gpus: {
            // Without NVML, ComfyUI's view of the GPU is better than none (its memory, not its load).
            let nvml = shared.gpus.stats();
            if nvml.is_empty() { shared.backends.gpus() } else { nvml }
        },
        downgrade: shared.downgrade().map(|d| d.name),
        backends: shared.backends.statuses().into_iter().map(|(k, s)| (k.as_str().to_string(), s)).collect(),
    }
}

/// Publishes a heartbeat. It is built on a blocking thread: NVML queries can take milliseconds per GPU
/// (and block much longer when a driver is wedged), which the reactor must never wait for.
pub async fn send(shared: &Arc<Shared>, publisher: &Publisher) {
    let built = shared.clone();
    let Ok(heartbeat) = tokio::task::spawn_blocking(move || build(&built)).await else { return };
    let body = serde_json::to_vec(&heartbeat).expect("heartbeats serialize");
    let key = Topology::heartbeat_routing_key(&shared.config.worker_id);
    if let Err(e) = publisher.publish_nowait(&shared.topology.events_exchange(), &key, &Message::json(body)).await {
        tracing::debug!("heartbeat not sent: {e}");
    }
}

pub async fn run(shared: Arc<Shared>, publisher: Publisher, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(shared.config.heartbeat.interval_ms.max(100)));
    loop {
        tokio::select! {
            _ = tick.tick() => send(&shared, &publisher).await,
            _ = stop.cancelled() => return,
        }
    }
}
