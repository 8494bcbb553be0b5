//! Faces for lip-sync: an SCRFD detector on ONNX Runtime, and the per-frame box track Wav2Lip crops
//! (the main face of each frame, padded, gaps filled, smoothed over a few frames).
//!
//! SCRFD (InsightFace's "Sample and Computation Redistribution" detector) predicts, for every cell of
//! three feature maps (strides 8, 16 and 32; two anchors a cell in the common exports), a face score, the
//! distances from the cell's corner to the four sides of the box, in units of the stride, and five
//! keypoints (unused here). Exports name their outputs differently and in different orders, so outputs
//! are told apart by their last dimension (1 score, 4 box, 10 keypoints) and their row count (which
//! stride). This module knows nothing of jobs: frames in, boxes out.

use std::sync::Arc;

use crate::error::PipelineError;
use crate::onnx::OnnxModel;

/// A face in frame coordinates (pixels, `x2`/`y2` exclusive), with the detector's confidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
    pub score: f32,
}

impl FaceBox {
    pub fn width(&self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }

    pub fn height(&self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }

    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    /// Intersection over union.
    pub fn iou(&self, other: &FaceBox) -> f32 {
        let w = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let h = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }

    /// The box as whole pixels `[x1, y1, x2, y2]` inside a `width`×`height` frame, at least one pixel
    /// wide and high: the crop to cut out and paste back.
    pub fn pixels(&self, width: u32, height: u32) -> [u32; 4] {
        let clamp = |v: f32, max: u32| (v.round().max(0.0) as u32).min(max);
        let x1 = clamp(self.x1, width.saturating_sub(1));
        let y1 = clamp(self.y1, height.saturating_sub(1));
        let x2 = clamp(self.x2, width).max(x1 + 1);
        let y2 = clamp(self.y2, height).max(y1 + 1);
        [x1, y1, x2, y2]
    }
}

/// Pixels added around a detected face before cropping, Wav2Lip's `--pads` (top, bottom, left, right);
/// the default leaves room for the chin, which detectors tend to cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pads {
    pub top: u32,
    pub bottom: u32,
    pub left: u32,
    pub right: u32,
}

impl Default for Pads {
    fn default() -> Self {
        Pads { top: 0, bottom: 10, left: 0, right: 0 }
    }
}

impl From<[u32; 4]> for Pads {
    fn from([top, bottom, left, right]: [u32; 4]) -> Self {
        Pads { top, bottom, left, right }
    }
}

/// Frames whose boxes are averaged (Wav2Lip's `T`).
pub const SMOOTH_WINDOW: usize = 5;
pub const DEFAULT_SCORE_THRESHOLD: f32 = 0.5;
pub const DEFAULT_NMS_IOU: f32 = 0.4;
/// The input side used when the model leaves it dynamic (the size SCRFD is trained at).
const DEFAULT_SIDE: usize = 640;

/// One feature map of the model: which outputs hold its scores and boxes, its stride, anchors a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Level {
    stride: usize,
    anchors: usize,
    score: usize,
    bbox: usize,
}

