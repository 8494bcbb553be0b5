//! The lip-sync mel spectrogram against golden values from an independent numpy/librosa implementation
//! (`scripts/fixtures/mel_golden.py`), on deterministic signals written as 16-bit WAV that both sides
//! read, so quantisation is the same: every value within 1e-3, the window starts identical.
//!
//! Needs a Python with numpy, scipy and librosa: `AINERN2D_TEST_PYTHON`, by default
//! `/tmp/ainern2d-services/py/bin/python`. Without it the test fails and says how to install it.

use std::path::{Path, PathBuf};
use std::process::Command;

use ainern2d_pipelines::lipsync::mel::{self, MelError};

const DEFAULT_PYTHON: &str = "/tmp/ainern2d-services/py/bin/python";
const TOLERANCE: f64 = 1e-3;
const FPS: [f64; 7] = [25.0, 30.0, 29.97, 24.0, 23.976, 60.0, 12.5];

fn python() -> PathBuf {
    let python = std::env::var_os("AINERN2D_TEST_PYTHON").map_or_else(|| PathBuf::from(DEFAULT_PYTHON), PathBuf::from);
    let probe = Command::new(&python).args(["-c", "import numpy, scipy, librosa"]).output();
    match probe {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "{} lacks numpy/scipy/librosa ({}): install them with `{0} -m pip install numpy scipy librosa`, \
             or point AINERN2D_TEST_PYTHON at a Python that has them",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run {} ({e}): `scripts/test.sh` installs it; or create it with `python3 -m venv \
             /tmp/ainern2d-services/py && /tmp/ainern2d-services/py/bin/pip install numpy scipy librosa`, or \
             set AINERN2D_TEST_PYTHON to a Python with numpy, scipy and librosa",
            python.display()
        ),
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fixtures/mel_golden.py")
}

/// splitmix64: a fixed, dependency-free noise source.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

