//! Handling one delivery: parse, check for an earlier complete run, fetch, infer, upload, report, dispose.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ainern2d_contract::topology::{ATTEMPT_HEADER, ERROR_CODE_HEADER, REASON_HEADER};
use ainern2d_contract::{
    ContractError, ErrorCode, ErrorInfo, EventStatus, Job, JobKind, OutputObject, Progress, WorkerState, parse_job,
};
use ainern2d_pipelines::{Artifact, CancellationToken, PipelineErrorKind, ProgressSink, RunRequest};
use ainern2d_queue::{Delivery, HeaderValue};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::Shared;
use crate::broker::{BrokerError, Publisher};
use crate::events::Emitter;
use crate::fetch::FetchError;
use crate::lifecycle::{Disposition, Interruption, Outcome, dispose};
use crate::metrics::Metrics;

/// Per-connection context of a job.
#[derive(Clone)]
pub struct SessionCtx {
    pub publisher: Publisher,
    /// Fired when in-flight jobs must stop; `abort_reason` says why.
    pub abort: CancellationToken,
    pub abort_reason: Arc<OnceLock<Interruption>>,
}

/// A job failure with what the event needs.
#[derive(Debug)]
struct Failure {
    code: ErrorCode,
    message: String,
    retryable: bool,
    field: Option<String>,
}

enum Stop {
    Failed(Failure),
    Interrupted(Interruption),
}

impl From<FetchError> for Stop {
    fn from(e: FetchError) -> Self {
        let code =
            if matches!(e, FetchError::Refused { .. }) { ErrorCode::InputRefused } else { ErrorCode::InputUnavailable };
        Stop::Failed(Failure { code, retryable: e.is_retryable(), message: e.to_string(), field: None })
    }
}

/// A pipeline artifact with its checksum, computed on the pipeline's thread.
struct Hashed {
    artifact: Artifact,
    sha256: String,
    size: u64,
}

