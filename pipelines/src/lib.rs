//! Inference backends behind one trait, [`Pipeline`]: the `llm` pipeline ([`LlmPipeline`]: candle in
//! process, or an OpenAI-compatible server, per the model manifest), and the mock pipelines that make the
//! whole job path work on a laptop with no GPU: `llm` streams deterministic text, `audio` writes a WAV,
//! `video` encodes a real H.264 MP4 with FFmpeg, `lipsync` muxes a video with an audio track.
//!
//! A pipeline is synchronous and CPU/GPU-bound: the worker calls [`Pipeline::run`] on a blocking thread,
//! never on the async reactor. This crate must not know about the broker, the object store or HTTP: inputs
//! arrive as local files, outputs leave as local files.

pub mod audio_out;
pub mod comfy;
mod error;
pub mod lipsync;
pub mod llm;
mod media;
mod mock;
pub mod onnx;
pub mod tts;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use ainern2d_contract::{BackendStatus, Execution};
use ainern2d_contract::{DowngradeProfile, Job, JobKind};
pub use tokio_util::sync::CancellationToken;

pub use error::{PipelineError, PipelineErrorKind};
pub use llm::LlmPipeline;
pub use mock::{FaultKind, MockConfig, MockPipeline};

/// Everything a pipeline needs to run one job.
#[derive(Debug)]
pub struct RunRequest<'a> {
    pub job: &'a Job,
    pub attempt: u32,
    /// Local copies of the job's inputs, by input name.
    pub inputs: BTreeMap<String, PathBuf>,
    /// A scratch directory owned by this run; outputs are written here.
    pub workdir: PathBuf,
    /// The downgrade profile in force when the job started, if any.
    pub downgrade: Option<&'a DowngradeProfile>,
}

/// A file a pipeline produced, to be stored as `<prefix>/<job_id>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub name: String,
    pub path: PathBuf,
    pub content_type: String,
}

/// What a successful run produced, and what produced it (named in the outcome event, so that a mock's
/// output never passes for a model's).
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutput {
    pub artifacts: Vec<Artifact>,
    pub execution: Execution,
}

impl RunOutput {
    /// Artifacts of `backend` with nothing else to say about the run.
    pub fn new(backend: &str, artifacts: Vec<Artifact>) -> Self {
        RunOutput { artifacts, execution: Execution { backend: backend.to_string(), ..Execution::default() } }
    }
}

/// Where a pipeline reports progress. Implementations must be cheap: pipelines may call this per token or
/// per frame and the worker throttles what it publishes.
pub trait ProgressSink: Send + Sync {
    fn progress(&self, fraction: f32, stage: &str, message: Option<String>);
    /// Generation progress: `tokens` generated so far at `tokens_per_s`. Sinks that carry structured
    /// progress override this; the default folds it into a message.
    fn tokens(&self, fraction: f32, tokens: u32, tokens_per_s: f32) {
        self.progress(fraction, "generate", Some(format!("{tokens} tokens, {tokens_per_s:.1} tok/s")));
    }
}

/// A sink that drops everything (one-shot runs without a UI, tests).
#[derive(Debug, Default)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn progress(&self, _: f32, _: &str, _: Option<String>) {}
}

/// One inference backend for one job kind.
pub trait Pipeline: Send + Sync {
    fn kind(&self) -> JobKind;
    /// Backend name for logs and metrics (`mock`, `models`, `onnxruntime`, `comfyui`, …); the backend
    /// that really ran a job is in its [`RunOutput::execution`].
    fn backend(&self) -> &'static str;
    /// Names of the artifacts a successful run of `job` produces. The worker looks for them before running a
    /// redelivered job, so a job whose outputs were already stored is not run (or stored) twice.
    fn output_names(&self, job: &Job) -> Vec<String>;
    /// Whether `run` needs `RunRequest::workdir` to exist (it always does for a pipeline that writes
    /// artifacts). A backend that writes nothing says no and the worker skips the scratch directory.
    fn needs_workdir(&self) -> bool {
        true
    }
    /// Loads what the pipeline keeps warm (the manifest's `warm` models) before the worker reports ready.
    fn warm_up(&self) -> Result<(), PipelineError> {
        Ok(())
    }
    /// Asks the server the pipeline runs on (ComfyUI) how it is: the worker calls this on a blocking thread
    /// every few seconds, shows the answer in `/ready` and heartbeats, and takes none of this kind's jobs
    /// while the server does not answer. In-process pipelines have no server and say `None`.
    fn probe(&self) -> Option<BackendStatus> {
        None
    }
    /// Stops what the pipeline started (a supervised ComfyUI) once the worker has finished its last job.
    /// Called on a blocking thread; may wait.
    fn shutdown(&self) {}
    /// Runs the job to completion on the calling (blocking) thread. Must return promptly with
    /// [`PipelineErrorKind::Cancelled`] once `cancel` fires.
    fn run(
        &self,
        req: &RunRequest<'_>,
        progress: &dyn ProgressSink,
        cancel: &CancellationToken,
    ) -> Result<RunOutput, PipelineError>;
}

/// A backend that does nothing and produces no artifact: it measures the runtime around a pipeline
/// (`benches/`) and smoke-tests the plumbing. Selected with `jobs.backend = "noop"`.
#[derive(Debug, Clone)]
pub struct NoopPipeline(pub JobKind);

impl Pipeline for NoopPipeline {
    fn kind(&self) -> JobKind {
        self.0
    }

    fn backend(&self) -> &'static str {
        "noop"
    }

    fn output_names(&self, _job: &Job) -> Vec<String> {
        Vec::new()
    }

    fn needs_workdir(&self) -> bool {
        false
    }

    fn run(
        &self,
        _: &RunRequest<'_>,
        _: &dyn ProgressSink,
        cancel: &CancellationToken,
    ) -> Result<RunOutput, PipelineError> {
        if cancel.is_cancelled() {
            return Err(PipelineError::cancelled());
        }
        Ok(RunOutput::new("noop", Vec::new()))
    }
}
