//! `audio` and `lipsync` on real models in the real worker binary: the README's `exec` commands with the
//! example manifest (a real Piper voice; the tiny Wav2Lip-signature model with SCRFD), and the daemon with
//! `jobs.backend = "inference"` serving both kinds from RabbitMQ to S3. Needs the fixtures that
//! `scripts/test.sh` installs (ONNX Runtime, the voice, SCRFD, examples/models).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ainern2d_contract::{EventStatus, JobKind};
use ainern2d_tests::*;

const T: Duration = Duration::from_secs(120);

fn require_fixtures() {
    let root = repo_root();
    for f in [
        "examples/models/voices/en_US-joe-medium.onnx",
        "examples/models/scrfd.onnx",
        "examples/models/wav2lip-tiny.onnx",
    ] {
        assert!(root.join(f).is_file(), "{f} is missing: run scripts/test.sh (or scripts/install-example-models.sh)");
    }
    let ort = std::env::var("ORT_DYLIB_PATH").unwrap_or_default();
    assert!(Path::new(&ort).is_file(), "ORT_DYLIB_PATH ({ort:?}) is not ONNX Runtime: run scripts/test.sh");
}

fn exec(job: &str, out: &Path) -> String {
    let o = Command::new(binary("ainern2d-worker"))
        .args(["exec", job, "--out", out.to_str().unwrap()])
        .current_dir(repo_root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "exec {job} failed:\n{stderr}");
    stderr
}

fn stream<'a>(p: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    p["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == kind)
        .unwrap_or_else(|| panic!("no {kind}: {p}"))
}

#[test]
fn the_example_audio_job_speaks_with_the_real_piper_voice() {
    require_fixtures();
    let out = tempfile::tempdir().unwrap();
    let stderr = exec("examples/jobs/audio.json", out.path());
    assert!(stderr.contains("backend onnxruntime, model joe, on cpu (CPUExecutionProvider)"), "{stderr}");
    assert!(!stderr.contains("MOCK"), "{stderr}");
    let p = ffprobe(&out.path().join("audio.wav"));
    let a = stream(&p, "audio");
    assert_eq!(a["codec_name"], "pcm_s16le");
    assert_eq!(a["sample_rate"], "22050", "the voice's own rate");
    let duration: f64 = p["format"]["duration"].as_str().unwrap().parse().unwrap();
    // Two sentences, 14 words: real speech lasts seconds, not milliseconds or minutes.
    assert!((2.5..12.0).contains(&duration), "{duration} s");
    assert!(stderr.contains(", duration ") && stderr.contains(" s, 22050 Hz"), "duration printed: {stderr}");
    let tags = p["format"]["tags"].to_string();
    assert!(tags.contains("onnxruntime") && tags.contains("voice=joe"), "the file names its backend: {tags}");
}

#[test]
fn the_example_lipsync_job_writes_h264_with_the_input_audio() {
    require_fixtures();
    let out = tempfile::tempdir().unwrap();
    let stderr = exec("examples/jobs/lipsync.json", out.path());
    assert!(stderr.contains("backend onnxruntime, model tiny-wav2lip"), "{stderr}");
    let p = ffprobe(&out.path().join("lipsync.mp4"));
    assert_eq!(stream(&p, "video")["codec_name"], "h264");
    let audio = stream(&p, "audio");
    assert_eq!(audio["codec_name"], "aac");
    let input = ffprobe(&repo_root().join("examples/media/line.wav"));
    let (a, b): (f64, f64) = (
        audio["duration"].as_str().unwrap().parse().unwrap(),
        input["format"]["duration"].as_str().unwrap().parse().unwrap(),
    );
    assert!((a - b).abs() < 0.1, "the output's audio is the input's: {a} s vs {b} s");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_serves_audio_and_lipsync_from_the_manifest() {
    require_fixtures();
    let s = Bed::new("speech").await;
    for (key, file) in [("in/portrait.mp4", "examples/media/portrait.mp4"), ("in/line.wav", "examples/media/line.wav")]
    {
        let body = aws_sdk_s3::primitives::ByteStream::from_path(repo_root().join(file)).await.unwrap();
        s.s3.put_object().bucket(&s.bucket).key(key).body(body).send().await.unwrap();
    }
    let manifest = repo_root().join("models.toml");
    let extra = format!(
        "[jobs]\nkinds = [\"audio\", \"lipsync\"]\nbackend = \"inference\"\n[models]\nmanifest = \"{}\"\n",
        manifest.display()
    );
    let mut w = s.worker(&extra).await;
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    let b = &s.bucket;
    let audio = serde_json::json!({"text": "Hello there. How are you today?", "format": "opus"});
    publish_job(&s.channel, &s.prefix, JobKind::Audio, &job(JobKind::Audio, "tts", audio, serde_json::json!({}))).await;
    let inputs =
        serde_json::json!({"video": format!("s3://{b}/in/portrait.mp4"), "audio": format!("s3://{b}/in/line.wav")});
    publish_job(&s.channel, &s.prefix, JobKind::Lipsync, &job(JobKind::Lipsync, "lips", serde_json::json!({}), inputs))
        .await;
    for (id, name) in [("tts", "audio.opus"), ("lips", "lipsync.mp4")] {
        let event = tap.terminal(id, T).await;
        assert_eq!(event.status, EventStatus::Succeeded, "{id}: {event:?}\n{}", w.logs());
        let execution = event.execution.as_ref().expect("the outcome names what ran");
        assert_eq!(execution.backend, "onnxruntime", "{execution:?}");
        assert_eq!(execution.execution_provider.as_deref(), Some("CPUExecutionProvider"));
        assert!(execution.duration_s.unwrap() > 0.5, "{execution:?}");
        assert_eq!(event.outputs[0].name, name);
        let head = s.s3.head_object().bucket(&s.bucket).key(&event.outputs[0].key).send().await.unwrap();
        assert!(head.content_length().unwrap() > 1000);
    }
    let progress = tap.seen.iter().filter(|e| e.job_id == "tts" && e.status == EventStatus::Progress).count();
    assert!(progress >= 1, "progress while speaking");
    w.kill9();
    s.cleanup().await;
}
