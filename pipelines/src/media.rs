//! The FFmpeg work of the mock pipelines: encoding a synthetic H.264 clip and muxing video with audio.
//! Everything here is blocking and runs on the pipeline's thread.

use std::path::Path;
use std::sync::Once;

use ffmpeg::{ChannelLayout, Dictionary, Packet, Rational, codec, encoder, filter, format, frame, media, software};
use ffmpeg_next as ffmpeg;
use tokio_util::sync::CancellationToken;

use crate::error::PipelineError;

pub(crate) fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // Registration cannot fail on FFmpeg >= 4; a failure would surface on first use anyway.
        let _ = ffmpeg::init();
        ffmpeg::log::set_level(ffmpeg::log::Level::Error);
    });
}

/// Decodes the first frame of an image or video and scales it to `width`×`height` YUV 4:2:0.
pub(crate) fn load_still(path: &Path, width: u32, height: u32) -> Result<frame::Video, PipelineError> {
    let corrupt =
        |e: ffmpeg::Error| PipelineError::permanent(format!("input image {} cannot be decoded: {e}", path.display()));
    let mut ictx = format::input(path).map_err(corrupt)?;
    let stream = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| PipelineError::permanent(format!("input image {} has no picture", path.display())))?;
    let index = stream.index();
    let mut decoder = codec::context::Context::from_parameters(stream.parameters())
        .map_err(corrupt)?
        .decoder()
        .video()
        .map_err(corrupt)?;
    let mut decoded = frame::Video::empty();
    let mut got = false;
    let mut packet = Packet::empty();
    while packet.read(&mut ictx).is_ok() {
        if packet.stream() != index {
            continue;
        }
        decoder.send_packet(&packet).map_err(corrupt)?;
        if decoder.receive_frame(&mut decoded).is_ok() {
            got = true;
            break;
        }
    }
    if !got {
        decoder.send_eof().map_err(corrupt)?;
        got = decoder.receive_frame(&mut decoded).is_ok();
    }
    if !got {
        return Err(PipelineError::permanent(format!("input image {} holds no decodable frame", path.display())));
    }
    let mut scaler = software::scaling::Context::get(
        decoded.format(),
        decoded.width(),
        decoded.height(),
        format::Pixel::YUV420P,
        width,
        height,
        software::scaling::Flags::BILINEAR,
    )
    .map_err(corrupt)?;
    let mut out = frame::Video::empty();
    scaler.run(&decoded, &mut out).map_err(corrupt)?;
    Ok(out)
}

/// What the synthetic clip looks like.
pub(crate) struct Clip<'a> {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub frames: u64,
    pub seed: u64,
    pub background: Option<&'a frame::Video>,
}

/// Encodes a test pattern (the background, if any, with a moving bar) as H.264 in MP4.
/// `on_frame(done, total)` is called after every frame.
pub(crate) fn encode_clip(
    path: &Path,
    clip: &Clip<'_>,
    cancel: &CancellationToken,
    mut on_frame: impl FnMut(u64, u64),
) -> Result<(), PipelineError> {
    let mut octx = format::output(path)?;
    let global_header = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);
    let codec = encoder::find_by_name("libx264")
        .or_else(|| encoder::find(codec::Id::H264))
        .ok_or_else(|| PipelineError::permanent("this FFmpeg build has no H.264 encoder (install libx264)"))?;
    let index = octx.add_stream(codec)?.index();
    let mut enc = codec::context::Context::new_with_codec(codec).encoder().video()?;
    let time_base = Rational(1, clip.fps as i32);
    enc.set_width(clip.width);
    enc.set_height(clip.height);
    enc.set_format(format::Pixel::YUV420P);
    enc.set_time_base(time_base);
    enc.set_frame_rate(Some(Rational(clip.fps as i32, 1)));
    enc.set_gop(clip.fps.max(1));
    if global_header {
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
    }
    let mut options = Dictionary::new();
    options.set("preset", "ultrafast");
    options.set("tune", "zerolatency");
    let mut encoder = enc.open_with(options)?;
    {
        let mut ost = octx.stream_mut(index).expect("stream just added");
        ost.set_parameters(&encoder);
        ost.set_time_base(time_base);
    }
    octx.write_header()?;
    let stream_tb = octx.stream(index).expect("stream just added").time_base();

    let mut frame = frame::Video::new(format::Pixel::YUV420P, clip.width, clip.height);
    let mut packet = Packet::empty();
    for i in 0..clip.frames {
        if cancel.is_cancelled() {
            return Err(PipelineError::cancelled());
        }
        paint(&mut frame, clip, i);
        frame.set_pts(Some(i as i64));
        encoder.send_frame(&frame)?;
        drain(&mut encoder, &mut packet, index, time_base, stream_tb, &mut octx)?;
        on_frame(i + 1, clip.frames);
    }
    encoder.send_eof()?;
    drain(&mut encoder, &mut packet, index, time_base, stream_tb, &mut octx)?;
    octx.write_trailer()?;
    Ok(())
}

