//! The job path's failure paths, in process: the in-process broker behind a fault-injecting wrapper, the
//! local-directory store, and pipelines written here to be slow or to stop slowly. No services needed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ainern2d_contract::topology::{ATTEMPT_HEADER, REPLAY_HEADER, UNDECIDED_HEADER};
use ainern2d_contract::{ControlCommand, Event, EventStatus, JobKind, WorkerState};
use ainern2d_pipelines::{Artifact, CancellationToken, Pipeline, PipelineError, ProgressSink, RunOutput, RunRequest};
use ainern2d_queue::embedded::EmbeddedBroker;
use ainern2d_queue::faults::{Faults, FaultyBroker, Settled};
use ainern2d_queue::{Broker, Delivery, HeaderValue, Message, QueueSpec, Session, Subscription};
use async_trait::async_trait;

use super::{SessionCtx, handle};
use crate::Shared;
use crate::config::{Config, StoreKind};
use crate::store::{ArtifactStore, LocalStore, StoreError, StoredObject};

/// A pipeline that runs for `run_for` (checking its token), writes `out.txt`, and, once cancelled, takes
/// `stop_delay` to stop (a GPU kernel that must finish its step).
#[derive(Default)]
struct Slow {
    run_for: Duration,
    stop_delay: Duration,
    runs: AtomicU32,
    returned: AtomicBool,
}

impl Pipeline for Slow {
    fn kind(&self) -> JobKind {
        JobKind::Llm
    }
    fn backend(&self) -> &'static str {
        "slow"
    }
    fn output_names(&self, _: &ainern2d_contract::Job) -> Vec<String> {
        vec!["out.txt".into()]
    }
    fn run(
        &self,
        req: &RunRequest<'_>,
        progress: &dyn ProgressSink,
        cancel: &CancellationToken,
    ) -> Result<RunOutput, PipelineError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.returned.store(false, Ordering::SeqCst);
        let started = Instant::now();
        while started.elapsed() < self.run_for {
            if cancel.is_cancelled() {
                std::thread::sleep(self.stop_delay);
                self.returned.store(true, Ordering::SeqCst);
                return Err(PipelineError::cancelled());
            }
            progress.progress(started.elapsed().as_secs_f32() / self.run_for.as_secs_f32(), "slow", None);
            std::thread::sleep(Duration::from_millis(5));
        }
        let path = req.workdir.join("out.txt");
        std::fs::write(&path, format!("{} attempt {}", req.job.job_id, req.attempt)).unwrap();
        self.returned.store(true, Ordering::SeqCst);
        Ok(RunOutput::new("slow", vec![Artifact { name: "out.txt".into(), path, content_type: "text/plain".into() }]))
    }
}

