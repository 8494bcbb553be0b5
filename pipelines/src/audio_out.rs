//! Synthesized speech (mono f32 PCM) to a file: 16-bit WAV, Ogg Opus, AAC in MP4 (`.m4a`) or MP3, through
//! FFmpeg. Resampling (to a requested rate, or to the nearest rate the codec supports) and the sample-format
//! conversion run in an FFmpeg filter graph; tags go into the container's metadata (WAV INFO, Vorbis comment,
//! MP4 `udta`, ID3v2).

use std::path::{Path, PathBuf};

use ffmpeg::{ChannelLayout, Dictionary, Packet, Rational, codec, encoder, filter, format, frame};
use ffmpeg_next as ffmpeg;

use crate::error::PipelineError;
use crate::media;

pub use ainern2d_contract::AudioFormat;

/// FFmpeg's muxer for a format.
fn muxer(format: AudioFormat) -> &'static str {
    match format {
        AudioFormat::Wav => "wav",
        AudioFormat::Opus => "ogg",
        AudioFormat::Aac => "mp4",
        AudioFormat::Mp3 => "mp3",
    }
}

/// Mono speech bit rates (bits/s); PCM has none.
fn bit_rate(format: AudioFormat) -> usize {
    match format {
        AudioFormat::Wav => 0,
        AudioFormat::Opus => 48_000,
        AudioFormat::Aac => 96_000,
        AudioFormat::Mp3 => 96_000,
    }
}

/// FFmpeg's encoder for a format.
fn encoder(format: AudioFormat) -> &'static str {
    match format {
        AudioFormat::Wav => "pcm_s16le",
        AudioFormat::Opus => "libopus",
        AudioFormat::Aac => "aac",
        AudioFormat::Mp3 => "libmp3lame",
    }
}

/// Tag keys every container stores where `ffprobe` reads them back. Others are refused rather than dropped
/// silently by some muxers (WAV INFO knows a fixed list; FFmpeg replaces `encoder` with its own).
pub const TAG_KEYS: &[&str] = &["title", "artist", "album", "comment", "genre", "copyright", "date"];

/// A file [`write_audio`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedAudio {
    pub path: PathBuf,
    pub format: AudioFormat,
    /// The file's sample rate: the requested one, or the codec's nearest supported one (AAC, MP3); always
    /// 48000 for Opus, whose decoders output 48 kHz whatever the encoding rate (the nearest of 8, 12, 16, 24
    /// or 48 kHz, which bounds the bandwidth).
    pub sample_rate: u32,
    /// The speech's duration (encoder padding not counted).
    pub duration_s: f64,
    /// The file's size.
    pub bytes: u64,
}

/// Encodes mono `samples` at `sample_rate` into `dest` (any extension; the container follows `format`),
/// resampled to `out_rate` when given. Samples are clipped to [-1, 1] (NaN as silence). A failed write
/// removes the partial file.
pub fn write_audio(
    samples: &[f32],
    sample_rate: u32,
    out_rate: Option<u32>,
    format: AudioFormat,
    dest: &Path,
    tags: &[(&str, &str)],
) -> Result<EncodedAudio, PipelineError> {
    if samples.is_empty() {
        return Err(PipelineError::permanent("no audio samples to encode"));
    }
    if sample_rate == 0 || out_rate == Some(0) {
        return Err(PipelineError::permanent("audio sample rate must be above 0 Hz"));
    }
    if let Some((key, _)) = tags.iter().find(|(k, _)| !TAG_KEYS.contains(k)) {
        return Err(PipelineError::permanent(format!(
            "audio tag `{key}` is not stored by every container; use one of {}",
            TAG_KEYS.join(", ")
        )));
    }
    media::init();
    let rate = encode(samples, sample_rate, out_rate.unwrap_or(sample_rate), format, dest, tags).inspect_err(|_| {
        let _ = std::fs::remove_file(dest);
    })?;
    Ok(EncodedAudio {
        path: dest.to_path_buf(),
        format,
        sample_rate: rate,
        duration_s: samples.len() as f64 / f64::from(sample_rate),
        bytes: std::fs::metadata(dest)?.len(),
    })
}

