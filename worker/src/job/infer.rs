//! Inference: the pipeline runs on a blocking thread, never on the reactor, and its outputs are hashed
//! on the same thread while they are hot in the page cache. Progress travels through a `watch` channel
//! (only the latest report is kept, however fast the pipeline reports) and is published at most once per
//! `events.progress_interval_ms`, the first one interval after the start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ainern2d_contract::{DowngradeProfile, ErrorCode, Job, Progress};
use ainern2d_pipelines::{
    Artifact, CancellationToken, Execution, PipelineError, PipelineErrorKind, ProgressSink, RunRequest,
};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::inputs::Scratch;
use super::{Failure, Stop};
use crate::Shared;
use crate::events::Emitter;

/// A pipeline artifact with its checksum.
pub(crate) struct Hashed {
    pub artifact: Artifact,
    pub sha256: String,
    pub size: u64,
}

/// Keeps the pipeline's latest progress report.
struct LatestProgress(watch::Sender<Option<Progress>>);

impl ProgressSink for LatestProgress {
    fn progress(&self, fraction: f32, stage: &str, message: Option<String>) {
        self.0.send_replace(Some(Progress {
            fraction,
            stage: stage.to_string(),
            message,
            tokens: None,
            tokens_per_s: None,
        }));
    }

    fn tokens(&self, fraction: f32, tokens: u32, tokens_per_s: f32) {
        self.0.send_replace(Some(Progress {
            fraction,
            stage: "generate".into(),
            message: Some(format!("{tokens} tokens, {tokens_per_s:.1} tok/s")),
            tokens: Some(tokens),
            tokens_per_s: Some(tokens_per_s),
        }));
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    shared: &Shared,
    emitter: &Emitter,
    job: &Job,
    attempt: u32,
    inputs: BTreeMap<String, PathBuf>,
    scratch: Option<Scratch>,
    downgrade: Option<DowngradeProfile>,
    cancel: &CancellationToken,
) -> Result<(Vec<Hashed>, Execution, Option<Scratch>), Stop> {
    let pipeline = shared.pipelines[&job.kind()].clone();
    let (tx, mut rx) = watch::channel(None);
    let interval = Duration::from_millis(shared.config.events.progress_interval_ms);
    let (job_owned, cancel_owned) = (job.clone(), cancel.clone());
    let root = shared.scratch_root().to_path_buf();
    let result = tokio::task::spawn_blocking(move || {
        let scratch =
            match scratch {
                Some(dir) => Some(dir),
                None if pipeline.needs_workdir() => Some(Scratch::create(&root, &job_owned).map_err(|_| {
                    PipelineError::retryable(format!("cannot create a scratch dir in {}", root.display()))
                })?),
                None => None,
            };
        let workdir = scratch.as_ref().map(|d| d.path().to_path_buf()).unwrap_or_default();
        let req = RunRequest { job: &job_owned, attempt, inputs, workdir, downgrade: downgrade.as_ref() };
        let output = pipeline.run(&req, &LatestProgress(tx), &cancel_owned)?;
        let hashed = output
            .artifacts
            .into_iter()
            .map(|artifact| {
                let (sha256, size) = sha256_file(&artifact.path)
                    .map_err(|e| PipelineError::retryable(format!("hashing {}: {e}", artifact.path.display())))?;
                Ok::<_, PipelineError>(Hashed { artifact, sha256, size })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Nothing to upload: the scratch directory can go now, on this thread.
        let scratch = if hashed.is_empty() { None } else { scratch };
        Ok::<_, PipelineError>((hashed, output.execution, scratch))
    });
    tokio::pin!(result);
    // Every report counts for liveness, published or not.
    let watched = shared.progressing.watch(&job.job_id, job.kind());
    let mut last = Instant::now();
    let result = loop {
        tokio::select! {
            done = &mut result => break done,
            Ok(()) = rx.changed() => {
                watched.reported();
                if last.elapsed() >= interval {
                    last = Instant::now();
                    let progress = rx.borrow_and_update().clone();
                    if let Some(progress) = progress {
                        let _ = emitter.progress(progress).await;
                    }
                }
            }
        }
    };
    drop(watched);
    match result {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => Err(stop_of(e)),
        Err(join) => {
            Err(Stop::Failed(Failure::new(ErrorCode::Internal, true, format!("pipeline thread panicked: {join}"))))
        }
    }
}

fn stop_of(e: PipelineError) -> Stop {
    match e.kind {
        PipelineErrorKind::Cancelled => Stop::Cancelled,
        PipelineErrorKind::OutOfMemory => Stop::Failed(Failure::new(ErrorCode::OutOfMemory, true, e.message)),
        kind => Stop::Failed(Failure::new(ErrorCode::PipelineFailed, kind == PipelineErrorKind::Retryable, e.message)),
    }
}

pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher)?;
    Ok((hex::encode(hasher.finalize()), size))
}
