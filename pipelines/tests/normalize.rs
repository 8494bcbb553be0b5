//! `comfy::normalize` over every format a ComfyUI output node writes, each made at test time with the
//! `ffmpeg` command line (lavfi sources), and the results checked with `ffprobe`'s JSON. Needs `ffmpeg`
//! and `ffprobe` on the PATH (Debian: `apt-get install ffmpeg`).

use std::path::{Path, PathBuf};
use std::process::Command;

use ainern2d_pipelines::comfy::normalize::{Limits, Normalized, normalize};
use ainern2d_pipelines::{CancellationToken, PipelineError, PipelineErrorKind};
use serde_json::Value;

fn tool(name: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name} ({e}): install FFmpeg's tools (apt-get install ffmpeg)"));
    assert!(out.status.success(), "{name} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs `ffmpeg -y` with a lavfi input (`-f lavfi -i <source>` when `source` is given) and writes `out`.
fn ffmpeg(dir: &Path, source: &str, args: &[&str], out: &str) -> PathBuf {
    let path = dir.join(out);
    let mut all = vec!["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source];
    all.extend_from_slice(args);
    all.push(path.to_str().unwrap());
    tool("ffmpeg", &all);
    path
}

fn probe(path: &Path) -> Value {
    let args = ["-v", "error", "-print_format", "json", "-show_streams", "-show_format", path.to_str().unwrap()];
    serde_json::from_slice(&tool("ffprobe", &args).stdout).expect("ffprobe's JSON")
}

fn stream<'a>(info: &'a Value, kind: &str) -> Option<&'a Value> {
    info["streams"].as_array().unwrap().iter().find(|s| s["codec_type"] == kind)
}

fn num(v: &Value) -> f64 {
    v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_f64()).unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The top-level MP4 boxes and their offsets.
fn atoms(path: &Path) -> Vec<(String, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let (mut at, mut found) = (0usize, Vec::new());
    while at + 8 <= bytes.len() {
        let mut size = u64::from(u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()));
        if size == 1 {
            size = u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        } else if size == 0 {
            size = (bytes.len() - at) as u64;
        }
        found.push((String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned(), at as u64));
        assert!(size >= 8, "a box of {size} bytes at {at}");
        at += size as usize;
    }
    found
}

fn limits() -> Limits {
    Limits { max_width: 3840, max_height: 2160, max_frames: 7200 }
}

fn run(inputs: &[PathBuf], fps: u32, out: &Path) -> Result<Normalized, PipelineError> {
    normalize(inputs, fps, &limits(), out, &CancellationToken::new())
}

/// Checks `video.mp4` and `thumbnail.jpg` against what `n` claims and what was expected.
fn check(n: &Normalized, out: &Path, (width, height): (u32, u32), frames: u64, fps: u32, audio: bool) {
    assert_eq!((n.width, n.height, n.frames, n.fps), (width, height, frames, fps), "{n:?}");
    assert_eq!(n.video, out.join("video.mp4"));
    assert_eq!(n.thumbnail, out.join("thumbnail.jpg"));
    assert!((n.duration_s - frames as f64 / f64::from(fps)).abs() < 1e-9, "{n:?}");
    assert_eq!(n.bytes, std::fs::metadata(&n.video).unwrap().len());

    let info = probe(&n.video);
    let v = stream(&info, "video").expect("a video stream");
    assert_eq!(v["codec_name"], "h264");
    assert_eq!(v["pix_fmt"], "yuv420p");
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(width.into()), Some(height.into())));
    assert_eq!(num(&v["nb_frames"]) as u64, frames, "{v}");
    assert_eq!(v["avg_frame_rate"], format!("{fps}/1"), "{v}");
    let duration = num(&v["duration"]);
    assert!((duration - frames as f64 / f64::from(fps)).abs() < 0.5 / f64::from(fps), "duration {duration}: {v}");
    match stream(&info, "audio") {
        Some(a) => {
            assert!(audio && a["codec_name"] == "aac", "audio {a}");
            // The sources' audio lasts as long as their pictures.
            let (heard, seen) = (num(&a["duration"]), frames as f64 / f64::from(fps));
            assert!((heard - seen).abs() < 0.1, "audio {heard} s for {seen} s of video: {a}");
        }
        None => assert!(!audio, "the source's audio was lost"),
    }
    let atoms = atoms(&n.video);
    let at = |name: &str| atoms.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}: {atoms:?}")).1;
    assert!(at("moov") < at("mdat"), "moov is not before mdat (no faststart): {atoms:?}");

    let jpeg = std::fs::read(&n.thumbnail).unwrap();
    assert_eq!(&jpeg[..3], &[0xFF, 0xD8, 0xFF], "not a JPEG");
    let t = probe(&n.thumbnail);
    let t = stream(&t, "video").unwrap();
    assert_eq!(t["codec_name"], "mjpeg");
    let (tw, th) = (t["width"].as_u64().unwrap(), t["height"].as_u64().unwrap());
    assert!(tw.max(th) <= 512, "thumbnail {tw}×{th}");
    if width.max(height) <= 512 {
        assert_eq!((tw, th), (width.into(), height.into()), "a small frame is not scaled");
    }
    let mut left: Vec<_> = std::fs::read_dir(out).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.retain(|name| name.to_string_lossy().starts_with(".video."));
    assert!(left.is_empty(), "scratch files left: {left:?}");
}

