//! Face crops in and out of RGB frames: the crop resized to the model's square (bilinear), written as the
//! model's planar BGR floats in [0, 1]; and the model's square resized back into the box.

/// A box in whole pixels, `x2`/`y2` exclusive, inside its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelBox {
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
}

impl PixelBox {
    /// `[x1, y1, x2, y2]` clamped to a `width`×`height` frame; `None` when nothing is left.
    pub fn clamped(b: [f32; 4], width: u32, height: u32) -> Option<PixelBox> {
        let clamp = |v: f32, hi: u32| (v.round().max(0.0) as u32).min(hi);
        let (x1, y1) = (clamp(b[0], width), clamp(b[1], height));
        let (x2, y2) = (clamp(b[2], width), clamp(b[3], height));
        (x2 > x1 + 1 && y2 > y1 + 1).then_some(PixelBox { x1, y1, x2, y2 })
    }

    pub fn width(&self) -> u32 {
        self.x2 - self.x1
    }

    pub fn height(&self) -> u32 {
        self.y2 - self.y1
    }
}

/// Bilinear sample positions for resizing `from` pixels to `to` (centres aligned).
fn taps(from: u32, to: u32) -> Vec<(usize, usize, f32)> {
    let scale = from as f32 / to as f32;
    (0..to)
        .map(|i| {
            let x = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, (from - 1) as f32);
            let x0 = x.floor() as usize;
            let x1 = (x0 + 1).min(from as usize - 1);
            (x0, x1, x - x0 as f32)
        })
        .collect()
}

/// Writes the crop `b` of the RGB frame as `size`×`size` planar BGR in [0, 1] into `out` (3·size² floats).
pub fn crop_to_bgr(rgb: &[u8], width: u32, b: PixelBox, size: u32, out: &mut [f32]) {
    let plane = (size * size) as usize;
    assert_eq!(out.len(), 3 * plane);
    let xs = taps(b.width(), size);
    let ys = taps(b.height(), size);
    let stride = width as usize * 3;
    let px = |x: usize, y: usize, c: usize| f32::from(rgb[(b.y1 as usize + y) * stride + (b.x1 as usize + x) * 3 + c]);
    for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
        for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
            for c in 0..3 {
                let top = px(x0, y0, c) * (1.0 - fx) + px(x1, y0, c) * fx;
                let bottom = px(x0, y1, c) * (1.0 - fx) + px(x1, y1, c) * fx;
                let v = (top * (1.0 - fy) + bottom * fy) / 255.0;
                // RGB → BGR: red goes to plane 2.
                out[(2 - c) * plane + oy * size as usize + ox] = v;
            }
        }
    }
}

/// Resizes the model's `size`×`size` planar BGR output in [0, 1] into the box `b` of the RGB frame.
pub fn paste_bgr(face: &[f32], size: u32, rgb: &mut [u8], width: u32, b: PixelBox) {
    let plane = (size * size) as usize;
    assert_eq!(face.len(), 3 * plane);
    let xs = taps(size, b.width());
    let ys = taps(size, b.height());
    let stride = width as usize * 3;
    let s = size as usize;
    for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
        for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
            for c in 0..3 {
                let p = &face[(2 - c) * plane..(3 - c) * plane];
                let top = p[y0 * s + x0] * (1.0 - fx) + p[y0 * s + x1] * fx;
                let bottom = p[y1 * s + x0] * (1.0 - fx) + p[y1 * s + x1] * fx;
                let v = (top * (1.0 - fy) + bottom * fy).clamp(0.0, 1.0) * 255.0;
                rgb[(b.y1 as usize + oy) * stride + (b.x1 as usize + ox) * 3 + c] = v.round() as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crop_pasted_back_unchanged_leaves_the_frame_as_it_was() {
        let (w, h) = (40u32, 30u32);
        let frame: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let b = PixelBox::clamped([10.0, 5.0, 26.0, 21.0], w, h).unwrap();
        let mut face = vec![0.0; 3 * 16 * 16];
        crop_to_bgr(&frame, w, b, 16, &mut face);
        let mut out = frame.clone();
        paste_bgr(&face, 16, &mut out, w, b);
        assert_eq!(out, frame, "a same-size crop round-trips exactly");
    }

    #[test]
    fn bgr_planes_are_swapped_and_only_the_box_changes() {
        let (w, h) = (8u32, 8u32);
        let mut frame = vec![0u8; (w * h * 3) as usize];
        for px in frame.chunks_mut(3) {
            px.copy_from_slice(&[255, 0, 0]);
        }
        let b = PixelBox::clamped([2.0, 2.0, 6.0, 6.0], w, h).unwrap();
        let mut face = vec![0.0; 3 * 4 * 4];
        crop_to_bgr(&frame, w, b, 4, &mut face);
        assert!(face[..16].iter().all(|v| *v == 0.0), "blue plane first");
        assert!(face[32..].iter().all(|v| *v == 1.0), "red plane last");
        let green = vec![0.0, 1.0, 0.0].into_iter().flat_map(|v| std::iter::repeat_n(v, 16)).collect::<Vec<f32>>();
        paste_bgr(&green, 4, &mut frame, w, b);
        for y in 0..h {
            for x in 0..w {
                let i = ((y * w + x) * 3) as usize;
                let inside = (2..6).contains(&x) && (2..6).contains(&y);
                assert_eq!(&frame[i..i + 3], if inside { &[0, 255, 0] } else { &[255, 0, 0] }, "({x},{y})");
            }
        }
    }

    #[test]
    fn boxes_are_clamped_and_empty_ones_refused() {
        assert_eq!(PixelBox::clamped([-5.0, -1.0, 50.0, 9.0], 40, 30), Some(PixelBox { x1: 0, y1: 0, x2: 40, y2: 9 }));
        assert_eq!(PixelBox::clamped([45.0, 0.0, 50.0, 9.0], 40, 30), None);
    }
}
