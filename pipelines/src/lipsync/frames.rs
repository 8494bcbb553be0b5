//! Pictures in: a video, or a still image, decoded with FFmpeg to packed RGB24 frames (`width × 3`
//! bytes a row, no padding), for face detection and lip-sync. Every problem with the input — not a
//! media file, no picture, absurd dimensions or frame counts, truncated or corrupt data — is a
//! permanent error that names the file and the problem; `probe` finds most of them before any frame is
//! decoded. Blocking: runs on the pipeline's thread.

use std::path::Path;

use ffmpeg::{codec, format, frame, media, software};
use ffmpeg_next as ffmpeg;

use crate::error::PipelineError;

/// The frame rate given to a still image, which is looped for the audio's length (Wav2Lip's default).
pub const STILL_FPS: f64 = 25.0;

/// What an input may be before it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_width: u32,
    pub max_height: u32,
    /// Frames the container declares (or its duration implies), and frames decoded at most.
    pub max_frames: u64,
}

impl Default for Limits {
    /// 4K pictures, ten minutes at 25 fps.
    fn default() -> Self {
        Limits { max_width: 4096, max_height: 4096, max_frames: 15_000 }
    }
}

/// The picture stream of an input, as its container describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    pub width: u32,
    pub height: u32,
    /// Frames per second ([`STILL_FPS`] for a still image).
    pub fps: f64,
    /// The frame count the container declares (1 for a still image), when it declares one.
    pub frames: Option<u64>,
    /// Seconds, when the container knows (`None` for a still image).
    pub duration_s: Option<f64>,
    /// A single picture (PNG, JPEG, …) rather than a video.
    pub still: bool,
    /// The decoder (`h264`, `png`, …) and the demuxer (`mov,mp4,…`, `png_pipe`, …).
    pub codec: String,
    pub container: String,
}

impl VideoInfo {
    /// The declared frame count, else one estimated from the duration and the frame rate.
    pub fn frame_estimate(&self) -> Option<u64> {
        self.frames.or_else(|| self.duration_s.map(|d| (d * self.fps).round().max(0.0) as u64))
    }
}

fn named(path: &Path, what: impl std::fmt::Display) -> PipelineError {
    PipelineError::permanent(format!("input {}: {what}", path.display()))
}

struct Opened {
    ictx: format::context::Input,
    index: usize,
    decoder: ffmpeg::decoder::Video,
    info: VideoInfo,
}

fn open(path: &Path, limits: &Limits) -> Result<Opened, PipelineError> {
    crate::media::init();
    if !path.is_file() {
        return Err(named(path, "no such file"));
    }
    let ictx = format::input(path).map_err(|e| named(path, format!("not a picture or video FFmpeg can read ({e})")))?;
    let container = ictx.format().name().to_string();
    let stream =
        ictx.streams().best(media::Type::Video).ok_or_else(|| named(path, "holds no picture or video stream"))?;
    let index = stream.index();
    let decoder = codec::context::Context::from_parameters(stream.parameters())
        .and_then(|c| c.decoder().video())
        .map_err(|e| named(path, format!("its video stream cannot be decoded ({e})")))?;
    let codec = decoder.codec().map(|c| c.name().to_string()).unwrap_or_else(|| "unknown".into());
    let (width, height) = (decoder.width(), decoder.height());
    let declared = u64::try_from(stream.frames()).ok().filter(|n| *n > 0);
    let still = container == "image2" || container.ends_with("_pipe") || declared == Some(1);
    let rate = |r: ffmpeg::Rational| {
        (r.numerator() > 0 && r.denominator() > 0).then(|| f64::from(r.numerator()) / f64::from(r.denominator()))
    };
    let fps = if still { Some(STILL_FPS) } else { rate(stream.avg_frame_rate()).or_else(|| rate(stream.rate())) };
    let duration_s = if still {
        None
    } else {
        let tb = stream.time_base();
        let from_stream = (stream.duration() > 0 && tb.denominator() > 0)
            .then(|| stream.duration() as f64 * f64::from(tb.numerator()) / f64::from(tb.denominator()));
        from_stream
            .or_else(|| (ictx.duration() > 0).then(|| ictx.duration() as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE)))
    };
    let info = VideoInfo {
        width,
        height,
        fps: fps.unwrap_or(0.0),
        frames: if still { Some(1) } else { declared },
        duration_s,
        still,
        codec,
        container,
    };
    check(path, &info, limits)?;
    Ok(Opened { ictx, index, decoder, info })
}

