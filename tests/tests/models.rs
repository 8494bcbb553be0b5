//! Real models in the real worker: the example `exec` command on candle, and the daemon serving `llm`
//! jobs from a manifest whose files live in the S3 model bucket (downloaded once, verified), with a
//! tampered and a corrupt model next to a good one.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ainern2d_contract::{EventStatus, JobKind};
use ainern2d_tests::*;

const T: Duration = Duration::from_secs(60);

fn worker_bin(args: &[&str], cwd: &Path) -> std::process::Output {
    let out = Command::new(binary("ainern2d-worker")).args(args).current_dir(cwd).output().unwrap();
    assert!(
        out.status.success(),
        "ainern2d-worker {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

#[test]
fn the_example_llm_job_runs_on_candle_with_the_example_manifest() {
    let root = repo_root();
    // What the README tells a new user to run, from the repository root.
    worker_bin(&["models", "tiny", "examples/models"], &root);
    let out_dir = tempfile::tempdir().unwrap();
    let out = worker_bin(&["exec", "examples/jobs/llm.json", "--out", out_dir.path().to_str().unwrap()], &root);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tok/s") && stderr.contains("model tiny-llama, candle on cpu"), "{stderr}");
    let completion: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("completion.json")).unwrap()).unwrap();
    assert_eq!(completion["backend"], "candle");
    assert_eq!(completion["model"], "tiny-llama");
    assert_eq!(completion["sampling"]["seed"], 42);
    assert!(completion["usage"]["completion_tokens"].as_u64().unwrap() >= 1, "{completion}");
    assert!(completion["timings"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    // `models check` loads every in-process model of the example manifest.
    let check = worker_bin(&["models", "check"], &root);
    let report = String::from_utf8_lossy(&check.stdout);
    assert_eq!(
        report.matches("\nok ").count(),
        6,
        "three llms, the voice, the lip-sync model and its detector: {report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_serves_llm_jobs_from_the_model_bucket_and_survives_bad_models() {
    let s = Bed::new("models").await;
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny");
    worker_bin(&["models", "tiny", tiny.to_str().unwrap()], dir.path());
    let gguf = tiny.join("tiny-llama.gguf");
    let tokenizer = tiny.join("tokenizer.json");
    for (key, path) in [("models/tiny-llama.gguf", &gguf), ("models/tokenizer.json", &tokenizer)] {
        let body = aws_sdk_s3::primitives::ByteStream::from_path(path).await.unwrap();
        s.s3.put_object().bucket(&s.bucket).key(key).body(body).send().await.unwrap();
    }
    std::fs::write(dir.path().join("corrupt.gguf"), b"GGUF but not really").unwrap();
    let (good_sha, tok_sha) = (sha256(&gguf), sha256(&tokenizer));
    let wrong_sha = "0".repeat(64);
    let b = &s.bucket;
    let manifest = format!(
        r#"default_llm = "good"
warm = ["good"]
cache_dir = "cache"
device = "cpu"
[models.good]
kind = "llm"
format = "gguf"
source = "s3://{b}/models/tiny-llama.gguf"
sha256 = "{good_sha}"
tokenizer = "s3://{b}/models/tokenizer.json"
tokenizer_sha256 = "{tok_sha}"
memory_mb = 2
[models.tampered]
kind = "llm"
format = "gguf"
source = "s3://{b}/models/tiny-llama.gguf"
sha256 = "{wrong_sha}"
tokenizer = "s3://{b}/models/tokenizer.json"
tokenizer_sha256 = "{tok_sha}"
[models.corrupt]
kind = "llm"
format = "gguf"
source = "corrupt.gguf"
tokenizer = "tiny/tokenizer.json"
"#
    );
    let manifest_path = dir.path().join("models.toml");
    std::fs::write(&manifest_path, manifest).unwrap();
    let extra = format!(
        "[jobs]\nkinds = [\"llm\"]\n[jobs.backends]\nllm = \"inference\"\n[models]\nmanifest = \"{}\"\n",
        manifest_path.display()
    );
    let beats = events_queue(&s.channel, &s.prefix, "worker.heartbeat.#").await;
    // Every progress message is published (the tiny model outruns the tests' 100 ms interval).
    let (config, _) = s.config(&extra);
    let mut w = Worker::spawn(&config.replace("progress_interval_ms = 100", "progress_interval_ms = 0"));
    w.wait_ready().await;
    // Warm-up happened before ready: the good model was downloaded, verified and loaded.
    let metrics_url = format!("http://127.0.0.1:{}/metrics", w.http_port);
    let metrics = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ainern2d_worker_model_cache_misses_total{model=\"good\"} 1"), "{metrics}");
    assert!(
        metrics.contains(&format!("ainern2d_worker_model_bytes_resident{{device=\"cpu\"}} {}", 2 * 1024 * 1024)),
        "{metrics}"
    );
    let cached = dir.path().join("cache").join(&good_sha).join("tiny-llama.gguf");
    assert_eq!(sha256(&cached), good_sha);
    // Heartbeats list the loaded models.
    heartbeat_until(&s.channel, &beats, T, "names the warm model", || w.logs(), |b| b.models_loaded == ["good"]).await;

    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    let params =
        |model: &str| serde_json::json!({"prompt": "Greet the storm.", "model": model, "max_tokens": 16, "seed": 3});
    for (id, model, want) in
        [("corrupt-job", "corrupt", "is not a readable GGUF file"), ("tampered-job", "tampered", "checksum mismatch")]
    {
        s.submit_with(JobKind::Llm, id, params(model)).await;
        let event = tap.terminal(id, T).await;
        assert_eq!(event.status, EventStatus::Failed, "{event:?}\n{}", w.logs());
        let error = event.error.as_ref().unwrap();
        assert!(!error.retryable, "{error:?}");
        assert!(error.message.contains(want) && error.message.contains(model), "{error:?}");
    }
    // Nothing of the tampered download stayed in the cache.
    assert!(!dir.path().join("cache").join(&wrong_sha).join("tiny-llama.gguf").exists());

    // The worker is still up and serves the good model; progress carries the token count and rate.
    let mut long = params("good");
    long["max_tokens"] = 200.into();
    long["temperature"] = 1.0.into();
    s.submit_with(JobKind::Llm, "good-job", long).await;
    let event = tap.terminal("good-job", T).await;
    assert_eq!(event.status, EventStatus::Succeeded, "{event:?}\n{}", w.logs());
    let out = &event.outputs[0];
    let object = s.s3.get_object().bucket(&s.bucket).key(&out.key).send().await.unwrap();
    let completion: serde_json::Value =
        serde_json::from_slice(&object.body.collect().await.unwrap().into_bytes()).unwrap();
    assert_eq!(completion["backend"], "candle");
    assert_eq!(completion["model_cache"], "hit", "warmed up before the job");
    let progress: Vec<_> =
        tap.seen.iter().filter(|e| e.job_id == "good-job" && e.status == EventStatus::Progress).collect();
    // The generated model is seeded: this job generates tokens, so there is token progress.
    assert!(completion["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{completion}");
    let p = progress.iter().filter_map(|e| e.progress.as_ref()).find(|p| p.tokens.is_some());
    let p = p.unwrap_or_else(|| panic!("no token progress among {progress:?}"));
    assert!(p.tokens_per_s.unwrap() > 0.0, "{p:?}");
    let metrics = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ainern2d_worker_model_load_failures_total{model=\"corrupt\"} 1"), "{metrics}");
    assert!(metrics.contains("ainern2d_worker_model_load_failures_total{model=\"tampered\"} 1"), "{metrics}");
    assert!(metrics.contains("ainern2d_worker_model_cache_hits_total{model=\"good\"} 1"), "{metrics}");
    w.kill9();
    s.cleanup().await;
}
