//! The warm-model cache: loaded models stay resident while they fit the device's memory budget; loading a
//! model that does not fit evicts the least recently used models that no job is using. Two jobs asking
//! for the same cold model load it once.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::ModelError;

/// A loaded model handed to a job. While any lease is alive the model is "in use" and is not evicted.
pub type Lease<T> = Arc<T>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabel {
    device: String,
}

/// Cache metrics, registered into the worker's registry (label sets are bounded by the manifest).
#[derive(Clone)]
pub struct CacheMetrics {
    load_seconds: Family<ModelLabel, Histogram>,
    hits: Family<ModelLabel, Counter>,
    misses: Family<ModelLabel, Counter>,
    evictions: Family<ModelLabel, Counter>,
    load_failures: Family<ModelLabel, Counter>,
    bytes_resident: Family<DeviceLabel, Gauge>,
}

impl Default for CacheMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for CacheMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheMetrics")
    }
}

impl CacheMetrics {
    pub fn new() -> Self {
        CacheMetrics {
            // 10 ms .. ~40 min: a tiny test model up to a 70B checkpoint from a slow disk.
            load_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.01, 2.5, 14))),
            hits: Family::default(),
            misses: Family::default(),
            evictions: Family::default(),
            load_failures: Family::default(),
            bytes_resident: Family::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register("model_load_seconds", "Time to load a model into memory", self.load_seconds.clone());
        registry.register("model_cache_hits", "Jobs that found their model loaded", self.hits.clone());
        registry.register("model_cache_misses", "Jobs that had to load their model", self.misses.clone());
        registry.register("model_cache_evictions", "Models unloaded to make room", self.evictions.clone());
        registry.register("model_load_failures", "Model loads that failed", self.load_failures.clone());
        registry.register("model_bytes_resident", "Estimated memory of the loaded models", self.bytes_resident.clone());
    }

    fn model(name: &str) -> ModelLabel {
        ModelLabel { model: name.to_string() }
    }
}

struct Entry {
    value: Arc<dyn Any + Send + Sync>,
    device: String,
    bytes: u64,
    last_used: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Memory promised to loads in progress, per device.
    reserved: HashMap<String, u64>,
}

impl State {
    fn used(&self, device: &str) -> u64 {
        let resident: u64 = self.entries.values().filter(|e| e.device == device).map(|e| e.bytes).sum();
        resident + self.reserved.get(device).copied().unwrap_or(0)
    }
}

/// Memory promised to a load in progress; returned when dropped.
struct Reservation<'a> {
    cache: &'a ModelCache,
    device: &'a str,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut state = self.cache.state.lock().unwrap_or_else(PoisonError::into_inner);
        *state.reserved.entry(self.device.to_string()).or_default() -= self.bytes;
    }
}

/// What a cached model looks like from outside (for logs, `/ready` details and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resident {
    pub name: String,
    pub device: String,
    pub bytes: u64,
    pub in_use: bool,
}

pub struct ModelCache {
    budgets: BTreeMap<String, u64>,
    state: Mutex<State>,
    /// One lock per model name, held while that model loads.
    loading: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    clock: AtomicU64,
    metrics: CacheMetrics,
}

impl ModelCache {
    /// `budgets`: bytes per device key (`cpu`, `cuda:0`).
    pub fn new(budgets: BTreeMap<String, u64>, metrics: CacheMetrics) -> Self {
        ModelCache {
            budgets,
            state: Mutex::new(State::default()),
            loading: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
            metrics,
        }
    }

    pub fn budget(&self, device: &str) -> u64 {
        self.budgets.get(device).copied().unwrap_or(0)
    }

    /// The loaded model `name`, loading it with `load` on a miss (after evicting what must go). Returns
    /// the lease and whether it was already loaded. `bytes` is the model's memory estimate.
    pub fn get_or_load<T, F>(
        &self,
        name: &str,
        device: &str,
        bytes: u64,
        load: F,
    ) -> Result<(Lease<T>, bool), ModelError>
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Result<T, ModelError>,
    {
        self.get_or_load_until(name, device, bytes, &|| false, load)
    }

