//! The lip-synced frames out: RGB frames → H.264 (yuv420p) in an MP4, one frame at a time, so memory does
//! not grow with the clip. The audio is muxed afterwards (`media::mux`).

use std::path::Path;

use ffmpeg::{Dictionary, Packet, Rational, codec, encoder, format, frame, software};
use ffmpeg_next as ffmpeg;

use crate::error::PipelineError;

pub struct VideoWriter {
    octx: format::context::Output,
    encoder: encoder::Video,
    scaler: software::scaling::Context,
    rgb: frame::Video,
    yuv: frame::Video,
    packet: Packet,
    index: usize,
    time_base: Rational,
    stream_tb: Rational,
    next_pts: i64,
    width: u32,
    height: u32,
}

impl VideoWriter {
    /// An MP4 at `path` for `width`×`height` RGB frames at `fps` (a rational: 30000/1001 stays exact).
    /// H.264 with 4:2:0 chroma needs even sides: an odd last row or column is dropped.
    pub fn create(
        path: &Path,
        width: u32,
        height: u32,
        fps: Rational,
        tags: &[(&str, &str)],
    ) -> Result<Self, PipelineError> {
        crate::media::init();
        let (out_w, out_h) = (width & !1, height & !1);
        if out_w < 2 || out_h < 2 {
            return Err(PipelineError::permanent(format!("a {width}x{height} frame is too small to encode")));
        }
        let mut octx = format::output(path)?;
        let mut meta = Dictionary::new();
        for (k, v) in tags {
            meta.set(k, v);
        }
        octx.set_metadata(meta);
        let global_header = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);
        let codec = encoder::find_by_name("libx264")
            .or_else(|| encoder::find(codec::Id::H264))
            .ok_or_else(|| PipelineError::permanent("this FFmpeg build has no H.264 encoder (install libx264)"))?;
        let index = octx.add_stream(codec)?.index();
        let mut enc = codec::context::Context::new_with_codec(codec).encoder().video()?;
        let time_base = Rational(fps.denominator(), fps.numerator());
        enc.set_width(out_w);
        enc.set_height(out_h);
        enc.set_format(format::Pixel::YUV420P);
        enc.set_time_base(time_base);
        enc.set_frame_rate(Some(fps));
        if global_header {
            enc.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let mut options = Dictionary::new();
        options.set("preset", "veryfast");
        options.set("crf", "18");
        let encoder = enc.open_with(options)?;
        {
            let mut ost = octx.stream_mut(index).expect("stream just added");
            ost.set_parameters(&encoder);
            ost.set_time_base(time_base);
        }
        octx.write_header()?;
        let stream_tb = octx.stream(index).expect("stream just added").time_base();
        let scaler = software::scaling::Context::get(
            format::Pixel::RGB24,
            out_w,
            out_h,
            format::Pixel::YUV420P,
            out_w,
            out_h,
            software::scaling::Flags::BILINEAR,
        )?;
        Ok(VideoWriter {
            octx,
            encoder,
            scaler,
            rgb: frame::Video::new(format::Pixel::RGB24, out_w, out_h),
            yuv: frame::Video::new(format::Pixel::YUV420P, out_w, out_h),
            packet: Packet::empty(),
            index,
            time_base,
            stream_tb,
            next_pts: 0,
            width,
            height,
        })
    }

    /// Appends one frame: `rgb` is `width`×`height`×3 bytes, rows packed.
    pub fn write(&mut self, rgb: &[u8]) -> Result<(), PipelineError> {
        let (w, h) = (self.width as usize, self.height as usize);
        assert_eq!(rgb.len(), w * h * 3, "frame size");
        let (out_w, out_h) = (self.rgb.width() as usize, self.rgb.height() as usize);
        let stride = self.rgb.stride(0);
        let data = self.rgb.data_mut(0);
        for y in 0..out_h {
            data[y * stride..y * stride + out_w * 3].copy_from_slice(&rgb[y * w * 3..y * w * 3 + out_w * 3]);
        }
        self.scaler.run(&self.rgb, &mut self.yuv)?;
        self.yuv.set_pts(Some(self.next_pts));
        self.next_pts += 1;
        self.encoder.send_frame(&self.yuv)?;
        self.drain()
    }

    pub fn frames(&self) -> u64 {
        self.next_pts as u64
    }

    /// Flushes the encoder and closes the file.
    pub fn finish(mut self) -> Result<u64, PipelineError> {
        self.encoder.send_eof()?;
        self.drain()?;
        self.octx.write_trailer()?;
        Ok(self.next_pts as u64)
    }

    fn drain(&mut self) -> Result<(), PipelineError> {
        while self.encoder.receive_packet(&mut self.packet).is_ok() {
            self.packet.set_stream(self.index);
            if self.packet.duration() == 0 {
                self.packet.set_duration(1);
            }
            self.packet.rescale_ts(self.time_base, self.stream_tb);
            self.packet.write_interleaved(&mut self.octx)?;
        }
        Ok(())
    }
}