/// A store whose `head` waits for a permit: the replay check can be held open.
struct GatedStore {
    inner: LocalStore,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl ArtifactStore for GatedStore {
    async fn put(&self, b: &str, k: &str, f: &Path, ct: &str, sha: &str) -> Result<(), StoreError> {
        self.inner.put(b, k, f, ct, sha).await
    }
    async fn head(&self, b: &str, k: &str) -> Result<Option<StoredObject>, StoreError> {
        self.gate.acquire().await.expect("open").forget();
        self.inner.head(b, k).await
    }
    async fn presign_get(&self, b: &str, k: &str, ttl: Duration) -> Result<String, StoreError> {
        self.inner.presign_get(b, k, ttl).await
    }
    async fn get_to_file(&self, b: &str, k: &str, d: &Path, max: u64) -> Result<u64, StoreError> {
        self.inner.get_to_file(b, k, d, max).await
    }
    async fn ensure_bucket(&self, b: &str) -> Result<(), StoreError> {
        self.inner.ensure_bucket(b).await
    }
    async fn check(&self, b: &str) -> Result<(), StoreError> {
        self.inner.check(b).await
    }
}

struct Bed {
    shared: Arc<Shared>,
    faults: Arc<Faults>,
    /// The test's own view of the broker (no faults).
    raw: Arc<dyn Session>,
    tap: Box<dyn Subscription>,
    jobs: Box<dyn Subscription>,
    ctx: SessionCtx,
    dir: tempfile::TempDir,
}

struct Options {
    slots: u32,
    pipeline: Option<Arc<dyn Pipeline>>,
    store: Option<Arc<dyn ArtifactStore>>,
    tweak: fn(&mut Config),
}

impl Default for Options {
    fn default() -> Self {
        Options { slots: 1, pipeline: None, store: None, tweak: |_| {} }
    }
}

impl Bed {
    async fn new(opts: Options) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config { worker_id: "w-test".into(), ..Config::default() };
        config.jobs.kinds = vec![JobKind::Llm];
        config.jobs.slots.insert(JobKind::Llm, opts.slots);
        config.jobs.retry_delays_ms = vec![60_000];
        config.store.kind = StoreKind::Local;
        config.store.local_dir = dir.path().join("out");
        config.scratch_dir = dir.path().join("scratch");
        config.events.lifecycle_delay_ms = 0;
        config.events.progress_interval_ms = 1;
        (opts.tweak)(&mut config);
        let embedded = EmbeddedBroker::new();
        let faulty = FaultyBroker::new(Arc::new(embedded.clone()));
        let faults = faulty.faults.clone();
        let store = opts.store.unwrap_or_else(|| Arc::new(LocalStore::new(config.store.local_dir.clone())));
        let mut shared = Shared::with_parts(config, Arc::new(faulty), store, None).unwrap();
        if let Some(p) = opts.pipeline {
            Arc::get_mut(&mut shared).expect("not shared yet").pipelines.insert(JobKind::Llm, p);
        }
        let raw = embedded.connect("test").await.unwrap();
        crate::broker::declare_topology(raw.as_ref(), &shared.topology, &[JobKind::Llm], &[60_000]).await.unwrap();
        let tap_queue = raw.declare_queue(&QueueSpec { exclusive: true, ..Default::default() }).await.unwrap();
        raw.bind(&tap_queue, &shared.topology.events_exchange(), "job.#").await.unwrap();
        let tap = raw.subscribe(&tap_queue, "tap", 0).await.unwrap();
        let session = shared.broker.connect("worker").await.unwrap();
        let jobs = session.subscribe(&shared.topology.job_queue(JobKind::Llm), "jobs", 0).await.unwrap();
        let ctx = SessionCtx {
            publisher: session.clone(),
            abort: CancellationToken::new(),
            lost: session.lost().child_token(),
            lost_reason: Arc::default(),
        };
        Bed { shared, faults, raw, tap, jobs, ctx, dir }
    }

    async fn submit(&self, id: &str, headers: &[(&str, HeaderValue)]) {
        let job = serde_json::json!({"schema": "ainern2d.job.v1", "job_id": id, "kind": "llm",
            "params": {"prompt": "hello", "max_tokens": 4}, "output": {"prefix": "t"}});
        let mut message = Message::json(serde_json::to_vec(&job).unwrap());
        for (k, v) in headers {
            message = message.with_header(k, v.clone());
        }
        self.raw.publish("", &self.shared.topology.job_queue(JobKind::Llm), &message).await.unwrap();
    }

    async fn delivery(&mut self) -> Delivery {
        tokio::time::timeout(Duration::from_secs(5), self.jobs.next()).await.expect("a delivery").unwrap().unwrap()
    }

    async fn handle(&self, delivery: Delivery) {
        handle(self.shared.clone(), self.ctx.clone(), JobKind::Llm, delivery).await;
    }

    /// Events published so far (waits briefly for stragglers).
    async fn events(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(100), self.tap.next()).await {
            events.push(serde_json::from_slice(&d.message.body).unwrap());
            d.acker.ack(false).await.unwrap();
        }
        events
    }

    async fn depth(&self, queue: &str) -> u32 {
        self.raw.queue_depth(queue).await.unwrap().unwrap_or(0)
    }

    fn stored(&self) -> usize {
        walk(&self.dir.path().join("out/ainern2d-outputs"))
    }
}

fn walk(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum()
}

fn statuses(events: &[Event]) -> Vec<EventStatus> {
    events.iter().map(|e| e.status).collect()
}

fn requeued(faults: &Faults) -> usize {
    faults.settled().iter().filter(|s| matches!(s, Settled::Nack { requeue: true, .. })).count()
}

#[tokio::test]
async fn a_nacked_outcome_returns_the_job_at_once_and_shows_in_readiness() {
    let mut bed = Bed::new(Options::default()).await;
    bed.faults.nack_publishes("job.llm.succeeded", 1);
    bed.submit("nacked-1", &[]).await;
    let d = bed.delivery().await;
    bed.handle(d).await;
    assert_eq!(requeued(&bed.faults), 1, "the delivery goes back at once: {:?}", bed.faults.settled());
    assert!(bed.shared.outcome_trouble().is_some(), "readiness says outcomes are failing");
    assert!(!bed.ctx.lost.is_cancelled(), "one failure does not end the session");
    // The redelivery finds the stored output and re-announces it; readiness recovers.
    let again = bed.delivery().await;
    assert!(again.redelivered);
    bed.handle(again).await;
    let events = bed.events().await;
    let succeeded: Vec<_> = events.iter().filter(|e| e.status == EventStatus::Succeeded).collect();
    assert_eq!(succeeded.len(), 1, "{:?}", statuses(&events));
    assert_eq!(bed.stored(), 1);
    assert!(bed.shared.outcome_trouble().is_none());
}

