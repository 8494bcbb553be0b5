//! `video` jobs through ComfyUI in the real worker binary, against the fake ComfyUI: the README's `exec
//! --backend comfyui` command, and the daemon serving `video` jobs from RabbitMQ to S3 with progress events;
//! a cancel through the control exchange interrupts exactly that job's prompt.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ainern2d_contract::{ControlCommand, EventStatus, JobKind};
use ainern2d_pipelines::comfy::prompt_id;
use ainern2d_tests::comfy::{Behaviour, Device, FakeComfy, OutputFile};
use ainern2d_tests::*;

const T: Duration = Duration::from_secs(60);

/// What the fakes of these tests do: SaveVideo nodes write a 2 s, 12 fps, 320×240 H.264 clip.
fn behaviour(dir: &Path, step_delay: Duration) -> Behaviour {
    let clip = test_clip(dir);
    let mut b = Behaviour { step_delay, ..Behaviour::default() };
    b.outputs.insert("3".into(), OutputFile::path(&clip));
    b.outputs.insert("14".into(), OutputFile::path(&clip));
    b
}

async fn fake(dir: &Path, step_delay: Duration) -> FakeComfy {
    FakeComfy::start(behaviour(dir, step_delay)).await
}

/// The model-free example template, and `sampled`: a KSampler whose steps take time (for cancelling).
fn sampler_templates(dir: &Path) -> std::path::PathBuf {
    let t = dir.join("templates");
    std::fs::create_dir_all(&t).unwrap();
    for ext in ["json", "toml"] {
        let name = format!("empty-video.{ext}");
        std::fs::copy(repo_root().join("examples/comfyui").join(&name), t.join(&name)).unwrap();
    }
    let workflow = serde_json::json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
              "scheduler": "normal", "denoise": 1.0, "latent_image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    });
    std::fs::write(t.join("sampled.json"), workflow.to_string()).unwrap();
    std::fs::write(
        t.join("sampled.toml"),
        "output = \"3\"\n[slots]\nsteps = { node = \"2\", input = \"steps\" }\nprefix = { node = \"3\", input = \"filename_prefix\" }\n",
    )
    .unwrap();
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_exec_command_runs_the_example_video_job_through_comfyui() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake(dir.path(), Duration::ZERO).await;
    let out = dir.path().join("out");
    let url = fake.url();
    let out_arg = out.clone();
    let o = tokio::task::spawn_blocking(move || {
        Command::new(binary("ainern2d-worker"))
            .args(["exec", "examples/jobs/video.json", "--backend", "comfyui", "--comfyui-url", &url])
            .args(["--templates", "examples/comfyui", "--out"])
            .arg(&out_arg)
            .current_dir(repo_root())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "exec failed:\n{stderr}");
    assert!(stderr.contains("backend comfyui"), "the summary names the backend:\n{stderr}");
    assert!(!stderr.contains("MOCK"), "{stderr}");
    let p = ffprobe(&out.join("video.mp4"));
    let v = &p["streams"][0];
    assert_eq!(
        (v["codec_name"].as_str(), v["width"].as_u64(), v["height"].as_u64()),
        (Some("h264"), Some(320), Some(240))
    );
    let duration: f64 = p["format"]["duration"].as_str().unwrap().parse().unwrap();
    assert!((duration - 2.0).abs() < 0.1, "{duration}");
    assert!(out.join("thumbnail.jpg").is_file());
    assert_eq!(fake.prompts()[0]["prompt_id"], prompt_id("example-video", 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_serves_video_through_comfyui_and_cancel_interrupts_that_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake(dir.path(), Duration::from_millis(200)).await;
    let s = Bed::new("comfy").await;
    let body =
        aws_sdk_s3::primitives::ByteStream::from_path(repo_root().join("examples/media/still.png")).await.unwrap();
    s.s3.put_object().bucket(&s.bucket).key("in/still.png").body(body).send().await.unwrap();
    let templates = sampler_templates(dir.path());
    let extra = format!(
        "[jobs]\nkinds = [\"video\"]\n[jobs.backends]\nvideo = \"comfyui\"\n\
         [comfyui]\nurl = \"{}\"\ntemplates = \"{}\"\nsilence_s = 5\n",
        fake.url(),
        templates.display()
    );
    let w = s.worker(&extra).await;
    let id = s.worker_id(w.http_port);
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    let image = serde_json::json!({"image": format!("s3://{}/in/still.png", s.bucket)});
    let params = |workflow: &str, steps: u32| {
        serde_json::json!({"prompt": "a lighthouse", "width": 320, "height": 240, "fps": 12, "duration_s": 2.0,
            "steps": steps, "workflow": workflow})
    };
    publish_job(
        &s.channel,
        &s.prefix,
        JobKind::Video,
        &job(JobKind::Video, "clip", params("empty-video", 4), image.clone()),
    )
    .await;
    let event = tap.terminal("clip", T).await;
    assert_eq!(event.status, EventStatus::Succeeded, "{event:?}\n{}", w.logs());
    let names: Vec<&str> = event.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["video.mp4", "thumbnail.jpg"]);
    let execution = event.execution.as_ref().unwrap();
    assert_eq!((execution.backend.as_str(), execution.frames), ("comfyui", Some(24)));
    let key = &event.outputs[0].key;
    let obj = s.s3.get_object().bucket(&s.bucket).key(key).send().await.unwrap();
    let local = dir.path().join("got.mp4");
    std::fs::write(&local, obj.body.collect().await.unwrap().into_bytes()).unwrap();
    assert_eq!(ffprobe(&local)["streams"][0]["codec_name"], "h264");
    // A long prompt, cancelled while it samples: only its prompt is interrupted.
    publish_job(&s.channel, &s.prefix, JobKind::Video, &job(JobKind::Video, "stop", params("sampled", 100), image))
        .await;
    let stop = prompt_id("stop", 1);
    tokio::time::timeout(T, async {
        while fake.running().as_deref() != Some(stop.as_str()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the prompt never ran; events {:?}\n{}",
            tap.seen.iter().filter(|e| e.job_id == "stop").collect::<Vec<_>>(),
            w.logs()
        )
    });
    // Progress events while it samples, staged by the node class.
    let p = tap
        .wait_for(T, "progress", |e| {
            e.job_id == "stop"
                && e.status == EventStatus::Progress
                && e.progress.as_ref().is_some_and(|p| p.stage == "KSampler")
        })
        .await;
    assert!(p.progress.unwrap().fraction > 0.0);
    s.control(&id, ControlCommand::Cancel { job_id: "stop".into() }).await;
    assert_eq!(tap.terminal("stop", T).await.status, EventStatus::Cancelled);
    assert_eq!(fake.interrupts(), [Some(stop.clone())]);
    s.cleanup().await;
}

async fn ready(port: u16) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/ready")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Polls `/ready` until `pred` holds.
async fn ready_until(port: u16, what: &str, pred: impl Fn(u16, &serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + T;
    loop {
        let (status, body) = ready(port).await;
        if pred(status, &body) {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: /ready says {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn while_comfyui_does_not_answer_the_worker_is_unready_and_leaves_video_jobs_in_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut b = behaviour(dir.path(), Duration::ZERO);
    b.device = Device::h200();
    let fake = FakeComfy::start_on(addr, b.clone()).await;
    let s = Bed::new("comfyup").await;
    let beats = events_queue(&s.channel, &s.prefix, "worker.heartbeat.#").await;
    let extra = format!(
        "[jobs]\nkinds = [\"video\"]\n[jobs.backends]\nvideo = \"comfyui\"\n\
         [comfyui]\nurl = \"{}\"\ntemplates = \"{}\"\n",
        fake.url(),
        repo_root().join("examples/comfyui").display()
    );
    let w = s.worker(&extra).await;
    // Up: ComfyUI's version and device in /ready; its VRAM in heartbeats (this machine has no NVML).
    let body =
        ready_until(w.http_port, "ComfyUI probed", |st, b| st == 200 && b["backends"]["video"].is_object()).await;
    let video = &body["backends"]["video"];
    assert_eq!((video["backend"].as_str(), video["reachable"].as_bool()), (Some("comfyui"), Some(true)), "{body}");
    assert_eq!(video["devices"][0]["kind"], "cuda", "{body}");
    assert_eq!(body["components"]["backends"]["video"], "ok", "{body}");
    let beat =
        heartbeat_until(&s.channel, &beats, T, "with ComfyUI in it", || w.logs(), |b| b.backends.contains_key("video"))
            .await;
    assert!(beat.backends["video"].reachable);
    let gpu = &beat.gpus[0];
    assert_eq!(gpu.source.as_deref(), Some("comfyui"));
    assert_eq!(gpu.memory_total_bytes, 150_110_011_392);
    assert_eq!(gpu.memory_used_bytes, 150_110_011_392 - 149_480_406_016);
    // Down: unready within a few probes, the gauge at 0, and a video job stays in its queue.
    drop(fake);
    let body = ready_until(w.http_port, "ComfyUI down", |st, b| {
        st == 503 && b["components"]["backends"]["video"].as_str().is_some_and(|v| v.starts_with("down:"))
    })
    .await;
    assert_eq!(body["backends"]["video"]["reachable"], false, "{body}");
    let metrics =
        reqwest::get(format!("http://127.0.0.1:{}/metrics", w.http_port)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ainern2d_worker_backend_up{kind=\"video\"} 0"), "{metrics}");
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    s.submit_with(
        JobKind::Video,
        "waits",
        serde_json::json!({"prompt": "a lighthouse", "width": 320, "height": 240,
        "fps": 12, "duration_s": 2.0, "workflow": "empty-video"}),
    )
    .await;
    let queue = format!("{}.jobs.video", s.prefix);
    wait_queue_len(&s.channel, &queue, 1, T).await;
    tap.drain_for(Duration::from_secs(2)).await;
    assert_eq!(queue_len(&s.channel, &queue).await, 1, "the job stays queued for a worker that can run it");
    assert!(tap.seen.iter().all(|e| e.job_id != "waits"), "no event for the waiting job: {:?}", tap.seen);
    // Back: the worker takes the job and runs it.
    let _back = FakeComfy::start_on(addr, b).await;
    let event = tap.terminal("waits", T).await;
    assert_eq!(event.status, EventStatus::Succeeded, "{event:?}\n{}", w.logs());
    ready_until(w.http_port, "ComfyUI back", |st, _| st == 200).await;
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_supervised_comfyui_serves_the_daemon_and_is_stopped_with_it() {
    let port = free_port();
    let s = Bed::new("comfysup").await;
    let extra = format!(
        "[jobs]\nkinds = [\"video\"]\n[jobs.backends]\nvideo = \"comfyui\"\n\
         [comfyui]\nurl = \"http://127.0.0.1:{port}\"\ntemplates = \"{}\"\n\
         command = [\"{}\", \"--listen\", \"127.0.0.1:{port}\", \"--stop-delay-ms\", \"1500\"]\n",
        repo_root().join("examples/comfyui").display(),
        env!("CARGO_BIN_EXE_fake-comfyui"),
    );
    let mut w = s.worker(&extra).await;
    let body = ready_until(w.http_port, "the child probed", |st, b| {
        st == 200 && b["backends"]["video"]["process"]["pid"].is_u64()
    })
    .await;
    let pid = body["backends"]["video"]["process"]["pid"].as_u64().unwrap();
    assert_eq!(body["backends"]["video"]["process"]["restarts"], 0, "{body}");
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    s.submit_with(
        JobKind::Video,
        "sup",
        serde_json::json!({"prompt": "a lighthouse", "width": 320, "height": 240, "fps": 12, "duration_s": 2.0,
            "workflow": "empty-video"}),
    )
    .await;
    let event = tap.terminal("sup", T).await;
    assert_eq!(event.status, EventStatus::Succeeded, "{event:?}\n{}", w.logs());
    w.signal("TERM");
    assert_eq!(w.wait_exit(T).await, 0, "{}", w.logs());
    let logs = w.logs();
    assert!(
        logs.contains("fake ComfyUI stopping on SIGTERM"),
        "the child was stopped and given its time, not killed:\n{logs}"
    );
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the child {pid} outlived the worker");
    s.cleanup().await;
}
