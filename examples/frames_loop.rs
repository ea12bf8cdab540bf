//! A live loop as a camera application would write it, over a folder of frames (a video split
//! into images, e.g. `ffmpeg -i clip.mp4 frames/%05d.png`): the tracker runs the person detector
//! when nobody is tracked and otherwise crops each frame around the previous frame's pose (the
//! follow crop), the keypoints are smoothed over time (One Euro filter), and one JSON line per
//! frame is printed.
//!
//! `cargo run --release --example frames_loop -- FOLDER [FPS]`
//!
//! With a camera, replace the folder by the camera's frames: wrap each one in an
//! [`ImageRef`](wgpose::pipeline::ImageRef) (RGB, RGBA or BGRA, any row stride) and use the
//! capture time instead of `index / fps`.

use std::path::PathBuf;
use std::time::Instant;

use wgpose::image_io::load_rgb;
use wgpose::pipeline::{OneEuroConfig, PoseSmoother};
use wgpose::{Device, Estimator, TrackStep, Tracker, TrackerOptions};

fn main() -> wgpose::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/demo/tests/fixtures/frames").into()),
    );
    let fps: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(30.0);
    let mut frames: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| wgpose::Error::Io { path: dir.display().to_string(), source: e })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png" || x == "jpg" || x == "jpeg"))
        .collect();
    frames.sort();

    let mut estimator = Estimator::from_name("fasterpose-r18-s16-lsp", Device::Auto)?;
    eprintln!("{} frames; running on the {}", frames.len(), estimator.device_choice());
    if !estimator.device_choice().gpu {
        // A camera loop idles between frames; pinned, the CPU executor's workers come back from
        // each idle spell on CPUs of their own (see `pin_cpu_threads`).
        wgpose::pin_cpu_threads();
    }
    let mut smoother = PoseSmoother::new(estimator.skeleton.joints.len(), OneEuroConfig::default())?;
    // Follows while the mean keypoint score is at least 0.3; below it the detector searches again.
    let mut tracker = Tracker::new(TrackerOptions::default())?;
    for (i, path) in frames.iter().enumerate() {
        let t = i as f64 / fps;
        let frame = load_rgb(path)?;
        let started = Instant::now();
        let Some(tracked) = tracker.track(&mut estimator, &frame)? else {
            println!("{{\"frame\": {:?}, \"t\": {t:.3}, \"people\": 0}}", path.file_name().unwrap_or_default());
            continue;
        };
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if tracked.step == TrackStep::Found {
            // A new track: do not smooth towards the previous person.
            smoother.reset();
        }
        let pose = tracked.pose;
        let smooth = smoother.smooth(t, &pose.keypoints)?;
        let kps: Vec<[f32; 3]> = smooth.iter().map(|k| [k.x, k.y, k.score]).collect();
        println!(
            "{{\"frame\": {:?}, \"t\": {t:.3}, \"ms\": {ms:.1}, \"step\": \"{:?}\", \"box\": {:?}, \"score\": {:.3}, \"keypoints\": {kps:?}}}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            tracked.step,
            pose.bbox,
            pose.score
        );
    }
    Ok(())
}
