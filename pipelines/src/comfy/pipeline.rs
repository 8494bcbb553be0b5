//! The `video` pipeline on ComfyUI. Its steps:
//! 1. choose the template and fill its slots from the job's params (downgrade caps applied);
//! 2. upload the input image under a name that is the job's own;
//! 3. queue the prompt under an id derived from the job id and attempt, and follow it to its history entry;
//! 4. download the output node's files from `/view` (size-limited);
//! 5. normalise them to an H.264 MP4 and a JPEG thumbnail.
//!
//! After every `comfyui.free_every` prompts it asks ComfyUI to free memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ainern2d_contract::{BackendDevice, BackendProcess, BackendStatus, Job, JobKind, JobSpec};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::ComfyConfig;
use super::client::{Client, HistoryEntry};
use super::normalize::{self, Normalized};
use super::supervise::Supervisor;
use super::template::{Fill, Templates};
use super::watch::{self, Limits};
use crate::error::{PipelineError, PipelineErrorKind};
use crate::{Artifact, Execution, Pipeline, ProgressSink, RunOutput, RunRequest};

/// The namespace of prompt ids: `uuid5(NAMESPACE, "<job_id>/<attempt>")`.
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6a1e_2d5c_0b7f_4c1e_9d3a_c0f1_e5a7_b201);

/// The prompt id of a job's attempt: the same on every delivery of that attempt, so a redelivered job
/// finds its prompt in ComfyUI's queue or history instead of running it twice.
pub fn prompt_id(job_id: &str, attempt: u32) -> String {
    uuid::Uuid::new_v5(&NAMESPACE, format!("{job_id}/{attempt}").as_bytes()).to_string()
}

#[derive(Debug, Clone)]
pub struct ComfyPipeline {
    config: ComfyConfig,
    templates: Arc<Templates>,
    /// Prompts run since the last `POST /free`.
    since_free: Arc<AtomicU32>,

    /// Templates the server's `/object_info` rules out, and why (found at warm-up).
    unavailable: Arc<Mutex<BTreeMap<String, String>>>,
    client_id: String,
    /// The ComfyUI process this worker runs (`comfyui.command`); it stops when the last clone is dropped.
    supervisor: Option<Supervisor>,
}

impl ComfyPipeline {
    /// Loads and checks the templates; the server is asked nothing yet (see [`Pipeline::warm_up`]).
    pub fn new(config: ComfyConfig) -> Result<ComfyPipeline, String> {
        let templates = Templates::load_dir(&config.templates).map_err(|e| format!("comfyui.templates: {e}"))?;
        if let Some(name) = &config.default_template
            && templates.get(name).is_none()
        {
            return Err(format!(
                "comfyui.default_template: `{name}` is not in {} (it has: {})",
                config.templates.display(),
                templates.names().join(", ")
            ));
        }
        let client_id = format!("ainern2d-{}", uuid::Uuid::new_v4().simple());
        let supervisor = config
            .command
            .as_ref()
            .map(|command| Supervisor::start(command, config.command_dir.as_deref()))
            .transpose()
            .map_err(|e| format!("comfyui.command: {e}"))?;
        Ok(ComfyPipeline {
            config,
            templates: Arc::new(templates),
            since_free: Arc::default(),
            unavailable: Arc::default(),
            client_id,
            supervisor,
        })
    }

    /// The supervised ComfyUI process, when `comfyui.command` is set.
    pub fn supervisor(&self) -> Option<&Supervisor> {
        self.supervisor.as_ref()
    }

    fn client(&self) -> Result<Client, PipelineError> {
        Client::new(&self.config.url, self.client_id.clone())
    }

    fn limits(&self) -> normalize::Limits {
        normalize::Limits { max_width: 3840, max_height: 2160, max_frames: 7200 }
    }