struct Done {
    outputs: Vec<OutputObject>,
    timings: BTreeMap<String, f64>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub async fn handle(shared: Arc<Shared>, ctx: SessionCtx, kind: JobKind, delivery: Delivery) {
    let received = Instant::now();
    let attempt = delivery.message.header_u32(ATTEMPT_HEADER).unwrap_or(1).max(1);
    let in_flight = shared.metrics.in_flight.get_or_create(&Metrics::kind(kind.as_str())).clone();
    in_flight.inc();
    let _in_flight = scopeguard(move || {
        in_flight.dec();
    });

    // Prefetched before a cordon or drain took effect: give it back untouched, another worker takes it.
    if matches!(shared.state(), WorkerState::Cordoned | WorkerState::Draining | WorkerState::Drained) {
        let _ = delivery.acker.nack(true).await;
        return;
    }
    let job = match parse_job(&delivery.message.body) {
        Ok(job) if job.kind() != kind => {
            Err(ContractError::field("kind", format!("a {} job was published to the {kind} queue", job.kind())))
        }
        other => other,
    };
    let job = match job {
        Ok(job) => job,
        Err(err) => return reject_invalid(&shared, &ctx, kind, attempt, &delivery, err).await,
    };
    let emitter = Emitter::new(
        ctx.publisher.clone(),
        shared.topology.events_exchange(),
        &job.job_id,
        Some(kind),
        attempt,
        &shared.config.worker_id,
    )
    .with_trace(job.traceparent.clone())
    .with_downgrade(shared.downgrade().map(|d| d.name));
    if shared.take_cancelled(&job.job_id) {
        tracing::info!(job_id = %job.job_id, "cancelled before it was delivered; not running it");
        let cancelled = Err(Stop::Interrupted(Interruption::Requested));
        return finish(&shared, &ctx, &emitter, &job, attempt, &delivery, cancelled).await;
    }
    // A redelivered (or retried) job may already have run to completion: re-announce that outcome (same
    // event id) rather than producing a second object or a conflicting event.
    if (delivery.redelivered || attempt > 1)
        && let Some(outputs) = existing_outputs(&shared, &job).await
    {
        tracing::info!(job_id = %job.job_id, "outputs already stored by an earlier delivery; re-announcing success");
        let timings = BTreeMap::from([("total".to_string(), ms(received.elapsed()))]);
        return finish(&shared, &ctx, &emitter, &job, attempt, &delivery, Ok(Done { outputs, timings })).await;
    }

    let span = tracing::info_span!("job", job_id = %job.job_id, %kind, attempt);
    async {
        let cancel = ctx.abort.child_token();
        shared.running.lock().expect("running lock").insert(job.job_id.clone(), cancel.clone());
        let result = run(&shared, &ctx, &emitter, &job, attempt, received, &cancel).await.map_err(|stop| match stop {
            // The pipeline only knows it was cancelled; the session knows why.
            Stop::Interrupted(_) => Stop::Interrupted(why_cancelled(&ctx)),
            failed => failed,
        });
        shared.running.lock().expect("running lock").remove(&job.job_id);
        finish(&shared, &ctx, &emitter, &job, attempt, &delivery, result).await;
    }
    .instrument(span)
    .await;
}

/// Why a job's token fired: the session's abort (shutdown, lost connection) or a `cancel` command.
fn why_cancelled(ctx: &SessionCtx) -> Interruption {
    if ctx.abort.is_cancelled() {
        ctx.abort_reason.get().copied().unwrap_or(Interruption::Shutdown)
    } else {
        Interruption::Requested
    }
}

/// Runs the job up to the stored outputs. The inference slot is held only around the pipeline itself, so
/// the upload of this job overlaps the next job's inference.
async fn run(
    shared: &Arc<Shared>,
    ctx: &SessionCtx,
    emitter: &Emitter,
    job: &Job,
    attempt: u32,
    received: Instant,
    cancel: &CancellationToken,
) -> Result<Done, Stop> {
    let kind = job.kind();
    let interrupted = || Stop::Interrupted(why_cancelled(ctx));
    let downgrade = shared.downgrade();
    if let Some(deadline) = job.deadline
        && deadline <= chrono::Utc::now()
    {
        return Err(Stop::Failed(Failure {
            code: ErrorCode::DeadlineExceeded,
            message: format!("deadline {deadline} passed before the job started"),
            retryable: false,
            field: None,
        }));
    }
    let mut timings = BTreeMap::new();
    let work = async {
        // `accepted` says "taken, waiting for a slot": it is only news when the job has to wait.
        let permit = match shared.slots[&kind].semaphore.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let _ = emitter.lifecycle(EventStatus::Accepted).await;
                tokio::select! {
                    p = shared.slots[&kind].semaphore.clone().acquire_owned() => p.expect("slot semaphores are never closed"),
                    _ = cancel.cancelled() => return Err(interrupted()),
                }
            }
        };
        timings.insert("queue".to_string(), ms(received.elapsed()));
        let body = async {
            // A job with inputs needs its scratch directory now; otherwise it is made on the pipeline's thread.
            let workdir =
                if job.inputs.is_empty() { None } else { Some(scratch_dir(&shared.config.scratch_dir, job)?) };
            let mut stages = Vec::new();
            let started = Instant::now();
            let inputs = match &workdir {
                Some(dir) => fetch_inputs(shared, job, dir.path(), cancel).await?,
                None => BTreeMap::new(),
            };
            stages.push(("fetch", started.elapsed()));

            let started = Instant::now();
            let (artifacts, workdir) = infer(shared, emitter, job, attempt, inputs, workdir, downgrade, cancel).await?;
            stages.push(("inference", started.elapsed()));
            drop(permit);

            let started = Instant::now();
            let outputs = upload(shared, job, &artifacts, cancel).await?;
            stages.push(("upload", started.elapsed()));
            if let Some(workdir) = workdir {
                // Removing the scratch tree is file-system work: keep it off the reactor.
                tokio::task::spawn_blocking(move || drop(workdir));
            }
            Ok::<_, Stop>((outputs, stages))
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
        let (outputs, stages) = tokio::select! {
            biased;
            r = &mut body => r?,
            _ = delay => {
                let _ = emitter.lifecycle(EventStatus::Running).await;
                body.await?
            }
        };
        let mut busy = Duration::ZERO;
        for (stage, took) in stages {
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
        Ok(outputs)
    };
    let outputs = match job.deadline {
        Some(deadline) => {
            let left = (deadline - chrono::Utc::now()).to_std().unwrap_or_default();
            match tokio::time::timeout(left, work).await {
                Ok(r) => r,
                Err(_) => {
                    cancel.cancel();
                    Err(Stop::Failed(Failure {
                        code: ErrorCode::DeadlineExceeded,
                        message: format!("deadline {deadline} passed while the job ran"),
                        retryable: false,
                        field: None,
                    }))
                }
            }
        }
        None => work.await,
    }?;
    Ok(Done { outputs, timings })
}

async fn fetch_inputs(
    shared: &Shared,
    job: &Job,
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<BTreeMap<String, PathBuf>, Stop> {
    let mut inputs = BTreeMap::new();
    for (name, url) in &job.inputs {
        let dest = dir.join(format!("input-{name}"));
        tokio::select! {
            r = shared.fetcher.fetch(name, &url.0, &dest) => { r?; }
            _ = cancel.cancelled() => return Err(Stop::Interrupted(Interruption::Shutdown)),
        }
        inputs.insert(name.clone(), dest);
    }
    Ok(inputs)
}

/// Forwards pipeline progress to the event stream at a bounded rate.
struct ChannelSink(tokio::sync::mpsc::UnboundedSender<Progress>);

impl ProgressSink for ChannelSink {
    fn progress(&self, fraction: f32, stage: &str, message: Option<String>) {
        let _ = self.0.send(Progress { fraction, stage: stage.to_string(), message, tokens: None, tokens_per_s: None });
    }

    fn tokens(&self, fraction: f32, tokens: u32, tokens_per_s: f32) {
        let _ = self.0.send(Progress {
            fraction,
            stage: "generate".into(),
            message: Some(format!("{tokens} tokens, {tokens_per_s:.1} tok/s")),
            tokens: Some(tokens),
            tokens_per_s: Some(tokens_per_s),
        });
    }
}

#[allow(clippy::too_many_arguments)]
async fn infer(
    shared: &Arc<Shared>,
    emitter: &Emitter,
    job: &Job,
    attempt: u32,
    inputs: BTreeMap<String, PathBuf>,
    workdir: Option<tempfile::TempDir>,
    downgrade: Option<ainern2d_contract::DowngradeProfile>,
    cancel: &CancellationToken,
) -> Result<(Vec<Hashed>, Option<tempfile::TempDir>), Stop> {
    let pipeline = shared.pipelines[&job.kind()].clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let interval = Duration::from_millis(shared.config.events.progress_interval_ms);
    let job_owned = job.clone();
    let cancel_owned = cancel.clone();
    // Inference is CPU/GPU-bound: it runs on a blocking thread, never on the reactor. The outputs are hashed
    // on the same thread while they are hot in the page cache.
    let scratch = shared.config.scratch_dir.clone();
    let result = tokio::task::spawn_blocking(move || {
        let workdir = match workdir {
            Some(dir) => Some(dir),
            None if pipeline.needs_workdir() => Some(scratch_dir(&scratch, &job_owned).map_err(|_| {
                ainern2d_pipelines::PipelineError::retryable(format!(
                    "cannot create a scratch dir in {}",
                    scratch.display()
                ))
            })?),
            None => None,
        };
        let path = workdir.as_ref().map(|d| d.path().to_path_buf()).unwrap_or_default();
        let req = RunRequest { job: &job_owned, attempt, inputs, workdir: path, downgrade: downgrade.as_ref() };
        let artifacts = pipeline.run(&req, &ChannelSink(tx), &cancel_owned)?;
        let hashed = artifacts
            .into_iter()
            .map(|artifact| {
                let (sha256, size) = sha256_file(&artifact.path).map_err(|e| {
                    ainern2d_pipelines::PipelineError::retryable(format!("hashing {}: {e}", artifact.path.display()))
                })?;
                Ok::<_, ainern2d_pipelines::PipelineError>(Hashed { artifact, sha256, size })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Nothing to upload: the scratch directory can go now, on this thread.
        let workdir = if hashed.is_empty() { None } else { workdir };
        Ok::<_, ainern2d_pipelines::PipelineError>((hashed, workdir))
    });
    // Progress is forwarded from this task while the pipeline runs: the first event one interval after the
    // start (a job shorter than that reports only its outcome), then at most one per interval.
    tokio::pin!(result);
    let mut last = Instant::now();
    let result = loop {
        tokio::select! {
            done = &mut result => break done,
            Some(progress) = rx.recv() => {
                if last.elapsed() >= interval {
                    last = Instant::now();
                    let _ = emitter.progress(progress).await;
                }
            }
        }
    };
    match result {
        Ok(Ok(artifacts)) => Ok(artifacts),
        Ok(Err(e)) => Err(match e.kind {
            PipelineErrorKind::Cancelled => Stop::Interrupted(Interruption::Shutdown),
            PipelineErrorKind::OutOfMemory => {
                Stop::Failed(Failure { code: ErrorCode::OutOfMemory, message: e.message, retryable: true, field: None })
            }
            kind => Stop::Failed(Failure {
                code: ErrorCode::PipelineFailed,
                retryable: kind == PipelineErrorKind::Retryable,
                message: e.message,
                field: None,
            }),
        }),
        Err(join) => Err(Stop::Failed(Failure {
            code: ErrorCode::Internal,
            message: format!("pipeline thread panicked: {join}"),
            retryable: true,
            field: None,
        })),
    }
}

fn scratch_dir(root: &Path, job: &Job) -> Result<tempfile::TempDir, Stop> {
    tempfile::Builder::new().prefix(&format!("{}-", job.job_id)).tempdir_in(root).map_err(|e| {
        Stop::Failed(Failure {
            code: ErrorCode::Internal,
            message: format!("cannot create a scratch dir in {}: {e}", root.display()),
            retryable: true,
            field: None,
        })
    })
}

fn bucket_of<'a>(shared: &'a Shared, job: &'a Job) -> &'a str {
    job.output.bucket.as_deref().unwrap_or(&shared.config.store.bucket)
}

async fn upload(
    shared: &Shared,
    job: &Job,
    artifacts: &[Hashed],
    cancel: &CancellationToken,
) -> Result<Vec<OutputObject>, Stop> {
    let bucket = bucket_of(shared, job);
    let mut outputs = Vec::with_capacity(artifacts.len());
    for Hashed { artifact, sha256, size } in artifacts {
        if shared.config.mock.upload_delay_ms > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(shared.config.mock.upload_delay_ms)) => {}
                _ = cancel.cancelled() => return Err(Stop::Interrupted(Interruption::Shutdown)),
            }
        }
        let key = job.output_key(&artifact.name);
        let failed = |e: crate::store::StoreError| {
            Stop::Failed(Failure {
                code: ErrorCode::UploadFailed,
                retryable: e.is_retryable(),
                message: e.to_string(),
                field: None,
            })
        };
        shared.store.put(bucket, &key, &artifact.path, &artifact.content_type, sha256).await.map_err(failed)?;
        shared.metrics.upload_bytes.get_or_create(&Metrics::kind(job.kind().as_str())).inc_by(*size);
        let presigned_url =
            shared.store.presign_get(bucket, &key, Duration::from_secs(shared.config.store.presign_ttl_s)).await.ok();
        outputs.push(OutputObject {
            name: artifact.name.clone(),
            bucket: bucket.to_string(),
            key,
            size: *size,
            sha256: sha256.clone(),
            content_type: artifact.content_type.clone(),
            presigned_url,
        });
    }
    Ok(outputs)
}

pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher)?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// The outputs of an earlier complete run of this job, if every expected object is stored with its checksum.
async fn existing_outputs(shared: &Shared, job: &Job) -> Option<Vec<OutputObject>> {
    let bucket = bucket_of(shared, job);
    let mut outputs = Vec::new();
    for name in shared.pipelines[&job.kind()].output_names(job) {
        let key = job.output_key(&name);
        let object = shared.store.head(bucket, &key).await.ok()??;
        let presigned_url =
            shared.store.presign_get(bucket, &key, Duration::from_secs(shared.config.store.presign_ttl_s)).await.ok();
        outputs.push(OutputObject {
            name,
            bucket: bucket.to_string(),
            key,
            size: object.size,
            sha256: object.sha256?,
            content_type: object.content_type.unwrap_or_else(|| "application/octet-stream".into()),
            presigned_url,
        });
    }
    Some(outputs)
}