fn permanent(result: Result<Normalized, PipelineError>, names: &Path, says: &[&str]) -> String {
    let e = result.expect_err("a bad input was accepted");
    assert_eq!(e.kind, PipelineErrorKind::Permanent, "{e}");
    assert!(e.message.contains(&names.display().to_string()), "the error does not name {}: {e}", names.display());
    for s in says {
        assert!(e.message.contains(s), "the error does not say {s:?}: {e}");
    }
    e.message
}

const SRC: &str = "testsrc=size=64x48:rate=8";

#[test]
fn mp4_frames_are_kept_and_played_at_the_requested_fps() {
    let dir = tempfile::tempdir().unwrap();
    let src = ffmpeg(dir.path(), SRC, &["-frames:v", "12", "-c:v", "libx264", "-pix_fmt", "yuv420p"], "in.mp4");
    let out = dir.path().join("out");
    let n = run(&[src], 24, &out).unwrap();
    check(&n, &out, (64, 48), 12, 24, false);
    assert_eq!(n.source_format, "mp4 h264");
}

#[test]
fn mp4_audio_is_kept_as_aac() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ComfyUI_00001_.mp4");
    let args = [
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x48:rate=24",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100",
        "-t",
        "1",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-shortest",
        path.to_str().unwrap(),
    ];
    tool("ffmpeg", &args);
    let n = run(&[path], 24, dir.path()).unwrap();
    check(&n, dir.path(), (64, 48), 24, 24, true);
}

#[test]
fn webm_vp9_with_opus_audio_becomes_h264_with_aac() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.webm");
    let args = [
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        SRC,
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "1",
        "-c:v",
        "libvpx-vp9",
        "-c:a",
        "libopus",
        "-shortest",
        path.to_str().unwrap(),
    ];
    tool("ffmpeg", &args);
    let n = run(&[path], 8, dir.path()).unwrap();
    check(&n, dir.path(), (64, 48), 8, 8, true);
    assert_eq!(n.source_format, "webm vp9");
}

#[test]
fn gif_frames_are_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let src = ffmpeg(dir.path(), "testsrc=size=64x48:rate=10", &["-frames:v", "10"], "anim_00001.gif");
    let n = run(&[src], 8, dir.path()).unwrap();
    check(&n, dir.path(), (64, 48), 10, 8, false);
    assert_eq!(n.source_format, "gif animated");
}

#[test]
fn apng_named_png_is_an_animation() {
    let dir = tempfile::tempdir().unwrap();
    let src = ffmpeg(dir.path(), SRC, &["-frames:v", "6", "-f", "apng"], "ComfyUI_00001_.png");
    let n = run(&[src], 6, dir.path()).unwrap();
    check(&n, dir.path(), (64, 48), 6, 6, false);
    assert_eq!(n.source_format, "png animated");
}

