//! The audio side of lip-sync: the mel spectrogram exactly as Wav2Lip computes it, and its 16-frame
//! windows, one per output video frame.
//!
//! Wav2Lip's hyper-parameters are fixed here, not configurable: a checkpoint was trained on exactly this
//! feature, and any other (another window, another padding, another normalisation) feeds the model
//! garbage that still looks like a spectrogram. The input is 16 kHz mono; resampling is the caller's job.
//!
//! The computation is done in `f64` and stored as `f32`; `tests/mel.rs` compares it with an independent
//! numpy/librosa implementation (`scripts/fixtures/mel_golden.py`).

use std::fmt;

use realfft::RealFftPlanner;

use crate::PipelineError;

/// The sample rate [`wav2lip`] assumes.
pub const SAMPLE_RATE: u32 = 16_000;
/// Mel bands (rows of the spectrogram).
pub const BANDS: usize = 80;
/// Samples between two frames: 80 mel frames per second at 16 kHz.
pub const HOP: usize = 200;
/// Mel frames per second of audio.
pub const FRAMES_PER_SECOND: f64 = SAMPLE_RATE as f64 / HOP as f64;
/// Mel frames in one model input window (`[1, 80, 16]`).
pub const CHUNK_FRAMES: usize = 16;
/// Values in one model input window.
pub const CHUNK_LEN: usize = BANDS * CHUNK_FRAMES;
/// The shortest audio that gives one full window: `1 + len / HOP >= CHUNK_FRAMES`.
pub const MIN_SAMPLES: usize = (CHUNK_FRAMES - 1) * HOP;

const N_FFT: usize = 800;
const BINS: usize = N_FFT / 2 + 1;
const PREEMPHASIS: f64 = 0.97;
const FMIN: f64 = 55.0;
const FMAX: f64 = 7600.0;
const REF_LEVEL_DB: f64 = 20.0;
const MIN_LEVEL_DB: f64 = -100.0;
const MAX_ABS: f64 = 4.0;
/// 10^(MIN_LEVEL_DB / 20): magnitudes below this are floored before the log.
const MIN_AMPLITUDE: f64 = 1e-5;

/// Why audio cannot be cut into model windows. Both are permanent for the job.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MelError {
    /// Fewer than [`CHUNK_FRAMES`] mel frames. Wav2Lip's own loop cuts a window narrower than 16 here,
    /// which the model cannot take; refusing is clearer than padding the audio with invented silence.
    #[error(
        "the audio gives {frames} mel frames; lip-sync needs at least {CHUNK_FRAMES} \
         ({MIN_SAMPLES} samples at 16 kHz, 0.1875 s): give a longer audio input"
    )]
    TooShort { frames: usize },
    #[error("the video frame rate {0} is not a positive finite number")]
    BadFps(f64),
}

impl From<MelError> for PipelineError {
    fn from(e: MelError) -> Self {
        PipelineError::permanent(e.to_string())
    }
}

/// A normalised log-mel spectrogram, `[bands, frames]` row-major, values in `[-4, 4]`.
#[derive(Clone, PartialEq)]
pub struct MelSpectrogram {
    bands: usize,
    frames: usize,
    data: Vec<f32>,
}

