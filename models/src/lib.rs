//! Models for the in-process pipelines (LLM today; TTS and lip-sync next): the manifest that names them,
//! the checksummed download cache for weights kept in the S3 model bucket, the compute device, and the
//! warm-model cache that keeps loaded models resident within a memory budget per device.
//!
//! This crate knows nothing about the broker, the artifact store or HTTP: downloads go through the
//! [`Fetch`] trait (the worker implements it over its S3 client), and loaded models are opaque values
//! the pipelines build.

mod cache;
mod device;
mod error;
mod files;
mod manifest;

pub use cache::{CacheMetrics, Lease, ModelCache};
pub use device::{DeviceSpec, open_device};
pub use error::ModelError;
pub use files::{Fetch, FileCache, sha256_file};
pub use manifest::{Budget, FileRef, Manifest, ModelBackend, ModelFormat, ModelKind, ModelSpec, OneOrMany, RemoteSpec};

use std::path::PathBuf;
use std::sync::Arc;

/// The manifest, the download cache, the device and the warm-model cache of one worker, shared by every
/// pipeline that loads models.
pub struct Models {
    pub manifest: Manifest,
    pub files: FileCache,
    pub device: candle_core::Device,
    /// `cpu`, `cuda:0`, `metal:0`: the budget key of `device`.
    pub device_key: String,
    pub cache: ModelCache,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models")
            .field("models", &self.manifest.models.keys().collect::<Vec<_>>())
            .field("device", &self.device_key)
            .finish()
    }
}

impl Models {
    /// Opens the device the manifest asks for and sets up the caches. `gpu_totals` is the memory of each
    /// GPU by ordinal (from NVML) when known: the GPU budget defaults to 90 % of the chosen GPU's.
    pub fn new(
        manifest: Manifest,
        fetch: Option<Arc<dyn Fetch>>,
        metrics: CacheMetrics,
        gpu_totals: &[u64],
    ) -> Result<Self, ModelError> {
        let (device, device_key) = open_device(&manifest.device)?;
        let ordinal = device_key.rsplit(':').next().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
        let budget = manifest.budget_bytes(&device_key, gpu_totals.get(ordinal).copied());
        tracing::info!(device = %device_key, budget_mb = budget / (1024 * 1024), models = manifest.models.len(), "model manifest loaded");
        let files = FileCache::new(manifest.cache_dir.clone(), manifest.base_dir.clone(), fetch);
        let cache = ModelCache::new([(device_key.clone(), budget)].into_iter().collect(), metrics);
        Ok(Models { manifest, files, device, device_key, cache })
    }

    /// Reads and validates the manifest at `path`, then [`Models::new`].
    pub fn open(
        path: &std::path::Path,
        fetch: Option<Arc<dyn Fetch>>,
        metrics: CacheMetrics,
        gpu_totals: &[u64],
    ) -> Result<Self, ModelError> {
        Self::new(Manifest::load(path)?, fetch, metrics, gpu_totals)
    }

    /// The model spec by name, or an error listing the known names.
    pub fn spec(&self, name: &str) -> Result<&ModelSpec, ModelError> {
        self.manifest.models.get(name).ok_or_else(|| ModelError::UnknownModel {
            name: name.to_string(),
            known: self.manifest.models.keys().cloned().collect(),
        })
    }

    /// Local paths of a file reference, downloading it into the cache first when it lives in S3.
    pub fn local_path(&self, file: &FileRef) -> Result<PathBuf, ModelError> {
        self.files.resolve(file)
    }

    /// [`Models::local_path`] that stops waiting for someone else's download once `cancelled` says so.
    pub fn local_path_until(
        &self,
        file: &FileRef,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<PathBuf, ModelError> {
        self.files.resolve_until(file, cancelled)
    }
}
