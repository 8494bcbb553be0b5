//! Mock pipelines: the same contract as the real backends, with synthetic but real outputs (a JSON
//! completion, a WAV, an H.264 MP4, a muxed MP4), configurable latency and injected faults.

use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use ainern2d_contract::{JobKind, JobSpec};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::error::{PipelineError, PipelineErrorKind};
use crate::{Artifact, Pipeline, ProgressSink, RunOutput, RunRequest, media};

/// What an injected failure looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    #[default]
    Retryable,
    Permanent,
    /// Classified like a CUDA out-of-memory error.
    OutOfMemory,
}

/// Latency and fault injection for the mock pipelines. Faults are decided from a hash of the job id and
/// attempt, so a given job fails the same way every time it is replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MockConfig {
    /// Simulated inference time per job, in milliseconds (added to the real encoding time).
    pub latency_ms: u64,
    /// Fraction of jobs (0..=1) that fail with `failure`.
    pub failure_rate: f64,
    pub failure: FaultKind,
    /// Fraction of jobs that hang until cancelled.
    pub hang_rate: f64,
    /// Fraction of jobs whose pipeline ignores its cancellation for `latency_ms` (a GPU call that cannot
    /// be interrupted), then runs on as usual.
    pub wedge_rate: f64,
    /// Fraction of jobs that abort the whole process mid-job (to test redelivery).
    pub crash_rate: f64,
    /// Faults only hit attempts up to this number (0 = every attempt): `1` makes a job fail once, then succeed.
    pub fault_attempts: u32,
    /// Extra delay before each upload, applied by the worker (the "slow upload" fault).
    pub upload_delay_ms: u64,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency_ms: 0,
            failure_rate: 0.0,
            failure: FaultKind::Retryable,
            hang_rate: 0.0,
            wedge_rate: 0.0,
            crash_rate: 0.0,
            fault_attempts: 0,
            upload_delay_ms: 0,
        }
    }
}

