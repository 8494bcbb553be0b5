//! The `lipsync` pipeline on a Wav2Lip-compatible ONNX model. Inputs are checked before heavy work
//! (container, size, frame count, audio length), then:
//! 1. the audio → 16 kHz mono → Wav2Lip's mel spectrogram → one 16-frame mel window per output frame;
//! 2. faces: the job's `face_box`, or the manifest's detector on every frame (decoded once, only boxes
//!    kept), padded, gaps filled and smoothed over 5 frames;
//! 3. frames decoded again and streamed through the model in batches: each face crop (lower half masked,
//!    plus the crop itself as the reference, BGR in [0, 1]) with its mel window → the new face pasted back
//!    into its box → H.264; memory stays bounded by the batch, not the clip;
//! 4. the input audio muxed as AAC.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ainern2d_contract::{Job, JobKind, JobSpec, LipsyncParams};
use ainern2d_models::{ModelKind, ModelSpec, Models};
use ort::value::Tensor;
use tokio_util::sync::CancellationToken;

use super::face::{self, Detector, FaceBox, Pads};
use super::frames::{self, Limits, VideoInfo};
use super::image::{self, PixelBox};
use super::writer::VideoWriter;
use super::{LipsyncConfig, audio, mel};
use crate::error::PipelineError;
use crate::llm::model_error;
use crate::onnx::{self, OnnxConfig, OnnxModel};
use crate::{Artifact, Execution, Pipeline, ProgressSink, RunOutput, RunRequest, media};

/// Frames averaged when smoothing face boxes (Wav2Lip's `T`).
const SMOOTH_WINDOW: usize = 5;
/// The most frames decoded frames held for one batch, in bytes.
const BATCH_FRAME_BYTES: usize = 512 * 1024 * 1024;

/// Where the time of one job went (the benchmark reports it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    pub decode: Duration,
    pub detect: Duration,
    /// Face crops, masks and model inputs, and pasting the new faces back.
    pub compose: Duration,
    /// The model's calls alone.
    pub inference: Duration,
    pub encode: Duration,
}

#[derive(Debug, Clone)]
pub struct LipsyncPipeline {
    models: Arc<Models>,
    onnx: OnnxConfig,
    config: LipsyncConfig,
}

/// The model's input and output names and its face size.
struct Io {
    mel: String,
    face: String,
    output: String,
    size: u32,
}

impl Io {
    fn of(spec: &ModelSpec, model: &OnnxModel) -> Result<Io, PipelineError> {
        let role = |r: &str, default: &str| spec.io.get(r).cloned().unwrap_or_else(|| default.to_string());
        let output = spec.io.get("output").cloned().or_else(|| model.outputs.first().map(|p| p.name.clone()));
        let io = Io {
            mel: role("mel", "mel_spectrogram"),
            face: role("face", "video_frames"),
            output: output.unwrap_or_default(),
            size: spec.image_size.unwrap_or(96),
        };
        model.expect_io(&[&io.mel, &io.face], &[&io.output]).map_err(|e| {
            PipelineError::permanent(format!("lipsync model `{}` {e} (set io.* in the manifest)", model.name))
        })?;
        Ok(io)
    }
}

impl LipsyncPipeline {
    pub fn new(models: Arc<Models>, onnx: OnnxConfig, config: LipsyncConfig) -> Self {
        LipsyncPipeline { models, onnx, config }
    }