/// A speech-like test signal: a chirp from 80 Hz to 6 kHz with two harmonics, under a syllable-rate
/// envelope, plus noise; a silent stretch reaches the spectrogram's floor (-4).
fn signal(len: usize, seed: u64) -> Vec<i16> {
    let mut rng = Rng(seed);
    let sr = f64::from(mel::SAMPLE_RATE);
    let duration = len as f64 / sr;
    let (f0, f1) = (80.0f64, 6000.0f64);
    let mut phase = 0.0f64;
    (0..len)
        .map(|n| {
            let t = n as f64 / sr;
            let f = f0 * (f1 / f0).powf(t / duration.max(1e-9));
            phase += 2.0 * std::f64::consts::PI * f / sr;
            let envelope = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * 4.0 * t).sin();
            let silent = (0.40..0.55).contains(&(t / duration.max(1e-9)));
            let tone = 0.45 * phase.sin() + 0.2 * (2.0 * phase).sin() + 0.1 * (3.0 * phase + 0.3).sin();
            let x = if silent { 0.0 } else { envelope * tone + 0.02 * rng.next_f64() };
            (x * 32767.0).round().clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

fn write_wav(path: &Path, samples: &[i16]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: mel::SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        writer.write_sample(s).unwrap();
    }
    writer.finalize().unwrap();
}

/// The samples as the Rust side reads them back from the WAV (the scaling librosa uses for 16-bit).
fn read_wav(path: &Path) -> Vec<f32> {
    let mut reader = hound::WavReader::open(path).unwrap();
    reader.samples::<i16>().map(|s| f32::from(s.unwrap()) / 32768.0).collect()
}

struct Golden {
    mel: Vec<Vec<f64>>,
    chunks: Vec<(f64, Option<Vec<usize>>)>,
}

fn golden(wav: &Path, dtype: &str) -> Golden {
    let out = wav.with_extension(format!("{dtype}.json"));
    let mut command = Command::new(python());
    command.arg(script()).arg(wav).arg(&out).args(["--dtype", dtype]);
    for fps in FPS {
        command.arg("--fps").arg(fps.to_string());
    }
    let result = command.output().unwrap();
    assert!(
        result.status.success(),
        "mel_golden.py failed on {}: {}",
        wav.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let mel = json["mel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect();
    let chunks = json["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let starts = c["starts"].as_array().map(|s| s.iter().map(|v| v.as_u64().unwrap() as usize).collect());
            (c["fps"].as_f64().unwrap(), starts)
        })
        .collect();
    Golden { mel, chunks }
}

/// The largest |Rust − golden| over the whole spectrogram, after checking the shapes agree.
fn max_difference(ours: &mel::MelSpectrogram, golden: &Golden) -> f64 {
    assert_eq!(golden.mel.len(), ours.bands(), "bands");
    let mut worst = 0.0f64;
    for (band, row) in golden.mel.iter().enumerate() {
        assert_eq!(row.len(), ours.frames(), "frames of band {band}");
        for (frame, &expected) in row.iter().enumerate() {
            worst = worst.max((f64::from(ours.get(band, frame)) - expected).abs());
        }
    }
    worst
}

/// Runs both sides on `len` samples and compares them; returns the spectrogram for further checks.
fn compare(name: &str, len: usize, seed: u64) -> mel::MelSpectrogram {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join(format!("{name}.wav"));
    write_wav(&wav, &signal(len, seed));
    let ours = mel::wav2lip(&read_wav(&wav));
    assert_eq!(ours.frames(), 1 + len / mel::HOP, "{name}: frames");

    let reference = golden(&wav, "float64");
    let difference = max_difference(&ours, &reference);
    eprintln!("{name}: {len} samples, {} frames, max |difference| vs librosa float64 {difference:.3e}", ours.frames());
    assert!(difference <= TOLERANCE, "{name}: max difference {difference} against librosa (float64)");
    assert_eq!(reference.chunks.len(), FPS.len());
    for (fps, expected) in &reference.chunks {
        match (ours.chunk_starts(*fps), expected) {
            (Ok(starts), Some(expected)) => assert_eq!(&starts, expected, "{name}: window starts at {fps} fps"),
            (Err(MelError::TooShort { .. }), None) => {}
            (got, expected) => panic!("{name} at {fps} fps: got {got:?}, golden {expected:?}"),
        }
    }
    ours
}

#[test]
fn a_few_seconds_match_librosa() {
    // Not a whole number of hops, so the last frame is a partial one reflected at the end.
    const LEN: usize = 4 * 16_000 + 4_321;
    let mel = compare("chirp", LEN, 7);
    // librosa's own default precision for float32 audio, for the record (and the same bound); once, as
    // each run of the script spends seconds importing librosa.
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("chirp.wav");
    write_wav(&wav, &signal(LEN, 7));
    let float32 = max_difference(&mel, &golden(&wav, "float32"));
    eprintln!("chirp: max |difference| vs librosa float32 {float32:.3e}");
    assert!(float32 <= TOLERANCE, "max difference {float32} against librosa (float32)");

    let values = mel.data();
    assert!(values.contains(&-4.0), "the silent stretch should reach the floor");
    assert!(values.iter().any(|&v| v > 1.0), "the loud parts should be well above the floor");
}

#[test]
fn exactly_one_window_matches_librosa() {
    let mel = compare("one-window", mel::MIN_SAMPLES, 11);
    assert_eq!(mel.frames(), mel::CHUNK_FRAMES);
    assert_eq!(mel.chunk_starts(25.0).unwrap(), vec![0, 0]);
}

#[test]
fn a_clip_shorter_than_the_padding_matches_librosa_and_is_refused_for_windows() {
    // 250 samples is shorter than the 400 reflected on each side: the reflection repeats.
    let mel = compare("tiny", 250, 13);
    assert_eq!(mel.frames(), 2);
    assert_eq!(mel.chunk_starts(25.0), Err(MelError::TooShort { frames: 2 }));
}

#[test]
fn a_minute_has_4801_frames_and_1497_windows_the_last_right_aligned() {
    let samples: Vec<f32> = signal(60 * 16_000, 3).iter().map(|&s| f32::from(s) / 32768.0).collect();
    let mel = mel::wav2lip(&samples);
    assert_eq!(mel.frames(), 4801);
    let starts = mel.chunk_starts(25.0).unwrap();
    // i · 3.2 ≤ 4785 for i in 0..=1495, then the right-aligned last window.
    assert_eq!(starts.len(), 1497);
    let mut window = vec![0.0; mel::CHUNK_LEN];
    mel.write_chunk(*starts.last().unwrap(), &mut window);
    assert_eq!(window[mel::CHUNK_FRAMES - 1], mel.get(0, mel.frames() - 1));
}