#[tokio::test]
async fn an_ack_that_was_not_sent_brings_the_job_back() {
    let mut bed = Bed::new(Options::default()).await;
    bed.faults.fail_acks(1);
    bed.submit("unacked-1", &[]).await;
    let d = bed.delivery().await;
    bed.handle(d).await;
    assert_eq!(requeued(&bed.faults), 1, "{:?}", bed.faults.settled());
    let again = bed.delivery().await;
    bed.handle(again).await;
    let ids: Vec<_> =
        bed.events().await.into_iter().filter(|e| e.status == EventStatus::Succeeded).map(|e| e.event_id).collect();
    assert_eq!(ids.len(), 2, "announced, then re-announced");
    assert_eq!(ids[0], ids[1], "under the same id, so consumers deduplicate it");
    assert_eq!(bed.stored(), 1);
}

#[tokio::test]
async fn a_failed_requeue_ends_the_session() {
    let mut bed = Bed::new(Options::default()).await;
    bed.faults.nack_publishes("job.llm.succeeded", 1);
    bed.faults.fail_nacks(1);
    bed.submit("stuck-1", &[]).await;
    let d = bed.delivery().await;
    bed.handle(d).await;
    assert!(bed.ctx.lost.is_cancelled(), "the session ends so the broker requeues the delivery");
    assert!(bed.ctx.lost_reason.get().unwrap().contains("stuck-1"));
}

#[tokio::test]
async fn repeated_outcome_failures_replace_the_session() {
    let mut bed = Bed::new(Options::default()).await;
    bed.faults.nack_publishes("job.llm.succeeded", 3);
    bed.submit("flaky-1", &[]).await;
    for _ in 0..3 {
        let d = bed.delivery().await;
        bed.handle(d).await;
    }
    assert!(bed.ctx.lost.is_cancelled());
}

#[tokio::test]
async fn a_failed_retrying_event_does_not_fork_a_second_attempt_chain() {
    let mut bed = Bed::new(Options {
        tweak: |c| {
            c.mock.failure_rate = 1.0;
            c.mock.fault_attempts = 1;
        },
        ..Default::default()
    })
    .await;
    let retry_queue = bed.shared.topology.retry_queue(JobKind::Llm, 0);
    bed.faults.nack_publishes("job.llm.retrying", 1);
    bed.submit("fork-1", &[]).await;
    let d = bed.delivery().await;
    bed.handle(d).await;
    assert_eq!(bed.depth(&retry_queue).await, 0, "no copy may exist while the original comes back");
    let again = bed.delivery().await;
    bed.handle(again).await;
    assert_eq!(bed.depth(&retry_queue).await, 1, "exactly one attempt 2");
}

#[tokio::test]
async fn a_redelivered_attempt_gets_event_ids_of_its_own() {
    let mut bed = Bed::new(Options::default()).await;
    bed.faults.nack_publishes("job.llm.succeeded", 1);
    bed.submit("ids-1", &[]).await;
    let d = bed.delivery().await;
    bed.handle(d).await;
    // Without its stored output the redelivery really runs again.
    std::fs::remove_dir_all(bed.dir.path().join("out/ainern2d-outputs")).unwrap();
    let again = bed.delivery().await;
    bed.handle(again).await;
    let running: Vec<_> =
        bed.events().await.into_iter().filter(|e| e.status == EventStatus::Running).map(|e| e.event_id).collect();
    assert_eq!(running.len(), 2);
    assert_ne!(running[0], running[1], "the hub would drop the rerun's events as duplicates");
}

#[tokio::test]
async fn a_runtime_limit_keeps_the_slot_until_the_pipeline_has_stopped() {
    let slow = Arc::new(Slow {
        run_for: Duration::from_secs(30),
        stop_delay: Duration::from_millis(600),
        ..Default::default()
    });
    let mut bed = Bed::new(Options {
        pipeline: Some(slow.clone()),
        tweak: |c| {
            c.jobs.max_runtime_s.insert(JobKind::Llm, 1);
        },
        ..Default::default()
    })
    .await;
    bed.submit("limit-1", &[]).await;
    let d = bed.delivery().await;
    let started = Instant::now();
    bed.handle(d).await;
    assert!(started.elapsed() >= Duration::from_millis(1500), "waited for the pipeline: {:?}", started.elapsed());
    assert!(slow.returned.load(Ordering::SeqCst), "the job ended while its pipeline thread still ran");
    assert_eq!(bed.shared.slots[&JobKind::Llm].semaphore.available_permits(), 1);
    let events = bed.events().await;
    let retrying = events.iter().find(|e| e.status == EventStatus::Retrying).expect("retried");
    let error = retrying.error.as_ref().unwrap();
    assert_eq!(error.code, ainern2d_contract::ErrorCode::DeadlineExceeded);
    assert!(error.message.contains("jobs.max_runtime_s.llm"), "{}", error.message);
}