impl MockConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("failure_rate", self.failure_rate),
            ("hang_rate", self.hang_rate),
            ("wedge_rate", self.wedge_rate),
            ("crash_rate", self.crash_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("mock.{name} must be between 0 and 1, got {v}"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct MockPipeline {
    kind: JobKind,
    config: MockConfig,
}

impl MockPipeline {
    pub fn new(kind: JobKind, config: MockConfig) -> Self {
        media::init();
        MockPipeline { kind, config }
    }
}

/// A deterministic fraction in [0, 1) from the job identity and a salt.
fn roll(job_id: &str, attempt: u32, salt: &str) -> f64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (job_id, attempt, salt).hash(&mut h);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A small deterministic PRNG (xorshift64*) so mock outputs are reproducible byte for byte.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn text_seed(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Sleeps in small steps so cancellation is honoured promptly.
fn sleep(total: Duration, cancel: &CancellationToken) -> Result<(), PipelineError> {
    let deadline = Instant::now() + total;
    while Instant::now() < deadline {
        if cancel.is_cancelled() {
            return Err(PipelineError::cancelled());
        }
        std::thread::sleep((deadline - Instant::now()).min(Duration::from_millis(20)));
    }
    Ok(())
}

impl MockPipeline {
    fn inject_faults(&self, req: &RunRequest<'_>, cancel: &CancellationToken) -> Result<(), PipelineError> {
        let c = &self.config;
        if c.fault_attempts != 0 && req.attempt > c.fault_attempts {
            return Ok(());
        }
        let id = &req.job.job_id;
        if roll(id, req.attempt, "crash") < c.crash_rate {
            tracing::error!(job_id = %id, "mock fault: aborting the process mid-job");
            std::process::abort();
        }
        if roll(id, req.attempt, "wedge") < c.wedge_rate {
            tracing::warn!(job_id = %id, "mock fault: ignoring cancellation for {} ms", c.latency_ms);
            std::thread::sleep(Duration::from_millis(c.latency_ms));
        }
        if roll(id, req.attempt, "hang") < c.hang_rate {
            tracing::warn!(job_id = %id, "mock fault: hanging until cancelled");
            while !cancel.is_cancelled() {
                std::thread::sleep(Duration::from_millis(20));
            }
            return Err(PipelineError::cancelled());
        }
        if roll(id, req.attempt, "fail") < c.failure_rate {
            let kind = match c.failure {
                FaultKind::Retryable => PipelineErrorKind::Retryable,
                FaultKind::Permanent => PipelineErrorKind::Permanent,
                FaultKind::OutOfMemory => PipelineErrorKind::OutOfMemory,
            };
            let what = match kind {
                PipelineErrorKind::OutOfMemory => "CUDA out of memory (injected by the mock pipeline)",
                _ => "injected failure (mock pipeline)",
            };
            return Err(PipelineError { kind, message: what.into() });
        }
        Ok(())
    }
}

impl Pipeline for MockPipeline {
    fn kind(&self) -> JobKind {
        self.kind
    }

    fn backend(&self) -> &'static str {
        "mock"
    }

    fn output_names(&self, _job: &ainern2d_contract::Job) -> Vec<String> {
        let name = match self.kind {
            JobKind::Llm => "completion.json",
            JobKind::Audio => "audio.wav",
            JobKind::Video => "video.mp4",
            JobKind::Lipsync => "lipsync.mp4",
        };
        vec![name.to_string()]
    }

    fn run(
        &self,
        req: &RunRequest<'_>,
        progress: &dyn ProgressSink,
        cancel: &CancellationToken,
    ) -> Result<RunOutput, PipelineError> {
        self.run_mock(req, progress, cancel).map(|artifacts| RunOutput::new("mock", artifacts))
    }
}

impl MockPipeline {
    fn run_mock(
        &self,
        req: &RunRequest<'_>,
        progress: &dyn ProgressSink,
        cancel: &CancellationToken,
    ) -> Result<Vec<Artifact>, PipelineError> {
        if req.job.kind() != self.kind {
            return Err(PipelineError::permanent(format!("{} pipeline given a {} job", self.kind, req.job.kind())));
        }
        progress.progress(0.0, "inference", None);
        self.inject_faults(req, cancel)?;
        let latency = Duration::from_millis(self.config.latency_ms);
        match &req.job.spec {
            JobSpec::Llm(p) => {
                let max_tokens =
                    req.downgrade.and_then(|d| d.llm_max_tokens).map_or(p.max_tokens, |cap| p.max_tokens.min(cap));
                llm(req, &p.prompt, p.seed, max_tokens, latency, progress, cancel)
            }
            JobSpec::Audio(p) => {
                sleep(latency, cancel)?;
                let duration = p.duration_s.unwrap_or_else(|| (p.text.chars().count() as f64 * 0.06).clamp(0.5, 600.0));
                audio(req, &p.text, p.sample_rate.unwrap_or(24_000), duration, progress, cancel)
            }
            JobSpec::Video(p) => {
                sleep(latency, cancel)?;
                let (mut w, mut h) = (p.width, p.height);
                if let Some(max) = req.downgrade.and_then(|d| d.video_max_pixels) {
                    while u64::from(w) * u64::from(h) > max && w > 16 && h > 16 {
                        w = (w * 3 / 4) & !1;
                        h = (h * 3 / 4) & !1;
                    }
                }
                video(req, w, h, p.fps, p.duration_s, p.seed.unwrap_or(0), progress, cancel)
            }
            JobSpec::Lipsync(_) => {
                sleep(latency, cancel)?;
                let input = |n: &str| {
                    req.inputs
                        .get(n)
                        .ok_or_else(|| PipelineError::permanent(format!("lipsync input `{n}` was not fetched")))
                };
                let out = req.workdir.join("lipsync.mp4");
                media::mux(input("video")?, input("audio")?, &out, cancel, |f| progress.progress(f, "mux", None))?;
                Ok(vec![Artifact { name: "lipsync.mp4".into(), path: out, content_type: "video/mp4".into() }])
            }
        }
    }
}

const WORDS: &[&str] = &[
    "the", "lamp", "storm", "keeper", "light", "sea", "night", "waves", "harbor", "wind", "rope", "bell", "stone",
    "salt", "shadow", "signal", "ship", "tide", "glass", "fog", "north", "quiet", "burning", "cold", "far", "home",
];

fn llm(
    req: &RunRequest<'_>,
    prompt: &str,
    seed: Option<u64>,
    max_tokens: u32,
    latency: Duration,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<Vec<Artifact>, PipelineError> {
    let start = Instant::now();
    let mut rng = Rng::new(seed.unwrap_or(0) ^ text_seed(prompt));
    let per_token = latency / max_tokens.max(1);
    let mut text = String::new();
    for i in 0..max_tokens {
        if cancel.is_cancelled() {
            return Err(PipelineError::cancelled());
        }
        if !per_token.is_zero() {
            std::thread::sleep(per_token);
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
        let done = i + 1;
        let secs = start.elapsed().as_secs_f64().max(1e-6);
        progress.progress(
            done as f32 / max_tokens as f32,
            "inference",
            Some(format!("{done}/{max_tokens} tokens, {:.1} tok/s", done as f64 / secs)),
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    let body = serde_json::json!({
        "text": text,
        "model": "mock",
        "finish_reason": "length",
        "usage": {"prompt_tokens": prompt.split_whitespace().count(), "completion_tokens": max_tokens},
        "timings": {"generation_s": elapsed, "tokens_per_s": f64::from(max_tokens) / elapsed.max(1e-6)},
    });
    let path = req.workdir.join("completion.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&body).expect("json"))?;
    Ok(vec![Artifact { name: "completion.json".into(), path, content_type: "application/json".into() }])
}

fn audio(
    req: &RunRequest<'_>,
    text: &str,
    sample_rate: u32,
    duration_s: f64,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<Vec<Artifact>, PipelineError> {
    let path = req.workdir.join("audio.wav");
    let spec =
        hound::WavSpec { channels: 1, sample_rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let io = |e: hound::Error| PipelineError::retryable(format!("writing the WAV failed: {e}"));
    let mut writer = hound::WavWriter::create(&path, spec).map_err(io)?;
    let total = (duration_s * f64::from(sample_rate)).round() as u64;
    let words: Vec<u64> = text.split_whitespace().map(text_seed).collect();
    let per_word = (total / words.len().max(1) as u64).max(1);
    for n in 0..total {
        if n % u64::from(sample_rate) == 0 {
            if cancel.is_cancelled() {
                return Err(PipelineError::cancelled());
            }
            progress.progress(n as f32 / total as f32, "synthesis", None);
        }
        // One tone per word, with a short fade at word boundaries: speech-like rhythm, deterministic.
        let word = words.get((n / per_word) as usize).copied().unwrap_or(0);
        let freq = 140.0 + (word % 160) as f64;
        let pos = (n % per_word) as f64 / per_word as f64;
        let envelope = (pos * std::f64::consts::PI).sin();
        let t = n as f64 / f64::from(sample_rate);
        let sample = (t * freq * std::f64::consts::TAU).sin() * envelope * 0.4;
        writer.write_sample((sample * f64::from(i16::MAX)) as i16).map_err(io)?;
    }
    writer.finalize().map_err(io)?;
    Ok(vec![Artifact { name: "audio.wav".into(), path, content_type: "audio/wav".into() }])
}

#[allow(clippy::too_many_arguments)]
fn video(
    req: &RunRequest<'_>,
    width: u32,
    height: u32,
    fps: u32,
    duration_s: f64,
    seed: u64,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<Vec<Artifact>, PipelineError> {
    let background = match req.inputs.get("image") {
        Some(path) => Some(media::load_still(path, width, height)?),
        None => None,
    };
    let frames = ((duration_s * f64::from(fps)).round() as u64).max(1);
    let path = req.workdir.join("video.mp4");
    let clip = media::Clip { width, height, fps, frames, seed, background: background.as_ref() };
    let every = (frames / 20).max(1);
    media::encode_clip(&path, &clip, cancel, |done, total| {
        if done % every == 0 || done == total {
            progress.progress(done as f32 / total as f32, "encode", Some(format!("frame {done}/{total}")));
        }
    })?;
    Ok(vec![Artifact { name: "video.mp4".into(), path, content_type: "video/mp4".into() }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoProgress;
    use ainern2d_contract::parse_job;
    use std::collections::BTreeMap;
    use std::path::Path;

    fn examples() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("examples")
    }

    fn run(
        kind: JobKind,
        config: MockConfig,
        attempt: u32,
    ) -> (tempfile::TempDir, Result<Vec<Artifact>, PipelineError>) {
        let body = std::fs::read(examples().join(format!("jobs/{kind}.json"))).unwrap();
        let job = parse_job(&body).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let inputs: BTreeMap<_, _> =
            job.inputs.iter().map(|(k, v)| (k.clone(), examples().parent().unwrap().join(&v.0))).collect();
        let req = RunRequest { job: &job, attempt, inputs, workdir: dir.path().to_path_buf(), downgrade: None };
        let out = MockPipeline::new(kind, config).run_mock(&req, &NoProgress, &CancellationToken::new());
        (dir, out)
    }

    #[test]
    fn every_kind_produces_its_artifact() {
        for (kind, name, magic) in [
            (JobKind::Llm, "completion.json", &b"{"[..]),
            (JobKind::Audio, "audio.wav", b"RIFF"),
            (JobKind::Video, "video.mp4", b"ftyp"),
            (JobKind::Lipsync, "lipsync.mp4", b"ftyp"),
        ] {
            let (_dir, out) = run(kind, MockConfig::default(), 1);
            let artifacts = out.unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(artifacts.len(), 1);
            assert_eq!(artifacts[0].name, name);
            let bytes = std::fs::read(&artifacts[0].path).unwrap();
            assert!(bytes.windows(magic.len()).take(16).any(|w| w == magic), "{kind}: unexpected header");
        }
    }

    /// The MP4 has the requested frame size, rate and duration when read back by FFmpeg's demuxer.
    #[test]
    fn video_has_the_requested_size_and_duration() {
        let (_dir, out) = run(JobKind::Video, MockConfig::default(), 1);
        let path = &out.unwrap()[0].path;
        let ictx = ffmpeg_next::format::input(path).unwrap();
        let stream = ictx.streams().best(ffmpeg_next::media::Type::Video).unwrap();
        let decoder = ffmpeg_next::codec::context::Context::from_parameters(stream.parameters())
            .unwrap()
            .decoder()
            .video()
            .unwrap();
        // examples/jobs/video.json asks for 320x240 at 12 fps for 2.0 s.
        assert_eq!((decoder.width(), decoder.height()), (320, 240));
        assert_eq!(stream.avg_frame_rate(), ffmpeg_next::Rational(12, 1));
        let seconds = stream.duration() as f64 * f64::from(stream.time_base());
        assert!((seconds - 2.0).abs() < 1e-6, "duration {seconds}");
        assert_eq!(decoder.id(), ffmpeg_next::codec::Id::H264);
    }

    #[test]
    fn outputs_are_deterministic() {
        let (_a, a) = run(JobKind::Llm, MockConfig::default(), 1);
        let (_b, b) = run(JobKind::Llm, MockConfig::default(), 1);
        let text = |r: Result<Vec<Artifact>, PipelineError>| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&r.unwrap()[0].path).unwrap()).unwrap();
            v["text"].as_str().unwrap().to_string()
        };
        assert_eq!(text(a), text(b));
    }

    #[test]
    fn faults_are_injected_and_limited_to_early_attempts() {
        let config =
            MockConfig { failure_rate: 1.0, failure: FaultKind::Permanent, fault_attempts: 1, ..MockConfig::default() };
        let (_d, first) = run(JobKind::Audio, config.clone(), 1);
        assert_eq!(first.unwrap_err().kind, PipelineErrorKind::Permanent);
        let (_d, second) = run(JobKind::Audio, config, 2);
        assert!(second.is_ok());
    }

    #[test]
    fn corrupt_media_is_a_permanent_error() {
        let body = std::fs::read(examples().join("jobs/lipsync.json")).unwrap();
        let job = parse_job(&body).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.mp4");
        std::fs::write(&junk, b"this is not a video").unwrap();
        let inputs = BTreeMap::from([("video".to_string(), junk.clone()), ("audio".to_string(), junk)]);
        let req = RunRequest { job: &job, attempt: 1, inputs, workdir: dir.path().to_path_buf(), downgrade: None };
        let err = MockPipeline::new(JobKind::Lipsync, MockConfig::default())
            .run_mock(&req, &NoProgress, &CancellationToken::new())
            .unwrap_err();
        assert_eq!(err.kind, PipelineErrorKind::Permanent, "{err}");
        assert!(err.message.contains("cannot be read"), "{err}");
    }

    #[test]
    fn cancellation_stops_a_hang() {
        let config = MockConfig { hang_rate: 1.0, ..MockConfig::default() };
        let body = std::fs::read(examples().join("jobs/llm.json")).unwrap();
        let job = parse_job(&body).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let req = RunRequest {
            job: &job,
            attempt: 1,
            inputs: BTreeMap::new(),
            workdir: dir.path().to_path_buf(),
            downgrade: None,
        };
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c2.cancel();
        });
        let err = MockPipeline::new(JobKind::Llm, config).run_mock(&req, &NoProgress, &cancel).unwrap_err();
        assert_eq!(err.kind, PipelineErrorKind::Cancelled);
    }
}
