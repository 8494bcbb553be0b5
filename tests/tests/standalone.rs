//! End to end: the one-command local mode (`ainern2d`) — hub and worker in one process
//! over the in-process queue, SQLite and a local output directory — runs a job of each kind submitted
//! through the hub API, and picks unfinished jobs up again after it was killed. No RabbitMQ, S3 or Postgres
//! is involved.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ainern2d_tests::{binary, free_port, repo_root};
use serde_json::Value;

struct Standalone {
    child: Child,
    api: String,
    dir: PathBuf,
    log: PathBuf,
    banner: PathBuf,
}

impl Standalone {
    fn start(dir: &Path, env: &[(&str, &str)]) -> Standalone {
        let port = free_port();
        let log = dir.join(format!("stderr-{port}.log"));
        let banner = dir.join(format!("stdout-{port}.log"));
        let mut cmd = Command::new(binary("ainern2d"));
        cmd.arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--worker-listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--inputs-dir")
            .arg(repo_root())
            .env_remove("AINERN2D_HUB_ADMIN_TOKEN")
            .env_remove("AINERN2D_WORKER_CONFIG")
            .env_remove("AINERN2D_HUB_CONFIG")
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(&banner).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Standalone {
            child: cmd.spawn().unwrap(),
            api: format!("http://127.0.0.1:{port}"),
            dir: dir.join("data"),
            log,
            banner,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("standalone exited early ({status}):\n{}", self.logs());
            }
            if let Ok(r) = reqwest::get(format!("{}/ready", self.api)).await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("standalone not ready within 30 s:\n{}", self.logs());
    }

