//! One delivery of a job, top to bottom, one file per stage:
//!
//! `receive` (give back, parse, validate) → `lease` (from `jobs.lease_after_s` on, a lease stands in for
//! the delivery) → `registry` (cancel reaches it from now on; one run of a job
//! at a time here) → `replay` (stored outputs of an earlier run?) → slot → `inputs` → `infer` → `upload`
//! → `dispose` (the outcome's broker effects, and what to do when they fail).
//!
//! A stage ends the path early by returning a [`Stop`]; whatever happened, `dispose` settles the delivery.
//! The limits (`deadline`, `jobs.max_runtime_s`) cancel the job's token and then wait for the pipeline to
//! stop: its inference slot is free only when the GPU is.

mod copy;
mod dispose;
mod infer;
mod inputs;
mod lease;
mod receive;
pub mod registry;
mod replay;
mod upload;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ainern2d_contract::topology::ATTEMPT_HEADER;
use ainern2d_contract::{ErrorCode, EventStatus, Execution, Job, JobKind, OutputObject};
use ainern2d_pipelines::CancellationToken;
use ainern2d_queue::Delivery;
use tracing::Instrument;
use tracing::field::Empty;

use crate::Shared;
use crate::broker::Publisher;
use crate::events::Emitter;
use crate::fetch::FetchError;
use crate::lifecycle::Interruption;
use crate::metrics::Metrics;

pub use infer::sha256_file;

/// Per-session context of a job.
#[derive(Clone)]
pub struct SessionCtx {
    pub publisher: Publisher,
    /// Fired when in-flight jobs must stop at once (the shutdown grace ran out): they go back to the queue.
    pub abort: CancellationToken,
    /// Fired when the session is lost, or by any task that finds it unusable (`end`); a lost session's
    /// deliveries are void, and the broker redelivers them.
    pub lost: CancellationToken,
    pub lost_reason: Arc<OnceLock<String>>,
}

impl SessionCtx {
    /// Ends the session: the runner reconnects, and the broker requeues every delivery left unsettled.
    pub fn end(&self, why: String) {
        let _ = self.lost_reason.set(why);
        self.lost.cancel();
    }
}

/// A job failure with what the event needs.
#[derive(Debug)]
pub(crate) struct Failure {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
    pub field: Option<String>,
}

impl Failure {
    pub fn new(code: ErrorCode, retryable: bool, message: impl Into<String>) -> Self {
        Failure { code, message: message.into(), retryable, field: None }
    }
}

pub(crate) enum Stop {
    Failed(Failure),
    /// The replay check could not reach the store: whether the job already ran is unknown. It goes back
    /// to be checked again after a pause, its attempt unchanged, and no outcome is reported (`dispose`).
    Undecided(String),
    /// The job's token fired (a `cancel` command, the shutdown's abort, a limit): `run` says which.
    Cancelled,
    Interrupted(Interruption),
}

impl From<FetchError> for Stop {
    fn from(e: FetchError) -> Self {
        let code =
            if matches!(e, FetchError::Refused { .. }) { ErrorCode::InputRefused } else { ErrorCode::InputUnavailable };
        Stop::Failed(Failure::new(code, e.is_retryable(), e.to_string()))
    }
}