#[tokio::test]
async fn a_cancel_during_the_replay_check_cancels_this_attempt_and_no_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(GatedStore { inner: LocalStore::new(dir.path()), gate: tokio::sync::Semaphore::new(0) });
    let mut bed = Bed::new(Options { store: Some(store.clone()), ..Default::default() }).await;
    bed.submit("cancel-1", &[("x-ainern2d-attempt", HeaderValue::Int(2))]).await;
    let d = bed.delivery().await;
    let running = tokio::spawn(handle(bed.shared.clone(), bed.ctx.clone(), JobKind::Llm, d));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let jobs = tokio_util::task::TaskTracker::new();
    let publisher = bed.ctx.publisher.clone();
    crate::control::apply(&bed.shared, &publisher, &jobs, ControlCommand::Cancel { job_id: "cancel-1".into() }).await;
    store.gate.add_permits(100);
    running.await.unwrap();
    let events = bed.events().await;
    assert!(statuses(&events).contains(&EventStatus::Cancelled), "{:?}", statuses(&events));
    assert!(!bed.shared.take_cancelled("cancel-1"), "the cancel must not wait for a later attempt");
}

#[tokio::test]
async fn a_job_waiting_for_a_slot_goes_back_when_the_worker_is_cordoned() {
    let slow = Arc::new(Slow { run_for: Duration::from_millis(2000), ..Default::default() });
    let mut bed = Bed::new(Options { pipeline: Some(slow.clone()), ..Default::default() }).await;
    bed.submit("busy-1", &[]).await;
    bed.submit("waiting-1", &[]).await;
    let first = bed.delivery().await;
    let second = bed.delivery().await;
    let a = tokio::spawn(handle(bed.shared.clone(), bed.ctx.clone(), JobKind::Llm, first));
    // The first holds the slot before the second arrives (spawned together, either could win it on a
    // loaded machine, and then the other was the one given back: CI saw that).
    while slow.runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b = tokio::spawn(handle(bed.shared.clone(), bed.ctx.clone(), JobKind::Llm, second));
    tokio::time::sleep(Duration::from_millis(150)).await;
    bed.shared.set_state(WorkerState::Cordoned);
    // "At once": while the running job still runs (not a time bound, which a loaded machine breaks: a
    // 300 ms one did in CI).
    tokio::time::timeout(Duration::from_secs(30), b).await.expect("given back").unwrap();
    assert!(!slow.returned.load(Ordering::SeqCst), "given back only after the running job finished");
    assert_eq!(requeued(&bed.faults), 1);
    a.await.unwrap();
    assert_eq!(slow.runs.load(Ordering::SeqCst), 1, "the running job finished; the waiting one never started");
}

#[tokio::test]
async fn a_job_whose_session_is_lost_finishes_and_its_redelivery_is_reannounced() {
    let slow = Arc::new(Slow { run_for: Duration::from_millis(500), ..Default::default() });
    let mut bed = Bed::new(Options { pipeline: Some(slow.clone()), ..Default::default() }).await;
    bed.submit("lost-1", &[]).await;
    let d = bed.delivery().await;
    let first = tokio::spawn(handle(bed.shared.clone(), bed.ctx.clone(), JobKind::Llm, d));
    tokio::time::sleep(Duration::from_millis(100)).await;
    bed.faults.lose_sessions().await;
    first.await.unwrap();
    assert_eq!(bed.stored(), 1, "the run went on and stored its output");
    assert!(bed.faults.settled().is_empty(), "nothing can be settled on a lost session");
    // The broker redelivers it (here: when the dead subscription is gone) on a new session.
    drop(std::mem::replace(&mut bed.jobs, bed.raw.subscribe("ainern2d.jobs.llm", "j2", 0).await.unwrap()));
    let again = tokio::time::timeout(Duration::from_secs(5), bed.jobs.next()).await.unwrap().unwrap().unwrap();
    assert!(again.redelivered);
    let session = bed.shared.broker.connect("second").await.unwrap();
    bed.ctx = SessionCtx {
        publisher: session.clone(),
        abort: CancellationToken::new(),
        lost: session.lost().child_token(),
        lost_reason: Arc::default(),
    };
    bed.handle(again).await;
    assert_eq!(slow.runs.load(Ordering::SeqCst), 1, "re-announced, not re-run");
    let events = bed.events().await;
    assert_eq!(statuses(&events).iter().filter(|s| **s == EventStatus::Succeeded).count(), 1);
}