impl fmt::Debug for MelSpectrogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MelSpectrogram")
            .field("bands", &self.bands)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl MelSpectrogram {
    pub fn bands(&self) -> usize {
        self.bands
    }

    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Row-major `[bands, frames]`.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn get(&self, band: usize, frame: usize) -> f32 {
        assert!(band < self.bands && frame < self.frames, "mel index ({band}, {frame}) out of range");
        self.data[band * self.frames + frame]
    }

    /// The window starts for a video at `fps`; see [`chunk_starts`].
    pub fn chunk_starts(&self, fps: f64) -> Result<Vec<usize>, MelError> {
        chunk_starts(self.frames, fps)
    }

    /// Copies the window of [`CHUNK_FRAMES`] frames from `start` into `out`, laid out `[1, 80, 16]`
    /// (band-major) as the model's mel input expects.
    ///
    /// # Panics
    /// When the window runs past the last frame or `out` is not [`CHUNK_LEN`] long: starts come from
    /// [`chunk_starts`], so either is a bug in the caller.
    pub fn write_chunk(&self, start: usize, out: &mut [f32]) {
        assert!(
            self.frames.checked_sub(CHUNK_FRAMES).is_some_and(|last| start <= last),
            "mel window {start}..{} past the last frame ({})",
            start.saturating_add(CHUNK_FRAMES),
            self.frames
        );
        assert_eq!(out.len(), self.bands * CHUNK_FRAMES, "mel window buffer of the wrong length");
        for (band, row) in out.chunks_exact_mut(CHUNK_FRAMES).enumerate() {
            let from = band * self.frames + start;
            row.copy_from_slice(&self.data[from..from + CHUNK_FRAMES]);
        }
    }
}

/// Wav2Lip's mel spectrogram of `samples`, which must be 16 kHz mono (the function cannot check).
///
/// Pre-emphasis 0.97 (`y[0] = x[0]`), STFT with n_fft 800, hop 200, a periodic Hann window of 800,
/// centred with reflect padding (numpy's `reflect`, repeated when the clip is shorter than the pad),
/// magnitudes, 80 Slaney mel bands from 55 to 7600 Hz with Slaney area normalisation,
/// `20·log10(max(1e-5, m)) - 20` dB, then `clip(8·(dB + 100)/100 - 4, -4, 4)`.
/// There are `1 + len / 200` frames. Empty input is treated as one frame of silence (all `-4`).
pub fn wav2lip(samples: &[f32]) -> MelSpectrogram {
    let frames = 1 + samples.len() / HOP;
    let padded = preemphasised_and_padded(samples);
    let bank = FilterBank::slaney();
    let window = hann(N_FFT);

    let fft = RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT);
    let mut input = fft.make_input_vec();
    let mut spectrum = fft.make_output_vec();
    let mut scratch = fft.make_scratch_vec();
    let mut magnitude = vec![0.0f64; BINS];
    let mut data = vec![0.0f32; BANDS * frames];

    for frame in 0..frames {
        let segment = &padded[frame * HOP..frame * HOP + N_FFT];
        for ((x, &s), &w) in input.iter_mut().zip(segment).zip(&window) {
            *x = s * w;
        }
        fft.process_with_scratch(&mut input, &mut spectrum, &mut scratch)
            .expect("buffers come from the plan, so their lengths match");
        for (m, c) in magnitude.iter_mut().zip(&spectrum) {
            // Not `norm()`: its overflow-safe `hypot` is several times slower, and these cannot overflow.
            *m = (c.re * c.re + c.im * c.im).sqrt();
        }
        for (band, filter) in bank.bands.iter().enumerate() {
            let energy = filter.apply(&magnitude);
            data[band * frames + frame] = normalise(energy) as f32;
        }
    }
    MelSpectrogram { bands: BANDS, frames, data }
}

/// The start frame of every model window for a video at `fps`, as Wav2Lip's inference loop cuts them:
/// window `i` starts at `floor(i · (80 / fps))` (the product in `f64`, multiplier first, as Wav2Lip
/// computes it, so rounding matches) while it fits; then one last window right-aligned on the end
/// (`frames - 16`), even when it repeats the previous one. One window per output video frame; there are
/// about `frames · fps / 80 + 2` of them, so the caller bounds `fps` and the duration beforehand.
pub fn chunk_starts(frames: usize, fps: f64) -> Result<Vec<usize>, MelError> {
    if !(fps.is_finite() && fps > 0.0) {
        return Err(MelError::BadFps(fps));
    }
    if frames < CHUNK_FRAMES {
        return Err(MelError::TooShort { frames });
    }
    let last = frames - CHUNK_FRAMES;
    let step = FRAMES_PER_SECOND / fps;
    let mut starts = Vec::new();
    for i in 0u64.. {
        // Compared as f64 so that a huge step cannot overflow a cast.
        let start = (i as f64 * step).floor();
        if start > last as f64 {
            break;
        }
        starts.push(start as usize);
    }
    starts.push(last);
    Ok(starts)
}