#[test]
fn animated_webp_is_decoded_without_ffmpeg() {
    let dir = tempfile::tempdir().unwrap();
    let src = ffmpeg(dir.path(), SRC, &["-frames:v", "8", "-c:v", "libwebp_anim", "-loop", "0"], "anim_00001_.webp");
    let n = run(&[src], 8, dir.path()).unwrap();
    check(&n, dir.path(), (64, 48), 8, 8, false);
    assert_eq!(n.source_format, "webp animated");
}

#[test]
fn animated_webp_with_alpha_and_odd_sides() {
    let dir = tempfile::tempdir().unwrap();
    let args =
        ["-frames:v", "5", "-vf", "format=rgba,colorchannelmixer=aa=0.5", "-c:v", "libwebp_anim", "-lossless", "1"];
    let src = ffmpeg(dir.path(), "testsrc=size=65x49:rate=8", &args, "alpha.webp");
    let n = run(&[src], 10, dir.path()).unwrap();
    check(&n, dir.path(), (64, 48), 5, 10, false);
}

#[test]
fn png_sequence_plays_in_order_with_the_middle_frame_as_thumbnail() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = ["red", "lime", "blue"]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let source = format!("color=c={c}:size=64x48");
            ffmpeg(dir.path(), &source, &["-frames:v", "1"], &format!("ComfyUI_{:05}_.png", i + 1))
        })
        .collect();
    let out = dir.path().join("out");
    let n = run(&files, 2, &out).unwrap();
    check(&n, &out, (64, 48), 3, 2, false);
    assert_eq!(n.source_format, "png sequence");
    let thumb = n.thumbnail.to_str().unwrap();
    let args = ["-v", "error", "-i", thumb, "-vf", "scale=1:1:flags=area", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"];
    let rgb = tool("ffmpeg", &args).stdout;
    assert!(rgb[1] > 200 && rgb[0] < 50 && rgb[2] < 50, "the thumbnail is not the middle (green) frame: {rgb:?}");
}

#[test]
fn a_single_still_is_a_one_frame_video() {
    let dir = tempfile::tempdir().unwrap();
    let src = ffmpeg(dir.path(), SRC, &["-frames:v", "1"], "ComfyUI_00001_.png");
    let n = run(&[src], 24, dir.path()).unwrap();
    check(&n, dir.path(), (64, 48), 1, 24, false);
    assert_eq!(n.source_format, "png still");
}

#[test]
fn odd_sides_are_cropped_to_even() {
    let dir = tempfile::tempdir().unwrap();
    let src = ffmpeg(dir.path(), "testsrc=size=65x49:rate=8", &["-frames:v", "4", "-c:v", "libvpx-vp9"], "odd.webm");
    let n = run(&[src], 8, dir.path()).unwrap();
    check(&n, dir.path(), (64, 48), 4, 8, false);
}

#[test]
fn large_frames_get_a_512_px_thumbnail() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["-frames:v", "2", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"];
    let src = ffmpeg(dir.path(), "testsrc=size=1280x720:rate=8", &args, "big.mp4");
    let n = run(&[src], 8, dir.path()).unwrap();
    check(&n, dir.path(), (1280, 720), 2, 8, false);
    let t = probe(&n.thumbnail);
    let t = stream(&t, "video").unwrap();
    assert_eq!((t["width"].as_u64(), t["height"].as_u64()), (Some(512), Some(288)));
}

#[test]
fn a_text_file_named_mp4_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("video.mp4");
    std::fs::write(&path, "this is not a video\n".repeat(50)).unwrap();
    permanent(run(std::slice::from_ref(&path), 8, dir.path()), &path, &["not a picture or video"]);
}

#[test]
fn an_empty_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.mp4");
    std::fs::write(&path, b"").unwrap();
    permanent(run(std::slice::from_ref(&path), 8, dir.path()), &path, &[]);
    assert!(!dir.path().join("video.mp4").exists(), "a failed run left a video");
}

#[test]
fn a_truncated_mp4_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["-frames:v", "48", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart"];
    let path = ffmpeg(dir.path(), SRC, &args, "cut.mp4");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() * 6 / 10]).unwrap();
    let out = dir.path().join("out");
    let message = permanent(run(std::slice::from_ref(&path), 8, &out), &path, &["truncated"]);
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "a failed run left {left:?} behind ({message})");
}

