//! Faces on the committed face clip (`examples/media/portrait.mp4`), found by the real SCRFD model on
//! ONNX Runtime; frame decoding of good, bad and hostile media.
//!
//! Needs ONNX Runtime (`ORT_DYLIB_PATH`, default: the `onnxruntime` wheel in the harness's venv) and the
//! fixture directory (`AINERN2D_TEST_FIXTURES`, default `/tmp/ainern2d-services/fixtures`) holding
//! `scrfd.onnx` and the generated models; `scripts/services.sh` installs both.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use ainern2d_pipelines::PipelineErrorKind;
use ainern2d_pipelines::lipsync::face::{self, Detector, FaceBox, Pads};
use ainern2d_pipelines::lipsync::frames::{self, Limits};
use ainern2d_pipelines::onnx::{OnnxConfig, OnnxModel, runtime};

const DEFAULT_ORT: &str =
    "/tmp/ainern2d-services/py/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1";
const DEFAULT_FIXTURES: &str = "/tmp/ainern2d-services/fixtures";
const INSTALL: &str = "run `scripts/services.sh` (or: pip install onnxruntime==1.31.1 onnx numpy; extract \
                       models/scrfd.onnx from the scrfd 0.3.0 sdist into the fixture directory; \
                       python scripts/fixtures/make_models.py <fixture directory>)";

fn media(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/media").join(name)
}

fn fixture(name: &str) -> PathBuf {
    let dir = std::env::var_os("AINERN2D_TEST_FIXTURES").map_or_else(|| PathBuf::from(DEFAULT_FIXTURES), PathBuf::from);
    let path = dir.join(name);
    assert!(path.is_file(), "test fixture {} is missing: {INSTALL}", path.display());
    path
}

fn onnx_config() -> OnnxConfig {
    let library = std::env::var_os("ORT_DYLIB_PATH").map_or_else(|| PathBuf::from(DEFAULT_ORT), PathBuf::from);
    assert!(library.is_file(), "ONNX Runtime ({}) is missing: {INSTALL}", library.display());
    OnnxConfig { runtime_path: Some(library), ..OnnxConfig::default() }
}

fn load(name: &str, file: &str) -> Arc<OnnxModel> {
    let config = onnx_config();
    let rt = runtime(&config).unwrap_or_else(|e| panic!("{e}"));
    Arc::new(OnnxModel::load(rt, &config, name, &fixture(file), "cpu").unwrap_or_else(|e| panic!("{e}")))
}

fn detector() -> &'static Detector {
    static DETECTOR: OnceLock<Detector> = OnceLock::new();
    DETECTOR.get_or_init(|| Detector::new(load("scrfd", "scrfd.onnx")).unwrap())
}

struct Frame {
    rgb: Vec<u8>,
    width: u32,
    height: u32,
}

fn decode_all(path: &Path, limits: &Limits) -> Result<Vec<Frame>, ainern2d_pipelines::PipelineError> {
    let mut out = Vec::new();
    frames::decode_rgb(path, limits, u64::MAX, |i, rgb, width, height| {
        assert_eq!(i, out.len() as u64);
        out.push(Frame { rgb: rgb.to_vec(), width, height });
        Ok(())
    })?;
    Ok(out)
}