/// Matches outputs, given as `(last dimension, rows)` in the model's order, to feature maps of an
/// `height`×`width` input. Score and box outputs pair by row count; the level with the most rows is
/// stride 8, each next one doubles it.
fn layout(height: usize, width: usize, outputs: &[(usize, usize)]) -> Result<Vec<Level>, String> {
    let of = |last: usize| {
        let mut v: Vec<(usize, usize)> =
            outputs.iter().enumerate().filter(|(_, (l, _))| *l == last).map(|(i, (_, rows))| (i, *rows)).collect();
        v.sort_by_key(|b| std::cmp::Reverse(b.1));
        v
    };
    let (scores, boxes) = (of(1), of(4));
    if scores.is_empty() || scores.len() != boxes.len() {
        return Err(format!(
            "expected as many score outputs (last dimension 1) as box outputs (last dimension 4), at least one; \
             found {} and {}",
            scores.len(),
            boxes.len()
        ));
    }
    let mut levels = Vec::with_capacity(scores.len());
    let mut anchors = 0;
    for (k, (&(score, rows), &(bbox, box_rows))) in scores.iter().zip(&boxes).enumerate() {
        let stride = 8usize << k;
        let cells = height.div_ceil(stride) * width.div_ceil(stride);
        if k == 0 {
            anchors = rows / cells.max(1);
        }
        if rows != box_rows || anchors == 0 || rows != cells * anchors {
            return Err(format!(
                "outputs {score} and {bbox} ({rows} and {box_rows} rows) do not fit stride {stride} on a \
                 {width}×{height} input ({cells} cells × {} anchors)",
                anchors.max(1)
            ));
        }
        levels.push(Level { stride, anchors, score, bbox });
    }
    Ok(levels)
}

/// How a frame was fitted into the model's square input: scaled by `scale`, placed at the top left,
/// the rest padded.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Letterbox {
    scale: f32,
    width: usize,
    height: usize,
}

impl Letterbox {
    fn new(frame_w: u32, frame_h: u32, side_w: usize, side_h: usize) -> Letterbox {
        let scale = (side_w as f32 / frame_w as f32).min(side_h as f32 / frame_h as f32);
        let fit = |v: u32, side: usize| ((v as f32 * scale).round() as usize).clamp(1, side);
        Letterbox { scale, width: fit(frame_w, side_w), height: fit(frame_h, side_h) }
    }
}

/// Scales a packed RGB24 frame to the letterbox's size (FFmpeg's bilinear scaler: fast even in debug
/// builds, and it filters properly when it shrinks).
fn resize_rgb(rgb: &[u8], width: u32, height: u32, lb: &Letterbox) -> Result<Vec<u8>, PipelineError> {
    use ffmpeg_next::{format::Pixel, frame, software::scaling};
    let failed = |e: ffmpeg_next::Error| PipelineError::permanent(format!("face detection: frame scaling failed: {e}"));
    crate::media::init();
    let (w, h) = (width as usize, height as usize);
    let mut src = frame::Video::new(Pixel::RGB24, width, height);
    let stride = src.stride(0);
    for (y, row) in rgb.chunks_exact(w * 3).enumerate().take(h) {
        src.data_mut(0)[y * stride..y * stride + w * 3].copy_from_slice(row);
    }
    let (ow, oh) = (lb.width as u32, lb.height as u32);
    let mut scaler = scaling::Context::get(Pixel::RGB24, width, height, Pixel::RGB24, ow, oh, scaling::Flags::BILINEAR)
        .map_err(failed)?;
    let mut dst = frame::Video::empty();
    scaler.run(&src, &mut dst).map_err(failed)?;
    let (row, stride) = (lb.width * 3, dst.stride(0));
    let mut out = Vec::with_capacity(row * lb.height);
    for y in 0..lb.height {
        out.extend_from_slice(&dst.data(0)[y * stride..y * stride + row]);
    }
    Ok(out)
}

/// A letterboxed RGB24 picture (`lb.width`×`lb.height`) → the model's input: NCHW f32, `(v − 127.5) / 128`,
/// placed at the top left of `side_w`×`side_h`, the rest black.
fn to_input(rgb: &[u8], lb: &Letterbox, side_w: usize, side_h: usize) -> Vec<f32> {
    let lut: Vec<f32> = (0..=255u8).map(|v| (f32::from(v) - 127.5) / 128.0).collect();
    let plane = side_w * side_h;
    let mut out = vec![lut[0]; 3 * plane];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (y, src) in rgb.chunks_exact(lb.width * 3).enumerate().take(lb.height.min(side_h)) {
        let at = y * side_w;
        let rows = r[at..at + lb.width].iter_mut().zip(&mut g[at..at + lb.width]).zip(&mut b[at..at + lb.width]);
        for (((r, g), b), px) in rows.zip(src.chunks_exact(3)) {
            (*r, *g, *b) = (lut[px[0] as usize], lut[px[1] as usize], lut[px[2] as usize]);
        }
    }
    out
}

