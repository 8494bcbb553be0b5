//! `ainern2d-worker doctor`: checks what a worker needs before it can take jobs — the config, the broker,
//! the store, the scratch directory, the model manifest, ONNX Runtime, NVML, ComfyUI — and says, for each
//! problem, what is wrong and how to fix it. Exit status 1 when any check fails, 0 otherwise (warnings
//! included), so it can gate a deploy or run as an init container.

use std::time::Duration;

use ainern2d_contract::JobKind;
use serde::Serialize;

use crate::config::{Backend, Config, StoreKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(name: &'static str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Check {
    Check { name, status, detail: detail.into(), fix }
}

/// How long a check waits for a server that does not answer.
const WAIT: Duration = Duration::from_secs(10);

/// Every check, in order. A config that does not load is the only check then.
pub async fn run(config: Result<Config, String>) -> Vec<Check> {
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            let fix = "correct the key it names (README, Configuration); `--print-config` shows the effective values";
            return vec![check("config", Status::Fail, e, Some(fix.into()))];
        }
    };
    let backends: Vec<String> = config
        .jobs
        .kinds
        .iter()
        .map(|k| format!("{k}={}", format!("{:?}", config.backend(*k)).to_lowercase()))
        .collect();
    let mut checks = vec![check(
        "config",
        Status::Ok,
        format!("valid: worker `{}`, kinds {}", config.worker_id, backends.join(" ")),
        None,
    )];
    checks.push(broker(&config).await);
    checks.push(store(&config).await);
    checks.push(scratch(&config));
    checks.push(models(&config));
    checks.push(onnx(&config));
    checks.push(nvml());
    checks.push(comfyui(&config).await);
    checks
}

fn masked_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

async fn broker(config: &Config) -> Check {
    let url = masked_url(&config.broker.url);
    let broker = ainern2d_queue::amqp::AmqpBroker::new(config.broker.url.clone());
    let session = match tokio::time::timeout(WAIT, ainern2d_queue::Broker::connect(&broker, "ainern2d-worker doctor"))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let fix = format!(
                "start RabbitMQ or correct broker.url (host, port, user, password, vhost); the worker connects to {url}"
            );
            return check("broker", Status::Fail, format!("cannot connect to {url}: {e}"), Some(fix));
        }
        Err(_) => {
            let fix =
                "a firewall or a wrong port swallows the connection: check broker.url and the network path".into();
            return check("broker", Status::Fail, format!("{url} did not answer within {WAIT:?}"), Some(fix));
        }
    };
    let topology = ainern2d_contract::topology::Topology::new(config.broker.prefix.clone());
    let mut queues = Vec::new();
    for kind in &config.jobs.kinds {
        let queue = topology.job_queue(*kind);
        match session.queue_depth(&queue).await {
            Ok(Some(n)) => queues.push(format!("{queue} ({n} ready)")),
            Ok(None) => queues.push(format!("{queue} (not declared yet: the worker declares it)")),
            Err(e) => queues.push(format!("{queue} ({e})")),
        }
    }
    check("broker", Status::Ok, format!("connected to {url}; job queues {}", queues.join(", ")), None)
}

