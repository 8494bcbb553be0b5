//! `ainern2d-worker doctor` (issue 13, item 8): against the real broker, the S3 server and a ComfyUI (the
//! fake, as a process) every check passes and the exit status is 0; with each part broken the check names
//! what is wrong with a `fix:`, and the exit status is 1.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ainern2d_tests::*;

fn doctor(config: &str, json: bool) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(binary("ainern2d-worker"));
    cmd.arg("--config").arg(&path).arg("doctor");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.stderr(Stdio::inherit()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap())
}

fn checks(json: &str) -> Vec<serde_json::Value> {
    serde_json::from_str::<Vec<serde_json::Value>>(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

fn status_of<'a>(checks: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    checks.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
}

/// The fake ComfyUI as a process, answering on `port`.
struct FakeComfy(std::process::Child);

impl FakeComfy {
    fn start(port: u16) -> FakeComfy {
        let child = Command::new(env!("CARGO_BIN_EXE_fake-comfyui"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the fake ComfyUI did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        FakeComfy(child)
    }
}

impl Drop for FakeComfy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn comfy(port: u16) -> String {
    format!(
        "[jobs]\nkinds = [\"llm\", \"video\"]\n[jobs.backends]\nvideo = \"comfyui\"\n\
         [comfyui]\nurl = \"http://127.0.0.1:{port}\"\ntemplates = \"{}\"\n",
        repo_root().join("examples/comfyui").display()
    )
}

#[tokio::test]
async fn everything_reachable_passes_with_exit_status_0() {
    let bed = Bed::new("doctor").await;
    let port = free_port();
    let _fake = FakeComfy::start(port);
    let (config, _) = bed.config(&comfy(port));
    let (code, text) = doctor(&config, false);
    println!("{text}");
    assert_eq!(code, 0, "{text}");
    for line in ["ok    config", "ok    broker", "ok    store", "ok    scratch", "ok    comfyui", "no problem found"] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
    assert!(!text.contains("FAIL"), "{text}");
}

#[tokio::test]
async fn each_broken_part_is_named_with_its_fix_and_exit_status_1() {
    let bed = Bed::new("doctor-bad").await;
    let closed = free_port();
    let (config, _) = bed.config(&comfy(closed));
    let config = config
        .replace(&amqp_url(), &format!("amqp://guest:guest@127.0.0.1:{closed}/%2f"))
        .replace(&format!("secret_access_key = \"{S3_KEY}\""), "secret_access_key = \"not-the-secret\"")
        .replacen("scratch_dir = \"", "scratch_dir = \"/proc/ainern2d-doctor", 1);
    let (code, json) = doctor(&config, true);
    assert_eq!(code, 1, "{json}");
    let checks = checks(&json);
    println!("{}", serde_json::to_string_pretty(&checks).unwrap());
    for (name, says) in [
        ("broker", format!("127.0.0.1:{closed}")),
        ("store", "refused the credentials".to_string()),
        ("scratch", "/proc/ainern2d-doctor".to_string()),
        ("comfyui", format!("127.0.0.1:{closed}")),
    ] {
        let c = status_of(&checks, name);
        assert_eq!(c["status"], "fail", "{c}");
        assert!(c["detail"].as_str().unwrap().contains(&says), "{name} does not name `{says}`: {c}");
        assert!(!c["fix"].as_str().unwrap_or_default().is_empty(), "{name} has no fix: {c}");
    }
    assert!(!json.contains("not-the-secret") && !json.contains("guest:guest@"), "a secret in the report");
    assert_eq!(status_of(&checks, "config")["status"], "ok");
}

#[tokio::test]
async fn a_config_that_does_not_load_is_the_first_failure() {
    let (code, text) = doctor("[jobs]\nmax_attempts = 0\n", false);
    assert_eq!(code, 1, "{text}");
    assert!(text.starts_with("FAIL  config") && text.contains("jobs.max_attempts"), "{text}");
    assert!(text.contains("fix:") && text.contains("1 problem found"), "{text}");

    // An ONNX Runtime that is not there, for a kind that needs it.
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("models.toml");
    std::fs::write(&manifest, "").unwrap();
    let config = format!(
        "[broker]\nurl = \"{}\"\n[jobs]\nkinds = [\"audio\"]\nbackend = \"inference\"\n[models]\nmanifest = \"{}\"\n\
         [onnx]\nruntime_path = \"/nonexistent/libonnxruntime.so\"\n[store]\nendpoint = \"{}\"\n\
         access_key_id = \"{S3_KEY}\"\nsecret_access_key = \"{S3_KEY}\"\n",
        amqp_url(),
        manifest.display(),
        s3_endpoint()
    );
    let (code, json) = doctor(&config, true);
    let checks = checks(&json);
    let onnx = status_of(&checks, "onnx");
    assert_eq!(onnx["status"], "fail", "{onnx}");
    assert!(onnx["detail"].as_str().unwrap().contains("/nonexistent/libonnxruntime.so"), "{onnx}");
    assert_eq!(code, 1);
}