/// Writes the file; returns its sample rate.
fn encode(
    samples: &[f32],
    in_rate: u32,
    want_rate: u32,
    format: AudioFormat,
    dest: &Path,
    tags: &[(&str, &str)],
) -> Result<u32, PipelineError> {
    let failed = |e: ffmpeg::Error| {
        PipelineError::permanent(format!("cannot write {format:?} audio to {}: {e}", dest.display()))
    };
    let name = encoder(format);
    let codec = encoder::find_by_name(name).ok_or_else(|| {
        PipelineError::permanent(format!("this FFmpeg build has no {name} encoder, needed for {format:?} output"))
    })?;
    let caps = codec.audio().map_err(failed)?;
    let rate = nearest_rate(caps.rates().map(Iterator::collect), want_rate);
    let sample_format = choose_format(caps.formats().map(Iterator::collect).unwrap_or_default());

    let mut octx = format::output_as(dest, muxer(format)).map_err(failed)?;
    let global_header = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);
    let index = octx.add_stream(codec).map_err(failed)?.index();
    let mut enc = codec::context::Context::new_with_codec(codec).encoder().audio().map_err(failed)?;
    enc.set_rate(rate as i32);
    enc.set_channel_layout(ChannelLayout::MONO);
    enc.set_format(sample_format);
    if bit_rate(format) > 0 {
        enc.set_bit_rate(bit_rate(format));
    }
    enc.set_time_base(Rational(1, rate as i32));
    if global_header {
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
    }
    let mut enc = enc.open_as(codec).map_err(failed)?;
    {
        let mut stream = octx.stream_mut(index).expect("stream just added");
        stream.set_parameters(&enc);
        stream.set_time_base(Rational(1, rate as i32));
    }
    let mut metadata = Dictionary::new();
    for (key, value) in tags {
        metadata.set(key, value);
    }
    octx.set_metadata(metadata);
    let mut options = Dictionary::new();
    if format == AudioFormat::Aac {
        // The index before the data, so the file plays while it downloads.
        options.set("movflags", "+faststart");
    }
    octx.write_header_with(options).map_err(failed)?;
    let out_tb = octx.stream(index).expect("stream").time_base();

    let mut graph = graph(in_rate, &enc).map_err(failed)?;
    let mut run = Encoding { enc: &mut enc, index, out_tb, octx: &mut octx, filtered: frame::Audio::empty() };
    const CHUNK: usize = 4096;
    for (n, chunk) in samples.chunks(CHUNK).enumerate() {
        let mut input = frame::Audio::new(format::Sample::F32(format::sample::Type::Packed), chunk.len(), MONO);
        input.set_rate(in_rate);
        input.set_pts(Some((n * CHUNK) as i64));
        for (to, from) in input.plane_mut::<f32>(0).iter_mut().zip(chunk) {
            *to = if from.is_nan() { 0.0 } else { from.clamp(-1.0, 1.0) };
        }
        graph.get("in").expect("graph input").source().add(&input).map_err(failed)?;
        run.drain_graph(&mut graph).map_err(failed)?;
    }
    graph.get("in").expect("graph input").source().flush().map_err(failed)?;
    run.drain_graph(&mut graph).map_err(failed)?;
    run.enc.send_eof().map_err(failed)?;
    run.write_packets().map_err(failed)?;
    octx.write_trailer().map_err(failed)?;
    // Opus decoders always output 48 kHz (the encoding rate only limits the bandwidth); report what players
    // and ffprobe see.
    Ok(if format == AudioFormat::Opus { OPUS_DECODE_RATE } else { rate })
}

const OPUS_DECODE_RATE: u32 = 48_000;

const MONO: ChannelLayout = ChannelLayout::MONO;

/// The supported rate closest to `want` (the higher one on a tie); any rate when the codec lists none.
fn nearest_rate(supported: Option<Vec<i32>>, want: u32) -> u32 {
    let Some(rates) = supported.filter(|r| !r.is_empty()) else { return want };
    let distance = |r: i32| (i64::from(r) - i64::from(want)).abs();
    let best = rates.into_iter().filter(|r| *r > 0).min_by_key(|r| (distance(*r), -i64::from(*r)));
    best.map_or(want, |r| r as u32)
}

/// Float when the codec takes it (no quantisation before a lossy encoder), else 16-bit, else its first.
fn choose_format(supported: Vec<format::Sample>) -> format::Sample {
    use format::Sample::{F32, I16};
    use format::sample::Type::{Packed, Planar};
    [F32(Packed), F32(Planar), I16(Packed), I16(Planar)]
        .into_iter()
        .find(|f| supported.contains(f))
        .or_else(|| supported.first().copied())
        .unwrap_or(I16(Packed))
}

/// `abuffer` (f32 mono at the input rate) → `aresample` → `aformat` (the encoder's sample format) →
/// `abuffersink` in the encoder's frame size. The conversions are spelled out in the chain: ffmpeg-next's
/// `set_sample_rate` on the sink passes a malformed rate list (a trailing 0 that negotiation may pick).
fn graph(in_rate: u32, enc: &encoder::Audio) -> Result<filter::Graph, ffmpeg::Error> {
    let mut graph = filter::Graph::new();
    let args = format!("time_base=1/{in_rate}:sample_rate={in_rate}:sample_fmt=flt:channel_layout=mono");
    let find = |name: &str| filter::find(name).ok_or(ffmpeg::Error::FilterNotFound);
    graph.add(&find("abuffer")?, "in", &args)?;
    graph.add(&find("abuffersink")?, "out", "")?;
    let chain = format!(
        "aresample={rate},aformat=sample_fmts={fmt}:sample_rates={rate}:channel_layouts=mono",
        rate = enc.rate(),
        fmt = enc.format().name()
    );
    graph.output("in", 0)?.input("out", 0)?.parse(&chain)?;
    graph.validate()?;
    if enc.frame_size() > 0 {
        graph.get("out").expect("sink").sink().set_frame_size(enc.frame_size());
    }
    Ok(graph)
}

struct Encoding<'a> {
    enc: &'a mut encoder::Audio,
    index: usize,
    out_tb: Rational,
    octx: &'a mut format::context::Output,
    filtered: frame::Audio,
}

impl Encoding<'_> {
    fn drain_graph(&mut self, graph: &mut filter::Graph) -> Result<(), ffmpeg::Error> {
        while graph.get("out").expect("graph output").sink().frame(&mut self.filtered).is_ok() {
            self.enc.send_frame(&self.filtered)?;
            self.write_packets()?;
        }
        Ok(())
    }

    fn write_packets(&mut self) -> Result<(), ffmpeg::Error> {
        let enc_tb = Rational(1, self.enc.rate() as i32);
        let mut packet = Packet::empty();
        while self.enc.receive_packet(&mut packet).is_ok() {
            packet.set_stream(self.index);
            packet.rescale_ts(enc_tb, self.out_tb);
            packet.write_interleaved(self.octx)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "audio_out_tests.rs"]
mod tests;
