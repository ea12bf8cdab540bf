//! Drawing a skeleton over an image: limbs as thick lines, joints as discs, the person's left
//! and right sides in different colours, joints below a confidence threshold left out.

use image::{Rgb, RgbImage};

use crate::skeleton::Skeleton;

/// Colour of the person's left-side joints and limbs (blue).
pub const LEFT: Rgb<u8> = Rgb([40, 160, 255]);
/// Colour of the person's right-side joints and limbs (orange).
pub const RIGHT: Rgb<u8> = Rgb([255, 120, 20]);
/// Colour of joints and limbs on neither side (green).
pub const CENTRE: Rgb<u8> = Rgb([60, 220, 60]);

/// Colour of a joint (`a == b`) or a limb: the person's left or right side, or centre when
/// the limb joins the two sides or a central joint.
pub fn side_colour(s: &Skeleton, a: usize, b: usize) -> Rgb<u8> {
    let side = |j: usize| match s.joints.get(j) {
        Some(n) if n.starts_with("left_") => 1,
        Some(n) if n.starts_with("right_") => -1,
        _ => 0,
    };
    match (side(a), side(b)) {
        (1, 1) => LEFT,
        (-1, -1) => RIGHT,
        _ => CENTRE,
    }
}

fn disc(img: &mut RgbImage, cx: f32, cy: f32, r: f32, c: Rgb<u8>) {
    if !cx.is_finite() || !cy.is_finite() {
        return;
    }
    let (w, h) = (img.width() as i64, img.height() as i64);
    let (x0, x1) = ((cx - r).floor() as i64, (cx + r).ceil() as i64);
    let (y0, y1) = ((cy - r).floor() as i64, (cy + r).ceil() as i64);
    for y in y0.max(0)..=y1.min(h - 1) {
        for x in x0.max(0)..=x1.min(w - 1) {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            if dx * dx + dy * dy <= r * r {
                img.put_pixel(x as u32, y as u32, c);
            }
        }
    }
}

fn line(img: &mut RgbImage, a: (f32, f32), b: (f32, f32), r: f32, c: Rgb<u8>) {
    let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
    if !len.is_finite() {
        return;
    }
    // Limit the work for absurd coordinates; a limb longer than the image diagonal is clipped.
    let diag = ((img.width().pow(2) + img.height().pow(2)) as f32).sqrt();
    let steps = (len.min(4.0 * diag) / (r * 0.5).max(0.5)).ceil().max(1.0) as usize;
    for i in 0..=steps {
        let t = i as f32 / steps as f32;
        disc(img, a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t, r, c);
    }
}

/// Draws `keypoints` (`[x, y, score]` in image pixels, in the skeleton's order) onto `img`.
/// Line width scales with the image size.
pub fn draw_skeleton(img: &mut RgbImage, s: &Skeleton, keypoints: &[[f32; 3]], threshold: f32) {
    let r = (img.width().max(img.height()) as f32 / 250.0).clamp(1.5, 8.0);
    let ok = |j: usize| keypoints.get(j).is_some_and(|k| k[2] >= threshold);
    for &(a, b) in s.limbs {
        if ok(a) && ok(b) {
            let (ka, kb) = (keypoints[a], keypoints[b]);
            line(img, (ka[0], ka[1]), (kb[0], kb[1]), r, side_colour(s, a, b));
        }
    }
    for (j, k) in keypoints.iter().enumerate() {
        if ok(j) {
            disc(img, k[0], k[1], r * 1.8, Rgb([255, 255, 255]));
            disc(img, k[0], k[1], r * 1.2, side_colour(s, j, j));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skeleton::LSP14;

    #[test]
    fn draws_where_the_joints_are_and_survives_absurd_input() {
        let mut img = RgbImage::new(100, 80);
        let mut kps = vec![[0.0f32, 0.0, 0.0]; 14];
        kps[9] = [20.0, 20.0, 0.9]; // left shoulder
        kps[10] = [20.0, 60.0, 0.9]; // left elbow
        kps[8] = [80.0, 20.0, 0.1]; // right shoulder, below threshold
        draw_skeleton(&mut img, &LSP14, &kps, 0.5);
        assert_eq!(*img.get_pixel(20, 40), LEFT);
        assert_eq!(*img.get_pixel(80, 20), Rgb([0, 0, 0]));
        kps[8] = [f32::NAN, 1e30, 1.0];
        kps[7] = [-1e9, 1e9, 1.0];
        draw_skeleton(&mut img, &LSP14, &kps, 0.5);
    }
}