#[tokio::test]
async fn a_republished_first_attempt_is_checked_for_stored_outputs() {
    let slow = Arc::new(Slow { run_for: Duration::from_millis(10), ..Default::default() });
    let mut bed = Bed::new(Options { pipeline: Some(slow.clone()), ..Default::default() }).await;
    bed.submit("again-1", &[]).await;
    let d = bed.delivery().await;
    bed.handle(d).await;
    // The local mode's restart (or an outbox relay) publishes it again as attempt 1, not redelivered.
    bed.submit("again-1", &[(ATTEMPT_HEADER, HeaderValue::Int(1)), (REPLAY_HEADER, HeaderValue::Int(1))]).await;
    let d = bed.delivery().await;
    assert!(!d.redelivered);
    bed.handle(d).await;
    assert_eq!(slow.runs.load(Ordering::SeqCst), 1);
    let ids: Vec<_> =
        bed.events().await.into_iter().filter(|e| e.status == EventStatus::Succeeded).map(|e| e.event_id).collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1]);
}

/// Chaos round `0x281b6795ba5ad10f`: after a broker crash a job was delivered again as attempt 1, neither
/// flagged as redelivered nor republished, and ran again after its success was announced.
#[tokio::test]
async fn an_unflagged_first_delivery_with_stored_outputs_is_not_run_again() {
    let slow = Arc::new(Slow { run_for: Duration::from_millis(10), ..Default::default() });
    let mut bed = Bed::new(Options { pipeline: Some(slow.clone()), ..Default::default() }).await;
    bed.submit("unflagged-1", &[]).await;
    let d = bed.delivery().await;
    bed.handle(d).await;
    bed.submit("unflagged-1", &[]).await;
    let d = bed.delivery().await;
    assert!(!d.redelivered && d.message.header_u32(ATTEMPT_HEADER).is_none(), "the copy looks like a first delivery");
    bed.handle(d).await;
    assert_eq!(slow.runs.load(Ordering::SeqCst), 1, "the job ran again");
    let ids: Vec<_> =
        bed.events().await.into_iter().filter(|e| e.status == EventStatus::Succeeded).map(|e| e.event_id).collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1], "the re-announce carries the first success's event id");
}

#[tokio::test]
async fn progress_is_published_while_the_pipeline_runs() {
    let slow = Arc::new(Slow { run_for: Duration::from_millis(300), ..Default::default() });
    let mut bed =
        Bed::new(Options { pipeline: Some(slow), tweak: |c| c.events.progress_interval_ms = 50, ..Default::default() })
            .await;
    bed.submit("progress-1", &[]).await;
    let d = bed.delivery().await;
    bed.handle(d).await;
    let progress = statuses(&bed.events().await).into_iter().filter(|s| *s == EventStatus::Progress).count();
    assert!((2..=7).contains(&progress), "one per 50 ms interval at most, got {progress}");
}