/// Performs the disposition of a finished (or stopped) job in the order that loses nothing: the copy
/// (retry / dead letter) is confirmed, then the event, then the delivery is acked.
async fn finish(
    shared: &Shared,
    ctx: &SessionCtx,
    emitter: &Emitter,
    job: &Job,
    attempt: u32,
    delivery: &Delivery,
    result: Result<Done, Stop>,
) {
    let kind = job.kind();
    let (outcome, failure, done) = match result {
        Ok(done) => (Outcome::Succeeded, None, Some(done)),
        Err(Stop::Interrupted(why)) => (Outcome::Interrupted(why), None, None),
        Err(Stop::Failed(f)) => (Outcome::Failed { code: f.code, retryable: f.retryable }, Some(f), None),
    };
    let disposition =
        dispose(&outcome, attempt, shared.config.jobs.max_attempts, shared.config.jobs.retry_delays_ms.len());
    let outcome_label = match &disposition {
        Disposition::Finish { status } => status.as_str(),
        Disposition::Retry { .. } => "retried",
        Disposition::DeadLetter { status, .. } => status.as_str(),
        Disposition::Requeue => "requeued",
        Disposition::Abandon => "abandoned",
    };
    if let Some(f) = &failure {
        tracing::warn!(job_id = %job.job_id, %kind, attempt, code = f.code.as_str(), retryable = f.retryable, "job failed: {}", f.message);
    }
    let result: Result<(), BrokerError> = async {
        match disposition {
            Disposition::Finish { status } => {
                let Done { outputs, timings } = done.unwrap_or(Done { outputs: Vec::new(), timings: BTreeMap::new() });
                emitter.outcome(status, outputs, None, timings).await?;
                ack(delivery).await
            }
            Disposition::Retry { next_attempt, level } => {
                let f = failure.expect("a retry follows a failure");
                // The copy keeps the job's headers and priority; only the attempt changes.
                let mut copy =
                    delivery.message.clone().with_header(ATTEMPT_HEADER, HeaderValue::Int(next_attempt.into()));
                copy.persistent = true;
                ctx.publisher.publish("", &shared.topology.retry_queue(kind, level), &copy).await?;
                shared.metrics.retries.get_or_create(&Metrics::kind(kind.as_str())).inc();
                let error = ErrorInfo {
                    code: f.code,
                    message: format!("{} (attempt {attempt}, retrying as attempt {next_attempt})", f.message),
                    retryable: true,
                    field: f.field,
                };
                emitter.outcome(EventStatus::Retrying, Vec::new(), Some(error), BTreeMap::new()).await?;
                ack(delivery).await
            }
            Disposition::DeadLetter { status, code } => {
                let f = failure.expect("a dead letter follows a failure");
                let message = if code == ErrorCode::RetriesExhausted {
                    format!("gave up after {attempt} attempts: {}", f.message)
                } else {
                    f.message
                };
                dead_letter(shared, ctx, delivery, attempt, code, &message).await?;
                let error = ErrorInfo { code, message, retryable: false, field: f.field };
                emitter.outcome(status, Vec::new(), Some(error), BTreeMap::new()).await?;
                ack(delivery).await
            }
            Disposition::Requeue => delivery.acker.nack(true).await,
            Disposition::Abandon => Ok(()),
        }
    }
    .await;
    match result {
        Ok(()) => shared.metrics.outcome(kind.as_str(), outcome_label),
        // The delivery stays unacked: the broker redelivers it, and the redelivery finds the stored outputs.
        Err(e) => {
            tracing::warn!(job_id = %job.job_id, "could not report the outcome ({e}); the broker will redeliver the job")
        }
    }
}