    /// [`ModelCache::get_or_load`] for a job: while another caller loads the same model, `cancelled` is
    /// polled, and a cancelled job stops waiting with [`ModelError::Cancelled`].
    pub fn get_or_load_until<T, F>(
        &self,
        name: &str,
        device: &str,
        bytes: u64,
        cancelled: &(dyn Fn() -> bool + Sync),
        load: F,
    ) -> Result<(Lease<T>, bool), ModelError>
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Result<T, ModelError>,
    {
        if let Some(hit) = self.lookup::<T>(name)? {
            self.metrics.hits.get_or_create(&CacheMetrics::model(name)).inc();
            return Ok((hit, true));
        }
        let gate =
            self.loading.lock().unwrap_or_else(PoisonError::into_inner).entry(name.to_string()).or_default().clone();
        // A load that panicked poisons the gate; the next caller simply loads again.
        let _loading = loop {
            match gate.try_lock() {
                Ok(guard) => break guard,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    if cancelled() {
                        return Err(ModelError::Cancelled { what: format!("model `{name}` to load") });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        };
        // Someone else may have loaded it while we waited for the gate.
        if let Some(hit) = self.lookup::<T>(name)? {
            self.metrics.hits.get_or_create(&CacheMetrics::model(name)).inc();
            return Ok((hit, true));
        }
        self.metrics.misses.get_or_create(&CacheMetrics::model(name)).inc();
        self.reserve(name, device, bytes)?;
        // The reservation is returned however the load ends, a panic included.
        let reservation = Reservation { cache: self, device, bytes };
        let started = Instant::now();
        let loaded = load();
        drop(reservation);
        let mut state = self.state.lock().expect("cache lock");
        let value = match loaded {
            Ok(v) => Arc::new(v),
            Err(e) => {
                self.metrics.load_failures.get_or_create(&CacheMetrics::model(name)).inc();
                return Err(e);
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.load_seconds.get_or_create(&CacheMetrics::model(name)).observe(seconds);
        let entry = Entry {
            value: value.clone(),
            device: device.to_string(),
            bytes,
            last_used: self.clock.fetch_add(1, Ordering::Relaxed),
        };
        state.entries.insert(name.to_string(), entry);
        self.publish_resident(&state, device);
        tracing::info!(model = name, device, mb = bytes / (1024 * 1024), seconds, "model loaded");
        Ok((value, false))
    }

    /// The loaded model `name`, if it is resident (counted as a hit).
    pub fn get<T: Send + Sync + 'static>(&self, name: &str) -> Result<Option<Lease<T>>, ModelError> {
        let hit = self.lookup::<T>(name)?;
        if hit.is_some() {
            self.metrics.hits.get_or_create(&CacheMetrics::model(name)).inc();
        }
        Ok(hit)
    }

    fn lookup<T: Send + Sync + 'static>(&self, name: &str) -> Result<Option<Lease<T>>, ModelError> {
        let mut state = self.state.lock().expect("cache lock");
        let Some(entry) = state.entries.get_mut(name) else { return Ok(None) };
        entry.last_used = self.clock.fetch_add(1, Ordering::Relaxed);
        let value = entry.value.clone();
        value.downcast::<T>().map(Some).map_err(|_| ModelError::Load {
            name: name.to_string(),
            message: "the model is loaded as a different kind of model".into(),
        })
    }

    /// Makes room for `bytes` on `device` and reserves it, evicting idle models, least recently used first.
    fn reserve(&self, name: &str, device: &str, bytes: u64) -> Result<(), ModelError> {
        const MB: u64 = 1024 * 1024;
        let budget = self.budget(device);
        if bytes > budget {
            return Err(ModelError::TooLarge {
                name: name.to_string(),
                device: device.to_string(),
                needed_mb: bytes.div_ceil(MB),
                budget_mb: budget / MB,
            });
        }
        let mut state = self.state.lock().expect("cache lock");
        // Choose the victims first (idle models, least recently used first) and evict only when they free
        // enough: a load that cannot fit must not flush warm models for nothing.
        let mut idle: Vec<(u64, String, u64)> = state
            .entries
            .iter()
            .filter(|(_, e)| e.device == device && Arc::strong_count(&e.value) == 1)
            .map(|(n, e)| (e.last_used, n.clone(), e.bytes))
            .collect();
        idle.sort();
        let mut needed = (state.used(device) + bytes).saturating_sub(budget);
        let mut victims = Vec::new();
        for (_, victim, size) in idle {
            if needed == 0 {
                break;
            }
            needed = needed.saturating_sub(size);
            victims.push(victim);
        }
        if needed > 0 {
            let mut busy: Vec<String> = state
                .entries
                .iter()
                .filter(|(_, e)| e.device == device && Arc::strong_count(&e.value) > 1)
                .map(|(n, _)| n.clone())
                .collect();
            busy.sort();
            if state.reserved.get(device).copied().unwrap_or(0) > 0 {
                busy.push("models being loaded".into());
            }
            return Err(ModelError::BudgetBusy {
                name: name.to_string(),
                device: device.to_string(),
                needed_mb: bytes.div_ceil(MB),
                budget_mb: budget / MB,
                busy,
            });
        }
        let mut evicted = Vec::new();
        for victim in victims {
            let entry = state.entries.remove(&victim).expect("victim is present");
            self.metrics.evictions.get_or_create(&CacheMetrics::model(&victim)).inc();
            tracing::info!(model = %victim, device, mb = entry.bytes / MB, for_model = name, "model evicted");
            evicted.push(entry);
        }
        *state.reserved.entry(device.to_string()).or_default() += bytes;
        self.publish_resident(&state, device);
        drop(state);
        // The evicted models' memory is freed here, outside the lock.
        drop(evicted);
        Ok(())
    }

    /// Counts a load that failed before the model's loader ran (a download, a checksum).
    pub fn record_load_failure(&self, name: &str) {
        self.metrics.load_failures.get_or_create(&CacheMetrics::model(name)).inc();
    }

    /// Forgets a loaded model: the next request loads it again (jobs holding it keep their lease).
    pub fn invalidate(&self, name: &str) {
        let mut state = self.state.lock().expect("cache lock");
        if let Some(entry) = state.entries.remove(name) {
            let device = entry.device.clone();
            self.publish_resident(&state, &device);
            tracing::info!(model = name, "model unloaded, to be loaded afresh");
        }
    }

    fn publish_resident(&self, state: &State, device: &str) {
        let resident: u64 = state.entries.values().filter(|e| e.device == device).map(|e| e.bytes).sum();
        self.metrics
            .bytes_resident
            .get_or_create(&DeviceLabel { device: device.to_string() })
            .set(i64::try_from(resident).unwrap_or(i64::MAX));
    }

    /// The loaded models, most recently used first.
    pub fn resident(&self) -> Vec<Resident> {
        let state = self.state.lock().expect("cache lock");
        let mut list: Vec<(u64, Resident)> = state
            .entries
            .iter()
            .map(|(name, e)| {
                (
                    e.last_used,
                    Resident {
                        name: name.clone(),
                        device: e.device.clone(),
                        bytes: e.bytes,
                        in_use: Arc::strong_count(&e.value) > 1,
                    },
                )
            })
            .collect();
        list.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
        list.into_iter().map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    const MB: u64 = 1024 * 1024;

    fn cache(budget_mb: u64) -> (ModelCache, Registry) {
        let metrics = CacheMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        (ModelCache::new([("cpu".to_string(), budget_mb * MB)].into(), metrics), registry)
    }

    fn names(c: &ModelCache) -> Vec<String> {
        c.resident().into_iter().map(|r| r.name).collect()
    }

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn evicts_the_least_recently_used_idle_model() {
        let (c, registry) = cache(100);
        let load = |v: &'static str| move || Ok::<_, ModelError>(v.to_string());
        drop(c.get_or_load("a", "cpu", 40 * MB, load("A")).unwrap());
        drop(c.get_or_load("b", "cpu", 40 * MB, load("B")).unwrap());
        // Touch `a`, so `b` is the least recently used.
        let (a, hit) = c.get_or_load::<String, _>("a", "cpu", 40 * MB, load("A'")).unwrap();
        assert!(hit);
        assert_eq!(*a, "A", "a hit returns the loaded value");
        drop(a);
        drop(c.get_or_load("c", "cpu", 40 * MB, load("C")).unwrap());
        assert_eq!(names(&c), ["c", "a"]);
        let text = render(&registry);
        assert!(text.contains("model_cache_evictions_total{model=\"b\"} 1"), "{text}");
        assert!(text.contains("model_cache_hits_total{model=\"a\"} 1"), "{text}");
        assert!(text.contains("model_cache_misses_total{model=\"c\"} 1"), "{text}");
        assert!(text.contains(&format!("model_bytes_resident{{device=\"cpu\"}} {}", 80 * MB)), "{text}");
        assert!(text.contains("model_load_seconds_count{model=\"a\"} 1"), "{text}");
    }

    #[test]
    fn models_in_use_are_not_evicted() {
        let (c, _) = cache(100);
        let (a, _) = c.get_or_load("a", "cpu", 60 * MB, || Ok::<_, ModelError>(1u32)).unwrap();
        let err = c.get_or_load("b", "cpu", 60 * MB, || Ok::<_, ModelError>(2u32)).unwrap_err();
        assert!(matches!(err, ModelError::BudgetBusy { .. }), "{err}");
        assert!(err.is_retryable());
        assert!(err.to_string().contains("(a)"), "{err}");
        drop(a);
        c.get_or_load("b", "cpu", 60 * MB, || Ok::<_, ModelError>(2u32)).unwrap();
        assert_eq!(names(&c), ["b"]);
    }

    #[test]
    fn a_load_that_cannot_fit_evicts_nothing() {
        let (c, _) = cache(100);
        drop(c.get_or_load("idle", "cpu", 30 * MB, || Ok::<_, ModelError>(1u32)).unwrap());
        let (busy, _) = c.get_or_load("busy", "cpu", 50 * MB, || Ok::<_, ModelError>(2u32)).unwrap();
        let err = c.get_or_load("new", "cpu", 60 * MB, || Ok::<_, ModelError>(3u32)).unwrap_err();
        assert!(matches!(err, ModelError::BudgetBusy { .. }), "{err}");
        assert_eq!(names(&c), ["busy", "idle"], "the idle model stays: evicting it would not make room");
        drop(busy);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = c.get_or_load::<u32, _>("boom", "cpu", 10 * MB, || panic!("loader bug"));
        }));
        assert!(panicked.is_err());
        // The panicked load's reservation came back and its gate still works.
        c.get_or_load("boom", "cpu", 20 * MB, || Ok::<_, ModelError>(4u32)).unwrap();
        c.get_or_load("new", "cpu", 60 * MB, || Ok::<_, ModelError>(3u32)).unwrap();
    }

