//! Whatever a ComfyUI output node wrote — an MP4 or WebM, a GIF, an animated WebP or PNG, or still PNGs
//! (one per batch item) — made into what the worker uploads: `video.mp4` (H.264 yuv420p, moov atom first)
//! and `thumbnail.jpg` (the middle frame, its longer side at most 512 px). Blocking: runs on the
//! pipeline's thread. Every problem with the inputs is a permanent error that names the file.
//!
//! Timing: every decoded frame is kept and played at the requested `fps`, so the frame count is the
//! source's and the duration is `frames / fps`. The animated formats store per-frame delays in whole
//! milliseconds (SaveAnimatedWEBP writes 41 ms for 24 fps), so resampling to their nominal rate would drop
//! or repeat frames the workflow made; the job's fps is the rate meant for them. Audio (from an MP4 or
//! WebM) is re-encoded to AAC at its own timing, not stretched: in sync when the source's frame rate is the
//! requested one (templates fill both from the job), drifting otherwise (logged).
//!
//! Sizes: an odd width or height loses its last column or row (4:2:0 needs even sides; [`VideoWriter`]
//! crops). The files of a sequence must be still pictures of one size: a mismatch is refused, not scaled,
//! because ComfyUI's batches share one size and a mismatch means the files are not one batch.
//!
//! FFmpeg 5.1 (Debian 12) cannot decode animated WebP (its `webp` decoder stops at "image data not found";
//! animation support came in FFmpeg 7.1), so every WebP goes through the pure-Rust `image-webp` decoder.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use ffmpeg::{Dictionary, Packet, Rational, codec, encoder, format, frame, media, software};
use ffmpeg_next as ffmpeg;
use tokio_util::sync::CancellationToken;

use crate::error::PipelineError;
use crate::lipsync::frames;
pub use crate::lipsync::frames::Limits;
use crate::lipsync::writer::VideoWriter;

/// The longest side of the thumbnail, in pixels.
pub const THUMBNAIL_MAX_SIDE: u32 = 512;

#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    /// `out_dir/video.mp4`.
    pub video: PathBuf,
    /// `out_dir/thumbnail.jpg`.
    pub thumbnail: PathBuf,
    /// The encoded size (the source's, odd sides made even).
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub fps: u32,
    /// `frames / fps`.
    pub duration_s: f64,
    /// The size of `video.mp4`.
    pub bytes: u64,
    /// What came in: `"mp4 h264"`, `"webm vp9"`, `"gif animated"`, `"webp animated"`, `"png sequence"`, …
    pub source_format: String,
}