fn normalise(energy: f64) -> f64 {
    let db = 20.0 * energy.max(MIN_AMPLITUDE).log10() - REF_LEVEL_DB;
    ((2.0 * MAX_ABS) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS).clamp(-MAX_ABS, MAX_ABS)
}

/// The pre-emphasised signal with `N_FFT / 2` reflected samples on each side.
fn preemphasised_and_padded(samples: &[f32]) -> Vec<f64> {
    let pad = N_FFT / 2;
    let n = samples.len();
    let mut out = vec![0.0f64; n + 2 * pad];
    let body = &mut out[pad..pad + n];
    let mut previous = 0.0f64;
    for (y, &x) in body.iter_mut().zip(samples) {
        let x = f64::from(x);
        *y = x - PREEMPHASIS * previous;
        previous = x;
    }
    if n == 0 {
        return out;
    }
    for i in (0..pad).chain(pad + n..n + 2 * pad) {
        out[i] = out[pad + reflect(i as i64 - pad as i64, n)];
    }
    out
}

/// numpy's `reflect` (the edge sample not repeated) extended periodically, as numpy does when the pad is
/// longer than the signal: period `2(n - 1)`.
fn reflect(j: i64, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as i64 - 1);
    let m = j.rem_euclid(period);
    if m >= n as i64 { (period - m) as usize } else { m as usize }
}

/// The periodic Hann window (`scipy.signal.get_window('hann', n, fftbins=True)`).
fn hann(n: usize) -> Vec<f64> {
    (0..n).map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()).collect()
}

/// Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
const LINEAR_HZ_PER_MEL: f64 = 200.0 / 3.0;
const LOG_BREAK_HZ: f64 = 1000.0;
const LOG_BREAK_MEL: f64 = LOG_BREAK_HZ / LINEAR_HZ_PER_MEL;

fn log_step() -> f64 {
    6.4f64.ln() / 27.0
}

fn hz_to_mel(hz: f64) -> f64 {
    if hz >= LOG_BREAK_HZ { LOG_BREAK_MEL + (hz / LOG_BREAK_HZ).ln() / log_step() } else { hz / LINEAR_HZ_PER_MEL }
}

fn mel_to_hz(mel: f64) -> f64 {
    if mel >= LOG_BREAK_MEL {
        LOG_BREAK_HZ * (log_step() * (mel - LOG_BREAK_MEL)).exp()
    } else {
        mel * LINEAR_HZ_PER_MEL
    }
}

/// One triangular band, stored as its nonzero FFT-bin range only.
struct Band {
    first_bin: usize,
    weights: Vec<f64>,
}

impl Band {
    fn apply(&self, magnitude: &[f64]) -> f64 {
        let bins = &magnitude[self.first_bin..self.first_bin + self.weights.len()];
        bins.iter().zip(&self.weights).map(|(m, w)| m * w).sum()
    }
}

struct FilterBank {
    bands: Vec<Band>,
}