/// The boxes of one level whose score reaches `threshold`, in model input coordinates.
fn decode_level(level: &Level, input_w: usize, scores: &[f32], boxes: &[f32], threshold: f32, out: &mut Vec<FaceBox>) {
    let cols = input_w.div_ceil(level.stride);
    let s = level.stride as f32;
    for (row, &score) in scores.iter().enumerate() {
        // NaN scores fail the comparison and are dropped with the low ones.
        let keep = score >= threshold;
        if !keep || row * 4 + 3 >= boxes.len() {
            continue;
        }
        let cell = row / level.anchors;
        let (cx, cy) = ((cell % cols) as f32 * s, (cell / cols) as f32 * s);
        let d = &boxes[row * 4..row * 4 + 4];
        out.push(FaceBox { x1: cx - d[0] * s, y1: cy - d[1] * s, x2: cx + d[2] * s, y2: cy + d[3] * s, score });
    }
}

/// Greedy non-maximum suppression: the best-scoring box wins, boxes overlapping a winner by more than
/// `iou` go. Returns the winners, best first.
pub fn nms(mut boxes: Vec<FaceBox>, iou: f32) -> Vec<FaceBox> {
    boxes.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<FaceBox> = Vec::new();
    for b in boxes {
        if kept.iter().all(|k| k.iou(&b) <= iou) {
            kept.push(b);
        }
    }
    kept
}

/// An SCRFD face detector on a loaded ONNX model.
#[derive(Debug)]
pub struct Detector {
    model: Arc<OnnxModel>,
    input: String,
    side_w: usize,
    side_h: usize,
    score_threshold: f32,
    nms_iou: f32,
}

impl Detector {
    /// Checks that `model` looks like SCRFD: one f32 image input `[1,3,H,W]` and score / box outputs
    /// (last dimension 1 / 4, optionally keypoints 10) for each stride.
    pub fn new(model: Arc<OnnxModel>) -> Result<Detector, PipelineError> {
        let refuse = |what: String| {
            let list = |p: &[crate::onnx::Port]| p.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            PipelineError::permanent(format!(
                "face detector `{}` does not look like an SCRFD model: {what} (its inputs: {}; outputs: {})",
                model.name,
                list(&model.inputs),
                list(&model.outputs)
            ))
        };
        let [input] = model.inputs.as_slice() else {
            return Err(refuse(format!("expected one image input, found {}", model.inputs.len())));
        };
        let shape = &input.shape;
        if input.element != "f32" || shape.len() != 4 || !(shape[1] == 3 || shape[1] < 0) || shape[0] > 1 {
            return Err(refuse(format!("the input `{}` is not an f32 [1,3,H,W] image", input.name)));
        }
        let side = |d: i64| if d > 0 { d as usize } else { DEFAULT_SIDE };
        let (side_h, side_w) = (side(shape[2]), side(shape[3]));
        if side_h % 32 != 0 || side_w % 32 != 0 {
            return Err(refuse(format!("the input side {side_w}×{side_h} is not a multiple of 32")));
        }
        let mut dims = Vec::with_capacity(model.outputs.len());
        for o in &model.outputs {
            let last = o.shape.last().copied().unwrap_or(-1);
            if o.element != "f32" || ![1, 4, 10].contains(&last) {
                return Err(refuse(format!(
                    "output `{}` is not f32 scores, boxes or keypoints (last dimension 1, 4 or 10)",
                    o.name
                )));
            }
            let rows =
                o.shape[..o.shape.len() - 1].iter().try_fold(1usize, |acc, d| (*d > 0).then(|| acc * *d as usize));
            dims.push((last as usize, rows));
        }
        // With static shapes the layout is checked now; dynamic ones are checked on every run.
        if let Some(known) = dims.iter().map(|(l, r)| r.map(|r| (*l, r))).collect::<Option<Vec<_>>>() {
            layout(side_h, side_w, &known).map_err(refuse)?;
        } else {
            layout_counts(&dims.iter().map(|(l, _)| *l).collect::<Vec<_>>()).map_err(refuse)?;
        }
        Ok(Detector {
            input: input.name.clone(),
            model,
            side_w,
            side_h,
            score_threshold: DEFAULT_SCORE_THRESHOLD,
            nms_iou: DEFAULT_NMS_IOU,
        })
    }

