//! `audio_out` tests: every format written, then read back with `ffprobe` (codec, rate, duration, tags).

use std::process::Command;

use serde_json::Value;

use super::*;

fn tone(seconds: f32, rate: u32) -> Vec<f32> {
    let n = (seconds * rate as f32) as usize;
    (0..n).map(|i| 0.5 * (i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin()).collect()
}

/// `ffprobe -show_format -show_streams` as JSON. ffprobe comes with FFmpeg, which this crate links.
fn probe(path: &Path) -> Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_format", "-show_streams", "-of", "json"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("ffprobe is needed for this test (apt-get install ffmpeg): {e}"));
    assert!(out.status.success(), "ffprobe {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A tag as ffprobe reports it: in the format's tags, or (Ogg keeps them in the stream's Vorbis comment) the
/// audio stream's.
fn tag(probe: &Value, key: &str) -> Option<String> {
    let format = probe["format"]["tags"][key].as_str();
    let stream = probe["streams"][0]["tags"][key].as_str();
    format.or(stream).map(str::to_string)
}

struct Case {
    format: AudioFormat,
    codec: &'static str,
    format_name: &'static str,
    rate: u32,
}

const TAGS: &[(&str, &str)] = &[("comment", "ainern2d onnxruntime voice=joe"), ("title", "Grüße, world")];

fn check(case: &Case, out_rate: Option<u32>) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join(case.format.file_name());
    let written = write_audio(&tone(1.0, 22050), 22050, out_rate, case.format, &dest, TAGS).unwrap();
    assert_eq!(written.path, dest);
    assert_eq!(written.format, case.format);
    assert_eq!(written.sample_rate, case.rate, "{:?}", case.format);
    assert!((written.duration_s - 1.0).abs() < 1e-3);
    assert_eq!(written.bytes, std::fs::metadata(&dest).unwrap().len());

    let p = probe(&dest);
    let stream = &p["streams"][0];
    assert_eq!(p["streams"].as_array().unwrap().len(), 1);
    assert_eq!(stream["codec_name"], case.codec, "{p}");
    assert_eq!(stream["channels"], 1, "{p}");
    assert_eq!(stream["sample_rate"].as_str().unwrap(), case.rate.to_string(), "{p}");
    assert!(p["format"]["format_name"].as_str().unwrap().contains(case.format_name), "{p}");
    let duration: f64 = p["format"]["duration"].as_str().unwrap().parse().unwrap();
    assert!((duration - 1.0).abs() < 0.08, "{:?}: ffprobe says {duration} s", case.format);
    for (key, value) in TAGS {
        assert_eq!(tag(&p, key).as_deref(), Some(*value), "{:?} tag {key}: {p}", case.format);
    }
}

const WAV: Case = Case { format: AudioFormat::Wav, codec: "pcm_s16le", format_name: "wav", rate: 22050 };
const OPUS: Case = Case { format: AudioFormat::Opus, codec: "opus", format_name: "ogg", rate: 48000 };
const AAC: Case = Case { format: AudioFormat::Aac, codec: "aac", format_name: "mp4", rate: 22050 };
const MP3: Case = Case { format: AudioFormat::Mp3, codec: "mp3", format_name: "mp3", rate: 22050 };

#[test]
fn wav_is_16_bit_pcm_with_info_tags() {
    check(&WAV, None);
}

#[test]
fn opus_decodes_at_48_khz() {
    check(&OPUS, None);
}

#[test]
fn aac_in_mp4() {
    check(&AAC, None);
}

#[test]
fn mp3() {
    check(&MP3, None);
}

#[test]
fn a_requested_rate_resamples() {
    check(&Case { rate: 16000, ..WAV }, Some(16000));
    check(&OPUS, Some(44100));
    check(&OPUS, Some(16000));
    check(&Case { rate: 44100, ..MP3 }, Some(44100));
    check(&Case { rate: 16000, ..AAC }, Some(16000));
}

#[test]
fn wav_samples_are_clipped_and_quantised_to_16_bits() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("clip.wav");
    write_audio(&[2.0, -2.0, 0.5, f32::NAN, 0.0, -0.25], 16000, None, AudioFormat::Wav, &dest, &[]).unwrap();
    let mut reader = hound::WavReader::open(&dest).unwrap();
    let spec = reader.spec();
    assert_eq!((spec.bits_per_sample, spec.channels, spec.sample_rate), (16, 1, 16000));
    assert_eq!(spec.sample_format, hound::SampleFormat::Int);
    let got: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    assert_eq!(got, vec![32767, -32768, 16384, 0, 0, -8192]);
}

#[test]
fn bad_requests_are_refused_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("x.wav");
    let e = write_audio(&[], 22050, None, AudioFormat::Wav, &dest, &[]).unwrap_err();
    assert!(e.message.contains("no audio samples"), "{e}");
    let e = write_audio(&[0.1], 22050, Some(0), AudioFormat::Wav, &dest, &[]).unwrap_err();
    assert!(e.message.contains("sample rate"), "{e}");
    let e = write_audio(&[0.1], 22050, None, AudioFormat::Wav, &dest, &[("encoder", "x")]).unwrap_err();
    assert!(e.message.contains("`encoder`") && e.message.contains("comment"), "{e}");
    assert_eq!(e.kind, crate::PipelineErrorKind::Permanent);
    let missing = dir.path().join("no/such/dir/x.mp3");
    let e = write_audio(&[0.1; 100], 22050, None, AudioFormat::Mp3, &missing, &[]).unwrap_err();
    assert!(e.message.contains("no/such/dir/x.mp3"), "{e}");
    assert!(!dest.exists() && !missing.exists());
}

#[test]
fn formats_have_names_extensions_and_content_types() {
    let parsed: Vec<AudioFormat> = serde_json::from_str(r#"["wav", "opus", "aac", "mp3"]"#).unwrap();
    assert_eq!(parsed, [AudioFormat::Wav, AudioFormat::Opus, AudioFormat::Aac, AudioFormat::Mp3]);
    assert!(serde_json::from_str::<AudioFormat>(r#""flac""#).is_err());
    let names: Vec<&str> = parsed.iter().map(|f| f.file_name()).collect();
    assert_eq!(names, ["audio.wav", "audio.opus", "audio.m4a", "audio.mp3"]);
    let types: Vec<&str> = parsed.iter().map(|f| f.content_type()).collect();
    assert_eq!(types, ["audio/wav", "audio/ogg", "audio/mp4", "audio/mpeg"]);
}

#[test]
fn nearest_rates() {
    let opus = Some(vec![48000, 24000, 16000, 12000, 8000]);
    assert_eq!(nearest_rate(opus.clone(), 22050), 24000);
    assert_eq!(nearest_rate(opus.clone(), 44100), 48000);
    assert_eq!(nearest_rate(opus.clone(), 14000), 16000);
    assert_eq!(nearest_rate(opus, 16000), 16000);
    assert_eq!(nearest_rate(None, 22050), 22050);
}