    #[test]
    fn a_cancelled_job_stops_waiting_for_another_jobs_load() {
        let (c, _) = cache(100);
        let c = Arc::new(c);
        let loader = {
            let c = c.clone();
            std::thread::spawn(move || {
                c.get_or_load("slow", "cpu", MB, || {
                    std::thread::sleep(std::time::Duration::from_millis(800));
                    Ok::<_, ModelError>(1u32)
                })
                .unwrap();
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        let started = Instant::now();
        let deadline = started + std::time::Duration::from_millis(100);
        let err = c
            .get_or_load_until::<u32, _>("slow", "cpu", MB, &|| Instant::now() > deadline, || unreachable!())
            .unwrap_err();
        assert!(matches!(err, ModelError::Cancelled { .. }), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_millis(500), "{:?}", started.elapsed());
        loader.join().unwrap();
    }

    #[test]
    fn a_model_larger_than_the_budget_is_refused_without_evicting() {
        let (c, _) = cache(100);
        drop(c.get_or_load("a", "cpu", 60 * MB, || Ok::<_, ModelError>(1u32)).unwrap());
        let err = c.get_or_load("huge", "cpu", 200 * MB, || Ok::<_, ModelError>(2u32)).unwrap_err();
        assert!(err.to_string().contains("needs 200 MB but the cpu budget is 100 MB"), "{err}");
        assert!(!err.is_retryable());
        assert_eq!(names(&c), ["a"]);
    }

    #[test]
    fn concurrent_requests_load_once_and_failures_are_not_cached() {
        let (c, _) = cache(100);
        let c = Arc::new(c);
        let loads = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (c, loads) = (c.clone(), loads.clone());
                std::thread::spawn(move || {
                    c.get_or_load("a", "cpu", MB, || {
                        loads.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        Ok::<_, ModelError>(7u32)
                    })
                    .unwrap()
                    .0
                })
            })
            .collect();
        for t in threads {
            assert_eq!(*t.join().unwrap(), 7);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        let err = c
            .get_or_load::<u32, _>("bad", "cpu", MB, || {
                Err(ModelError::Load { name: "bad".into(), message: "corrupt".into() })
            })
            .unwrap_err();
        assert!(err.to_string().contains("corrupt"));
        assert_eq!(names(&c), ["a"], "a failed load leaves nothing resident");
        // The reservation of the failed load was returned: the whole budget minus `a` is still available.
        c.get_or_load("big", "cpu", 99 * MB, || Ok::<_, ModelError>(1u32)).unwrap();
    }
}