    /// Faces scoring below `score` are dropped; overlapping boxes above `iou` are merged into the best.
    pub fn with_thresholds(mut self, score: f32, iou: f32) -> Detector {
        self.score_threshold = score;
        self.nms_iou = iou;
        self
    }

    pub fn model(&self) -> &Arc<OnnxModel> {
        &self.model
    }

    /// The faces in one packed RGB24 frame, best score first, in frame coordinates.
    pub fn detect(&self, rgb: &[u8], width: u32, height: u32) -> Result<Vec<FaceBox>, PipelineError> {
        if width == 0 || height == 0 || rgb.len() != width as usize * height as usize * 3 {
            return Err(PipelineError::permanent(format!(
                "face detection: a {width}×{height} RGB frame needs {} bytes, got {}",
                width as usize * height as usize * 3,
                rgb.len()
            )));
        }
        let lb = Letterbox::new(width, height, self.side_w, self.side_h);
        let resized = resize_rgb(rgb, width, height, &lb)?;
        let pixels = to_input(&resized, &lb, self.side_w, self.side_h);
        let failed = |e: ort::Error| {
            PipelineError::inference(format!("face detector `{}` failed on a frame: {e}", self.model.name))
        };
        let tensor = ort::value::Tensor::from_array(([1usize, 3, self.side_h, self.side_w], pixels)).map_err(failed)?;
        let mut session = self.model.session();
        let outputs = session.run(ort::inputs![self.input.as_str() => tensor]).map_err(failed)?;
        let mut tensors = Vec::with_capacity(outputs.len());
        for i in 0..outputs.len() {
            let (shape, data) = outputs[i].try_extract_tensor::<f32>().map_err(failed)?;
            let last = shape.last().copied().unwrap_or(0).max(0) as usize;
            tensors.push((last, data.len() / last.max(1), data));
        }
        let dims: Vec<(usize, usize)> = tensors.iter().map(|(l, r, _)| (*l, *r)).collect();
        let levels = layout(self.side_h, self.side_w, &dims).map_err(|e| {
            PipelineError::permanent(format!("face detector `{}` gave outputs SCRFD does not: {e}", self.model.name))
        })?;
        let mut found = Vec::new();
        for level in &levels {
            decode_level(
                level,
                self.side_w,
                tensors[level.score].2,
                tensors[level.bbox].2,
                self.score_threshold,
                &mut found,
            );
        }
        drop(outputs);
        drop(session);
        let (fw, fh) = (width as f32, height as f32);
        let faces = nms(found, self.nms_iou)
            .into_iter()
            .map(|b| FaceBox {
                x1: (b.x1 / lb.scale).clamp(0.0, fw),
                y1: (b.y1 / lb.scale).clamp(0.0, fh),
                x2: (b.x2 / lb.scale).clamp(0.0, fw),
                y2: (b.y2 / lb.scale).clamp(0.0, fh),
                score: b.score,
            })
            .filter(|b| b.area() > 0.0)
            .collect();
        Ok(faces)
    }
}