// Two threads: a runner gone wrong (redelivering in a tight loop) must not starve the test's own timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_runner_a_lost_connection_does_not_rerun_a_job_minutes_from_done() {
    let slow = Arc::new(Slow { run_for: Duration::from_millis(1500), ..Default::default() });
    let mut bed =
        Bed::new(Options { pipeline: Some(slow.clone()), tweak: |c| c.shutdown.grace_s = 2, ..Default::default() })
            .await;
    // The runner makes its own sessions; the bed's consumer must not compete with it.
    bed.jobs.cancel().await.unwrap();
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(crate::runner::run(bed.shared.clone(), shutdown.clone()));
    bed.submit("runner-lost-1", &[]).await;
    for _ in 0..100 {
        if slow.runs.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bed.faults.lose_sessions().await;
    let mut succeeded = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while succeeded == 0 && Instant::now() < deadline {
        succeeded += statuses(&bed.events().await).iter().filter(|s| **s == EventStatus::Succeeded).count();
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), runner).await.expect("the runner stops").unwrap().unwrap();
    assert_eq!(succeeded, 1, "the redelivery re-announces the stored output");
    assert_eq!(slow.runs.load(Ordering::SeqCst), 1, "the job went on through the lost connection and ran once");
    assert_eq!(bed.stored(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_lowers_the_prefetch_with_the_slots() {
    let slow = Arc::new(Slow { run_for: Duration::from_secs(3), ..Default::default() });
    let mut bed = Bed::new(Options {
        slots: 3,
        pipeline: Some(slow.clone()),
        tweak: |c| c.shutdown.grace_s = 1,
        ..Default::default()
    })
    .await;
    bed.jobs.cancel().await.unwrap();
    // The downgrade comes after the runner subscribed: the change must reach a live consumer.
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(crate::runner::run(bed.shared.clone(), shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut profile: ainern2d_contract::DowngradeProfile =
        serde_json::from_value(serde_json::json!({"name": "hot"})).unwrap();
    profile.slots.insert("llm".into(), 1);
    bed.shared.set_downgrade(Some(profile));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..6 {
        bed.submit(&format!("prefetch-{i}"), &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 1 slot + 1 upload overlap = 2 deliveries held by the worker; the rest wait in the queue for others.
    let queue = bed.shared.topology.job_queue(JobKind::Llm);
    assert_eq!(bed.depth(&queue).await, 4, "the broker handed the worker more than it can start");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), runner).await.expect("the runner stops").unwrap().unwrap();
}

fn leases(c: &mut Config) {
    c.jobs.lease_after_s = 1;
    c.jobs.lease_ttl_s = 3;
}

fn lease_events(shared: &Shared, event: &str) -> u64 {
    let labels = crate::metrics::LeaseLabels { kind: "llm".into(), event: event.into() };
    shared.metrics.leases.get_or_create(&labels).get()
}

fn leased(shared: &Arc<Shared>) -> impl Fn() -> u32 + use<> {
    let shared = shared.clone();
    move || shared.slots[&JobKind::Llm].leased()
}

/// A bed with leases on whose one job (`id`, on a `Slow` pipeline running `run_for`) is being handled.
async fn leasing(id: &str, run_for: Duration) -> (Bed, Arc<Slow>, tokio::task::JoinHandle<()>) {
    let slow = Arc::new(Slow { run_for, ..Default::default() });
    let mut bed = Bed::new(Options { pipeline: Some(slow.clone()), tweak: leases, ..Default::default() }).await;
    bed.submit(id, &[]).await;
    let d = bed.delivery().await;
    let run = tokio::spawn(handle(bed.shared.clone(), bed.ctx.clone(), JobKind::Llm, d));
    (bed, slow, run)
}

async fn until(what: &str, within: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_job_held_past_lease_after_is_acked_renewed_and_finishes_once_leaving_no_copy() {
    let (mut bed, slow, run) = leasing("lease-1", Duration::from_millis(5000)).await;
    let slots = &bed.shared.slots[&JobKind::Llm];
    // Without a runner here, nobody lowers a prefetch: the taker acks after waiting 2 s for that.
    let faults = bed.faults.clone();
    until("the delivery is acked for the lease", Duration::from_secs(4), || !faults.settled().is_empty()).await;
    assert!(matches!(faults.settled()[..], [Settled::Ack { .. }]), "{:?}", faults.settled());
    assert_eq!(slots.leased(), 1);
    run.await.unwrap();
    assert_eq!(slots.leased(), 0);
    assert!(lease_events(&bed.shared, "renewed") >= 1, "renewed every second once taken (after 3 s)");
    assert_eq!(lease_events(&bed.shared, "released"), 1);
    assert_eq!(lease_events(&bed.shared, "failed"), 0);
    // Every copy was deleted with its queue: none comes back once the TTL has passed.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(bed.depth(&bed.shared.topology.job_queue(JobKind::Llm)).await, 0, "a lease copy came back");
    let events = bed.events().await;
    assert_eq!(
        statuses(&events).iter().filter(|s| **s == EventStatus::Succeeded).count(),
        1,
        "{:?}",
        statuses(&events)
    );
    assert_eq!(slow.runs.load(Ordering::SeqCst), 1);
    assert_eq!(bed.stored(), 1);
}

#[tokio::test]
async fn a_lapsed_lease_brings_the_job_back_marked_for_the_replay_check() {
    let (mut bed, _slow, run) = leasing("lease-lapsed-1", Duration::from_secs(30)).await;
    let slots = leased(&bed.shared);
    until("the lease is taken", Duration::from_secs(3), || slots() == 1).await;
    // The worker dies: nobody renews, and nothing settles the lease.
    run.abort();
    let again = bed.delivery().await;
    assert!(!again.redelivered, "a dead-lettered copy, not a redelivery");
    assert_eq!(
        again.message.headers.get(ainern2d_contract::topology::LEASE_HEADER),
        Some(&HeaderValue::Text("w-test".into()))
    );
    assert!(super::replay::may_have_run(&again, 1), "the copy goes through the replay check");
    until("the lapsed lease is no longer counted", Duration::from_secs(2), || slots() == 0).await;
    bed.ctx.abort.cancel();
}

#[tokio::test]
async fn a_leased_job_returned_at_shutdown_comes_back_at_once_and_only_once() {
    let (mut bed, _slow, run) = leasing("lease-shutdown-1", Duration::from_secs(30)).await;
    let slots = leased(&bed.shared);
    until("the lease is taken", Duration::from_secs(3), || slots() == 1).await;
    bed.ctx.abort.cancel();
    run.await.unwrap();
    let back = tokio::time::timeout(Duration::from_millis(500), bed.jobs.next())
        .await
        .expect("the copy is requeued at once, not when the lease runs out")
        .unwrap()
        .unwrap();
    assert!(back.message.headers.contains_key(ainern2d_contract::topology::LEASE_HEADER));
    assert_eq!(slots(), 0);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        bed.depth(&bed.shared.topology.job_queue(JobKind::Llm)).await,
        0,
        "the lease queue's copy came back too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_jobs_still_count_against_the_prefetch() {
    let slow = Arc::new(Slow { run_for: Duration::from_secs(4), ..Default::default() });
    let mut bed = Bed::new(Options {
        pipeline: Some(slow.clone()),
        tweak: |c| {
            leases(c);
            c.shutdown.grace_s = 1;
        },
        ..Default::default()
    })
    .await;
    bed.jobs.cancel().await.unwrap();
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(crate::runner::run(bed.shared.clone(), shutdown.clone()));
    for i in 0..5 {
        bed.submit(&format!("lease-prefetch-{i}"), &[]).await;
    }
    let queue = bed.shared.topology.job_queue(JobKind::Llm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bed.depth(&queue).await, 3, "1 slot + 1 upload overlap = 2 held");
    // Both held jobs are leased (their deliveries acked) and still only 2 are held.
    let slots = leased(&bed.shared);
    until("both held jobs are leased", Duration::from_secs(3), || slots() == 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bed.depth(&queue).await, 3, "acking a leased job's delivery let the broker hand out more");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), runner).await.expect("the runner stops").unwrap().unwrap();
}

#[tokio::test]
async fn a_failed_jobs_dead_letter_leaves_out_headers_too_large_to_copy() {
    let mut bed = Bed::new(Options {
        tweak: |c| {
            c.mock.failure_rate = 1.0;
            c.mock.failure = ainern2d_pipelines::FaultKind::Permanent;
        },
        ..Default::default()
    })
    .await;
    // 48 KiB that were not UTF-8 come in as 144 KiB of replacement characters: too large to publish again.
    let big = String::from_utf8_lossy(&[0xff; 48 * 1024]).into_owned();
    bed.submit("big-headers-1", &[("x-bytes", HeaderValue::Text(big))]).await;
    let d = bed.delivery().await;
    bed.handle(d).await;
    let mut dead = bed.raw.subscribe(&bed.shared.topology.dead_letter_queue(), "dead", 0).await.unwrap();
    let letter =
        tokio::time::timeout(Duration::from_secs(2), dead.next()).await.expect("a dead letter").unwrap().unwrap();
    assert!(!letter.message.headers.contains_key("x-bytes"));
    let reason = letter.message.headers[ainern2d_contract::topology::REASON_HEADER].as_text().unwrap();
    assert!(reason.contains("are not copied here"), "{reason}");
    assert_eq!(letter.message.header_u32(ATTEMPT_HEADER), Some(1));
}

/// A store whose `head` fails while `down` is above 0 (counting down once per call): the store is down when
/// the replay check asks.
struct HeadFails {
    inner: LocalStore,
    down: AtomicU32,
}

impl HeadFails {
    fn new(dir: &Path, down: u32) -> Arc<HeadFails> {
        Arc::new(HeadFails { inner: LocalStore::new(dir.to_path_buf()), down: AtomicU32::new(down) })
    }
}

#[async_trait]
impl ArtifactStore for HeadFails {
    async fn put(&self, b: &str, k: &str, f: &Path, ct: &str, sha: &str) -> Result<(), StoreError> {
        self.inner.put(b, k, f, ct, sha).await
    }
    async fn head(&self, b: &str, k: &str) -> Result<Option<StoredObject>, StoreError> {
        if self.down.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(StoreError::Unavailable("connection reset".into()));
        }
        self.inner.head(b, k).await
    }
    async fn presign_get(&self, b: &str, k: &str, ttl: Duration) -> Result<String, StoreError> {
        self.inner.presign_get(b, k, ttl).await
    }
    async fn get_to_file(&self, b: &str, k: &str, d: &Path, max: u64) -> Result<u64, StoreError> {
        self.inner.get_to_file(b, k, d, max).await
    }
    async fn ensure_bucket(&self, b: &str) -> Result<(), StoreError> {
        self.inner.ensure_bucket(b).await
    }
    async fn check(&self, b: &str) -> Result<(), StoreError> {
        self.inner.check(b).await
    }
}

/// The copy a recheck or retry left in the first retry queue (the test's stand-in for its TTL).
async fn retried(bed: &Bed, level: usize) -> Delivery {
    let queue = bed.shared.topology.retry_queue(JobKind::Llm, level);
    let mut sub = bed.raw.subscribe(&queue, "retried", 0).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), sub.next()).await.expect("a retry copy").unwrap().unwrap()
}

