use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("model `{name}` is not in the manifest (known: {})", known.join(", "))]
    UnknownModel { name: String, known: Vec<String> },
    #[error("model file {path} does not exist{hint}")]
    Missing { path: PathBuf, hint: String },
    #[error("checksum mismatch for {location}: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch { location: String, expected: String, actual: String },
    #[error("downloading {location} failed: {message}")]
    Download { location: String, message: String, retryable: bool },
    #[error("model cache {dir}: {message}")]
    Cache { dir: PathBuf, message: String },
    #[error("model `{name}` needs {needed_mb} MB but the {device} budget is {budget_mb} MB")]
    TooLarge { name: String, device: String, needed_mb: u64, budget_mb: u64 },
    #[error(
        "model `{name}` needs {needed_mb} MB: the {device} budget ({budget_mb} MB) is taken by models in use ({})",
        busy.join(", ")
    )]
    BudgetBusy { name: String, device: String, needed_mb: u64, budget_mb: u64, busy: Vec<String> },
    #[error("device {spec}: {message}")]
    Device { spec: String, message: String },
    #[error("loading model `{name}` failed: {message}")]
    Load { name: String, message: String },
    #[error("cancelled while waiting for {what}")]
    Cancelled { what: String },
}

impl ModelError {
    /// Whether a later attempt may succeed (a download hiccup, a budget full of models in use) rather than
    /// fail the same way (a missing file, a corrupt model, a bad manifest).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ModelError::Download { retryable: true, .. } | ModelError::BudgetBusy { .. })
    }
}