/// The part of [`layout`] that needs no row counts: as many score as box outputs, keypoints optional.
fn layout_counts(lasts: &[usize]) -> Result<(), String> {
    let count = |n: usize| lasts.iter().filter(|l| **l == n).count();
    let (scores, boxes, kps) = (count(1), count(4), count(10));
    if scores == 0 || scores != boxes || (kps != 0 && kps != scores) {
        return Err(format!("expected one score and one box output per stride, found {scores} and {boxes}"));
    }
    Ok(())
}

/// The face a frame is about: the largest, weighted by confidence (a big clear face beats a small
/// sharper one in the background).
pub fn main_face(faces: &[FaceBox]) -> Option<FaceBox> {
    faces.iter().copied().max_by(|a, b| (a.area() * a.score).total_cmp(&(b.area() * b.score)))
}

/// Grows a box by `pads`, clamped to the frame (Wav2Lip pads before it smooths).
pub fn pad(b: &FaceBox, pads: Pads, width: u32, height: u32) -> FaceBox {
    FaceBox {
        x1: (b.x1 - pads.left as f32).max(0.0),
        y1: (b.y1 - pads.top as f32).max(0.0),
        x2: (b.x2 + pads.right as f32).min(width as f32),
        y2: (b.y2 + pads.bottom as f32).min(height as f32),
        score: b.score,
    }
}

/// One box per frame from the main face of each: a frame without a face takes the box of the last
/// frame that had one, frames before the first face take the first face found. No face in any frame
/// is a permanent error.
pub fn fill_gaps(found: &[Option<FaceBox>]) -> Result<Vec<FaceBox>, PipelineError> {
    let first = found.iter().flatten().next().copied().ok_or_else(|| {
        PipelineError::permanent(format!(
            "no face was found in any of the {} video frames; lip-sync needs a visible face (or a face box in the \
             job's params)",
            found.len()
        ))
    })?;
    let mut last = first;
    Ok(found
        .iter()
        .map(|f| {
            if let Some(f) = f {
                last = *f;
            }
            last
        })
        .collect())
}

/// Temporal smoothing as Wav2Lip's `get_smoothened_boxes` does it: box `i` becomes the mean of the
/// boxes of frames `i .. i + window`; near the end, where fewer than `window` frames follow, the mean of
/// the last `window` frames (all of them when the clip is shorter). Unlike Wav2Lip, which overwrites its
/// array in place (so its last windows average already-smoothed boxes, and a clip shorter than the window
/// averages a wrapped slice), every mean here is taken over the unsmoothed boxes.
pub fn smooth(boxes: &[FaceBox], window: usize) -> Vec<FaceBox> {
    let n = boxes.len();
    let window = window.clamp(1, n.max(1));
    (0..n)
        .map(|i| {
            let start = i.min(n - window);
            let slice = &boxes[start..start + window];
            let k = slice.len() as f32;
            let sum = slice
                .iter()
                .fold([0.0f32; 5], |a, b| [a[0] + b.x1, a[1] + b.y1, a[2] + b.x2, a[3] + b.y2, a[4] + b.score]);
            FaceBox { x1: sum[0] / k, y1: sum[1] / k, x2: sum[2] / k, y2: sum[3] / k, score: sum[4] / k }
        })
        .collect()
}

