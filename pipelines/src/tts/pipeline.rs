//! The `audio` pipeline on Piper voices: text → sentences and clauses → espeak-ng IPA phonemes (with the
//! clause punctuation put back) → ids → the voice's ONNX model, one sentence per call, with a `progress`
//! report per sentence and silence between sentences → WAV, Opus, AAC or MP3.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ainern2d_contract::{AudioParams, Job, JobKind, JobSpec};
use ainern2d_models::{ModelError, ModelKind, Models};
use ort::value::Tensor;
use tokio_util::sync::CancellationToken;

use super::espeak::Espeak;
use super::ids::{self, PhonemeIdMap};
use super::voice::{Speaker, VoiceConfig};
use super::{TtsConfig, text};
use crate::error::PipelineError;
use crate::llm::{model_error, named_model_error};
use crate::onnx::{self, OnnxConfig, OnnxModel};
use crate::{Artifact, Execution, Pipeline, ProgressSink, RunOutput, RunRequest, audio_out};

/// A voice ready to speak: its session and its config, checked against each other.
#[derive(Debug)]
pub struct Voice {
    pub model: OnnxModel,
    pub config: VoiceConfig,
    pub ids: PhonemeIdMap,
}

impl Voice {
    /// Checks that the config and the model belong together (inputs, output, speakers).
    fn check(model: OnnxModel, config: VoiceConfig) -> Result<Voice, String> {
        model.expect_io(&["input", "input_lengths", "scales"], &["output"])?;
        let has_sid = model.input("sid").is_some();
        if config.num_speakers > 1 && !has_sid {
            return Err(format!(
                "{} says {} speakers but the model has no `sid` input: the config does not belong to this model",
                config.origin, config.num_speakers
            ));
        }
        if config.num_speakers <= 1 && has_sid {
            return Err(format!(
                "the model takes a speaker (`sid`) but {} says it has one speaker: the config does not belong to \
                 this model",
                config.origin
            ));
        }
        let ids = PhonemeIdMap::new(&config)?;
        Ok(Voice { model, config, ids })
    }
}

/// Where the time of one synthesis went (the benchmark reports it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    pub phonemize: Duration,
    pub inference: Duration,
    pub encode: Duration,
}

/// What [`TtsPipeline::synthesize`] produced.
#[derive(Debug)]
pub struct Speech {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    pub sentences: usize,
    pub phonemes: usize,
    /// Phonemes the voice has no id for, skipped, by phoneme.
    pub unknown: BTreeMap<char, usize>,
    pub timings: Timings,
}

#[derive(Debug, Clone)]
pub struct TtsPipeline {
    models: Arc<Models>,
    onnx: OnnxConfig,
    config: TtsConfig,
}

impl TtsPipeline {
    pub fn new(models: Arc<Models>, onnx: OnnxConfig, config: TtsConfig) -> Self {
        TtsPipeline { models, onnx, config }
    }

    /// The voice a job speaks with: its `voice`, else the manifest's `default_tts`, else the only voice.
    pub fn choose_voice(&self, params: &AudioParams) -> Result<String, PipelineError> {
        self.models.manifest.choose(ModelKind::Tts, params.voice.as_deref()).map_err(PipelineError::permanent)
    }

    /// The voice `name` from the warm-model cache (loading it on a miss). Returns whether it was loaded.
    pub fn load(&self, name: &str, cancelled: &(dyn Fn() -> bool + Sync)) -> Result<(Arc<Voice>, bool), PipelineError> {
        let models = &self.models;
        let spec = models.spec(name).map_err(model_error)?;
        let config_file = spec.config_file().expect("a tts model has a source");
        let config_path =
            models.local_path_until(&config_file, cancelled).map_err(|e| named_model_error(models, name, true, e))?;
        onnx::load_cached_with(models, &self.onnx, name, cancelled, |model| {
            let config = VoiceConfig::load(&config_path)
                .map_err(|message| ModelError::Load { name: name.to_string(), message })?;
            Voice::check(model, config).map_err(|message| ModelError::Load { name: name.to_string(), message })
        })
    }

