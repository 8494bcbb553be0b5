use serde::{Deserialize, Serialize};

/// Stable machine-readable error codes carried in `failed` events. Consumers switch on these, so they are
/// part of the contract: add new ones, never rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message body is not JSON.
    MalformedMessage,
    /// The `schema` field names a version this program does not speak.
    UnsupportedSchema,
    /// A field is missing, has the wrong type or an out-of-range value.
    InvalidField,
    /// An input URL was refused (scheme, host allowlist, private address, redirect).
    InputRefused,
    /// An input could not be fetched (network, not found, too large, too slow).
    InputUnavailable,
    /// The deadline passed before the job could finish.
    DeadlineExceeded,
    /// The inference pipeline failed.
    PipelineFailed,
    /// The accelerator ran out of memory.
    OutOfMemory,
    /// Uploading an output failed.
    UploadFailed,
    /// The job was cancelled.
    Cancelled,
    /// The job was retried as often as configured and still failed.
    RetriesExhausted,
    /// Anything the worker could not classify.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedMessage => "malformed_message",
            ErrorCode::UnsupportedSchema => "unsupported_schema",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InputRefused => "input_refused",
            ErrorCode::InputUnavailable => "input_unavailable",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::PipelineFailed => "pipeline_failed",
            ErrorCode::OutOfMemory => "out_of_memory",
            ErrorCode::UploadFailed => "upload_failed",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::RetriesExhausted => "retries_exhausted",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A message that does not satisfy the contract. `field` is a dotted path (`params.width`, `inputs.video`)
/// when the problem is one field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{message}", field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
pub struct ContractError {
    pub code: ErrorCode,
    pub field: Option<String>,
    pub message: String,
}

/// The longest `message` (bytes) a [`ContractError`] from [`crate::parse_job`] or [`crate::Job::validate`]
/// carries; `field` is held to [`MAX_ERROR_FIELD`]. Both may quote the message (serde quotes a value of the
/// wrong type, a path names keys) and both travel in the `failed` event, the log and the dead letter's
/// reason header, which the broker refuses beyond its frame size (128 KiB) by closing the connection: a
/// megabyte value must not make its own rejection undeliverable.
pub(crate) const MAX_ERROR_MESSAGE: usize = 1024;
pub(crate) const MAX_ERROR_FIELD: usize = 256;

impl ContractError {
    /// `message` and `field` cut to [`MAX_ERROR_MESSAGE`] and [`MAX_ERROR_FIELD`] bytes (ending in `…`).
    pub(crate) fn bounded(mut self) -> Self {
        self.message = cut(self.message, MAX_ERROR_MESSAGE);
        self.field = self.field.map(|f| cut(f, MAX_ERROR_FIELD));
        self
    }

    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: ErrorCode::InvalidField, field: Some(field.into()), message: message.into() }
    }

    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, field: None, message: message.into() }
    }
}

fn cut(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