/// The crop box of every frame, Wav2Lip's way: gaps filled ([`fill_gaps`]), each box padded and clamped
/// to the `width`×`height` frame ([`pad`]), then smoothed over `window` frames ([`smooth`]).
pub fn track(
    found: &[Option<FaceBox>],
    pads: Pads,
    width: u32,
    height: u32,
    window: usize,
) -> Result<Vec<FaceBox>, PipelineError> {
    let padded: Vec<FaceBox> = fill_gaps(found)?.iter().map(|b| pad(b, pads, width, height)).collect();
    Ok(smooth(&padded, window))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::PipelineErrorKind;

    fn fb(x1: f32, y1: f32, x2: f32, y2: f32, score: f32) -> FaceBox {
        FaceBox { x1, y1, x2, y2, score }
    }

    #[test]
    fn the_common_export_lays_out_three_strides_of_two_anchors() {
        // scores 8/16/32, boxes 8/16/32, keypoints 8/16/32, as insightface exports them.
        let outputs =
            [(1, 12800), (1, 3200), (1, 800), (4, 12800), (4, 3200), (4, 800), (10, 12800), (10, 3200), (10, 800)];
        let levels = layout(640, 640, &outputs).unwrap();
        assert_eq!(
            levels,
            vec![
                Level { stride: 8, anchors: 2, score: 0, bbox: 3 },
                Level { stride: 16, anchors: 2, score: 1, bbox: 4 },
                Level { stride: 32, anchors: 2, score: 2, bbox: 5 },
            ]
        );
        // Another order, no keypoints, one anchor a cell.
        let shuffled = [(4, 400), (1, 1600), (4, 6400), (1, 400), (4, 1600), (1, 6400)];
        let levels = layout(640, 640, &shuffled).unwrap();
        assert_eq!(
            levels.iter().map(|l| (l.stride, l.anchors, l.score, l.bbox)).collect::<Vec<_>>(),
            vec![(8, 1, 5, 2), (16, 1, 1, 4), (32, 1, 3, 0)]
        );
    }

    #[test]
    fn layouts_that_are_not_scrfd_are_refused() {
        assert!(layout(640, 640, &[(1, 12800), (4, 12800), (1, 3200)]).is_err());
        assert!(layout(640, 640, &[(1, 12800), (4, 3200)]).is_err());
        assert!(layout(640, 640, &[(1, 1000), (4, 1000)]).unwrap_err().contains("stride 8"));
        assert!(layout(640, 640, &[(10, 12800)]).is_err());
        assert!(layout_counts(&[1, 4, 1, 4, 10, 10]).is_ok());
        assert!(layout_counts(&[1, 4, 4]).is_err());
    }

    #[test]
    fn boxes_decode_from_distances_in_strides() {
        let level = Level { stride: 8, anchors: 2, score: 0, bbox: 1 };
        // Input 32 wide: 4 cells a row, 2 anchors each; row 11 is cell 5 = (x 1, y 1) → centre (8, 8).
        let mut scores = vec![0.1f32; 32];
        scores[11] = 0.9;
        let mut boxes = vec![0.0f32; 32 * 4];
        boxes[44..48].copy_from_slice(&[0.5, 1.0, 2.0, 3.0]);
        let mut out = Vec::new();
        decode_level(&level, 32, &scores, &boxes, 0.5, &mut out);
        assert_eq!(out, vec![fb(4.0, 0.0, 24.0, 32.0, 0.9)]);
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let boxes = vec![
            fb(0.0, 0.0, 10.0, 10.0, 0.6),
            fb(1.0, 1.0, 11.0, 11.0, 0.9),
            fb(50.0, 50.0, 60.0, 60.0, 0.7),
            fb(0.0, 0.0, 10.0, 5.0, 0.55),
        ];
        let kept = nms(boxes, 0.4);
        assert_eq!(
            kept,
            vec![fb(1.0, 1.0, 11.0, 11.0, 0.9), fb(50.0, 50.0, 60.0, 60.0, 0.7), fb(0.0, 0.0, 10.0, 5.0, 0.55)]
        );
        assert!((fb(0.0, 0.0, 10.0, 10.0, 1.0).iou(&fb(5.0, 0.0, 15.0, 10.0, 1.0)) - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn letterboxing_keeps_the_aspect_and_pads_the_rest() {
        let lb = Letterbox::new(1280, 720, 640, 640);
        assert_eq!((lb.width, lb.height), (640, 360));
        assert!((lb.scale - 0.5).abs() < 1e-6);
        let lb = Letterbox::new(256, 326, 640, 640);
        assert_eq!(lb.height, 640);
        assert_eq!(lb.width, 503);
        // A 2×1 picture, white then black, into a 4×4 input: the first row holds it, the rest is black.
        let lb = Letterbox { scale: 1.0, width: 2, height: 1 };
        let input = to_input(&[255, 255, 255, 0, 10, 20], &lb, 4, 4);
        let at = |c: usize, y: usize, x: usize| input[c * 16 + y * 4 + x];
        assert_eq!(at(0, 0, 0), 127.5 / 128.0);
        assert_eq!((at(0, 0, 1), at(1, 0, 1), at(2, 0, 1)), (-127.5 / 128.0, -117.5 / 128.0, -107.5 / 128.0));
        assert_eq!(at(0, 0, 2), -127.5 / 128.0, "padding is black");
        assert_eq!(at(2, 3, 3), -127.5 / 128.0);
    }

    #[test]
    fn the_main_face_is_the_largest_weighted_by_score() {
        let big = fb(0.0, 0.0, 100.0, 100.0, 0.6);
        let sharp_small = fb(200.0, 0.0, 220.0, 20.0, 0.99);
        assert_eq!(main_face(&[sharp_small, big]), Some(big));
        assert_eq!(main_face(&[]), None);
    }

    #[test]
    fn pads_grow_the_box_inside_the_frame() {
        let b = fb(5.0, 5.0, 95.0, 95.0, 0.8);
        assert_eq!(pad(&b, Pads::default(), 100, 100), fb(5.0, 5.0, 95.0, 100.0, 0.8));
        assert_eq!(pad(&b, Pads::from([10, 2, 3, 4]), 100, 100), fb(2.0, 0.0, 99.0, 97.0, 0.8));
        assert_eq!(b.pixels(100, 100), [5, 5, 95, 95]);
        assert_eq!(fb(-3.0, 99.7, 120.0, 99.9, 0.5).pixels(100, 100), [0, 99, 100, 100]);
    }

    #[test]
    fn faceless_frames_reuse_the_last_box_and_lead_ins_the_first() {
        let a = fb(0.0, 0.0, 10.0, 10.0, 0.9);
        let b = fb(5.0, 5.0, 15.0, 15.0, 0.8);
        let filled = fill_gaps(&[None, None, Some(a), None, Some(b), None]).unwrap();
        assert_eq!(filled, vec![a, a, a, a, b, b]);
        let e = fill_gaps(&[None, None]).unwrap_err();
        assert_eq!(e.kind, PipelineErrorKind::Permanent);
        assert!(e.message.contains("no face was found"), "{e}");
        assert!(fill_gaps(&[]).is_err());
    }

    #[test]
    fn smoothing_averages_the_next_frames_and_the_last_window_at_the_end() {
        let boxes: Vec<FaceBox> = (0..7).map(|i| fb(i as f32, 0.0, 10.0 + i as f32, 10.0, 1.0)).collect();
        let s = smooth(&boxes, 5);
        let x1: Vec<f32> = s.iter().map(|b| b.x1).collect();
        // 0..5 → 2, 1..6 → 3, then frames 2.. all average the last five (2..7 → 4).
        assert_eq!(x1, vec![2.0, 3.0, 4.0, 4.0, 4.0, 4.0, 4.0]);
        assert_eq!(s[0].x2, 12.0);
        // Shorter than the window: the mean of everything.
        let short = smooth(&boxes[..3], 5);
        assert!(short.iter().all(|b| b.x1 == 1.0));
        assert!(smooth(&[], 5).is_empty());
        assert_eq!(smooth(&boxes, 1), boxes);
    }

    #[test]
    fn a_track_fills_pads_and_smooths() {
        let a = fb(10.0, 10.0, 50.0, 50.0, 0.5);
        let t = track(&[None, Some(a), None], Pads::default(), 60, 55, SMOOTH_WINDOW).unwrap();
        assert_eq!(t, vec![fb(10.0, 10.0, 50.0, 55.0, 0.5); 3]);
    }
}
