//! The lip-sync job's audio in: any container and codec FFmpeg reads, resampled to 16 kHz mono f32 (what
//! the Wav2Lip mel spectrogram is defined on). Refused before decoding when its stated duration is over
//! the limit, and while decoding when it turns out longer.

use std::path::Path;

use ffmpeg::{ChannelLayout, format, frame, media, software};
use ffmpeg_next as ffmpeg;
use tokio_util::sync::CancellationToken;

use crate::error::PipelineError;

/// 16 kHz mono samples of `path`, at most `max_s` seconds.
pub fn decode_16k_mono(path: &Path, max_s: f64, cancel: &CancellationToken) -> Result<Vec<f32>, PipelineError> {
    crate::media::init();
    let bad = |e: ffmpeg::Error| PipelineError::permanent(format!("input audio cannot be read: {e}"));
    let mut ictx = format::input(path).map_err(bad)?;
    let stream = ictx
        .streams()
        .best(media::Type::Audio)
        .ok_or_else(|| PipelineError::permanent("input audio has no audio stream"))?;
    let index = stream.index();
    let stated = ictx.duration() as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE);
    if stated > max_s {
        return Err(PipelineError::permanent(format!(
            "input audio is {stated:.1} s long; this worker takes at most {max_s} s (lipsync.max_audio_s)"
        )));
    }
    let mut decoder = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
        .and_then(|c| c.decoder().audio())
        .map_err(bad)?;
    if decoder.channel_layout().is_empty() {
        decoder.set_channel_layout(ChannelLayout::default(decoder.channels().max(1) as i32));
    }
    if decoder.rate() == 0 {
        return Err(PipelineError::permanent("input audio has no sample rate"));
    }
    let target = format::Sample::F32(format::sample::Type::Packed);
    // Built from the first decoded frame: what a decoder reports before decoding can differ from its frames.
    let mut resampler: Option<software::resampling::Context> = None;
    let limit = (max_s * f64::from(super::mel::SAMPLE_RATE)) as usize;
    let mut samples = Vec::new();
    let mut decoded = frame::Audio::empty();
    let mut converted = frame::Audio::empty();
    let take = |converted: &frame::Audio, samples: &mut Vec<f32>| -> Result<(), PipelineError> {
        let n = converted.samples();
        samples.extend_from_slice(&converted.plane::<f32>(0)[..n]);
        if samples.len() > limit {
            return Err(PipelineError::permanent(format!(
                "input audio is longer than {max_s} s (lipsync.max_audio_s)"
            )));
        }
        Ok(())
    };
    let mut receive = |decoder: &mut ffmpeg::decoder::Audio,
                       resampler: &mut Option<software::resampling::Context>,
                       samples: &mut Vec<f32>|
     -> Result<(), PipelineError> {
        while decoder.receive_frame(&mut decoded).is_ok() {
            if decoded.channel_layout().is_empty() {
                decoded.set_channel_layout(ChannelLayout::default(decoded.channels().max(1) as i32));
            }
            let r = match resampler {
                Some(r) => r,
                None => resampler.insert(
                    software::resampling::Context::get(
                        decoded.format(),
                        decoded.channel_layout(),
                        decoded.rate(),
                        target,
                        ChannelLayout::MONO,
                        super::mel::SAMPLE_RATE,
                    )
                    .map_err(bad)?,
                ),
            };
            r.run(&decoded, &mut converted).map_err(bad)?;
            take(&converted, samples)?;
        }
        Ok(())
    };
    for (s, packet) in ictx.packets() {
        if s.index() != index {
            continue;
        }
        if cancel.is_cancelled() {
            return Err(PipelineError::cancelled());
        }
        decoder.send_packet(&packet).map_err(bad)?;
        receive(&mut decoder, &mut resampler, &mut samples)?;
    }
    decoder.send_eof().map_err(bad)?;
    receive(&mut decoder, &mut resampler, &mut samples)?;
    // What the resampler still holds.
    while let Some(resampler) = resampler.as_mut()
        && resampler.delay().is_some()
    {
        let mut tail = frame::Audio::empty();
        if resampler.flush(&mut tail).is_err() || tail.samples() == 0 {
            break;
        }
        let n = tail.samples();
        samples.extend_from_slice(&tail.plane::<f32>(0)[..n]);
    }
    if samples.is_empty() {
        return Err(PipelineError::permanent("input audio holds no samples"));
    }
    Ok(samples)
}
