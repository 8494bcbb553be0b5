//! The `video` pipeline with ComfyUI as its supervised child (`comfyui.command`), the child being the
//! `fake-comfyui` binary: a child killed mid-prompt fails that prompt at once (not after the watchdog's
//! silence) and is restarted for the next job, dropping the pipeline stops the child, and a program that
//! cannot start fails jobs after `start_timeout_s`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ainern2d_contract::parse_job;
use ainern2d_pipelines::comfy::{ComfyConfig, ComfyPipeline, Supervisor};
use ainern2d_pipelines::{
    CancellationToken, Pipeline, PipelineError, PipelineErrorKind, ProgressSink, RunOutput, RunRequest,
};
use ainern2d_tests::ffprobe;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The fake at a port of its own, its sampler steps 300 ms each; a silence the job never reaches, so the
/// watchdog cannot be what ends it.
fn config(command: Vec<String>, port: u16) -> ComfyConfig {
    let mut c = ComfyConfig::new(&format!("http://127.0.0.1:{port}"), repo().join("examples/comfyui"));
    c.silence_s = 60;
    c.prompt_timeout_s = 60;
    c.start_timeout_s = 30;
    c.command = Some(command);
    c
}

fn fake_command(port: u16) -> Vec<String> {
    [env!("CARGO_BIN_EXE_fake-comfyui"), "--listen", &format!("127.0.0.1:{port}"), "--step-delay-ms", "300"]
        .map(String::from)
        .to_vec()
}

fn job(id: &str, steps: u32) -> ainern2d_contract::Job {
    let body = serde_json::json!({"schema": "ainern2d.job.v1", "job_id": id, "kind": "video",
        "params": {"prompt": "a lighthouse", "width": 320, "height": 240, "fps": 12, "duration_s": 2.0,
            "steps": steps, "seed": 7, "workflow": "wan-i2v"},
        "inputs": {"image": "s3://bucket/still.png"}, "output": {"prefix": "p"}});
    parse_job(&serde_json::to_vec(&body).unwrap()).unwrap()
}

/// The stages reported so far, readable while the job runs.
#[derive(Clone, Default)]
struct Stages(Arc<Mutex<Vec<String>>>);

impl Stages {
    fn seen(&self, stage: &str) -> bool {
        self.0.lock().unwrap().iter().any(|s| s == stage)
    }
}

impl ProgressSink for Stages {
    fn progress(&self, _: f32, stage: &str, _: Option<String>) {
        self.0.lock().unwrap().push(stage.to_string());
    }
}

struct Run {
    result: Result<RunOutput, PipelineError>,
    _dir: tempfile::TempDir,
}

async fn run(pipeline: ComfyPipeline, job: ainern2d_contract::Job, stages: Stages) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let workdir = dir.path().to_path_buf();
    let result = tokio::task::spawn_blocking(move || {
        let inputs = BTreeMap::from([("image".to_string(), repo().join("examples/media/still.png"))]);
        let req = RunRequest { job: &job, attempt: 1, inputs, workdir, downgrade: None };
        pipeline.run(&req, &stages, &CancellationToken::new())
    })
    .await
    .unwrap();
    Run { result, _dir: dir }
}