    /// The banner goes out once the worker is starting, just after the hub is ready.
    async fn banner(&self) -> String {
        for _ in 0..100 {
            let text = std::fs::read_to_string(&self.banner).unwrap_or_default();
            if text.contains("Follow it") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no banner on stdout:\n{}", self.logs());
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin-token")).expect("the local mode writes an admin token")
    }

    async fn submit(&self, body: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/v1/jobs", self.api))
            .bearer_auth(self.token())
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn job(&self, id: &str) -> Value {
        reqwest::get(format!("{}/v1/jobs/{id}", self.api)).await.unwrap().json().await.unwrap()
    }

    async fn wait_status(&self, id: &str, status: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.job(id).await;
            if last["status"] == status {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {id} not {status} within {within:?}: {last}\n{}", self.logs());
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    async fn wait_exit(&mut self, within: Duration) -> i32 {
        let log = self.log.clone();
        ainern2d_tests::wait_child_exit(&mut self.child, within, || std::fs::read_to_string(&log).unwrap_or_default())
            .await
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn example(kind: &str, id: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join(format!("examples/jobs/{kind}.json"))).unwrap();
    let mut job: Value = serde_json::from_str(&text).unwrap();
    job["job_id"] = id.into();
    job
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test]
async fn the_local_mode_runs_a_job_of_each_kind_submitted_through_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let mut app = Standalone::start(tmp.path(), &[]);
    app.wait_ready().await;
    let banner = app.banner().await;
    assert!(banner.contains("/v1/jobs") && banner.contains("Authorization: Bearer"), "banner:\n{banner}");

    // Mutations need the admin token the local mode generated.
    let anonymous = reqwest::Client::new()
        .post(format!("{}/v1/jobs", app.api))
        .json(&example("llm", "nobody"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let kinds = ["llm", "audio", "video", "lipsync"];
    for kind in kinds {
        let r = app.submit(&example(kind, &format!("local-{kind}"))).await;
        assert_eq!(r.status(), 202, "{kind}: {}", r.text().await.unwrap());
    }
    for kind in kinds {
        let job = app.wait_status(&format!("local-{kind}"), "succeeded", Duration::from_secs(90)).await;
        let outputs = job["outputs"].as_array().unwrap_or_else(|| panic!("{kind}: no outputs in {job}"));
        assert!(!outputs.is_empty(), "{kind}: {job}");
        for o in outputs {
            let path = app.dir.join("outputs").join(o["bucket"].as_str().unwrap()).join(o["key"].as_str().unwrap());
            assert!(path.is_file(), "{kind}: {} is missing", path.display());
            assert_eq!(sha256(&path), o["sha256"].as_str().unwrap(), "{kind}: checksum of {}", path.display());
            assert_eq!(std::fs::metadata(&path).unwrap().len(), o["size"].as_u64().unwrap());
        }
    }
    let video = app.job("local-video").await;
    assert_eq!(video["outputs"][0]["content_type"], "video/mp4");

    // A bad job gets a clear 422 naming the field, and nothing is queued.
    let mut bad = example("video", "local-bad");
    bad["params"]["width"] = (-3).into();
    let r = app.submit(&bad).await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("params.width"));

    // The worker registers through heartbeats like any worker.
    let workers: Value = reqwest::get(format!("{}/v1/workers", app.api)).await.unwrap().json().await.unwrap();
    assert_eq!(workers["workers"].as_array().map(Vec::len), Some(1), "{workers}");
    assert_eq!(workers["workers"][0]["state"], "ready", "{workers}");

    app.signal("TERM");
    assert_eq!(app.wait_exit(Duration::from_secs(30)).await, 0, "{}", app.logs());
}

#[tokio::test]
async fn unfinished_jobs_are_enqueued_again_after_the_process_was_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut app = Standalone::start(tmp.path(), &[("AINERN2D_WORKER_MOCK__LATENCY_MS", "60000")]);
    app.wait_ready().await;
    assert_eq!(app.submit(&example("audio", "survivor")).await.status(), 202);
    app.wait_status("survivor", "running", Duration::from_secs(30)).await;
    app.signal("KILL");
    app.wait_exit(Duration::from_secs(10)).await;

    let mut app = Standalone::start(tmp.path(), &[]);
    app.wait_ready().await;
    let banner = app.banner().await;
    assert!(banner.contains("re-enqueued  1 job"), "banner:\n{banner}");
    let job = app.wait_status("survivor", "succeeded", Duration::from_secs(60)).await;
    assert_eq!(job["attempt"], 1, "{job}");
    app.signal("TERM");
    assert_eq!(app.wait_exit(Duration::from_secs(30)).await, 0, "{}", app.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_mode_runs_video_jobs_through_comfyui_when_configured() {
    use ainern2d_tests::comfy::{Behaviour, FakeComfy, OutputFile};
    let tmp = tempfile::tempdir().unwrap();
    let clip = ainern2d_tests::test_clip(tmp.path());
    let mut b = Behaviour::default();
    b.outputs.insert("3".into(), OutputFile::path(&clip));
    let fake = FakeComfy::start(b).await;
    let config = tmp.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "[jobs.backends]\nvideo = \"comfyui\"\n[comfyui]\nurl = \"{}\"\ntemplates = \"{}\"\n",
            fake.url(),
            repo_root().join("examples/comfyui").display()
        ),
    )
    .unwrap();
    let mut app = Standalone::start(tmp.path(), &[("AINERN2D_WORKER_CONFIG", config.to_str().unwrap())]);
    app.wait_ready().await;
    let r = app.submit(&example("video", "local-comfy")).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let job = app.wait_status("local-comfy", "succeeded", Duration::from_secs(90)).await;
    let names: Vec<&str> = job["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["video.mp4", "thumbnail.jpg"], "{job}");
    let o = &job["outputs"][0];
    let path = app.dir.join("outputs").join(o["bucket"].as_str().unwrap()).join(o["key"].as_str().unwrap());
    assert_eq!(ainern2d_tests::ffprobe(&path)["streams"][0]["codec_name"], "h264");
    let sent = fake.prompts();
    assert_eq!(sent.len(), 1, "one prompt for one job");
    assert_eq!(sent[0]["prompt_id"], ainern2d_pipelines::comfy::prompt_id("local-comfy", 1));
    app.signal("TERM");
    assert_eq!(app.wait_exit(Duration::from_secs(30)).await, 0, "{}", app.logs());
}