fn drain(
    encoder: &mut encoder::Video,
    packet: &mut Packet,
    index: usize,
    from: Rational,
    to: Rational,
    octx: &mut format::context::Output,
) -> Result<(), PipelineError> {
    while encoder.receive_packet(packet).is_ok() {
        packet.set_stream(index);
        // Each packet is one frame; without a duration the MP4 muxer gives the last frame none and the
        // clip comes out one frame short.
        if packet.duration() == 0 {
            packet.set_duration(1);
        }
        packet.rescale_ts(from, to);
        packet.write_interleaved(octx)?;
    }
    Ok(())
}

/// Fills a frame: the background (or a seed-tinted gradient) with a bright vertical bar that sweeps across.
fn paint(frame: &mut frame::Video, clip: &Clip<'_>, index: u64) {
    let (w, h) = (clip.width as usize, clip.height as usize);
    let bar_x = ((index * 4) as usize) % w.max(1);
    let bar_w = (w / 16).max(2);
    for plane in 0..3 {
        let (pw, ph) = if plane == 0 { (w, h) } else { (w / 2, h / 2) };
        let stride = frame.stride(plane);
        let bg = clip.background.map(|b| (b.stride(plane), b.data(plane)));
        let tint = (clip.seed.wrapping_mul(31 + plane as u64) % 200) as u8;
        let data = frame.data_mut(plane);
        for y in 0..ph {
            for x in 0..pw {
                let full_x = if plane == 0 { x } else { x * 2 };
                let value = if plane == 0 && full_x >= bar_x && full_x < bar_x + bar_w {
                    235
                } else if let Some((bs, bd)) = bg {
                    bd[y * bs + x]
                } else if plane == 0 {
                    (16 + (y * 200 / ph.max(1)) as u8 / 2).wrapping_add(tint / 4)
                } else {
                    128u8.wrapping_add(tint / 8)
                };
                data[y * stride + x] = value;
            }
        }
    }
}

/// Muxes the video stream of `video` (copied, not re-encoded) with the audio of `audio` (encoded to AAC)
/// into an MP4 at `out`. `on_progress(fraction)` follows the video's timeline.
pub(crate) fn mux(
    video: &Path,
    audio: &Path,
    out: &Path,
    cancel: &CancellationToken,
    mut on_progress: impl FnMut(f32),
) -> Result<(), PipelineError> {
    let corrupt = |what: &str, p: &Path| {
        let (what, p) = (what.to_string(), p.display().to_string());
        move |e: ffmpeg::Error| PipelineError::permanent(format!("input {what} {p} cannot be read: {e}"))
    };
    let mut vctx = format::input(video).map_err(corrupt("video", video))?;
    let mut actx = format::input(audio).map_err(corrupt("audio", audio))?;
    let vstream = vctx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| PipelineError::permanent(format!("input video {} has no video stream", video.display())))?;
    let (v_index, v_tb, v_params) = (vstream.index(), vstream.time_base(), vstream.parameters());
    let v_duration = vctx.duration().max(1) as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE);
    let astream = actx
        .streams()
        .best(media::Type::Audio)
        .ok_or_else(|| PipelineError::permanent(format!("input audio {} has no audio stream", audio.display())))?;
    let a_index = astream.index();
    let mut decoder = codec::context::Context::from_parameters(astream.parameters())
        .and_then(|c| c.decoder().audio())
        .map_err(corrupt("audio", audio))?;
    if decoder.channel_layout().is_empty() {
        decoder.set_channel_layout(ChannelLayout::default(decoder.channels() as i32));
    }

    let mut octx = format::output(out)?;
    let global_header = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);
    let out_v = {
        let mut ost = octx.add_stream(encoder::find(codec::Id::None))?;
        ost.set_parameters(v_params);
        ost.set_time_base(v_tb);
        ost.index()
    };
    let aac = encoder::find(codec::Id::AAC)
        .ok_or_else(|| PipelineError::permanent("this FFmpeg build has no AAC encoder"))?;
    let out_a = octx.add_stream(aac)?.index();
    let mut aenc = codec::context::Context::new_with_codec(aac).encoder().audio()?;
    let rate = decoder.rate() as i32;
    let layout = if decoder.channels() >= 2 { ChannelLayout::STEREO } else { ChannelLayout::MONO };
    aenc.set_rate(rate);
    aenc.set_channel_layout(layout);
    aenc.set_format(format::Sample::F32(format::sample::Type::Planar));
    aenc.set_bit_rate(96_000);
    aenc.set_time_base(Rational(1, rate));
    if global_header {
        aenc.set_flags(codec::Flags::GLOBAL_HEADER);
    }
    let mut aenc = aenc.open_as(aac)?;
    {
        let mut ost = octx.stream_mut(out_a).expect("stream just added");
        ost.set_parameters(&aenc);
        ost.set_time_base(Rational(1, rate));
    }
    let mut graph = audio_graph(&decoder, &aenc)?;
    octx.write_header()?;
    let out_v_tb = octx.stream(out_v).expect("video stream").time_base();
    let out_a_tb = octx.stream(out_a).expect("audio stream").time_base();

    // Video first, one packet at a time, interleaved with the audio by timestamp so the muxer does not buffer
    // a whole stream.
    let mut vpacket = Packet::empty();
    let mut apacket = Packet::empty();
    let mut video_done = false;
    let mut audio_done = false;
    let mut v_time = 0.0f64;
    let mut a_time = 0.0f64;
    let a_tb = actx.stream(a_index).expect("audio stream").time_base();
    let mut encoded = Packet::empty();
    let mut decoded = frame::Audio::empty();
    let mut filtered = frame::Audio::empty();
    while !(video_done && audio_done) {
        if cancel.is_cancelled() {
            return Err(PipelineError::cancelled());
        }
        if !video_done && (audio_done || v_time <= a_time) {
            match vpacket.read(&mut vctx) {
                Ok(()) if vpacket.stream() == v_index => {
                    if let Some(pts) = vpacket.pts() {
                        v_time = pts as f64 * f64::from(v_tb);
                    }
                    vpacket.set_stream(out_v);
                    vpacket.rescale_ts(v_tb, out_v_tb);
                    vpacket.set_position(-1);
                    vpacket.write_interleaved(&mut octx)?;
                    on_progress((v_time / v_duration).clamp(0.0, 1.0) as f32);
                }
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => video_done = true,
                Err(e) => return Err(corrupt("video", video)(e)),
            }
        } else {
            match apacket.read(&mut actx) {
                Ok(()) if apacket.stream() == a_index => {
                    if let Some(pts) = apacket.pts() {
                        a_time = pts as f64 * f64::from(a_tb);
                    }
                    // The graph and the encoder count in samples (1/rate); a container that counts otherwise
                    // (WebM: milliseconds) would hand them timestamps they misread.
                    apacket.rescale_ts(a_tb, Rational(1, rate));
                    decoder.send_packet(&apacket).map_err(corrupt("audio", audio))?;
                }
                Ok(()) => continue,
                Err(ffmpeg::Error::Eof) => {
                    audio_done = true;
                    decoder.send_eof().map_err(corrupt("audio", audio))?;
                }
                Err(e) => return Err(corrupt("audio", audio)(e)),
            }
            while decoder.receive_frame(&mut decoded).is_ok() {
                let ts = decoded.timestamp();
                decoded.set_pts(ts);
                graph.get("in").expect("graph input").source().add(&decoded)?;
                encode_filtered(&mut graph, &mut filtered, &mut aenc, &mut encoded, out_a, out_a_tb, &mut octx)?;
            }
            if audio_done {
                graph.get("in").expect("graph input").source().flush()?;
                encode_filtered(&mut graph, &mut filtered, &mut aenc, &mut encoded, out_a, out_a_tb, &mut octx)?;
                aenc.send_eof()?;
                write_encoded(&mut aenc, &mut encoded, out_a, out_a_tb, &mut octx)?;
            }
        }
    }
    octx.write_trailer()?;
    on_progress(1.0);
    Ok(())
}