impl FilterBank {
    /// 80 triangles with edges equally spaced in mels from 55 to 7600 Hz, each scaled by
    /// `2 / (upper edge - lower edge)` in Hz (Slaney's constant-area normalisation).
    fn slaney() -> Self {
        let (low, high) = (hz_to_mel(FMIN), hz_to_mel(FMAX));
        let edges: Vec<f64> =
            (0..BANDS + 2).map(|i| mel_to_hz(low + (high - low) * i as f64 / (BANDS + 1) as f64)).collect();
        let bin_hz = |k: usize| k as f64 * f64::from(SAMPLE_RATE) / N_FFT as f64;
        let bands = edges
            .windows(3)
            .map(|e| {
                let (lower, centre, upper) = (e[0], e[1], e[2]);
                let scale = 2.0 / (upper - lower);
                let weight = |k: usize| {
                    let f = bin_hz(k);
                    let rising = (f - lower) / (centre - lower);
                    let falling = (upper - f) / (upper - centre);
                    rising.min(falling).max(0.0) * scale
                };
                let first_bin = (0..BINS).find(|&k| weight(k) > 0.0).unwrap_or(0);
                let end = (first_bin..BINS).find(|&k| weight(k) <= 0.0).unwrap_or(BINS);
                Band { first_bin, weights: (first_bin..end).map(weight).collect() }
            })
            .collect();
        FilterBank { bands }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaney_scale_is_linear_then_logarithmic() {
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(55.0) - 0.825).abs() < 1e-12);
        // 6.4 kHz is 27 mels above the break: the step is ln(6.4)/27.
        assert!((hz_to_mel(6400.0) - 42.0).abs() < 1e-12);
        for hz in [0.0, 55.0, 999.0, 1000.0, 1234.5, 7600.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9, "{hz}");
        }
    }

    #[test]
    fn filter_bank_is_sparse_ordered_and_area_normalised() {
        let bank = FilterBank::slaney();
        assert_eq!(bank.bands.len(), BANDS);
        let mut previous_peak = 0;
        for (i, band) in bank.bands.iter().enumerate() {
            assert!(!band.weights.is_empty(), "band {i} has no bins");
            assert!(band.weights.iter().all(|&w| w > 0.0));
            let peak = band.first_bin + band.weights.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            assert!(peak >= previous_peak, "band {i} peaks below band {}", i.saturating_sub(1));
            previous_peak = peak;
        }
        // 55 Hz lies between bins 2 (40 Hz) and 3 (60 Hz); 7600 Hz is bin 380 (a zero of the last band).
        assert_eq!(bank.bands[0].first_bin, 3);
        let last = bank.bands.last().unwrap();
        assert_eq!(last.first_bin + last.weights.len(), 380);
        // Each triangle has unit area in Hz; sampled every 20 Hz that holds closely for the wide bands.
        for band in &bank.bands[40..] {
            let area: f64 = band.weights.iter().sum::<f64>() * 20.0;
            assert!((area - 1.0).abs() < 0.02, "area {area}");
        }
        let nonzero: usize = bank.bands.iter().map(|b| b.weights.len()).sum();
        assert!(nonzero < 2 * BINS, "{nonzero} nonzero weights: the bank should be sparse");
    }

    #[test]
    fn reflect_matches_numpy_including_repeated_reflection() {
        // np.pad(np.arange(3), 7, mode="reflect")
        let expected = [1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1];
        let got: Vec<usize> = (-7..10).map(|j| reflect(j, 3)).collect();
        assert_eq!(got, expected);
        assert_eq!(reflect(-5, 1), 0);
    }

    #[test]
    fn frames_follow_the_centred_stft() {
        for (len, frames) in [(0, 1), (199, 1), (200, 2), (3000, 16), (16_000, 81)] {
            assert_eq!(wav2lip(&vec![0.0; len]).frames(), frames, "{len} samples");
        }
    }

    #[test]
    fn silence_is_the_floor_and_a_tone_peaks_in_its_band() {
        let silence = wav2lip(&[0.0; 4000]);
        assert!(silence.data().iter().all(|&v| v == -4.0));
        assert_eq!(wav2lip(&[]).data(), &[-4.0; BANDS]);

        let tone = |amplitude: f32| -> Vec<f32> {
            (0..8000).map(|n| amplitude * (2.0 * std::f32::consts::PI * 1000.0 * n as f32 / 16_000.0).sin()).collect()
        };
        // A quiet 1 kHz tone peaks in the band centred nearest 1 kHz, without clipping.
        let mel = wav2lip(&tone(0.01));
        let middle = mel.frames() / 2;
        let loudest = (0..BANDS).max_by(|&a, &b| mel.get(a, middle).total_cmp(&mel.get(b, middle))).unwrap();
        let (low, high) = (hz_to_mel(FMIN), hz_to_mel(FMAX));
        let centre = |band: usize| mel_to_hz(low + (high - low) * (band + 1) as f64 / (BANDS + 1) as f64);
        let nearest =
            (0..BANDS).min_by(|&a, &b| (centre(a) - 1000.0).abs().total_cmp(&(centre(b) - 1000.0).abs())).unwrap();
        assert_eq!(loudest, nearest);
        assert!(mel.get(loudest, middle) < 4.0);
        assert!(mel.get(BANDS - 1, middle) < mel.get(loudest, middle) - 2.0);
        // Louder is higher, but far from the ceiling: the Slaney weights are small (unit area in Hz).
        assert!(wav2lip(&tone(1.0)).get(loudest, middle) > mel.get(loudest, middle) + 3.0);
    }

    #[test]
    fn normalisation_is_symmetric_and_clipped() {
        // 20·log10(m) - 20 dB, mapped from [-100, 0] dB onto [-4, 4].
        assert_eq!(normalise(10.0), 4.0);
        assert_eq!(normalise(1e9), 4.0);
        assert!((normalise(1.0) - 2.4).abs() < 1e-12);
        assert!((normalise(1e-3) - -2.4).abs() < 1e-12);
        assert_eq!(normalise(0.0), -4.0);
        assert_eq!(normalise(1e-4), -4.0);
    }

    #[test]
    fn chunks_follow_wav2lips_loop() {
        // 25 fps: a step of 3.2 frames; 5 · 3.2 rounds to just above 16 in f64.
        let starts = chunk_starts(100, 25.0).unwrap();
        assert_eq!(&starts[..7], &[0, 3, 6, 9, 12, 16, 19]);
        assert_eq!(*starts.last().unwrap(), 84);
        assert!(starts[..starts.len() - 1].iter().all(|&s| s + CHUNK_FRAMES <= 100));
        assert!(starts.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(starts.len(), 28); // 0..=26 · 3.2 ≤ 84, then the right-aligned one

        // Exactly one window of audio: the first window and the right-aligned one coincide.
        assert_eq!(chunk_starts(16, 25.0).unwrap(), vec![0, 0]);
        // 80 fps: one mel frame per video frame.
        assert_eq!(chunk_starts(20, 80.0).unwrap(), vec![0, 1, 2, 3, 4, 4]);
        // A tiny frame rate: the second window is already past the end.
        assert_eq!(chunk_starts(40, 1e-300).unwrap(), vec![0, 24]);
    }

    #[test]
    fn chunks_refuse_short_audio_and_bad_frame_rates() {
        assert_eq!(chunk_starts(15, 25.0), Err(MelError::TooShort { frames: 15 }));
        assert_eq!(wav2lip(&vec![0.0; MIN_SAMPLES - 1]).chunk_starts(25.0), Err(MelError::TooShort { frames: 15 }));
        assert!(wav2lip(&vec![0.0; MIN_SAMPLES]).chunk_starts(25.0).is_ok());
        for fps in [0.0, -25.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(chunk_starts(100, fps), Err(MelError::BadFps(_))), "{fps}");
        }
        let message = MelError::TooShort { frames: 3 }.to_string();
        assert!(message.contains("at least 16"), "{message}");
    }

    #[test]
    fn write_chunk_is_band_major() {
        let mel = MelSpectrogram { bands: BANDS, frames: 20, data: (0..BANDS * 20).map(|i| i as f32).collect() };
        let mut out = vec![0.0; CHUNK_LEN];
        mel.write_chunk(4, &mut out);
        for band in 0..BANDS {
            for j in 0..CHUNK_FRAMES {
                assert_eq!(out[band * CHUNK_FRAMES + j], mel.get(band, 4 + j));
            }
        }
    }

    #[test]
    #[should_panic(expected = "past the last frame")]
    fn write_chunk_refuses_a_window_past_the_end() {
        wav2lip(&[0.0; 3000]).write_chunk(1, &mut [0.0; CHUNK_LEN]);
    }
}