async fn until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `kill -<signal> <pid>`; `kill -0` asks whether the process is still there.
fn kill(signal: &str, pid: u32) -> bool {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_comfyui_fails_its_prompt_at_once_and_is_restarted_for_the_next_job() {
    let port = free_port();
    let p = ComfyPipeline::new(config(fake_command(port), port)).unwrap();
    let sup = p.supervisor().expect("comfyui.command starts a supervisor").clone();
    let stages = Stages::default();
    // 20 steps of 300 ms: the prompt is still running seconds after its first step.
    let long = tokio::spawn(run(p.clone(), job("long", 20), stages.clone()));
    until("the sampler's first step", Duration::from_secs(30), || stages.seen("KSampler")).await;
    let pid = sup.pid().expect("the child runs");
    assert!(kill("KILL", pid));
    let killed = Instant::now();
    let r = long.await.unwrap();
    let elapsed = killed.elapsed();
    let e = r.result.expect_err("the job should fail with its ComfyUI");
    assert_eq!(e.kind, PipelineErrorKind::Retryable, "{e:?}");
    assert!(elapsed < Duration::from_secs(3), "failed {elapsed:?} after the kill: {e:?}");
    assert!(e.message.contains(&format!("ComfyUI (pid {pid}) exited while prompt")), "{e:?}");
    assert!(e.message.contains("SIGKILL"), "{e:?}");
    until("the restarted child", Duration::from_secs(10), || sup.pid().is_some_and(|p| p != pid)).await;
    assert_eq!(sup.restarts(), 1);
    // The probe (in `/ready` and heartbeats) tells the operator.
    let probe = p.clone();
    let status = tokio::task::spawn_blocking(move || probe.probe()).await.unwrap().unwrap();
    let process = status.process.expect("a supervised ComfyUI shows its process");
    assert_eq!((process.restarts, process.pid), (1, sup.pid()));
    assert!(process.last_exit.as_deref().is_some_and(|e| e.contains("SIGKILL")), "{process:?}");
    let next = run(p.clone(), job("next", 3), Stages::default()).await;
    let out = next.result.as_ref().expect("the next job runs");
    assert_eq!(ffprobe(&out.artifacts[0].path)["streams"][0]["codec_name"], "h264");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_pipeline_stops_comfyui() {
    let port = free_port();
    let p = ComfyPipeline::new(config(fake_command(port), port)).unwrap();
    let clone = p.clone();
    until("the child", Duration::from_secs(10), || p.supervisor().unwrap().pid().is_some()).await;
    let pid = p.supervisor().unwrap().pid().unwrap();
    drop(p);
    assert!(kill("0", pid), "a clone keeps the child running");
    drop(clone);
    until("the child's exit", Duration::from_secs(12), || !kill("0", pid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_cannot_start_fails_jobs_after_start_timeout_s() {
    let port = free_port();
    let mut c = config(vec!["/nonexistent/fake-comfyui".into()], port);
    c.start_timeout_s = 2;
    let p = ComfyPipeline::new(c).unwrap();
    let started = Instant::now();
    let e = run(p, job("nope", 3), Stages::default()).await.result.expect_err("nothing answers");
    let elapsed = started.elapsed();
    assert_eq!(e.kind, PipelineErrorKind::Retryable, "{e:?}");
    assert!((Duration::from_secs(2)..Duration::from_secs(5)).contains(&elapsed), "failed after {elapsed:?}: {e:?}");
    assert!(e.message.contains("within 2 s (comfyui.start_timeout_s)"), "{e:?}");
    assert!(e.message.contains("could not start /nonexistent/fake-comfyui"), "{e:?}");
}

/// Not a test: the worker that [`a_worker_killed_with_sigkill_takes_comfyui_with_it`] starts and kills.
#[test]
#[ignore = "a helper process of a_worker_killed_with_sigkill_takes_comfyui_with_it"]
fn supervising_host() {
    if std::env::var_os("AINERN2D_SUPERVISING_HOST").is_none() {
        return;
    }
    let sup = Supervisor::start(&["sleep".into(), "60".into()], None).unwrap();
    while sup.pid().is_none() {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("child pid {}", sup.pid().unwrap());
    std::thread::sleep(Duration::from_secs(60));
}

/// `PR_SET_PDEATHSIG`: nothing of the worker runs after a `kill -9`, yet its ComfyUI must not outlive it.
#[cfg(target_os = "linux")]
#[test]
fn a_worker_killed_with_sigkill_takes_comfyui_with_it() {
    use std::io::BufRead;
    let mut host = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "supervising_host", "--ignored", "--nocapture"])
        .env("AINERN2D_SUPERVISING_HOST", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid: u32 = std::io::BufReader::new(host.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("child pid ").map(|p| p.parse().unwrap()))
        .expect("the host prints its child's pid");
    assert!(running(pid));
    host.kill().unwrap();
    host.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while running(pid) {
        assert!(Instant::now() < deadline, "pid {pid} outlived its worker");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Alive and not a zombie (an orphan's zombie waits for a PID 1 that may never reap it in a container).
#[cfg(target_os = "linux")]
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}