    /// The model a job runs: its `model`, else the manifest's `default_lipsync`, else the only one.
    pub fn choose_model(&self, params: &LipsyncParams) -> Result<String, PipelineError> {
        self.models.manifest.choose(ModelKind::Lipsync, params.model.as_deref()).map_err(PipelineError::permanent)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_width: self.config.max_width,
            max_height: self.config.max_height,
            max_frames: self.config.max_frames,
        }
    }

    /// Frames per model call: what the memory budget left over allows (`lipsync.mb_per_frame` each), capped
    /// by the manifest's `batch_size` (default 128) and a downgrade profile.
    fn batch_size(&self, spec: &ModelSpec, cap: Option<u32>, frame_bytes: usize) -> usize {
        let cache = &self.models.cache;
        let key = &self.models.device_key;
        let resident: u64 = cache.resident().iter().filter(|r| &r.device == key).map(|r| r.bytes).sum();
        let free = cache.budget(key).saturating_sub(resident);
        let by_memory = (free / (self.config.mb_per_frame * 1024 * 1024)).max(1) as usize;
        let by_frames = (BATCH_FRAME_BYTES / frame_bytes.max(1)).max(1);
        let configured = spec.batch_size.unwrap_or(128) as usize;
        let capped = cap.map_or(configured, |c| configured.min(c.max(1) as usize));
        capped.min(by_memory).min(by_frames).max(1)
    }

    #[allow(clippy::too_many_arguments)]
    fn boxes(
        &self,
        params: &LipsyncParams,
        spec: &ModelSpec,
        video: &std::path::Path,
        info: &VideoInfo,
        frames: u64,
        progress: &dyn ProgressSink,
        cancel: &CancellationToken,
        timings: &mut Timings,
    ) -> Result<(Vec<FaceBox>, Option<Arc<OnnxModel>>), PipelineError> {
        let (w, h) = (info.width, info.height);
        if let Some([x1, y1, x2, y2]) = params.face_box {
            if x2 > w || y2 > h {
                return Err(PipelineError::permanent(format!(
                    "params.face_box [{x1}, {y1}, {x2}, {y2}] is outside the {w}x{h} video"
                )));
            }
            let b = FaceBox { x1: x1 as f32, y1: y1 as f32, x2: x2 as f32, y2: y2 as f32, score: 1.0 };
            return Ok((vec![b; frames as usize], None));
        }
        let Some(detector_name) = &spec.detector else {
            return Err(PipelineError::permanent(
                "the job gives no params.face_box and the lipsync model has no `detector` in the manifest",
            ));
        };
        let (model, _) = onnx::load_cached(&self.models, &self.onnx, detector_name, &|| cancel.is_cancelled())?;
        let detector = Detector::new(model.clone())?;
        let decode_frames = if info.still { 1 } else { frames };
        let mut found = Vec::with_capacity(decode_frames as usize);
        let every = (decode_frames / 20).max(1);
        let started = Instant::now();
        frames::decode_rgb(video, &self.limits(), decode_frames, |i, rgb, fw, fh| {
            if cancel.is_cancelled() {
                return Err(PipelineError::cancelled());
            }
            let t = Instant::now();
            found.push(face::main_face(&detector.detect(rgb, fw, fh)?));
            timings.detect += t.elapsed();
            if (i + 1) % every == 0 {
                let fraction = 0.3 * (i + 1) as f32 / decode_frames as f32;
                progress.progress(fraction, "detect", Some(format!("frame {}/{decode_frames}", i + 1)));
            }
            Ok(())
        })?;
        timings.decode += started.elapsed().saturating_sub(timings.detect);
        let pads = params.pads.map_or(Pads::default(), |[top, bottom, left, right]| Pads { top, bottom, left, right });
        let window = if params.smooth.unwrap_or(true) { SMOOTH_WINDOW } else { 1 };
        let mut boxes = face::track(&found, pads, w, h, window)?;
        if info.still {
            boxes = vec![boxes[0]; frames as usize];
        }
        Ok((boxes, Some(model)))
    }
}

impl Pipeline for LipsyncPipeline {
    fn kind(&self) -> JobKind {
        JobKind::Lipsync
    }

    fn backend(&self) -> &'static str {
        "onnxruntime"
    }

    fn output_names(&self, _job: &Job) -> Vec<String> {
        vec!["lipsync.mp4".to_string()]
    }

    fn warm_up(&self) -> Result<(), PipelineError> {
        onnx::runtime(&self.onnx).map_err(PipelineError::permanent)?;
        for name in &self.models.manifest.warm {
            if self.models.spec(name).is_ok_and(|s| matches!(s.kind, ModelKind::Lipsync | ModelKind::Face)) {
                onnx::load_cached(&self.models, &self.onnx, name, &|| false)?;
            }
        }
        Ok(())
    }

    fn run(
        &self,
        req: &RunRequest<'_>,
        progress: &dyn ProgressSink,
        cancel: &CancellationToken,
    ) -> Result<RunOutput, PipelineError> {
        self.run_timed(req, progress, cancel).map(|(output, _)| output)
    }
}

