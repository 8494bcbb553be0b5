//! The worker's side of the models crate: opening the manifest named by `models.manifest`, downloading
//! `s3://` model files through the artifact store's S3 client, and choosing each kind's pipeline.

use std::path::Path;
use std::sync::Arc;

use ainern2d_contract::JobKind;
use ainern2d_models::{CacheMetrics, Fetch, Models};
use ainern2d_pipelines::comfy::ComfyPipeline;
use ainern2d_pipelines::lipsync::LipsyncPipeline;
use ainern2d_pipelines::tts::TtsPipeline;
use ainern2d_pipelines::{LlmPipeline, MockPipeline, NoopPipeline, Pipeline};
use anyhow::Context;

use crate::config::{Backend, Config};
use crate::store::ArtifactStore;

/// Downloads model files with the store's client (S3 in production, the local directory in local mode).
/// Called from blocking threads (model loads never run on the reactor), so it can wait on the runtime.
struct StoreFetch {
    store: Arc<dyn ArtifactStore>,
}

impl Fetch for StoreFetch {
    fn fetch(&self, location: &str, dest: &Path) -> Result<u64, (String, bool)> {
        let rest = location.strip_prefix("s3://").ok_or_else(|| (format!("{location} is not s3://"), false))?;
        let (bucket, key) =
            rest.split_once('/').ok_or_else(|| (format!("{location} is not s3://bucket/key"), false))?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| ("model downloads need the worker's runtime".to_string(), false))?;
        handle
            .block_on(self.store.get_to_file(bucket, key, dest, u64::MAX))
            .map_err(|e| (e.to_string(), e.is_retryable()))
    }
}

/// Opens the manifest at `path`: its device, its caches, S3 downloads through `store` when given.
/// `gpu_totals`: the memory of each GPU by ordinal (NVML), for the default GPU budget.
pub fn open(
    path: &Path,
    store: Option<Arc<dyn ArtifactStore>>,
    metrics: CacheMetrics,
    gpu_totals: &[u64],
) -> anyhow::Result<Arc<Models>> {
    let fetch = store.map(|store| Arc::new(StoreFetch { store }) as Arc<dyn Fetch>);
    let models = Models::open(path, fetch, metrics, gpu_totals)
        .with_context(|| format!("cannot use the model manifest {}", path.display()))?;
    Ok(Arc::new(models))
}

/// The pipeline serving `kind` under `config` (`models` must be open when the kind's backend is
/// `inference`; the config's validation guarantees a manifest is configured then).
pub fn pipeline(config: &Config, kind: JobKind, models: Option<&Arc<Models>>) -> anyhow::Result<Arc<dyn Pipeline>> {
    Ok(match config.backend(kind) {
        Backend::Mock => Arc::new(MockPipeline::new(kind, config.mock.clone())),
        Backend::Noop => Arc::new(NoopPipeline(kind)),
        Backend::Inference => match (kind, models) {
            (kind, None) => anyhow::bail!("{kind} jobs use the inference backend but no model manifest is open"),
            (JobKind::Llm, Some(models)) => Arc::new(LlmPipeline::new(models.clone())),
            (JobKind::Audio, Some(models)) => {
                Arc::new(TtsPipeline::new(models.clone(), config.onnx.clone(), config.tts.clone()))
            }
            (JobKind::Lipsync, Some(models)) => {
                Arc::new(LipsyncPipeline::new(models.clone(), config.onnx.clone(), config.lipsync.clone()))
            }
            (other, _) => anyhow::bail!("there is no inference pipeline for {other} jobs yet"),
        },
        Backend::Comfyui => {
            let comfy = config.comfyui.clone().context("the comfyui backend needs a [comfyui] section")?;
            Arc::new(ComfyPipeline::new(comfy).map_err(anyhow::Error::msg)?)
        }
    })
}