/// `inputs`: the files of the output node, in ComfyUI's order (one video or animation, or several still
/// images = a sequence). Writes `video.mp4` and `thumbnail.jpg` into `out_dir`; scratch files there start
/// with `.video.` and are removed.
pub fn normalize(
    inputs: &[PathBuf],
    fps: u32,
    limits: &Limits,
    out_dir: &Path,
    cancel: &CancellationToken,
) -> Result<Normalized, PipelineError> {
    if cancel.is_cancelled() {
        return Err(PipelineError::cancelled());
    }
    crate::media::init();
    if !(1..=1000).contains(&fps) {
        return Err(PipelineError::permanent(format!("fps {fps} is not a usable frame rate (1 to 1000)")));
    }
    let first = inputs.first().ok_or_else(|| PipelineError::permanent("the output node wrote no files"))?;
    if inputs.len() as u64 > limits.max_frames {
        let (n, max) = (inputs.len(), limits.max_frames);
        return Err(named(first, format!("the first of {n} images, more than the limit of {max} frames (max_frames)")));
    }
    std::fs::create_dir_all(out_dir)?;
    let scratch = |name: &str| Scratch(out_dir.join(format!(".video.{name}.mp4")));
    let (encoded, with_audio, final_mp4) = (scratch("encode"), scratch("audio"), scratch("faststart"));

    let mut sink = Sink { path: &encoded.0, fps, limits, cancel, writer: None, size: (0, 0), first: first.clone() };
    let source = if let [only] = inputs {
        decode(only, limits, false, &mut |rgb, w, h| sink.push(only, rgb, w, h))?
    } else {
        for path in inputs {
            decode(path, limits, true, &mut |rgb, w, h| sink.push(path, rgb, w, h))?;
        }
        Source { format: format!("{} sequence", extension(first)), audio: false, fps: None }
    };
    let (width, height) = (sink.size.0 & !1, sink.size.1 & !1);
    let writer = sink.writer.ok_or_else(|| named(first, "holds no decodable picture"))?;
    let frames = writer.finish()?;

    let muxed = if source.audio {
        if let Some(src_fps) = source.fps.filter(|f| (f - f64::from(fps)).abs() > 0.01) {
            tracing::warn!(input = %first.display(), src_fps, fps, "frames retimed, audio kept: they will drift");
        }
        crate::media::mux(&encoded.0, first, &with_audio.0, cancel, |_| {})?;
        &with_audio.0
    } else {
        &encoded.0
    };
    remux_faststart(muxed, &final_mp4.0, cancel)?;
    let thumbnail = out_dir.join("thumbnail.jpg");
    write_thumbnail(&final_mp4.0, frames, &thumbnail, limits, cancel)?;
    // Last, so that a failed run leaves no video.mp4 behind.
    let video = out_dir.join("video.mp4");
    std::fs::rename(&final_mp4.0, &video)?;
    Ok(Normalized {
        bytes: std::fs::metadata(&video)?.len(),
        video,
        thumbnail,
        width,
        height,
        frames,
        fps,
        duration_s: frames as f64 / f64::from(fps),
        source_format: source.format,
    })
}

/// A scratch file, removed however `normalize` ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn named(path: &Path, what: impl std::fmt::Display) -> PipelineError {
    PipelineError::permanent(format!("input {}: {what}", path.display()))
}

fn extension(path: &Path) -> String {
    path.extension().map_or_else(|| "file".into(), |e| e.to_string_lossy().to_ascii_lowercase())
}

/// The encoder, opened on the first frame with that frame's size; every later frame must match it.
struct Sink<'a> {
    path: &'a Path,
    fps: u32,
    limits: &'a Limits,
    cancel: &'a CancellationToken,
    writer: Option<VideoWriter>,
    size: (u32, u32),
    /// The file of the first frame.
    first: PathBuf,
}

impl Sink<'_> {
    fn push(&mut self, from: &Path, rgb: &[u8], width: u32, height: u32) -> Result<(), PipelineError> {
        if self.cancel.is_cancelled() {
            return Err(PipelineError::cancelled());
        }
        if self.writer.is_none() {
            let fps = Rational(self.fps as i32, 1);
            self.writer = Some(VideoWriter::create(self.path, width, height, fps, &[])?);
            (self.size, self.first) = ((width, height), from.to_path_buf());
        } else if (width, height) != self.size {
            let (w, h) = self.size;
            return Err(named(
                from,
                format!(
                    "a {width}×{height} picture after {w}×{h} ones from {}: the frames of one video must share a \
                     size (images are not scaled to fit)",
                    self.first.display()
                ),
            ));
        }
        let writer = self.writer.as_mut().expect("opened above");
        if writer.frames() >= self.limits.max_frames {
            return Err(named(from, format!("more than the limit of {} frames (max_frames)", self.limits.max_frames)));
        }
        writer.write(rgb)
    }
}

/// What one input turned out to be.
struct Source {
    format: String,
    audio: bool,
    /// The source's own frame rate, for a video.
    fps: Option<f64>,
}

type OnFrame<'a> = dyn FnMut(&[u8], u32, u32) -> Result<(), PipelineError> + 'a;