    /// Speaks `params.text` with `voice`: sentence by sentence, `progress` after each.
    pub fn synthesize(
        &self,
        voice: &Voice,
        params: &AudioParams,
        progress: &dyn ProgressSink,
        cancel: &CancellationToken,
    ) -> Result<Speech, PipelineError> {
        let chars = params.text.chars().count();
        if chars > self.config.max_chars {
            return Err(PipelineError::permanent(format!(
                "params.text is {chars} characters; this worker speaks at most {} per job (tts.max_chars)",
                self.config.max_chars
            )));
        }
        let espeak = Espeak::open(self.config.espeak_library.as_deref(), self.config.espeak_data.as_deref())
            .map_err(PipelineError::permanent)?;
        let cfg = &voice.config;
        let speaker = params.speaker.as_ref().map(|s| match s {
            ainern2d_contract::Speaker::Id(id) => Speaker::Id(*id),
            ainern2d_contract::Speaker::Name(n) => Speaker::Name(n.clone()),
        });
        let sid = cfg.speaker_id(speaker.as_ref()).map_err(|e| field_error("speaker", e))?;
        let length_scale = cfg.inference.length_scale / params.speed.unwrap_or(1.0);
        let scales = [
            params.noise_scale.unwrap_or(cfg.inference.noise_scale),
            length_scale,
            params.noise_w.unwrap_or(cfg.inference.noise_w),
        ];
        let rate = cfg.audio.sample_rate;
        let silence_s = params.sentence_silence_s.unwrap_or(self.config.sentence_silence_s);
        let silence = (f64::from(silence_s) * f64::from(rate)).round() as usize;
        let sentences = text::sentences(&params.text);
        if sentences.is_empty() {
            return Err(field_error("text", "has nothing to speak (no letters or digits)".into()));
        }
        let mut speech = Speech {
            samples: Vec::new(),
            sample_rate: rate,
            sentences: sentences.len(),
            phonemes: 0,
            unknown: BTreeMap::new(),
            timings: Timings::default(),
        };
        let total = sentences.len();
        for (i, sentence) in sentences.iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(PipelineError::cancelled());
            }
            let started = Instant::now();
            let phonemes =
                ids::sentence_phonemes(espeak, &cfg.espeak.voice, sentence).map_err(PipelineError::permanent)?;
            let mapped = voice.ids.ids(&phonemes);
            speech.timings.phonemize += started.elapsed();
            for (p, n) in &mapped.unknown {
                *speech.unknown.entry(*p).or_default() += n;
            }
            speech.phonemes += mapped.phonemes;
            if mapped.ids.len() <= 3 {
                continue; // nothing the voice knows how to say
            }
            let started = Instant::now();
            let audio = self.infer(voice, &mapped.ids, scales, sid)?;
            speech.timings.inference += started.elapsed();
            if let Some(bad) = audio.iter().position(|s| !s.is_finite()) {
                return Err(PipelineError::permanent(format!(
                    "voice `{}` produced a non-finite sample (at {bad} of sentence {}): the model is broken",
                    voice.model.name,
                    i + 1
                )));
            }
            if i > 0 && !speech.samples.is_empty() {
                speech.samples.resize(speech.samples.len() + silence, 0.0);
            }
            speech.samples.extend_from_slice(&audio);
            progress.progress((i + 1) as f32 / total as f32, "synthesis", Some(format!("sentence {}/{total}", i + 1)));
        }
        let peak = speech.samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        if peak < 1e-4 {
            return Err(PipelineError::permanent(format!(
                "voice `{}` produced silence for this text ({} samples, peak {peak:.1e})",
                voice.model.name,
                speech.samples.len()
            )));
        }
        if !speech.unknown.is_empty() {
            tracing::warn!(voice = %voice.model.name, unknown = ?speech.unknown, "phonemes the voice has no id for were skipped");
        }
        Ok(speech)
    }

    /// One model call: ids → samples.
    fn infer(&self, voice: &Voice, ids: &[i64], scales: [f32; 3], sid: Option<i64>) -> Result<Vec<f32>, PipelineError> {
        let failed =
            |e: ort::Error| PipelineError::inference(format!("voice `{}`: inference failed: {e}", voice.model.name));
        let n = ids.len();
        let input = Tensor::from_array(([1usize, n], ids.to_vec())).map_err(failed)?;
        let lengths = Tensor::from_array(([1usize], vec![n as i64])).map_err(failed)?;
        let scales = Tensor::from_array(([3usize], scales.to_vec())).map_err(failed)?;
        let mut session = voice.model.session();
        let outputs = match sid {
            Some(sid) => {
                let sid = Tensor::from_array(([1usize], vec![sid])).map_err(failed)?;
                session
                    .run(ort::inputs!["input" => input, "input_lengths" => lengths, "scales" => scales, "sid" => sid])
            }
            None => session.run(ort::inputs!["input" => input, "input_lengths" => lengths, "scales" => scales]),
        }
        .map_err(failed)?;
        let (_, samples) = outputs["output"].try_extract_tensor::<f32>().map_err(failed)?;
        Ok(samples.to_vec())
    }
}

