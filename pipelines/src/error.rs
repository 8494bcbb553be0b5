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
    /// A failed model call: out of memory (CUDA's, ONNX Runtime's arena, candle's) is its own kind, which the
    /// worker retries under a lower load; anything else means this model cannot run this job.
    pub fn inference(message: String) -> Self {
        let lower = message.to_ascii_lowercase();
        let oom = ["out of memory", "out_of_memory", "failed to allocate memory", "cudaerrormemoryallocation"];
        if oom.iter().any(|p| lower.contains(p)) {
            Self { kind: PipelineErrorKind::OutOfMemory, message }
        } else {
            Self::permanent(message)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_errors_tell_out_of_memory_apart() {
        let oom = [
            "CUDA failure 2: out of memory ; GPU=0",
            "Failed to allocate memory for requested buffer of size 123456",
            "CUDA error cudaErrorMemoryAllocation",
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
        ];
        for m in oom {
            assert_eq!(PipelineError::inference(m.into()).kind, PipelineErrorKind::OutOfMemory, "{m}");
        }
        let other = PipelineError::inference("Got invalid dimensions for input: input".into());
        assert_eq!(other.kind, PipelineErrorKind::Permanent);
    }
}