    async fn run_async(
        &self,
        req: &RunRequest<'_>,
        progress: &dyn ProgressSink,
        cancel: &CancellationToken,
    ) -> Result<(Normalized, String), PipelineError> {
        let JobSpec::Video(params) = &req.job.spec else {
            return Err(PipelineError::permanent(format!("video pipeline given a {} job", req.job.kind())));
        };
        let requested = params.workflow.as_deref().or(params.model.as_deref());
        let template = self.templates.choose(requested, self.config.default_template.as_deref())?;
        let client = self.client()?;
        let id = prompt_id(&req.job.job_id, req.attempt);
        if let Some(why) =
            self.unavailable.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&template.name)
        {
            return Err(PipelineError::permanent(format!(
                "template {} does not fit this ComfyUI: {why}",
                template.name
            )));
        }
        if let Some(sup) = &self.supervisor {
            sup.wait_answering(&client, Duration::from_secs(self.config.start_timeout_s), cancel).await?;
        }
        let image = match req.inputs.get("image").filter(|_| template.needs_image()) {
            Some(path) => {
                progress.progress(0.0, "upload", Some("input image".into()));
                let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("png");
                Some(client.upload_image(path, &format!("ainern2d-{id}.{ext}")).await?)
            }
            None => None,
        };
        // Per job, not per attempt: the seed a job gives none for is derived from it, so a retry repeats it.
        let prefix = format!("ainern2d/{}", req.job.job_id);
        let filled = template.fill(&Fill { params, image: image.as_deref(), prefix: &prefix, caps: req.downgrade })?;
        if !filled.ignored.is_empty() {
            tracing::info!(job_id = %req.job.job_id, template = %template.name, ignored = ?filled.ignored, "params the template has no slot for");
        }
        let limits = Limits {
            silence: Duration::from_secs(self.config.silence_s.max(1)),
            timeout: Duration::from_secs(self.config.prompt_timeout_s.max(1)),
        };
        let report = |fraction: f32, class: &str| progress.progress((0.05 + 0.85 * fraction).min(0.9), class, None);
        let prompt = watch::run_prompt(&client, &filled.prompt, &id, limits, &report, cancel);
        // A supervised ComfyUI that dies takes the prompt with it: fail now, not after the watchdog's silence.
        let ran = match self.supervisor.as_ref().map(Supervisor::life) {
            None => prompt.await,
            Some(life) => life.guard(&id, prompt).await,
        };
        let ran = ran.and_then(|entry| outcome(entry, cancel));
        self.after_prompt(&client, ran.as_ref().err()).await;
        let entry = ran?;
        let files = entry.files_of(&template.output);
        if files.is_empty() {
            return Err(PipelineError::permanent(format!(
                "ComfyUI finished, but the template's output node {} ({}) wrote no files",
                template.output, template.name
            )));
        }
        progress.progress(0.9, "download", Some(format!("{} file(s)", files.len())));
        let max = self.config.max_output_mb * 1024 * 1024;
        let mut local: Vec<PathBuf> = Vec::with_capacity(files.len());
        for (i, f) in files.iter().enumerate() {
            let name = std::path::Path::new(&f.filename)
                .file_name()
                .map_or_else(|| format!("out{i}"), |n| n.to_string_lossy().into_owned());
            let dest = req.workdir.join(format!("comfy-{i:05}-{name}"));
            client.download(f, &dest, max).await?;
            local.push(dest);
        }
        progress.progress(0.95, "normalize", None);
        let out_dir = req.workdir.clone();
        let cancel = cancel.clone();
        let fps = filled.fps;
        let limits = self.limits();
        let normalized =
            tokio::task::spawn_blocking(move || normalize::normalize(&local, fps, &limits, &out_dir, &cancel))
                .await
                .map_err(|e| PipelineError::permanent(format!("normalising panicked: {e}")))??;
        Ok((normalized, template.name.clone()))
    }

    /// Frees ComfyUI's memory (`POST /free`) after a prompt when there is reason to: every `free_every`
    /// prompts, when a device is fuller than `free_above_pct`, and always after an out-of-memory failure (its
    /// retry should not meet the same leftovers). A failure to free is only logged.
    async fn after_prompt(&self, client: &Client, failed: Option<&PipelineError>) {
        let every = self.config.free_every;
        let count = self.since_free.fetch_add(1, Ordering::SeqCst) + 1;
        let reason = if failed.is_some_and(|e| e.kind == PipelineErrorKind::OutOfMemory) {
            Some("the prompt ran out of memory".to_string())
        } else if every > 0 && count >= every {
            Some(format!("{count} prompts since the last free"))
        } else if let Some(limit) = self.config.free_above_pct {
            match client.system_stats_within(Duration::from_secs(5)).await {
                Ok(stats) => stats
                    .fullest_device()
                    .filter(|(_, pct)| *pct > f64::from(limit))
                    .map(|(d, pct)| format!("{} is {pct:.0} % full (limit {limit} %)", d.name)),
                Err(e) => {
                    tracing::debug!("no memory figures from ComfyUI after the prompt: {e}");
                    None
                }
            }
        } else {
            None
        };
        let Some(reason) = reason else { return };
        self.since_free.store(0, Ordering::SeqCst);
        match client.free().await {
            Ok(()) => tracing::info!("asked ComfyUI to free its memory: {reason}"),
            Err(e) => tracing::warn!("ComfyUI /free failed ({reason}): {e}"),
        }
    }
}

/// A finished history entry as the job's result: an error or interruption recorded there is the job's.
fn outcome(entry: HistoryEntry, cancel: &CancellationToken) -> Result<HistoryEntry, PipelineError> {
    match &entry.failure {
        Some((kind, data)) if kind == "execution_error" => Err(watch::execution_error(data)),
        Some(_) if cancel.is_cancelled() => Err(PipelineError::cancelled()),
        Some(_) => Err(PipelineError::retryable("the ComfyUI prompt was interrupted by someone else")),
        None if entry.status == "error" => Err(PipelineError::permanent("ComfyUI recorded the prompt as failed")),
        None => Ok(entry),
    }
}