fn check(path: &Path, info: &VideoInfo, limits: &Limits) -> Result<(), PipelineError> {
    if info.width == 0 || info.height == 0 {
        return Err(named(path, "its video stream has no picture size (corrupt header?)"));
    }
    check_size(path, info.width, info.height, limits)?;
    if !(info.fps > 0.0 && info.fps <= 1000.0) {
        return Err(named(path, format!("frame rate {} is not a usable frame rate", info.fps)));
    }
    if let Some(frames) = info.frame_estimate().filter(|n| *n > limits.max_frames) {
        return Err(named(
            path,
            format!("{frames} frames is more than the limit of {} (max_frames)", limits.max_frames),
        ));
    }
    Ok(())
}

fn check_size(path: &Path, width: u32, height: u32, limits: &Limits) -> Result<(), PipelineError> {
    if width > limits.max_width || height > limits.max_height {
        return Err(named(
            path,
            format!(
                "{width}×{height} pictures are larger than the limit of {}×{} (max_width × max_height)",
                limits.max_width, limits.max_height
            ),
        ));
    }
    Ok(())
}

/// Describes the input's picture stream and refuses it, before any decoding, when it breaks `limits` or
/// is no picture at all.
pub fn probe(path: &Path, limits: &Limits) -> Result<VideoInfo, PipelineError> {
    open(path, limits).map(|o| o.info)
}

/// Decodes up to `max_frames` frames (never more than `limits.max_frames`) and hands each to
/// `on_frame(index, rgb, width, height)`, in order; an error from `on_frame` stops decoding and is
/// returned. Returns the number of frames handed over. A file that ends before the frames its container
/// declares is refused as truncated (the frames before that point have been handed over by then).
pub fn decode_rgb(
    path: &Path,
    limits: &Limits,
    max_frames: u64,
    mut on_frame: impl FnMut(u64, &[u8], u32, u32) -> Result<(), PipelineError>,
) -> Result<u64, PipelineError> {
    let Opened { mut ictx, index, mut decoder, info } = open(path, limits)?;
    let max_frames = max_frames.min(limits.max_frames);
    let mut rgb = Rgb { scaler: None, out: frame::Video::empty(), packed: Vec::new() };
    let mut decoded = frame::Video::empty();
    let mut done = 0u64;
    let corrupt = |e: ffmpeg::Error| named(path, format!("truncated or corrupt video data ({e})"));
    let mut packet = ffmpeg::Packet::empty();
    let mut eof = false;
    'decode: while done < max_frames {
        // Hand over what the decoder holds, then feed it the next packet (or the end of input).
        loop {
            if done >= max_frames {
                break 'decode;
            }
            match decoder.receive_frame(&mut decoded) {
                Ok(()) => {
                    let (data, w, h) = rgb.convert(path, &decoded, limits)?;
                    on_frame(done, data, w, h)?;
                    done += 1;
                }
                Err(ffmpeg::Error::Eof) => break 'decode,
                Err(ffmpeg::Error::Other { errno: ffmpeg::error::EAGAIN }) => break,
                Err(e) => return Err(corrupt(e)),
            }
        }
        if eof {
            break;
        }
        match packet.read(&mut ictx) {
            Ok(()) if packet.stream() != index => {}
            Ok(()) => decoder.send_packet(&packet).map_err(corrupt)?,
            Err(ffmpeg::Error::Eof) => {
                eof = true;
                decoder.send_eof().map_err(corrupt)?;
            }
            Err(e) => return Err(named(path, format!("truncated or corrupt ({e})"))),
        }
    }
    if done < max_frames
        && let Some(declared) = info.frames.filter(|n| done < *n && !info.still)
    {
        return Err(named(path, format!("truncated: its container declares {declared} frames, {done} decode")));
    }
    if done == 0 && max_frames > 0 {
        return Err(named(path, "holds no decodable picture"));
    }
    Ok(done)
}

