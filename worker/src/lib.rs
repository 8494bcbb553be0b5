//! The ainern2d worker: pulls jobs from RabbitMQ, runs them through a pipeline, stores the outputs in S3 and
//! publishes result events. See `ARCHITECTURE.md` for the map.
//!
//! The broker is reached through the job-queue boundary (`ainern2d-queue`: RabbitMQ or in-process) and
//! the artifact store through `store::ArtifactStore` (S3 or a local directory); pipelines see local files,
//! the contract sees bytes. Only this crate knows aws-sdk-s3.

pub mod backends;
pub mod broker;
pub mod config;
pub mod control;
pub mod doctor;
pub mod events;
pub mod exec;
pub mod fetch;
pub mod heartbeat;
pub mod http;
pub mod job;
pub mod lifecycle;
pub mod liveness;
pub mod metrics;
pub mod models;
pub mod runner;
pub mod s3;
pub mod scratch;
pub mod slots;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::time::Duration;

use ainern2d_contract::topology::Topology;
use ainern2d_contract::{JobKind, WorkerState};
use ainern2d_pipelines::Pipeline;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StoreKind};
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use crate::store::{ArtifactStore, LocalStore};

/// State shared by every task of the daemon.
pub struct Shared {
    pub config: Config,
    pub broker: Arc<dyn ainern2d_queue::Broker>,
    pub topology: Topology,
    pub store: Arc<dyn ArtifactStore>,
    pub fetcher: Fetcher,
    pub pipelines: BTreeMap<JobKind, Arc<dyn Pipeline>>,
    /// The model manifest and warm-model cache, when `models.manifest` is set.
    pub models: Option<Arc<ainern2d_models::Models>>,
    /// Inference slots per kind (a downgrade profile may lower them).
    pub slots: BTreeMap<JobKind, slots::Slots>,
    pub metrics: Metrics,
    pub gpus: heartbeat::Gpus,
    /// What the servers pipelines run on (ComfyUI) said when last probed.
    pub backends: backends::Backends,
    broker_connected: AtomicBool,
    store_ready: AtomicBool,
    state: AtomicU8,
    pub(crate) stopping: AtomicBool,
    /// Whether consumers should hold a subscription (false while cordoned, draining or stopping).
    pub(crate) accepting: tokio::sync::watch::Sender<bool>,
    /// The downgrade profile applied to jobs that start from now on.
    pub(crate) downgrade: std::sync::RwLock<Option<ainern2d_contract::DowngradeProfile>>,
    /// The jobs in flight, by job id (cancel reaches them; one run of a job at a time).
    pub(crate) running: Arc<job::registry::Registry>,
    /// Outcomes in a row that could not be reported (readiness says so while it is above 0), and why.
    outcome_failures: AtomicU32,
    last_outcome_error: std::sync::Mutex<Option<String>>,
    /// This process's scratch directory (locked; what a killed worker left is swept at start).
    pub scratch: scratch::ScratchRoot,
    /// Job ids cancelled before they were delivered here (bounded, oldest forgotten first).
    pub(crate) cancelled: std::sync::Mutex<std::collections::VecDeque<String>>,
    /// The pipelines running now and when each last reported (liveness).
    pub progressing: Arc<liveness::Progressing>,
    /// Outcomes reported since start (for `liveness.recycle_after_jobs`).
    outcomes_reported: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// The daemon's parts as the config names them: RabbitMQ at `broker.url`, the configured store.
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let store: Arc<dyn ArtifactStore> = match config.store.kind {
            StoreKind::S3 => Arc::new(
                s3::S3Store::from_config(&config.store)?.with_upload_journal(config.scratch_dir.join("uploads")),
            ),
            StoreKind::Local => Arc::new(LocalStore::new(config.store.local_dir.clone())),
        };
        let broker = Arc::new(ainern2d_queue::amqp::AmqpBroker::new(config.broker.url.clone()));
        Self::with_parts(config, broker, store, None)
    }

    /// The daemon over a given broker and store (the local mode passes the in-process ones).
    /// `local_inputs`: the directory relative input paths are read from (the local mode only; the daemon
    /// refuses such inputs).
    pub fn with_parts(
        config: Config,
        broker: Arc<dyn ainern2d_queue::Broker>,
        store: Arc<dyn ArtifactStore>,
        local_inputs: Option<std::path::PathBuf>,
    ) -> anyhow::Result<Arc<Self>> {
        let fetcher = Fetcher::new(&config.fetch, Some(store.clone()), local_inputs);
        let mut metrics = Metrics::new();
        let gpus = heartbeat::Gpus::open();
        let models = match &config.models.manifest {
            Some(path) => {
                let cache_metrics = ainern2d_models::CacheMetrics::new();
                cache_metrics.register(&mut metrics.registry);
                let gpu_totals: Vec<u64> = gpus.stats().iter().map(|g| g.memory_total_bytes).collect();
                Some(models::open(path, Some(store.clone()), cache_metrics, &gpu_totals)?)
            }
            None => None,
        };
        let pipelines = config
            .jobs
            .kinds
            .iter()
            .map(|k| Ok((*k, models::pipeline(&config, *k, models.as_ref())?)))
            .collect::<anyhow::Result<_>>()?;
        let slots = config.jobs.kinds.iter().map(|k| (*k, slots::Slots::new(config.slots(*k)))).collect();
        let backends = backends::Backends::new(&config.jobs.kinds);
        let scratch = scratch::ScratchRoot::open(&config.scratch_dir)
            .map_err(|e| anyhow::anyhow!("cannot create scratch_dir {}: {e}", config.scratch_dir.display()))?;
        Ok(Arc::new(Shared {
            broker,
            topology: Topology::new(config.broker.prefix.clone()),
            config,
            store,
            fetcher,
            pipelines,
            models,
            slots,
            metrics,
            gpus,
            backends,
            broker_connected: AtomicBool::new(false),
            store_ready: AtomicBool::new(false),
            state: AtomicU8::new(0),
            stopping: AtomicBool::new(false),
            accepting: tokio::sync::watch::Sender::new(true),
            downgrade: std::sync::RwLock::new(None),
            running: Arc::default(),
            outcome_failures: AtomicU32::new(0),
            last_outcome_error: std::sync::Mutex::new(None),
            scratch,
            cancelled: std::sync::Mutex::new(Default::default()),
            progressing: Arc::default(),
            outcomes_reported: Default::default(),
        }))
    }

    pub fn state(&self) -> WorkerState {
        WorkerState::ALL[self.state.load(Ordering::Relaxed) as usize]
    }

    pub fn set_state(&self, state: WorkerState) {
        let index = WorkerState::ALL.iter().position(|s| *s == state).expect("every state is listed") as u8;
        self.state.store(index, Ordering::Relaxed);
        self.accepting.send_replace(matches!(state, WorkerState::Starting | WorkerState::Ready));
    }

    /// Applies (or, with `None`, clears) a downgrade profile: new jobs see it, and its `slots` lower the
    /// concurrency of the kinds it names as running jobs finish.
    pub fn set_downgrade(&self, profile: Option<ainern2d_contract::DowngradeProfile>) {
        for (kind, slots) in &self.slots {
            slots.set_limit(profile.as_ref().and_then(|p| p.slots.get(kind.as_str()).copied()));
        }
        *self.downgrade.write().expect("downgrade lock") = profile;
    }

    /// The downgrade profile in force now.
    pub fn downgrade(&self) -> Option<ainern2d_contract::DowngradeProfile> {
        self.downgrade.read().expect("downgrade lock").clone()
    }

    /// Whether a job was cancelled before it reached this worker (and forgets it: it is handled once).
    pub(crate) fn take_cancelled(&self, job_id: &str) -> bool {
        let mut cancelled = self.cancelled.lock().expect("cancelled lock");
        match cancelled.iter().position(|id| id == job_id) {
            Some(i) => {
                cancelled.remove(i);
                true
            }
            None => false,
        }
    }

    /// Where jobs make their scratch directories.
    pub fn scratch_root(&self) -> &std::path::Path {
        self.scratch.path()
    }

    pub(crate) fn outcome_published(&self) {
        self.outcomes_reported.fetch_add(1, Ordering::Relaxed);
        if self.outcome_failures.swap(0, Ordering::Relaxed) > 0 {
            tracing::info!("outcomes are being reported again");
            *self.last_outcome_error.lock().expect("outcome error lock") = None;
        }
    }

    /// Outcomes reported since start.
    pub fn outcomes_reported(&self) -> u64 {
        self.outcomes_reported.load(Ordering::Relaxed)
    }

    /// Records an outcome that could not be reported; returns how many in a row.
    pub(crate) fn outcome_failed(&self, e: &dyn std::fmt::Display) -> u32 {
        *self.last_outcome_error.lock().expect("outcome error lock") = Some(e.to_string());
        self.metrics.outcome_failures.inc();
        self.outcome_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Why outcomes are not being reported now, if they are not.
    pub fn outcome_trouble(&self) -> Option<String> {
        let n = self.outcome_failures.load(Ordering::Relaxed);
        let last = self.last_outcome_error.lock().expect("outcome error lock").clone();
        (n > 0).then(|| format!("{n} outcome(s) in a row could not be reported: {}", last.unwrap_or_default()))
    }

    pub(crate) fn broker_up(&self, up: bool) {
        self.broker_connected.store(up, Ordering::Relaxed);
        self.metrics.broker_connected.set(i64::from(up));
    }

    pub fn broker_connected(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed)
    }

    pub fn store_ready(&self) -> bool {
        self.store_ready.load(Ordering::Relaxed)
    }
}