fn block_on<T>(fut: impl std::future::Future<Output = Result<T, PipelineError>>) -> Result<T, PipelineError> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(fut),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PipelineError::retryable(format!("cannot start a runtime: {e}")))?
            .block_on(fut),
    }
}

impl Pipeline for ComfyPipeline {
    fn kind(&self) -> JobKind {
        JobKind::Video
    }

    fn backend(&self) -> &'static str {
        "comfyui"
    }

    fn output_names(&self, _job: &Job) -> Vec<String> {
        vec!["video.mp4".into(), "thumbnail.jpg".into()]
    }

    /// Checks that ComfyUI answers and which templates fit the nodes and model files it has: one that
    /// does not is logged and refused to jobs (with the reason); none fitting is an error.
    fn warm_up(&self) -> Result<(), PipelineError> {
        block_on(async {
            let client = self.client()?;
            let stats = client.system_stats().await?;
            let info: Value = client.object_info().await?;
            let mut unavailable = BTreeMap::new();
            for name in self.templates.names() {
                if let Some(Err(why)) = self.templates.get(name).map(|t| t.check_object_info(&info)) {
                    tracing::warn!(template = name, "template does not fit this ComfyUI: {why}");
                    unavailable.insert(name.to_string(), why);
                }
            }
            if unavailable.len() == self.templates.names().len() {
                let all: Vec<String> = unavailable.iter().map(|(n, w)| format!("{n}: {w}")).collect();
                return Err(PipelineError::permanent(format!(
                    "no template fits the ComfyUI at {}: {}",
                    self.config.url,
                    all.join("; ")
                )));
            }
            tracing::info!(url = %self.config.url, version = ?stats.system.comfyui_version, unavailable = unavailable.len(), "ComfyUI reachable; templates checked");
            *self.unavailable.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = unavailable;
            Ok(())
        })
    }

    /// Stops a supervised ComfyUI: SIGTERM, SIGKILL after 10 s.
    fn shutdown(&self) {
        if let Some(sup) = &self.supervisor {
            sup.stop();
        }
    }

    /// `/system_stats` within 5 s: the version, RAM and each device's memory, or why it did not answer.
    fn probe(&self) -> Option<BackendStatus> {
        let mut status =
            BackendStatus { backend: "comfyui".into(), url: self.config.url.clone(), ..BackendStatus::default() };
        match block_on(async { self.client()?.system_stats_within(Duration::from_secs(5)).await }) {
            Ok(stats) => {
                status.reachable = true;
                status.version = stats.system.comfyui_version;
                status.ram_total_bytes = stats.system.ram_total;
                status.ram_free_bytes = stats.system.ram_free;
                status.devices = stats
                    .devices
                    .iter()
                    .enumerate()
                    .map(|(i, d)| BackendDevice {
                        index: d.index.unwrap_or(i as u32),
                        name: d.name.clone(),
                        kind: d.kind.clone(),
                        vram_total_bytes: d.vram_total,
                        vram_free_bytes: d.vram_free,
                    })
                    .collect();
            }
            Err(e) => status.error = Some(e.message),
        }
        status.process = self.supervisor.as_ref().map(|sup| BackendProcess {
            pid: sup.pid(),
            restarts: sup.restarts(),
            last_exit: sup.last_exit(),
        });
        Some(status)
    }

    fn run(
        &self,
        req: &RunRequest<'_>,
        progress: &dyn ProgressSink,
        cancel: &CancellationToken,
    ) -> Result<RunOutput, PipelineError> {
        let (n, template) = block_on(self.run_async(req, progress, cancel))?;
        let video = Artifact { name: "video.mp4".into(), path: n.video.clone(), content_type: "video/mp4".into() };
        let thumb =
            Artifact { name: "thumbnail.jpg".into(), path: n.thumbnail.clone(), content_type: "image/jpeg".into() };
        Ok(RunOutput {
            artifacts: vec![video, thumb],
            execution: Execution {
                backend: "comfyui".into(),
                model: Some(template),
                device: None,
                execution_provider: None,
                duration_s: Some(n.duration_s),
                sample_rate: None,
                frames: Some(n.frames),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_ids_are_stable_per_attempt() {
        assert_eq!(prompt_id("job-1", 1), prompt_id("job-1", 1));
        assert_ne!(prompt_id("job-1", 1), prompt_id("job-1", 2));
        assert_ne!(prompt_id("job-1", 1), prompt_id("job-2", 1));
        assert_eq!(prompt_id("job-1", 1).len(), 36);
    }
}