/// Conversion of decoded frames to packed RGB24, the scaler rebuilt when the stream changes format.
struct Rgb {
    scaler: Option<(software::scaling::Context, format::Pixel, u32, u32)>,
    out: frame::Video,
    packed: Vec<u8>,
}

impl Rgb {
    fn convert(
        &mut self,
        path: &Path,
        decoded: &frame::Video,
        limits: &Limits,
    ) -> Result<(&[u8], u32, u32), PipelineError> {
        let (w, h, pix) = (decoded.width(), decoded.height(), decoded.format());
        if w == 0 || h == 0 {
            return Err(named(path, "a decoded frame has no picture size"));
        }
        check_size(path, w, h, limits)?;
        let stale = !matches!(&self.scaler, Some((_, p, sw, sh)) if *p == pix && *sw == w && *sh == h);
        if stale {
            let ctx = software::scaling::Context::get(
                pix,
                w,
                h,
                format::Pixel::RGB24,
                w,
                h,
                software::scaling::Flags::BILINEAR,
            )
            .map_err(|e| named(path, format!("pixel format {pix:?} cannot be converted to RGB ({e})")))?;
            self.scaler = Some((ctx, pix, w, h));
        }
        let (ctx, ..) = self.scaler.as_mut().expect("scaler just built");
        ctx.run(decoded, &mut self.out).map_err(|e| named(path, format!("frame conversion failed ({e})")))?;
        let row = w as usize * 3;
        let stride = self.out.stride(0);
        let data = self.out.data(0);
        self.packed.clear();
        self.packed.reserve(row * h as usize);
        for y in 0..h as usize {
            self.packed.extend_from_slice(&data[y * stride..y * stride + row]);
        }
        Ok((&self.packed, w, h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_prefers_the_declared_count() {
        let mut info = VideoInfo {
            width: 2,
            height: 2,
            fps: 25.0,
            frames: Some(50),
            duration_s: Some(3.0),
            still: false,
            codec: "h264".into(),
            container: "mp4".into(),
        };
        assert_eq!(info.frame_estimate(), Some(50));
        info.frames = None;
        assert_eq!(info.frame_estimate(), Some(75));
        info.duration_s = None;
        assert_eq!(info.frame_estimate(), None);
    }

    #[test]
    fn limits_name_the_keys() {
        let limits = Limits { max_width: 100, max_height: 100, max_frames: 10 };
        let info = VideoInfo {
            width: 200,
            height: 50,
            fps: 25.0,
            frames: Some(5),
            duration_s: None,
            still: false,
            codec: "h264".into(),
            container: "mp4".into(),
        };
        let e = check(Path::new("v.mp4"), &info, &limits).unwrap_err();
        assert!(e.message.contains("200×50") && e.message.contains("max_width"), "{e}");
        let long = VideoInfo { width: 50, frames: Some(11), ..info.clone() };
        let e = check(Path::new("v.mp4"), &long, &limits).unwrap_err();
        assert!(e.message.contains("11 frames") && e.message.contains("max_frames"), "{e}");
        let odd = VideoInfo { width: 50, fps: 0.0, ..info };
        assert!(check(Path::new("v.mp4"), &odd, &limits).unwrap_err().message.contains("frame rate"));
    }
}
