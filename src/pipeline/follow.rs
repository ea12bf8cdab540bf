//! The crop that follows the person: the next frame is cropped around the previous frame's
//! confident keypoints (their box, enlarged), or the whole frame when the pose was not trusted.

use super::decode::Keypoint;

/// How much the box of the confident keypoints is enlarged (on top of the estimator's own
/// padding) so a moving person stays inside the next crop.
pub(crate) const ENLARGE: f32 = 1.3;
/// A box smaller than this (pixels, either side) is not trusted.
pub(crate) const MIN_SIDE: f32 = 16.0;

/// The box `[x, y, w, h]` to crop the next frame at, from this frame's keypoints; `None` means
/// the whole frame (mean confidence below `threshold`, fewer than 2 confident joints, or a
/// degenerate box).
pub(crate) fn next_box(keypoints: &[Keypoint], threshold: f32, img_w: f32, img_h: f32) -> Option<[f32; 4]> {
    if keypoints.is_empty() {
        return None;
    }
    let mean = keypoints.iter().map(|k| k.score).sum::<f32>() / keypoints.len() as f32;
    if !mean.is_finite() || mean < threshold {
        return None;
    }
    let good: Vec<&Keypoint> =
        keypoints.iter().filter(|k| k.score >= threshold && k.x.is_finite() && k.y.is_finite()).collect();
    if good.len() < 2 {
        return None;
    }
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for k in &good {
        x0 = x0.min(k.x);
        y0 = y0.min(k.y);
        x1 = x1.max(k.x);
        y1 = y1.max(k.y);
    }
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let (w, h) = (((x1 - x0) * ENLARGE).max(MIN_SIDE), ((y1 - y0) * ENLARGE).max(MIN_SIDE));
    // Clip to the frame; a box mostly outside it means the pose is off.
    let (bx0, by0) = ((cx - w / 2.0).max(0.0), (cy - h / 2.0).max(0.0));
    let (bx1, by1) = ((cx + w / 2.0).min(img_w), (cy + h / 2.0).min(img_h));
    if bx1 - bx0 < MIN_SIDE || by1 - by0 < MIN_SIDE {
        return None;
    }
    Some([bx0, by0, bx1 - bx0, by1 - by0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kp(x: f32, y: f32, score: f32) -> Keypoint {
        Keypoint { x, y, score }
    }

    #[test]
    fn box_of_confident_keypoints_enlarged() {
        let k = [kp(100.0, 100.0, 0.9), kp(200.0, 300.0, 0.8), kp(5.0, 5.0, 0.1)];
        let b = next_box(&k, 0.3, 640.0, 480.0).unwrap();
        let (cx, cy) = (b[0] + b[2] / 2.0, b[1] + b[3] / 2.0);
        assert!((cx - 150.0).abs() < 1e-3 && (cy - 200.0).abs() < 1e-3, "{b:?}");
        assert!((b[2] - 100.0 * ENLARGE).abs() < 1e-3 && (b[3] - 200.0 * ENLARGE).abs() < 1e-3, "{b:?}");
    }

    #[test]
    fn falls_back_to_the_whole_frame() {
        // Mean confidence below the threshold.
        let k = [kp(100.0, 100.0, 0.9), kp(200.0, 300.0, 0.1), kp(5.0, 5.0, 0.1)];
        assert_eq!(next_box(&k, 0.5, 640.0, 480.0), None);
        // Only one confident joint.
        let k = [kp(100.0, 100.0, 0.9), kp(200.0, 300.0, 0.2)];
        assert_eq!(next_box(&k, 0.5, 640.0, 480.0), None);
        // Off the frame.
        let k = [kp(-500.0, -500.0, 0.9), kp(-400.0, -300.0, 0.9)];
        assert_eq!(next_box(&k, 0.5, 640.0, 480.0), None);
        assert_eq!(next_box(&[], 0.5, 640.0, 480.0), None);
    }

    #[test]
    fn clipped_to_the_frame() {
        let k = [kp(0.0, 0.0, 0.9), kp(630.0, 470.0, 0.9)];
        let b = next_box(&k, 0.5, 640.0, 480.0).unwrap();
        assert_eq!(b, [0.0, 0.0, 640.0, 480.0]);
    }
}