fn audio_graph(decoder: &codec::decoder::Audio, encoder: &encoder::Audio) -> Result<filter::Graph, PipelineError> {
    let mut graph = filter::Graph::new();
    let args = format!(
        "time_base={}:sample_rate={}:sample_fmt={}:channel_layout=0x{:x}",
        decoder.time_base(),
        decoder.rate(),
        decoder.format().name(),
        decoder.channel_layout().bits()
    );
    let missing = || PipelineError::permanent("this FFmpeg build lacks the abuffer/abuffersink filters");
    graph.add(&filter::find("abuffer").ok_or_else(missing)?, "in", &args)?;
    graph.add(&filter::find("abuffersink").ok_or_else(missing)?, "out", "")?;
    {
        let mut out = graph.get("out").expect("sink just added");
        out.set_sample_format(encoder.format());
        out.set_channel_layout(encoder.channel_layout());
        out.set_sample_rate(encoder.rate());
    }
    graph.output("in", 0)?.input("out", 0)?.parse("anull")?;
    graph.validate()?;
    graph.get("out").expect("sink").sink().set_frame_size(encoder.frame_size());
    Ok(graph)
}

fn encode_filtered(
    graph: &mut filter::Graph,
    filtered: &mut frame::Audio,
    aenc: &mut encoder::Audio,
    encoded: &mut Packet,
    index: usize,
    tb: Rational,
    octx: &mut format::context::Output,
) -> Result<(), PipelineError> {
    while graph.get("out").expect("graph output").sink().frame(filtered).is_ok() {
        aenc.send_frame(filtered)?;
        write_encoded(aenc, encoded, index, tb, octx)?;
    }
    Ok(())
}

fn write_encoded(
    aenc: &mut encoder::Audio,
    encoded: &mut Packet,
    index: usize,
    tb: Rational,
    octx: &mut format::context::Output,
) -> Result<(), PipelineError> {
    let enc_tb = Rational(1, aenc.rate() as i32);
    while aenc.receive_packet(encoded).is_ok() {
        encoded.set_stream(index);
        encoded.rescale_ts(enc_tb, tb);
        encoded.write_interleaved(octx)?;
    }
    Ok(())
}