/// Decodes every frame of one file to RGB24; `still_only` refuses animations and videos before decoding.
fn decode(path: &Path, limits: &Limits, still_only: bool, on_frame: &mut OnFrame<'_>) -> Result<Source, PipelineError> {
    if is_webp(path) {
        return decode_webp(path, limits, still_only, on_frame);
    }
    let info = frames::probe(path, limits)?;
    if still_only && !info.still {
        return Err(named(path, "is a video or animation: several files must all be still images (a batch)"));
    }
    let ictx = format::input(path).map_err(|e| named(path, format!("cannot be reopened ({e})")))?;
    let video = ictx.streams().best(media::Type::Video).map(|s| s.parameters().id().name().to_string());
    let audio = !info.still && ictx.streams().best(media::Type::Audio).is_some();
    drop(ictx);
    // One frame over the limit gets through decode_rgb's cap, so `Sink` can refuse it instead of the clip
    // being cut short without a word.
    let decode_limits = Limits { max_frames: limits.max_frames.saturating_add(1), ..*limits };
    frames::decode_rgb(path, &decode_limits, u64::MAX, |_, rgb, w, h| on_frame(rgb, w, h))?;
    let ext = extension(path);
    let format = match video.as_deref().unwrap_or("unknown") {
        _ if info.still => format!("{ext} still"),
        "gif" | "apng" => format!("{ext} animated"),
        codec => format!("{ext} {codec}"),
    };
    Ok(Source { format, audio, fps: (!info.still).then_some(info.fps) })
}

fn is_webp(path: &Path) -> bool {
    let mut head = [0u8; 12];
    File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head[..4] == b"RIFF" && &head[8..] == b"WEBP"
}

/// WebP, still or animated, through `image-webp`. Frames come composited on the canvas; alpha is dropped,
/// as FFmpeg's conversion of a PNG with alpha to RGB drops it.
fn decode_webp(
    path: &Path,
    limits: &Limits,
    still_only: bool,
    on_frame: &mut OnFrame<'_>,
) -> Result<Source, PipelineError> {
    let bad = |e: image_webp::DecodingError| named(path, format!("corrupt or unsupported WebP ({e})"));
    let file = File::open(path).map_err(|e| named(path, format!("cannot be opened ({e})")))?;
    let mut webp = image_webp::WebPDecoder::new(BufReader::new(file)).map_err(bad)?;
    let (width, height) = webp.dimensions();
    if width > limits.max_width || height > limits.max_height {
        return Err(named(
            path,
            format!(
                "{width}×{height} pictures are larger than the limit of {}×{} (max_width × max_height)",
                limits.max_width, limits.max_height
            ),
        ));
    }
    let animated = webp.is_animated();
    if still_only && animated {
        return Err(named(path, "is an animation: several files must all be still images (a batch)"));
    }
    let count = if animated { u64::from(webp.num_frames()) } else { 1 };
    if count == 0 {
        return Err(named(path, "is an animation of zero frames"));
    }
    if count > limits.max_frames {
        return Err(named(
            path,
            format!("{count} frames is more than the limit of {} (max_frames)", limits.max_frames),
        ));
    }
    let alpha = webp.has_alpha();
    let mut buf = vec![0u8; webp.output_buffer_size().ok_or_else(|| named(path, "is too large to decode"))?];
    let mut rgb = Vec::new();
    for _ in 0..count {
        if animated {
            webp.read_frame(&mut buf).map_err(bad)?;
        } else {
            webp.read_image(&mut buf).map_err(bad)?;
        }
        let data = if alpha {
            rgb.clear();
            rgb.extend(buf.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]));
            &rgb
        } else {
            &buf
        };
        on_frame(data, width, height)?;
    }
    let format = if animated { "webp animated" } else { "webp still" };
    Ok(Source { format: format.into(), audio: false, fps: None })
}