async fn store(config: &Config) -> Check {
    let bucket = &config.store.bucket;
    let store = match config.store.kind {
        StoreKind::Local => {
            let dir = &config.store.local_dir;
            return match std::fs::create_dir_all(dir).and_then(|()| probe_write(dir)) {
                Ok(()) => check("store", Status::Ok, format!("local directory {} is writable", dir.display()), None),
                Err(e) => check(
                    "store",
                    Status::Fail,
                    format!("local directory {}: {e}", dir.display()),
                    Some("set store.local_dir to a directory this user can write".into()),
                ),
            };
        }
        StoreKind::S3 => match crate::s3::S3Store::from_config(&config.store) {
            Ok(s) => s,
            Err(e) => {
                let fix = "set store.access_key_id and store.secret_access_key together, or neither (the AWS chain)";
                return check("store", Status::Fail, e.to_string(), Some(fix.into()));
            }
        },
    };
    let endpoint = &config.store.endpoint;
    // HEAD has no body: the status is all S3 says, so it is read here rather than through the store's errors.
    let head = store.client().head_bucket().bucket(bucket).send();
    let status = match tokio::time::timeout(WAIT * 2, head).await {
        Ok(Ok(_)) => return check("store", Status::Ok, format!("bucket `{bucket}` answers at {endpoint}"), None),
        Ok(Err(e)) => match e.raw_response().map(|r| r.status().as_u16()) {
            Some(status) => status,
            None => {
                let why = aws_sdk_s3::error::DisplayErrorContext(&e).to_string();
                let fix = "start the S3 server or correct store.endpoint (scheme, host, port)".into();
                return check("store", Status::Fail, format!("{endpoint}: {why}"), Some(fix));
            }
        },
        Err(_) => {
            let fix = "check store.endpoint and the network path to it".into();
            return check("store", Status::Fail, format!("{endpoint} did not answer within {:?}", WAIT * 2), Some(fix));
        }
    };
    match status {
        404 if config.store.create_bucket => check(
            "store",
            Status::Warn,
            format!(
                "bucket `{bucket}` does not exist at {endpoint}; the worker creates it at start (store.create_bucket)"
            ),
            None,
        ),
        404 => check(
            "store",
            Status::Fail,
            format!("bucket `{bucket}` does not exist at {endpoint}"),
            Some("create it, or set store.create_bucket = true".into()),
        ),
        403 | 401 => check(
            "store",
            Status::Fail,
            format!("{endpoint} refused the credentials for bucket `{bucket}` (HTTP {status})"),
            Some("check store.access_key_id / store.secret_access_key and the bucket's policy".into()),
        ),
        301 | 307 | 400 => check(
            "store",
            Status::Fail,
            format!("bucket `{bucket}` at {endpoint}: HTTP {status} (a wrong region or addressing style)"),
            Some("check store.region and store.force_path_style".into()),
        ),
        other => check(
            "store",
            Status::Fail,
            format!("bucket `{bucket}` at {endpoint}: HTTP {other}"),
            Some("check store.endpoint and the S3 server's logs".into()),
        ),
    }
}

fn probe_write(dir: &std::path::Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    std::fs::write(&probe, b"ok")?;
    std::fs::remove_file(probe)
}

fn scratch(config: &Config) -> Check {
    let dir = &config.scratch_dir;
    match std::fs::create_dir_all(dir).and_then(|()| probe_write(dir)) {
        Ok(()) => check("scratch", Status::Ok, format!("{} is writable", dir.display()), None),
        Err(e) => check(
            "scratch",
            Status::Fail,
            format!("scratch_dir {}: {e}", dir.display()),
            Some("set scratch_dir to a writable directory on a disk with room for the largest job's files".into()),
        ),
    }
}

fn models(config: &Config) -> Check {
    let needs = config.jobs.kinds.iter().any(|k| config.backend(*k) == Backend::Inference);
    let Some(path) = &config.models.manifest else {
        return if needs {
            check(
                "models",
                Status::Fail,
                "a kind runs on the inference backend and models.manifest is not set",
                Some("set models.manifest to a model manifest (README, Models)".into()),
            )
        } else {
            check("models", Status::Skip, "no kind on the inference backend", None)
        };
    };
    let manifest = match ainern2d_models::Manifest::load(path) {
        Ok(m) => m,
        Err(e) => {
            let fix = "correct the manifest (README, Models); `ainern2d-worker models check` loads every model";
            return check("models", Status::Fail, format!("{}: {e}", path.display()), Some(fix.into()));
        }
    };
    let missing: Vec<String> = manifest
        .models
        .values()
        .flat_map(|spec| spec.weights())
        .filter(|f| !f.is_s3() && !std::path::Path::new(&f.location).exists())
        .map(|f| f.location)
        .collect();
    if !missing.is_empty() {
        return check(
            "models",
            Status::Fail,
            format!("{}: missing files: {}", path.display(), missing.join(", ")),
            Some("copy the files there, or point the manifest at s3:// objects".into()),
        );
    }
    let detail = format!("{}: {} models; `models check` loads them", path.display(), manifest.models.len());
    check("models", Status::Ok, detail, None)
}