impl LipsyncPipeline {
    /// [`Pipeline::run`], and where its time went (the benchmark reports it).
    pub fn run_timed(
        &self,
        req: &RunRequest<'_>,
        progress: &dyn ProgressSink,
        cancel: &CancellationToken,
    ) -> Result<(RunOutput, Timings), PipelineError> {
        let JobSpec::Lipsync(params) = &req.job.spec else {
            return Err(PipelineError::permanent(format!("lipsync pipeline given a {} job", req.job.kind())));
        };
        let input = |n: &str| {
            req.inputs.get(n).ok_or_else(|| PipelineError::permanent(format!("lipsync input `{n}` was not fetched")))
        };
        let (video, audio_in) = (input("video")?, input("audio")?);
        let mut timings = Timings::default();
        // Everything that can be refused is refused before a model loads.
        let info = frames::probe(video, &self.limits())?;
        let fps = if info.still { f64::from(params.fps.unwrap_or(25)) } else { info.fps };
        let samples = audio::decode_16k_mono(audio_in, self.config.max_audio_s, cancel)?;
        let mel = mel::wav2lip(&samples);
        let starts = mel.chunk_starts(fps).map_err(|e| PipelineError::permanent(format!("input audio: {e}")))?;
        let frames = starts.len() as u64;
        if frames > self.config.max_frames {
            return Err(PipelineError::permanent(format!(
                "the audio asks for {frames} frames; this worker makes at most {} (lipsync.max_frames)",
                self.config.max_frames
            )));
        }
        if !info.still
            && let Some(available) = info.frame_estimate()
            && frames > available + 1
        {
            return Err(PipelineError::permanent(format!(
                "the audio is {:.2} s but the video is {:.2} s ({available} frames at {fps:.2} fps): a lip-synced \
                 video cannot be longer than its input video",
                samples.len() as f64 / f64::from(mel::SAMPLE_RATE),
                available as f64 / fps
            )));
        }
        let name = self.choose_model(params)?;
        let spec = self.models.spec(&name).map_err(model_error)?;
        progress.progress(0.0, "load", Some(format!("model {name}")));
        let (model, _) = onnx::load_cached(&self.models, &self.onnx, &name, &|| cancel.is_cancelled())?;
        let io = Io::of(spec, &model)?;
        let (boxes, detector) = self.boxes(params, spec, video, &info, frames, progress, cancel, &mut timings)?;
        let (w, h) = (info.width, info.height);
        let frame_bytes = (w * h * 3) as usize;
        let batch = self.batch_size(spec, req.downgrade.and_then(|d| d.lipsync_max_batch), frame_bytes);

        let silent = req.workdir.join("frames.mp4");
        let comment =
            format!("ainern2d onnxruntime model={name} provider={} device={}", model.provider_name(), model.device());
        let mut writer =
            VideoWriter::create(&silent, w, h, ffmpeg_next::Rational::from(fps), &[("comment", &comment)])?;
        let mut run = Batcher::new(&model, &io, batch);
        let total_batches = frames.div_ceil(batch as u64);
        let started = Instant::now();
        let mut still: Option<Vec<u8>> = None;
        let mut step = |i: u64, rgb: &[u8], timings: &mut Timings| -> Result<(), PipelineError> {
            if cancel.is_cancelled() {
                return Err(PipelineError::cancelled());
            }
            let b = boxes[i as usize];
            let pb = PixelBox::clamped([b.x1, b.y1, b.x2, b.y2], w, h)
                .ok_or_else(|| PipelineError::permanent(format!("the face box of frame {i} is empty")))?;
            let t = Instant::now();
            let mut chunk = vec![0.0; mel::CHUNK_LEN];
            mel.write_chunk(starts[i as usize], &mut chunk);
            run.push(rgb.to_vec(), pb, w, &chunk);
            timings.compose += t.elapsed();
            if run.full() || i + 1 == frames {
                let t = Instant::now();
                let (done, model_s) = run.flush(w)?;
                timings.inference += model_s;
                timings.compose += t.elapsed().saturating_sub(model_s);
                let t = Instant::now();
                for f in done {
                    writer.write(&f)?;
                }
                timings.encode += t.elapsed();
                let n = writer.frames().div_ceil(batch as u64);
                progress.progress(
                    0.3 + 0.65 * writer.frames() as f32 / frames as f32,
                    "inference",
                    Some(format!("batch {n}/{total_batches}")),
                );
            }
            Ok(())
        };
        if info.still {
            frames::decode_rgb(video, &self.limits(), 1, |_, rgb, _, _| {
                still = Some(rgb.to_vec());
                Ok(())
            })?;
            let rgb = still.take().ok_or_else(|| PipelineError::permanent("the input image has no picture"))?;
            for i in 0..frames {
                step(i, &rgb, &mut timings)?;
            }
        } else {
            frames::decode_rgb(video, &self.limits(), frames, |i, rgb, _, _| step(i, rgb, &mut timings))?;
        }
        let written = writer.finish()?;
        if written != frames {
            return Err(PipelineError::permanent(format!(
                "the input video ended after {written} of the {frames} frames the audio needs"
            )));
        }
        let elapsed = started.elapsed();
        timings.decode += elapsed.saturating_sub(timings.compose + timings.inference + timings.encode);
        progress.progress(0.95, "mux", None);
        let out = req.workdir.join("lipsync.mp4");
        let t = Instant::now();
        media::mux(&silent, audio_in, &out, cancel, |_| {})?;
        timings.encode += t.elapsed();
        let _ = std::fs::remove_file(&silent);
        tracing::info!(
            job_id = %req.job.job_id, model = %name, provider = model.provider_name(), frames, batch,
            detector = detector.as_ref().map(|d| d.name.as_str()), decode_s = timings.decode.as_secs_f64(),
            detect_s = timings.detect.as_secs_f64(), compose_s = timings.compose.as_secs_f64(), inference_s = timings.inference.as_secs_f64(),
            encode_s = timings.encode.as_secs_f64(), "lip-sync finished"
        );
        let output = RunOutput {
            artifacts: vec![Artifact { name: "lipsync.mp4".into(), path: out, content_type: "video/mp4".into() }],
            execution: Execution {
                backend: "onnxruntime".into(),
                model: Some(name),
                device: Some(model.device().to_string()),
                execution_provider: Some(model.provider_name().to_string()),
                duration_s: Some(frames as f64 / fps),
                sample_rate: None,
                frames: Some(frames),
            },
        };
        Ok((output, timings))
    }
}