#[test]
fn the_portrait_clip_has_one_face_in_every_frame_where_the_painting_has_it() {
    let clip = media("portrait.mp4");
    let info = frames::probe(&clip, &Limits::default()).unwrap();
    assert_eq!((info.width, info.height, info.frames, info.still), (256, 326, Some(50), false));
    assert!((info.fps - 25.0).abs() < 1e-9 && info.codec == "h264", "{info:?}");
    let all = decode_all(&clip, &Limits::default()).unwrap();
    assert_eq!(all.len(), 50);

    let detector = detector();
    let started = Instant::now();
    let mut found = Vec::new();
    for (i, f) in all.iter().enumerate() {
        let faces = detector.detect(&f.rgb, f.width, f.height).unwrap();
        assert_eq!(faces.len(), 1, "frame {i}: {faces:?}");
        let b = faces[0];
        // Gauss's face: about 70×90 px, left of centre in the upper half of the picture.
        let (cx, cy) = ((b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0);
        assert!((110.0..150.0).contains(&cx) && (75.0..120.0).contains(&cy), "frame {i}: {b:?}");
        assert!((55.0..110.0).contains(&b.width()) && (70.0..130.0).contains(&b.height()), "frame {i}: {b:?}");
        assert!(b.score >= 0.5, "frame {i}: {b:?}");
        found.push(face::main_face(&faces));
    }
    let per_frame = started.elapsed() / all.len() as u32;
    eprintln!("SCRFD 640×640 on the CPU: {per_frame:?} a frame");

    // The clip zooms in: the face grows and moves, and the track follows it.
    let (first, last) = (found[0].unwrap(), found[49].unwrap());
    assert!(last.width() > first.width() * 1.05, "{first:?} → {last:?}");
    let track = face::track(&found, Pads::default(), 256, 326, face::SMOOTH_WINDOW).unwrap();
    assert_eq!(track.len(), 50);
    for (t, f) in track.iter().zip(&found) {
        let f = f.unwrap();
        assert!(t.y2 <= 326.0 && t.x1 >= 0.0);
        assert!((t.y2 - (f.y2 + 10.0)).abs() < 6.0, "the chin pad, smoothed: {t:?} against {f:?}");
        let [x1, y1, x2, y2] = t.pixels(256, 326);
        assert!(x1 < x2 && y1 < y2 && x2 <= 256 && y2 <= 326);
    }
}

#[test]
fn a_frame_without_a_face_has_none_and_a_clip_without_one_fails() {
    let detector = detector();
    let (w, h) = (320u32, 240u32);
    let black = vec![0u8; (w * h * 3) as usize];
    assert_eq!(detector.detect(&black, w, h).unwrap(), Vec::<FaceBox>::new());
    let grey: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
    assert!(detector.detect(&grey, w, h).unwrap().is_empty());
    let e = face::track(&[None, None, None], Pads::default(), w, h, 5).unwrap_err();
    assert_eq!(e.kind, PipelineErrorKind::Permanent);
    assert!(e.message.contains("no face was found"), "{e}");

    let short = detector.detect(&black[..100], w, h).unwrap_err();
    assert!(short.message.contains("needs 230400 bytes"), "{short}");
}

#[test]
fn a_larger_frame_finds_the_same_face_scaled() {
    // A frame of the clip scaled up 3× (a large, non-square frame) finds the same face, scaled.
    let all = decode_all(&media("portrait.mp4"), &Limits::default()).unwrap();
    let f = &all[0];
    let (w, h) = (f.width * 3, f.height * 3);
    let mut big = vec![0u8; (w * h * 3) as usize];
    for y in 0..h {
        for x in 0..w {
            let src = (((y / 3) * f.width + x / 3) * 3) as usize;
            let dst = ((y * w + x) * 3) as usize;
            big[dst..dst + 3].copy_from_slice(&f.rgb[src..src + 3]);
        }
    }
    let small = detector().detect(&f.rgb, f.width, f.height).unwrap()[0];
    let large = detector().detect(&big, w, h).unwrap()[0];
    for (a, b) in [(small.x1, large.x1), (small.y1, large.y1), (small.x2, large.x2), (small.y2, large.y2)] {
        assert!((a * 3.0 - b).abs() < 12.0, "{small:?} ×3 against {large:?}");
    }
}

#[test]
fn a_model_that_is_not_scrfd_is_refused_naming_what_it_has() {
    let e = Detector::new(load("wav2lip-tiny", "wav2lip-tiny.onnx")).unwrap_err();
    assert_eq!(e.kind, PipelineErrorKind::Permanent);
    assert!(e.message.contains("face detector `wav2lip-tiny` does not look like an SCRFD model"), "{e}");
    assert!(e.message.contains("mel_spectrogram f32[?,1,80,16]"), "{e}");
}

#[test]
fn a_still_image_is_one_frame_at_25_fps() {
    let still = media("still.png");
    let info = frames::probe(&still, &Limits::default()).unwrap();
    assert!(info.still && info.frames == Some(1) && info.fps == frames::STILL_FPS, "{info:?}");
    let all = decode_all(&still, &Limits::default()).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].rgb.len(), (info.width * info.height * 3) as usize);
}

#[test]
fn decoding_stops_at_the_frames_asked_for_and_errors_from_the_callback_stop_it() {
    let clip = media("portrait.mp4");
    let mut seen = 0;
    let n = frames::decode_rgb(&clip, &Limits::default(), 7, |_, _, _, _| {
        seen += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!((n, seen), (7, 7));
    let e = frames::decode_rgb(&clip, &Limits::default(), 50, |i, _, _, _| {
        if i == 3 { Err(ainern2d_pipelines::PipelineError::cancelled()) } else { Ok(()) }
    })
    .unwrap_err();
    assert_eq!(e.kind, PipelineErrorKind::Cancelled);
}

#[test]
fn bad_media_is_refused_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let permanent = |r: Result<frames::VideoInfo, ainern2d_pipelines::PipelineError>| {
        let e = r.unwrap_err();
        assert_eq!(e.kind, PipelineErrorKind::Permanent, "{e}");
        e.message
    };

    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "these are not the frames you are looking for\n".repeat(50)).unwrap();
    let m = permanent(frames::probe(&text, &Limits::default()));
    assert!(m.contains("notes.mp4") && m.contains("not a picture or video"), "{m}");

    let m = permanent(frames::probe(&media("line.wav"), &Limits::default()));
    assert!(m.contains("no picture or video stream"), "{m}");

    let m = permanent(frames::probe(&dir.path().join("absent.mp4"), &Limits::default()));
    assert!(m.contains("no such file"), "{m}");

    let tight = Limits { max_width: 200, max_height: 200, max_frames: 1000 };
    let m = permanent(frames::probe(&media("portrait.mp4"), &tight));
    assert!(m.contains("256×326") && m.contains("max_width"), "{m}");
    let few = Limits { max_frames: 20, ..Limits::default() };
    let m = permanent(frames::probe(&media("portrait.mp4"), &few));
    assert!(m.contains("50 frames") && m.contains("max_frames"), "{m}");

    // The clip's index is at the front (faststart): cut in half, it opens but runs out of frames.
    let bytes = std::fs::read(media("portrait.mp4")).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = decode_all(&cut, &Limits::default()).err().expect("a truncated clip must fail");
    assert_eq!(e.kind, PipelineErrorKind::Permanent);
    assert!(e.message.contains("cut.mp4") && e.message.contains("truncated"), "{e}");
    // Only its head: no index left to read.
    let head = dir.path().join("head.mp4");
    std::fs::write(&head, &bytes[..600]).unwrap();
    let e = decode_all(&head, &Limits::default()).err().expect("a clip's first bytes must fail");
    assert_eq!(e.kind, PipelineErrorKind::Permanent, "{e}");
}