#[tokio::test]
async fn a_replay_check_the_store_cannot_answer_reports_nothing_until_it_can_decide() {
    let slow = Arc::new(Slow { run_for: Duration::from_millis(10), ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let store = HeadFails::new(dir.path(), 0);
    let mut bed = Bed::new(Options {
        pipeline: Some(slow.clone()),
        store: Some(store.clone() as Arc<dyn ArtifactStore>),
        ..Default::default()
    })
    .await;
    // The job succeeds; it is published again (an outbox relay whose confirm was lost) while S3 is down —
    // for more checks than the job has attempts.
    bed.submit("undecided-1", &[]).await;
    let d = bed.delivery().await;
    bed.handle(d).await;
    let first = bed.events().await;
    let succeeded: Vec<_> = first.iter().filter(|e| e.status == EventStatus::Succeeded).collect();
    assert_eq!(succeeded.len(), 1, "{:?}", statuses(&first));
    let down = bed.shared.config.jobs.max_attempts + 2;
    store.down.store(down, Ordering::SeqCst);
    bed.submit("undecided-1", &[(ATTEMPT_HEADER, HeaderValue::Int(1)), (REPLAY_HEADER, HeaderValue::Int(1))]).await;
    let mut d = bed.delivery().await;
    for check in 1..=down {
        bed.handle(d).await;
        let events = bed.events().await;
        assert!(
            events.is_empty(),
            "check {check}: an outcome while it is unknown whether the job ran: {:?}",
            statuses(&events)
        );
        // Back in a retry queue (climbing the levels: the Bed has one), its attempt unchanged.
        d = retried(&bed, 0).await;
        assert_eq!(d.message.header_u32(ATTEMPT_HEADER), Some(1), "check {check}");
        assert_eq!(d.message.header_u32(UNDECIDED_HEADER), Some(check), "check {check}");
    }
    // The store answers: the earlier success is found and announced again, under its event id.
    bed.handle(d).await;
    let events = bed.events().await;
    assert_eq!(statuses(&events), vec![EventStatus::Succeeded]);
    assert_eq!(events[0].event_id, succeeded[0].event_id);
    assert_eq!(slow.runs.load(Ordering::SeqCst), 1, "the job ran again");
    assert_eq!(bed.depth(&bed.shared.topology.dead_letter_queue()).await, 0, "a job that succeeded was dead-lettered");
}

#[tokio::test]
async fn a_replay_check_that_never_decides_counts_as_a_failed_attempt_at_its_bound() {
    let slow = Arc::new(Slow { run_for: Duration::from_millis(10), ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let store = HeadFails::new(dir.path(), u32::MAX);
    let mut bed = Bed::new(Options {
        pipeline: Some(slow.clone()),
        store: Some(store as Arc<dyn ArtifactStore>),
        ..Default::default()
    })
    .await;
    let last = super::replay::UNDECIDED_LIMIT - 1;
    bed.submit(
        "undecided-2",
        &[(ATTEMPT_HEADER, HeaderValue::Int(1)), (UNDECIDED_HEADER, HeaderValue::Int(last.into()))],
    )
    .await;
    let d = bed.delivery().await;
    bed.handle(d).await;
    assert_eq!(slow.runs.load(Ordering::SeqCst), 0, "the job ran again without knowing whether it had succeeded");
    let events = bed.events().await;
    let retrying: Vec<_> = events.iter().filter(|e| e.status == EventStatus::Retrying).collect();
    assert_eq!(retrying.len(), 1, "{:?}", statuses(&events));
    let error = retrying[0].error.as_ref().unwrap();
    assert!(error.message.contains("earlier run") && error.message.contains("30 checks"), "{}", error.message);
    assert_eq!(retried(&bed, 0).await.message.header_u32(ATTEMPT_HEADER), Some(2));
}