/// Runs the daemon until `shutdown` fires and the drain completes.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    serve_shared(Shared::new(config)?, shutdown).await
}

/// Runs a daemon built with `Shared::with_parts` until `shutdown` fires and the drain completes.
pub async fn serve_shared(shared: Arc<Shared>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(shared.config.http.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on http.listen {}: {e}", shared.config.http.listen))?;
    tracing::info!(worker_id = %shared.config.worker_id, listen = %listener.local_addr()?, "ainern2d worker starting");
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(http::serve(listener, shared.clone(), http_stop.clone()));
    tokio::spawn(watch_store(shared.clone(), shutdown.clone()));
    tokio::spawn(recover_store(shared.clone(), shutdown.clone()));
    tokio::spawn(liveness::run(shared.clone(), shutdown.clone()));
    let sweeping = shared.clone();
    tokio::task::spawn_blocking(move || {
        let swept = sweeping.scratch.sweep();
        if swept > 0 {
            tracing::info!(swept, "removed the scratch directories of workers that died without cleaning up");
        }
    });
    let result = match warm_up(&shared, &shutdown).await {
        Ok(()) if shutdown.is_cancelled() => Ok(()),
        Ok(()) => {
            tokio::spawn(backends::run(shared.clone(), shutdown.clone()));
            let result = runner::run(shared.clone(), shutdown).await;
            // The last job is done: stop what pipelines started (a supervised ComfyUI) while probes answer.
            tracing::debug!("stopping what the pipelines started");
            let pipelines: Vec<_> = shared.pipelines.values().cloned().collect();
            let _ = tokio::task::spawn_blocking(move || pipelines.iter().for_each(|p| p.shutdown())).await;
            result
        }
        Err(e) => Err(e),
    };
    // Uploads this process could not abort while S3 was away (or that a dead one left): one more try.
    match tokio::time::timeout(Duration::from_secs(5), shared.store.recover()).await {
        Ok(0) => {}
        Ok(aborted) => tracing::info!(aborted, "aborted multipart uploads left open"),
        Err(_) => tracing::warn!("the store did not answer the last cleanup within 5 s"),
    }
    http_stop.cancel();
    // A client holding a request open must not keep the worker from exiting.
    if tokio::time::timeout(Duration::from_secs(5), http).await.is_err() {
        tracing::warn!("the probe server did not stop within 5 s");
    }
    tracing::debug!("probes stopped; exiting");
    result
}

/// Loads what the pipelines keep warm (the manifest's `warm` models) before the worker takes jobs: until
/// then it is `starting` and `/ready` says no. A model that cannot load stops the worker with the reason.
async fn warm_up(shared: &Arc<Shared>, shutdown: &CancellationToken) -> anyhow::Result<()> {
    for (kind, pipeline) in &shared.pipelines {
        let started = std::time::Instant::now();
        let mut delays = backon::BackoffBuilder::build(
            backon::ExponentialBuilder::new()
                .with_min_delay(Duration::from_secs(1))
                .with_max_delay(Duration::from_secs(30))
                .with_jitter()
                .without_max_times(),
        );
        loop {
            let p = pipeline.clone();
            let loading = tokio::task::spawn_blocking(move || p.warm_up());
            let result = tokio::select! {
                done = loading => done.map_err(|e| anyhow::anyhow!("warming up the {kind} pipeline panicked: {e}"))?,
                _ = shutdown.cancelled() => return Ok(()),
            };
            match result {
                Ok(()) => break,
                // The model bucket may not be up yet (the whole stack starting at once): keep trying.
                Err(e) if e.is_retryable() => {
                    let backoff = delays.next().unwrap_or(Duration::from_secs(30));
                    tracing::warn!(kind = %kind, retry_in_s = backoff.as_secs(), "warming up failed, will retry: {}", e.message);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                }
                Err(e) => anyhow::bail!("warming up the {kind} pipeline failed: {}", e.message),
            }
        }
        if let Some(models) = &shared.models
            && *kind == JobKind::Llm
            && !models.manifest.warm.is_empty()
        {
            tracing::info!(kind = %kind, seconds = started.elapsed().as_secs_f64(), resident = ?models.cache.resident().iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), "warm-up done");
        }
    }
    Ok(())
}

/// Creates the output bucket when configured to, then keeps the store's readiness current.
/// Aborts the multipart uploads dead processes (on this scratch root) left open, and those this one gave
/// up aborting, at start and every 30 s.
async fn recover_store(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let aborted = shared.store.recover().await;
        if aborted > 0 {
            tracing::info!(aborted, "aborted multipart uploads that dead workers left open");
        }
        tokio::select! { _ = tokio::time::sleep(Duration::from_secs(30)) => {}, _ = shutdown.cancelled() => return }
    }
}

async fn watch_store(shared: Arc<Shared>, shutdown: CancellationToken) {
    let bucket = shared.config.store.bucket.clone();
    let mut ensured = !shared.config.store.create_bucket;
    loop {
        let ok = if ensured { shared.store.check(&bucket).await } else { shared.store.ensure_bucket(&bucket).await };
        match ok {
            Ok(()) => ensured = true,
            Err(ref e) => tracing::warn!("artifact store not ready: {e}"),
        }
        shared.store_ready.store(ok.is_ok(), Ordering::Relaxed);
        let wait = if ok.is_ok() { Duration::from_secs(15) } else { Duration::from_secs(2) };
        tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = shutdown.cancelled() => return }
    }
}
