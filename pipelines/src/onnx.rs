//! ONNX Runtime in process. The shared library is loaded once, at start (`onnx.runtime_path`, else
//! `ORT_DYLIB_PATH`): a worker that serves no ONNX model never needs it, and a missing or wrong library is
//! an error naming the key, never a panic. Sessions are built on the model's device: the CUDA execution
//! provider when one is asked for and loads (builds with the `cuda` feature), else the CPU, with a log
//! line — or an error under `onnx.strict_device`. Each [`OnnxModel`] records the provider that really
//! runs it, for the artifact and the outcome event.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use ainern2d_models::{DeviceSpec, ModelError, Models};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use serde::{Deserialize, Serialize};

use crate::error::PipelineError;
use crate::llm::{model_error, named_model_error};

/// The `[onnx]` section of the worker's config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxConfig {
    /// `libonnxruntime.so.1.31.x` (from the `onnxruntime` wheel, or `onnxruntime-gpu` for CUDA); default:
    /// the `ORT_DYLIB_PATH` environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_path: Option<PathBuf>,
    /// A model asked to run on CUDA fails to load when the CUDA execution provider does not, instead of
    /// falling back to the CPU.
    #[serde(default)]
    pub strict_device: bool,
    /// Threads per operator (0: ONNX Runtime's default, one per core).
    #[serde(default)]
    pub intra_threads: usize,
}

impl OnnxConfig {
    /// The library this config names, and the key that named it (for error messages).
    pub fn library(&self) -> Option<(PathBuf, &'static str)> {
        if let Some(p) = &self.runtime_path {
            return Some((p.clone(), "onnx.runtime_path"));
        }
        std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()).map(|v| (PathBuf::from(v), "ORT_DYLIB_PATH"))
    }
}

/// The loaded ONNX Runtime library.
#[derive(Debug)]
pub struct Runtime {
    env: ort::environment::Environment,
    pub library: PathBuf,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// Loads ONNX Runtime (once per process; later calls return the first result, whatever they pass).
pub fn runtime(config: &OnnxConfig) -> Result<&'static Runtime, String> {
    RUNTIME.get_or_init(|| load_runtime(config)).as_ref().map_err(Clone::clone)
}

const HOW: &str = "install it with `scripts/install-onnxruntime.sh` (CPU) or `--gpu` (CUDA)";

/// The library to load and the key that named it, if it exists.
fn resolve(config: &OnnxConfig) -> Result<(PathBuf, &'static str), String> {
    let Some((library, key)) = config.library() else {
        return Err(format!(
            "ONNX models need the ONNX Runtime library: set onnx.runtime_path (or ORT_DYLIB_PATH) to \
             libonnxruntime.so.1.31.x; {HOW}"
        ));
    };
    if !library.is_file() {
        return Err(format!("{key} = {}: no such file; {HOW}", library.display()));
    }
    Ok((library, key))
}

fn load_runtime(config: &OnnxConfig) -> Result<Runtime, String> {
    let (library, key) = resolve(config)?;
    let builder = ort::init_from(&library)
        .map_err(|e| format!("{key} = {}: not a usable ONNX Runtime library: {e}", library.display()))?;
    let env = builder
        .with_name("ainern2d")
        .build()
        .map_err(|e| format!("{key} = {}: ONNX Runtime failed to start: {e}", library.display()))?;
    tracing::info!(library = %library.display(), "ONNX Runtime loaded");
    Ok(Runtime { env, library })
}

/// An input or output of a model: name, element type (`f32`, `i64`, …) and shape (-1 for dynamic axes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    pub element: String,
    pub shape: Vec<i64>,
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| if *d < 0 { "?".into() } else { d.to_string() }).collect();
        write!(f, "{} {}[{}]", self.name, self.element, dims.join(","))
    }
}

fn ports(outlets: &[ort::value::Outlet]) -> Vec<Port> {
    outlets
        .iter()
        .map(|o| match o.dtype() {
            ort::value::ValueType::Tensor { ty, shape, .. } => {
                Port { name: o.name().to_string(), element: ty.to_string(), shape: shape.iter().copied().collect() }
            }
            other => Port { name: o.name().to_string(), element: other.to_string(), shape: Vec::new() },
        })
        .collect()
}

/// A loaded ONNX model. Sessions run one call at a time (ONNX Runtime's `run` needs exclusive access in
/// `ort`); jobs on one model take turns per call, not per job.
pub struct OnnxModel {
    pub name: String,
    session: Mutex<Session>,
    /// `cuda` or `cpu`: the execution provider that runs this model.
    pub provider: &'static str,
    /// The device asked for (`cpu`, `cuda:0`).
    pub requested: String,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel").field("name", &self.name).field("provider", &self.provider).finish()
    }
}

impl OnnxModel {
    /// Builds a session for `path` on `device` (`cpu`, `cuda:N`).
    pub fn load(
        runtime: &Runtime,
        config: &OnnxConfig,
        name: &str,
        path: &Path,
        device: &str,
    ) -> Result<OnnxModel, ModelError> {
        let fail = |message: String| ModelError::Load { name: name.to_string(), message };
        let ort = |what: &str, e: ort::Error| fail(format!("{what}: {e}"));
        let mut builder = Session::builder(&runtime.env).map_err(|e| ort("session options", e))?;
        builder = builder
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| ort("optimisation level", e.into()))?;
        if config.intra_threads > 0 {
            builder = builder.with_intra_threads(config.intra_threads).map_err(|e| ort("threads", e.into()))?;
        }
        let provider = match device.strip_prefix("cuda") {
            None => "cpu",
            Some(ordinal) => {
                let ordinal: i32 = ordinal.trim_start_matches(':').parse().unwrap_or(0);
                match register_cuda(&mut builder, ordinal) {
                    Ok(()) => "cuda",
                    Err(e) if config.strict_device => {
                        return Err(fail(format!(
                            "the CUDA execution provider did not load ({e}) and onnx.strict_device is set"
                        )));
                    }
                    Err(e) => {
                        tracing::warn!(
                            model = name,
                            "the CUDA execution provider did not load ({e}); running on the CPU"
                        );
                        "cpu"
                    }
                }
            }
        };
        let session = builder.commit_from_file(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let inputs = ports(session.inputs());
        let outputs = ports(session.outputs());
        Ok(OnnxModel {
            name: name.to_string(),
            session: Mutex::new(session),
            provider,
            requested: device.to_string(),
            inputs,
            outputs,
        })
    }