/// Copies every stream of `src` into `dst` with the moov atom moved before the media data, so a player can
/// start before the whole file has arrived.
fn remux_faststart(src: &Path, dst: &Path, cancel: &CancellationToken) -> Result<(), PipelineError> {
    let mut ictx = format::input(src)?;
    let mut octx = format::output(dst)?;
    let mut time_bases = Vec::new();
    for ist in ictx.streams() {
        let mut ost = octx.add_stream(encoder::find(codec::Id::None))?;
        ost.set_parameters(ist.parameters());
        ost.set_time_base(ist.time_base());
        time_bases.push(ist.time_base());
    }
    let mut options = Dictionary::new();
    options.set("movflags", "+faststart");
    octx.write_header_with(options)?;
    let out_tbs: Vec<Rational> = octx.streams().map(|s| s.time_base()).collect();
    let mut packet = Packet::empty();
    loop {
        if cancel.is_cancelled() {
            return Err(PipelineError::cancelled());
        }
        match packet.read(&mut ictx) {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            Err(e) => return Err(e.into()),
        }
        let i = packet.stream();
        packet.rescale_ts(time_bases[i], out_tbs[i]);
        packet.set_position(-1);
        packet.write_interleaved(&mut octx)?;
    }
    octx.write_trailer()?;
    Ok(())
}

/// The thumbnail's size: the frame's, scaled down (aspect kept) until the longer side fits.
fn thumbnail_size(width: u32, height: u32) -> (u32, u32) {
    let long = width.max(height);
    if long <= THUMBNAIL_MAX_SIDE {
        return (width, height);
    }
    let fit = |side: u32| (u64::from(side) * u64::from(THUMBNAIL_MAX_SIDE) + u64::from(long) / 2) / u64::from(long);
    (fit(width).max(1) as u32, fit(height).max(1) as u32)
}

/// The middle frame of the encoded video (what the user will see, crop included) as a JPEG.
fn write_thumbnail(
    video: &Path,
    frames: u64,
    out: &Path,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<(), PipelineError> {
    let middle = frames / 2;
    let mut picked = None;
    frames::decode_rgb(video, limits, middle + 1, |i, rgb, w, h| {
        if cancel.is_cancelled() {
            return Err(PipelineError::cancelled());
        }
        if i == middle {
            picked = Some((rgb.to_vec(), w, h));
        }
        Ok(())
    })?;
    let (rgb, w, h) = picked.ok_or_else(|| named(video, format!("frame {middle} did not decode")))?;
    let mut src = frame::Video::new(format::Pixel::RGB24, w, h);
    let (row, stride) = (w as usize * 3, src.stride(0));
    for (y, line) in rgb.chunks_exact(row).enumerate() {
        src.data_mut(0)[y * stride..y * stride + row].copy_from_slice(line);
    }
    let (tw, th) = thumbnail_size(w, h);
    let mut yuv = frame::Video::empty();
    software::scaling::Context::get(
        format::Pixel::RGB24,
        w,
        h,
        format::Pixel::YUVJ420P,
        tw,
        th,
        software::scaling::Flags::AREA,
    )?
    .run(&src, &mut yuv)?;
    let mjpeg = encoder::find(codec::Id::MJPEG)
        .ok_or_else(|| PipelineError::permanent("this FFmpeg build has no MJPEG encoder"))?;
    let mut enc = codec::context::Context::new_with_codec(mjpeg).encoder().video()?;
    enc.set_width(tw);
    enc.set_height(th);
    enc.set_format(format::Pixel::YUVJ420P);
    enc.set_time_base(Rational(1, 1));
    // Quantisers 2–4: a sharp thumbnail whatever the default rate control would aim for.
    enc.set_qmin(2);
    enc.set_qmax(4);
    let mut enc = enc.open_as(mjpeg)?;
    yuv.set_pts(Some(0));
    enc.send_frame(&yuv)?;
    enc.send_eof()?;
    let mut packet = Packet::empty();
    let mut jpeg = Vec::new();
    while enc.receive_packet(&mut packet).is_ok() {
        jpeg.extend_from_slice(packet.data().unwrap_or_default());
    }
    if jpeg.is_empty() {
        return Err(PipelineError::permanent("the MJPEG encoder produced no thumbnail"));
    }
    std::fs::write(out, jpeg)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_fit_512_and_keep_the_aspect() {
        assert_eq!(thumbnail_size(64, 48), (64, 48));
        assert_eq!(thumbnail_size(512, 100), (512, 100));
        assert_eq!(thumbnail_size(1280, 720), (512, 288));
        assert_eq!(thumbnail_size(720, 1280), (288, 512));
        assert_eq!(thumbnail_size(4096, 1), (512, 1));
    }
}