/// Frames waiting for one model call: their pixels, boxes and the model's two inputs.
struct Batcher<'a> {
    model: &'a OnnxModel,
    io: &'a Io,
    capacity: usize,
    frames: Vec<(Vec<u8>, PixelBox)>,
    faces: Vec<f32>,
    mels: Vec<f32>,
}

impl<'a> Batcher<'a> {
    fn new(model: &'a OnnxModel, io: &'a Io, capacity: usize) -> Self {
        Batcher { model, io, capacity, frames: Vec::new(), faces: Vec::new(), mels: Vec::new() }
    }

    fn full(&self) -> bool {
        self.frames.len() >= self.capacity
    }

    /// Adds a frame: the masked crop (lower half black) then the crop itself, 6 planes of size².
    fn push(&mut self, rgb: Vec<u8>, b: PixelBox, width: u32, mel_chunk: &[f32]) {
        let s = self.io.size as usize;
        let plane = s * s;
        let at = self.faces.len();
        self.faces.resize(at + 6 * plane, 0.0);
        let (masked, reference) = self.faces[at..].split_at_mut(3 * plane);
        image::crop_to_bgr(&rgb, width, b, self.io.size, reference);
        for c in 0..3 {
            let src = &reference[c * plane..(c + 1) * plane];
            let dst = &mut masked[c * plane..(c + 1) * plane];
            dst[..plane / 2].copy_from_slice(&src[..plane / 2]);
        }
        self.mels.extend_from_slice(mel_chunk);
        self.frames.push((rgb, b));
    }

    /// Runs the model on what is waiting and returns the frames with their new faces, in order, and the
    /// time the model call took.
    fn flush(&mut self, width: u32) -> Result<(Vec<Vec<u8>>, Duration), PipelineError> {
        let n = self.frames.len();
        let s = self.io.size as usize;
        let failed = |e: ort::Error| PipelineError::inference(format!("lipsync model `{}`: {e}", self.model.name));
        let faces = Tensor::from_array(([n, 6, s, s], std::mem::take(&mut self.faces))).map_err(failed)?;
        let mels = Tensor::from_array(([n, 1, mel::BANDS, mel::CHUNK_FRAMES], std::mem::take(&mut self.mels)))
            .map_err(failed)?;
        let mut session = self.model.session();
        let started = Instant::now();
        let outputs =
            session.run(ort::inputs![self.io.mel.as_str() => mels, self.io.face.as_str() => faces]).map_err(failed)?;
        let model_s = started.elapsed();
        let (shape, data) = outputs[self.io.output.as_str()].try_extract_tensor::<f32>().map_err(failed)?;
        let want = [n as i64, 3, s as i64, s as i64];
        if shape.iter().copied().collect::<Vec<_>>() != want {
            return Err(PipelineError::permanent(format!(
                "lipsync model `{}` returned {shape:?}, expected {want:?}",
                self.model.name
            )));
        }
        if let Some(bad) = data.iter().position(|v| !v.is_finite()) {
            return Err(PipelineError::permanent(format!(
                "lipsync model `{}` produced a non-finite value (at {bad}): the model is broken",
                self.model.name
            )));
        }
        let per = 3 * s * s;
        let frames = std::mem::take(&mut self.frames)
            .into_iter()
            .enumerate()
            .map(|(k, (mut rgb, b))| {
                image::paste_bgr(&data[k * per..(k + 1) * per], self.io.size, &mut rgb, width, b);
                rgb
            })
            .collect();
        Ok((frames, model_s))
    }
}