#[test]
fn an_mp4_without_frames_or_without_video_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let zero = ffmpeg(dir.path(), SRC, &["-frames:v", "0", "-c:v", "libx264"], "zero.mp4");
    permanent(run(std::slice::from_ref(&zero), 8, dir.path()), &zero, &[]);
    let audio = ffmpeg(dir.path(), "sine=sample_rate=44100", &["-t", "0.5", "-c:a", "aac"], "audio.mp4");
    permanent(run(std::slice::from_ref(&audio), 8, dir.path()), &audio, &["no picture or video stream"]);
}

#[test]
fn a_sequence_of_mixed_sizes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = ffmpeg(dir.path(), SRC, &["-frames:v", "1"], "ComfyUI_00001_.png");
    let b = ffmpeg(dir.path(), "testsrc=size=32x32", &["-frames:v", "1"], "ComfyUI_00002_.png");
    let message = permanent(run(&[a.clone(), b.clone()], 8, dir.path()), &b, &["32×32", "64×48", "share a size"]);
    assert!(message.contains(&a.display().to_string()), "{message}");
}

#[test]
fn an_animation_in_a_sequence_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let still = ffmpeg(dir.path(), SRC, &["-frames:v", "1"], "first.png");
    let video = ffmpeg(dir.path(), SRC, &["-frames:v", "4", "-c:v", "libx264"], "clip.mp4");
    permanent(run(&[video.clone(), still], 8, dir.path()), &video, &["still images"]);
}

#[test]
fn over_limit_sizes_and_frame_counts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mp4 = ffmpeg(dir.path(), SRC, &["-frames:v", "12", "-c:v", "libx264", "-pix_fmt", "yuv420p"], "in.mp4");
    let webp = ffmpeg(dir.path(), SRC, &["-frames:v", "12", "-c:v", "libwebp_anim"], "in.webp");
    let gif = ffmpeg(dir.path(), SRC, &["-frames:v", "12"], "in.gif");
    let cancel = CancellationToken::new();
    let small = Limits { max_width: 32, max_height: 32, max_frames: 100 };
    for src in [&mp4, &webp] {
        let result = normalize(std::slice::from_ref(src), 8, &small, dir.path(), &cancel);
        permanent(result, src, &["64×48", "max_width"]);
    }
    let short = Limits { max_frames: 5, ..limits() };
    for src in [&mp4, &webp, &gif] {
        let result = normalize(std::slice::from_ref(src), 8, &short, dir.path(), &cancel);
        permanent(result, src, &["max_frames"]);
    }
    let stills: Vec<PathBuf> =
        (1..=3).map(|i| ffmpeg(dir.path(), SRC, &["-frames:v", "1"], &format!("s_{i:05}_.png"))).collect();
    let two = Limits { max_frames: 2, ..limits() };
    permanent(normalize(&stills, 8, &two, dir.path(), &cancel), &stills[0], &["3 images", "max_frames"]);
    let exact = Limits { max_frames: 12, ..limits() };
    let n = normalize(std::slice::from_ref(&mp4), 8, &exact, &dir.path().join("ok"), &cancel).unwrap();
    assert_eq!(n.frames, 12, "exactly max_frames is allowed");
}

#[test]
fn no_files_and_unusable_fps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = run(&[], 8, dir.path()).unwrap_err();
    assert!(e.kind == PipelineErrorKind::Permanent && e.message.contains("no files"), "{e}");
    let src = ffmpeg(dir.path(), SRC, &["-frames:v", "1"], "a.png");
    let e = run(&[src], 0, dir.path()).unwrap_err();
    assert!(e.kind == PipelineErrorKind::Permanent && e.message.contains("fps 0"), "{e}");
}

#[test]
fn cancelled_before_start_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = ffmpeg(dir.path(), SRC, &["-frames:v", "4", "-c:v", "libx264"], "in.mp4");
    let cancel = CancellationToken::new();
    cancel.cancel();
    let out = dir.path().join("out");
    let e = normalize(&[src], 8, &limits(), &out, &cancel).unwrap_err();
    assert_eq!(e.kind, PipelineErrorKind::Cancelled, "{e}");
    assert!(!out.join("video.mp4").exists() && !out.join("thumbnail.jpg").exists());
}