/// What a job that ran (or was found stored) hands to `dispose`.
pub(crate) struct Done {
    pub outputs: Vec<OutputObject>,
    /// What ran the job (absent when stored outputs were re-announced).
    pub execution: Option<Execution>,
    pub timings: BTreeMap<String, f64>,
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub async fn handle(shared: Arc<Shared>, ctx: SessionCtx, kind: JobKind, mut delivery: Delivery) {
    let received = Instant::now();
    let attempt = delivery.message.header_u32(ATTEMPT_HEADER).unwrap_or(1).max(1);
    let in_flight = shared.metrics.in_flight.get_or_create(&Metrics::kind(kind.as_str())).clone();
    in_flight.inc();
    let _in_flight = Guard(Some(move || {
        in_flight.dec();
    }));

    let job = match receive::accept(&shared, kind, &delivery) {
        receive::Received::GiveBack => return dispose::give_back(&ctx, &delivery).await,
        receive::Received::Invalid(err) => {
            return receive::reject_invalid(&shared, &ctx, kind, attempt, &delivery, err).await;
        }
        receive::Received::Job(job) => *job,
    };
    // Held longer than `jobs.lease_after_s`, the job is held by a lease instead of its delivery.
    let _lease = lease::install(&shared, &ctx, kind, &mut delivery);
    // The job's span continues the control plane's trace; its events carry this span on to the hub.
    let span = tracing::info_span!(
        "job",
        otel.kind = "consumer",
        job_id = %job.job_id,
        %kind,
        attempt,
        otel.status_code = Empty,
        error.code = Empty,
    );
    ainern2d_cli::trace::set_parent(&span, job.traceparent.as_deref());
    let traceparent = ainern2d_cli::trace::traceparent(&span).or_else(|| job.traceparent.clone());
    let emitter = Emitter::new(
        ctx.publisher.clone(),
        shared.topology.events_exchange(),
        &job.job_id,
        Some(kind),
        attempt,
        &shared.config.worker_id,
    )
    .with_trace(traceparent)
    .with_downgrade(shared.downgrade().map(|d| d.name));
    async {
        // From here on a `cancel` command reaches this delivery, whatever stage it is in.
        let cancel = ctx.abort.child_token();
        let registration = shared.running.register(&job.job_id, cancel.clone());
        let result = run(&shared, &ctx, &emitter, &job, attempt, &delivery, received, &registration, &cancel).await;
        if let Err(Stop::Failed(f)) = &result {
            let span = tracing::Span::current();
            span.record("otel.status_code", "error");
            span.record("error.code", f.code.as_str());
        }
        dispose::finish(&shared, &ctx, &emitter, &job, attempt, &delivery, result)
            .instrument(tracing::info_span!("publish"))
            .await;
        drop(registration);
    }
    .instrument(span)
    .await;
}

/// Why a job's token fired: the shutdown's abort or a `cancel` command.
fn why_cancelled(ctx: &SessionCtx) -> Interruption {
    if ctx.abort.is_cancelled() { Interruption::Shutdown } else { Interruption::Requested }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    shared: &Arc<Shared>,
    ctx: &SessionCtx,
    emitter: &Emitter,
    job: &Job,
    attempt: u32,
    delivery: &Delivery,
    received: Instant,
    registration: &registry::Registration,
    cancel: &CancellationToken,
) -> Result<Done, Stop> {
    // Held to the end: another delivery of this job waits for this one (`prepare`).
    let _exclusive = match prepare(shared, ctx, job, attempt, delivery, received, registration, cancel)
        .instrument(tracing::info_span!("receive"))
        .await?
    {
        Prepared::Run(exclusive) => exclusive,
        Prepared::Stored(done) => return Ok(done),
    };
    let cancelled = || Stop::Interrupted(why_cancelled(ctx));
    let limit = Limit::of(shared, job);
    if let Some(limit) = &limit
        && limit.at <= Instant::now()
    {
        return Err(Stop::Failed(limit.failure("before the job started")));
    }
    let work = stages(shared, emitter, job, attempt, received, cancel);
    tokio::pin!(work);
    let timer = async {
        match &limit {
            Some(l) => tokio::time::sleep_until(l.at.into()).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = &mut work => r,
        _ = timer => {
            // Stop the pipeline and wait for it: the slot (the GPU) is busy until its thread returns.
            cancel.cancel();
            let limit = limit.as_ref().expect("the timer fires only with a limit");
            tracing::warn!("{}; waiting for the pipeline to stop", limit.failure("while the job ran").message);
            return match work.await {
                Ok(done) => Ok(done),
                Err(_) => Err(Stop::Failed(limit.failure("while the job ran"))),
            };
        }
    };
    // The stages only know the token fired; the session knows why.
    result.map_err(|stop| if matches!(stop, Stop::Cancelled) { cancelled() } else { stop })
}

enum Prepared {
    /// Run it, holding this job's turn on this worker.
    Run(tokio::sync::OwnedMutexGuard<()>),
    /// An earlier run's outputs are stored: re-announce them.
    Stored(Done),
}

/// The `receive` span: a cancel that came first, another run of this job here, outputs already stored.
#[allow(clippy::too_many_arguments)]
async fn prepare(
    shared: &Arc<Shared>,
    ctx: &SessionCtx,
    job: &Job,
    attempt: u32,
    delivery: &Delivery,
    received: Instant,
    registration: &registry::Registration,
    cancel: &CancellationToken,
) -> Result<Prepared, Stop> {
    if shared.take_cancelled(&job.job_id) {
        tracing::info!("cancelled before it was delivered; not running it");
        return Err(Stop::Interrupted(Interruption::Requested));
    }
    let cancelled = || Stop::Interrupted(why_cancelled(ctx));
    // Another delivery of this job may still be running here (the broker redelivered it after this
    // worker's connection was lost, while the first run went on): wait for it, then find its outputs.
    let exclusive = tokio::select! {
        guard = registration.exclusive() => guard,
        _ = cancel.cancelled() => return Err(cancelled()),
    };
    let stored = replay::stored_outputs(shared, job, delivery, attempt).await.map_err(|e| {
        let why = format!("could not look for the outputs of an earlier run in the store: {e}");
        let checks = replay::undecided(delivery) + 1;
        match (e.is_retryable(), checks < replay::UNDECIDED_LIMIT) {
            (true, true) => Stop::Undecided(why),
            // The store still unreachable after every check: count it as a failed attempt.
            (true, false) => Stop::Failed(Failure::new(
                ErrorCode::UploadFailed,
                true,
                format!("{why} ({checks} checks could not decide)"),
            )),
            // A refusal (credentials, policy): the upload would be refused too.
            (false, _) => Stop::Failed(Failure::new(ErrorCode::UploadFailed, false, why)),
        }
    })?;
    if let Some(outputs) = stored {
        tracing::info!("outputs already stored by an earlier delivery; re-announcing success");
        let timings = BTreeMap::from([("total".to_string(), ms(received.elapsed()))]);
        return Ok(Prepared::Stored(Done { outputs, execution: None, timings }));
    }
    Ok(Prepared::Run(exclusive))
}

/// The time a job must be done by: its `deadline`, or `jobs.max_runtime_s` of its kind, whichever is first.
struct Limit {
    at: Instant,
    what: String,
    retryable: bool,
}

impl Limit {
    fn of(shared: &Shared, job: &Job) -> Option<Limit> {
        let now = Instant::now();
        let deadline = job.deadline.map(|d| Limit {
            at: now + (d - chrono::Utc::now()).to_std().unwrap_or_default(),
            what: format!("deadline {d} passed"),
            retryable: false,
        });
        let runtime = shared.config.jobs.max_runtime_s.get(&job.kind()).map(|s| Limit {
            at: now + Duration::from_secs(*s),
            what: format!("the job ran longer than jobs.max_runtime_s.{} ({s} s)", job.kind()),
            // A run that hung may well finish on another attempt; a passed deadline never will.
            retryable: true,
        });
        match (deadline, runtime) {
            (Some(d), Some(r)) => Some(if d.at <= r.at { d } else { r }),
            (d, r) => d.or(r),
        }
    }

    fn failure(&self, when: &str) -> Failure {
        Failure::new(ErrorCode::DeadlineExceeded, self.retryable, format!("{} {when}", self.what))
    }
}

/// Slot, inputs, inference, upload. The inference slot is held only around the pipeline itself, so the
/// upload of this job overlaps the next job's inference.
async fn stages(
    shared: &Arc<Shared>,
    emitter: &Emitter,
    job: &Job,
    attempt: u32,
    received: Instant,
    cancel: &CancellationToken,
) -> Result<Done, Stop> {
    let kind = job.kind();
    let downgrade = shared.downgrade();
    let mut timings = BTreeMap::new();
    let permit = acquire_slot(shared, emitter, kind, cancel).instrument(tracing::info_span!("slot")).await?;
    timings.insert("queue".to_string(), ms(received.elapsed()));
    let body = async {
        let mut took = Vec::new();
        let started = Instant::now();
        let (inputs, scratch) = inputs::fetch(shared, job, cancel).instrument(tracing::info_span!("fetch")).await?;
        took.push(("fetch", started.elapsed()));

        let started = Instant::now();
        let span = tracing::info_span!("inference", backend = Empty, model = Empty, device = Empty);
        let (artifacts, execution, scratch) =
            infer::run(shared, emitter, job, attempt, inputs, scratch, downgrade, cancel)
                .instrument(span.clone())
                .await?;
        span.record("backend", execution.backend.as_str());
        span.record("model", execution.model.as_deref());
        span.record("device", execution.device.as_deref());
        took.push(("inference", started.elapsed()));
        drop(permit);

        let started = Instant::now();
        let outputs =
            upload::put_all(shared, job, &artifacts, cancel).instrument(tracing::info_span!("upload")).await?;
        took.push(("upload", started.elapsed()));
        drop(scratch);
        Ok::<_, Stop>((outputs, execution, took))
    };
    // `running` goes out once the job has run for `events.lifecycle_delay_ms`; a job that finishes sooner
    // reports only its outcome (with per-stage timings), which keeps short jobs cheap for the broker.
    tokio::pin!(body);
    let lifecycle_delay = shared.config.events.lifecycle_delay_ms;
    if lifecycle_delay == 0 {
        let _ = emitter.lifecycle(EventStatus::Running).await;
    }
    let delay = async {
        match lifecycle_delay {
            0 => std::future::pending().await,
            ms => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    };
    let (outputs, execution, took) = tokio::select! {
        biased;
        r = &mut body => r?,
        _ = delay => {
            let _ = emitter.lifecycle(EventStatus::Running).await;
            body.await?
        }
    };
    let mut busy = Duration::ZERO;
    for (stage, took) in took {
        shared.metrics.stage(kind.as_str(), stage, took.as_secs_f64());
        timings.insert(stage.to_string(), ms(took));
        busy += took;
    }
    let total = received.elapsed();
    shared.metrics.stage(kind.as_str(), "total", total.as_secs_f64());
    shared
        .metrics
        .overhead_seconds
        .get_or_create(&Metrics::kind(kind.as_str()))
        .observe(total.saturating_sub(busy).as_secs_f64());
    timings.insert("total".into(), ms(total));
    Ok(Done { outputs, execution: Some(execution), timings })
}

/// An inference slot of `kind`. `accepted` says "taken, waiting for a slot": it is only news when the job
/// has to wait. A job still waiting when the worker is cordoned or drained goes back to the queue.
async fn acquire_slot(
    shared: &Shared,
    emitter: &Emitter,
    kind: JobKind,
    cancel: &CancellationToken,
) -> Result<tokio::sync::OwnedSemaphorePermit, Stop> {
    let semaphore = shared.slots[&kind].semaphore.clone();
    if let Ok(permit) = semaphore.clone().try_acquire_owned() {
        return Ok(permit);
    }
    let _ = emitter.lifecycle(EventStatus::Accepted).await;
    let mut accepting = shared.accepting.subscribe();
    let given_back = async {
        while *accepting.borrow_and_update() {
            if accepting.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        p = semaphore.acquire_owned() => Ok(p.expect("slot semaphores are never closed")),
        _ = cancel.cancelled() => Err(Stop::Cancelled),
        _ = given_back => {
            tracing::info!("cordoned or draining while waiting for a slot; returning the job to its queue");
            Err(Stop::Interrupted(Interruption::Shutdown))
        }
    }
}

/// Runs a closure when dropped.
pub(crate) struct Guard<F: FnOnce()>(pub Option<F>);

impl<F: FnOnce()> Drop for Guard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}