fn onnx(config: &Config) -> Check {
    let needs = [JobKind::Audio, JobKind::Lipsync]
        .iter()
        .any(|k| config.jobs.kinds.contains(k) && config.backend(*k) == Backend::Inference);
    if !needs {
        return check("onnx", Status::Skip, "no audio or lipsync on the inference backend", None);
    }
    match ainern2d_pipelines::onnx::runtime(&config.onnx) {
        Ok(_) => {
            let from = config.onnx.library().map(|(p, from)| format!("{} ({from})", p.display())).unwrap_or_default();
            check("onnx", Status::Ok, format!("ONNX Runtime loads: {from}"), None)
        }
        Err(e) => check(
            "onnx",
            Status::Fail,
            e,
            Some(
                "install ONNX Runtime 1.31 (`pip install onnxruntime`, or onnxruntime-gpu for CUDA) and set \
                 onnx.runtime_path or ORT_DYLIB_PATH to its libonnxruntime.so"
                    .into(),
            ),
        ),
    }
}

fn nvml() -> Check {
    let gpus = crate::heartbeat::Gpus::open().stats();
    if gpus.is_empty() {
        return check(
            "nvml",
            Status::Warn,
            "NVML or a GPU is not available: heartbeats carry no GPU telemetry and in-process models run on the CPU",
            Some(
                "on a GPU host: install the NVIDIA driver (libnvidia-ml.so.1) and give the process its devices".into(),
            ),
        );
    }
    let list: Vec<String> =
        gpus.iter().map(|g| format!("{} {} ({} MiB)", g.index, g.name, g.memory_total_bytes >> 20)).collect();
    check("nvml", Status::Ok, format!("{} GPU(s): {}", gpus.len(), list.join(", ")), None)
}

async fn comfyui(config: &Config) -> Check {
    let on_comfy = config.jobs.kinds.iter().any(|k| config.backend(*k) == Backend::Comfyui);
    if !on_comfy {
        return check("comfyui", Status::Skip, "no kind on the comfyui backend", None);
    }
    let Some(comfy) = config.comfyui.clone() else {
        return check(
            "comfyui",
            Status::Fail,
            "a kind runs on the comfyui backend and there is no [comfyui] section",
            Some("add [comfyui] with url (README, Video through ComfyUI)".into()),
        );
    };
    if comfy.command.is_some() {
        let detail = format!("supervised: the worker starts it ({}) and waits for {}", comfy.url, comfy.url);
        return check("comfyui", Status::Skip, detail, None);
    }
    let url = comfy.url.clone();
    let pipeline = match ainern2d_pipelines::comfy::ComfyPipeline::new(comfy) {
        Ok(p) => p,
        Err(e) => return check("comfyui", Status::Fail, e, Some("correct the [comfyui] section".into())),
    };
    let probe = tokio::task::spawn_blocking(move || ainern2d_pipelines::Pipeline::probe(&pipeline)).await;
    match probe {
        Ok(Some(s)) if s.reachable => {
            let version = s.version.unwrap_or_else(|| "unknown version".into());
            check("comfyui", Status::Ok, format!("{url} answers ({version})"), None)
        }
        Ok(Some(s)) => check(
            "comfyui",
            Status::Fail,
            format!("{url}: {}", s.error.unwrap_or_default()),
            Some("start ComfyUI (or set comfyui.command to let the worker supervise it) and check comfyui.url".into()),
        ),
        _ => check("comfyui", Status::Fail, format!("{url}: the probe did not run"), None),
    }
}

/// The report as text, one line per check and a `fix:` line under each problem.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let word = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        out.push_str(&format!("{word}  {:<8} {}\n", c.name, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("      fix: {fix}\n"));
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    out.push_str(&match failed {
        0 => "no problem found\n".to_string(),
        1 => "1 problem found\n".to_string(),
        n => format!("{n} problems found\n"),
    });
    out
}

pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}
