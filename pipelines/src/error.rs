/// How a pipeline failure should be handled by the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineErrorKind {
    /// Worth retrying later (transient backend trouble).
    Retryable,
    /// Retrying cannot help (corrupt input, unsupported request).
    Permanent,
    /// The accelerator ran out of memory: retry at lower concurrency or under a downgrade profile.
    OutOfMemory,
    /// Stopped because the job was cancelled or the worker is shutting down.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PipelineError {
    pub kind: PipelineErrorKind,
    pub message: String,
}

impl PipelineError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { kind: PipelineErrorKind::Retryable, message: message.into() }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { kind: PipelineErrorKind::Permanent, message: message.into() }
    }
    pub fn cancelled() -> Self {
        Self { kind: PipelineErrorKind::Cancelled, message: "cancelled".into() }
    }
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, PipelineErrorKind::Retryable | PipelineErrorKind::OutOfMemory)
    }
}

impl From<ffmpeg_next::Error> for PipelineError {
    fn from(e: ffmpeg_next::Error) -> Self {
        // FFmpeg errors here come from our own encoder setup or from input media; both are permanent for
        // this job (a retry would decode the same bytes the same way).
        PipelineError::permanent(format!("ffmpeg: {e}"))
    }
}

impl From<std::io::Error> for PipelineError {
    fn from(e: std::io::Error) -> Self {
        PipelineError::retryable(format!("i/o: {e}"))
    }
}