    /// The session, for one `run` call (hold it no longer than that).
    pub fn session(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn input(&self, name: &str) -> Option<&Port> {
        self.inputs.iter().find(|p| p.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&Port> {
        self.outputs.iter().find(|p| p.name == name)
    }

    /// Checks that the model has these inputs and outputs; the error lists what it has instead.
    pub fn expect_io(&self, inputs: &[&str], outputs: &[&str]) -> Result<(), String> {
        let list = |ports: &[Port]| ports.iter().map(Port::to_string).collect::<Vec<_>>().join(", ");
        for want in inputs {
            if self.input(want).is_none() {
                return Err(format!("has no input `{want}` (its inputs: {})", list(&self.inputs)));
            }
        }
        for want in outputs {
            if self.output(want).is_none() {
                return Err(format!("has no output `{want}` (its outputs: {})", list(&self.outputs)));
            }
        }
        Ok(())
    }

    /// Where the model runs: `cuda:N` on the CUDA execution provider, else `cpu`.
    pub fn device(&self) -> &str {
        if self.provider == "cuda" { &self.requested } else { "cpu" }
    }

    /// The name ONNX Runtime gives the provider (`CUDAExecutionProvider`, `CPUExecutionProvider`).
    pub fn provider_name(&self) -> &'static str {
        if self.provider == "cuda" { "CUDAExecutionProvider" } else { "CPUExecutionProvider" }
    }
}

#[cfg(feature = "cuda")]
fn register_cuda(builder: &mut ort::session::builder::SessionBuilder, ordinal: i32) -> Result<(), String> {
    use ort::ep::ExecutionProvider;
    ort::ep::CUDA::default().with_device_id(ordinal).register(builder).map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
fn register_cuda(_: &mut ort::session::builder::SessionBuilder, _ordinal: i32) -> Result<(), String> {
    Err("this build has no CUDA execution provider; rebuild with `--features cuda`".into())
}

/// The device an ONNX model asks for: its own `device` in the manifest, else the manifest's device as
/// opened (`auto` became `cuda:0` only where CUDA works).
pub fn model_device(models: &Models, own: Option<&DeviceSpec>) -> String {
    match own {
        Some(DeviceSpec::Cuda(n)) => format!("cuda:{n}"),
        Some(DeviceSpec::Cpu | DeviceSpec::Metal) => "cpu".into(),
        Some(DeviceSpec::Auto) | None if models.device_key.starts_with("cuda") => models.device_key.clone(),
        Some(DeviceSpec::Auto) | None => {
            if cfg!(feature = "cuda") {
                "cuda:0".into()
            } else {
                "cpu".into()
            }
        }
    }
}

/// The ONNX model `name` of the manifest from the warm-model cache, loading (and first downloading) it on
/// a miss; waits for someone else's load only while `cancelled` says no. Returns whether it was loaded.
pub fn load_cached(
    models: &Models,
    config: &OnnxConfig,
    name: &str,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<(Arc<OnnxModel>, bool), PipelineError> {
    load_cached_with(models, config, name, cancelled, Ok)
}

/// [`load_cached`] for a model that is more than its session (a voice and its config): `build` turns the
/// fresh session into what the cache keeps.
pub fn load_cached_with<T: Send + Sync + 'static>(
    models: &Models,
    config: &OnnxConfig,
    name: &str,
    cancelled: &(dyn Fn() -> bool + Sync),
    build: impl FnOnce(OnnxModel) -> Result<T, ModelError>,
) -> Result<(Arc<T>, bool), PipelineError> {
    if let Some(hit) = models.cache.get::<T>(name).map_err(model_error)? {
        return Ok((hit, true));
    }
    let spec = models.spec(name).map_err(model_error)?;
    let file = spec
        .weights()
        .into_iter()
        .next()
        .ok_or_else(|| PipelineError::permanent(format!("model `{name}` has no `source` in the model manifest")))?;
    let path = models.local_path_until(&file, cancelled).map_err(|e| named_model_error(models, name, true, e))?;
    let runtime = runtime(config).map_err(PipelineError::permanent)?;
    let bytes = match spec.memory_mb {
        Some(mb) => mb * 1024 * 1024,
        // Weights plus ONNX Runtime's arenas and activations.
        None => std::fs::metadata(&path).map(|m| m.len() + m.len() / 2).unwrap_or(0),
    };
    let device = model_device(models, spec.device.as_ref());
    models
        .cache
        .get_or_load_until(name, &models.device_key, bytes, cancelled, || {
            build(OnnxModel::load(runtime, config, name, &path, &device)?)
        })
        .map_err(|e| named_model_error(models, name, false, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_names_the_key_that_named_it() {
        let config =
            OnnxConfig { runtime_path: Some("/nonexistent/libonnxruntime.so".into()), ..OnnxConfig::default() };
        let err = resolve(&config).unwrap_err();
        assert!(err.contains("onnx.runtime_path = /nonexistent/libonnxruntime.so: no such file"), "{err}");
        assert!(err.contains("install-onnxruntime.sh"), "says how to get it: {err}");
    }
}