fn field_error(field: &str, message: String) -> PipelineError {
    PipelineError::permanent(format!("params.{field}: {message}"))
}

impl Pipeline for TtsPipeline {
    fn kind(&self) -> JobKind {
        JobKind::Audio
    }

    fn backend(&self) -> &'static str {
        "onnxruntime"
    }

    fn output_names(&self, job: &Job) -> Vec<String> {
        match &job.spec {
            JobSpec::Audio(p) => vec![p.format.file_name().to_string()],
            _ => Vec::new(),
        }
    }

    fn warm_up(&self) -> Result<(), PipelineError> {
        onnx::runtime(&self.onnx).map_err(PipelineError::permanent)?;
        Espeak::open(self.config.espeak_library.as_deref(), self.config.espeak_data.as_deref())
            .map_err(PipelineError::permanent)?;
        for name in &self.models.manifest.warm {
            if self.models.spec(name).is_ok_and(|s| s.kind == ModelKind::Tts) {
                self.load(name, &|| false)?;
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

impl TtsPipeline {
    /// [`Pipeline::run`], and where its time went (the benchmark reports it).
    pub fn run_timed(
        &self,
        req: &RunRequest<'_>,
        progress: &dyn ProgressSink,
        cancel: &CancellationToken,
    ) -> Result<(RunOutput, Timings), PipelineError> {
        let JobSpec::Audio(params) = &req.job.spec else {
            return Err(PipelineError::permanent(format!("audio pipeline given a {} job", req.job.kind())));
        };
        let name = self.choose_voice(params)?;
        progress.progress(0.0, "load", Some(format!("voice {name}")));
        let (voice, _hit) = self.load(&name, &|| cancel.is_cancelled())?;
        let mut speech = self.synthesize(&voice, params, progress, cancel)?;
        progress.progress(1.0, "encode", Some(format!("{:?}", params.format).to_lowercase()));
        let started = Instant::now();
        let file = params.format.file_name();
        let comment = format!(
            "ainern2d onnxruntime voice={name} provider={} device={}",
            voice.model.provider_name(),
            voice.model.device()
        );
        let encoded = audio_out::write_audio(
            &speech.samples,
            speech.sample_rate,
            params.sample_rate,
            params.format,
            &req.workdir.join(file),
            &[("comment", comment.as_str())],
        )?;
        speech.timings.encode = started.elapsed();
        tracing::info!(
            job_id = %req.job.job_id, voice = %name, provider = voice.model.provider_name(),
            sentences = speech.sentences, phonemes = speech.phonemes, duration_s = encoded.duration_s,
            phonemize_s = speech.timings.phonemize.as_secs_f64(), inference_s = speech.timings.inference.as_secs_f64(),
            encode_s = speech.timings.encode.as_secs_f64(), "speech synthesized"
        );
        let output = RunOutput {
            artifacts: vec![Artifact {
                name: file.to_string(),
                path: encoded.path.clone(),
                content_type: params.format.content_type().to_string(),
            }],
            execution: Execution {
                backend: "onnxruntime".into(),
                model: Some(name),
                device: Some(voice.model.device().to_string()),
                execution_provider: Some(voice.model.provider_name().to_string()),
                duration_s: Some(encoded.duration_s),
                sample_rate: Some(encoded.sample_rate),
                frames: None,
            },
        };
        Ok((output, speech.timings))
    }
}