async fn ack(delivery: &Delivery) -> Result<(), BrokerError> {
    delivery.acker.ack(false).await
}

async fn dead_letter(
    shared: &Shared,
    ctx: &SessionCtx,
    delivery: &Delivery,
    attempt: u32,
    code: ErrorCode,
    reason: &str,
) -> Result<(), BrokerError> {
    let mut copy = delivery
        .message
        .clone()
        .with_header(REASON_HEADER, HeaderValue::Text(reason.to_string()))
        .with_header(ERROR_CODE_HEADER, HeaderValue::Text(code.as_str().to_string()))
        .with_header(ATTEMPT_HEADER, HeaderValue::Int(attempt.into()));
    copy.persistent = true;
    copy.content_type = Some("application/json".into());
    ctx.publisher.publish(&shared.topology.dead_letter_exchange(), "", &copy).await
}

/// A message that is not a valid job: dead-lettered at once with a `failed` event naming the problem.
async fn reject_invalid(
    shared: &Shared,
    ctx: &SessionCtx,
    kind: JobKind,
    attempt: u32,
    delivery: &Delivery,
    err: ContractError,
) {
    // Use the job id when it is readable and safe; otherwise a stable id derived from the body, so a
    // redelivery of the same bad message reports under the same id.
    let job_id = serde_json::from_slice::<serde_json::Value>(&delivery.message.body)
        .ok()
        .and_then(|v| v.get("job_id").and_then(|j| j.as_str()).map(str::to_owned))
        .filter(|id| {
            !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .unwrap_or_else(|| format!("invalid-{}", &hex::encode(Sha256::digest(&delivery.message.body))[..16]));
    tracing::warn!(%job_id, %kind, "invalid job message dead-lettered: {err}");
    let emitter = Emitter::new(
        ctx.publisher.clone(),
        shared.topology.events_exchange(),
        &job_id,
        Some(kind),
        attempt,
        &shared.config.worker_id,
    );
    let result: Result<(), BrokerError> = async {
        dead_letter(shared, ctx, delivery, attempt, err.code, &err.to_string()).await?;
        let error = ErrorInfo { code: err.code, message: err.to_string(), retryable: false, field: err.field.clone() };
        emitter.outcome(EventStatus::Failed, Vec::new(), Some(error), BTreeMap::new()).await?;
        ack(delivery).await
    }
    .await;
    match result {
        Ok(()) => shared.metrics.outcome(kind.as_str(), "invalid"),
        Err(e) => tracing::warn!(%job_id, "could not dead-letter an invalid message ({e}); it will be redelivered"),
    }
}

struct Guard<F: FnOnce()>(Option<F>);
impl<F: FnOnce()> Drop for Guard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}
fn scopeguard<F: FnOnce()>(f: F) -> Guard<F> {
    Guard(Some(f))
}
