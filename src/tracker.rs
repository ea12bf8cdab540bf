//! Following one person through a video, as BlazePose does: the person detector runs when
//! nobody is tracked (the first frame, a lost track), otherwise the crop follows the previous
//! frame's keypoints (the pose network alone: cheaper, and steadier than a fresh detection).
//!
//! ```no_run
//! use wgpose::{Device, Estimator, Tracker, TrackerOptions};
//!
//! let mut est = Estimator::from_name("fasterpose-r18-s16-lsp", Device::Auto)?;
//! let mut tracker = Tracker::new(TrackerOptions::default())?;
//! for path in ["frame1.png", "frame2.png"] {
//!     let frame = wgpose::image_io::load_rgb(path.as_ref())?;
//!     match tracker.track(&mut est, &frame)? {
//!         Some(t) => println!("{:?}: score {:.2}, box {:?}", t.step, t.pose.score, t.pose.bbox),
//!         None => println!("nobody"),
//!     }
//! }
//! # Ok::<(), wgpose::Error>(())
//! ```

use crate::detector::Person;
use crate::error::{Error, Result};
use crate::estimator::{Boxes, Estimator, Picture, Pose};
use crate::pipeline::detect::Detection;
use crate::pipeline::follow::next_box;
use crate::pipeline::preprocess_gpu::FrameLayout;

/// How a [`Tracker`] decides to keep following.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrackerOptions {
    /// Keep following while the pose's mean keypoint score is at least this (and at least two
    /// joints score this much); below it the track is lost and the detector searches again.
    pub follow_threshold: f32,
    /// Follow at all; false runs the detector on every frame.
    pub follow: bool,
}

impl Default for TrackerOptions {
    /// Threshold 0.3, following on.
    fn default() -> Self {
        TrackerOptions { follow_threshold: 0.3, follow: true }
    }
}

/// Where a tracked pose came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackStep {
    /// The crop followed the previous frame's keypoints.
    Followed,
    /// A new track: the top person of [`Boxes::Auto`] (the detector's, or the whole picture when
    /// the estimator has no detector). Smoothing over time should restart here.
    Found,
}

/// One frame's pose of the tracked person.
#[derive(Clone, Debug)]
pub struct Tracked {
    /// The person's pose on this frame, in the frame's coordinates.
    pub pose: Pose,
    /// Whether the pose followed the last frame or starts a new track.
    pub step: TrackStep,
    /// The detector's box and score on a `Found` step (None when following, or when the
    /// estimator has no detector).
    pub detection: Option<Detection>,
}

/// Follows the top person from frame to frame (see the module docs).
#[derive(Clone, Debug)]
pub struct Tracker {
    opts: TrackerOptions,
    follow: Option<[f32; 4]>,
    size: [f32; 2],
}

impl Tracker {
    /// A tracker with nobody tracked yet. Errors when `follow_threshold` is outside [0, 1].
    pub fn new(opts: TrackerOptions) -> Result<Self> {
        if !(0.0..=1.0).contains(&opts.follow_threshold) {
            return Err(Error::Input(format!("follow threshold {} must be in [0, 1]", opts.follow_threshold)));
        }
        Ok(Tracker { opts, follow: None, size: [0.0, 0.0] })
    }

    /// The options in use.
    pub fn options(&self) -> &TrackerOptions {
        &self.opts
    }

    /// Changes the options; the current track is kept when following stays on.
    pub fn set_options(&mut self, opts: TrackerOptions) -> Result<()> {
        let keep = self.follow.filter(|_| opts.follow);
        *self = Tracker { follow: keep, ..Tracker::new(opts)? };
        Ok(())
    }

    /// Forgets the tracked person: the next frame runs the detector.
    pub fn reset(&mut self) {
        self.follow = None;
    }

    /// The box the next frame will be cropped at (the caller's coordinates), if following.
    pub fn follow_box(&self) -> Option<[f32; 4]> {
        self.follow
    }

    /// The tracked person's pose in `image` (None when nobody is found).
    pub fn track<'a>(&mut self, est: &mut Estimator, image: impl Into<Picture<'a>>) -> Result<Option<Tracked>> {
        let picture = image.into();
        let size = [picture.pixels.width as f32 * picture.scale, picture.pixels.height as f32 * picture.scale];
        self.begin(size);
        if let Some(b) = self.follow {
            if let Some(t) = self.keep(est.estimate(picture, b)?) {
                return Ok(Some(t));
            }
        }
        let found = match est.detector() {
            Some(_) => detected(est.people(picture)?),
            None => whole(est.estimate(picture, Boxes::Auto)?),
        };
        Ok(self.start(found))
    }

    /// [`Tracker::track`] on a frame already on the GPU
    /// ([`Estimator::estimate_gpu_frame`]).
    pub fn track_gpu_frame(
        &mut self,
        est: &mut Estimator,
        src: &wgpu::Buffer,
        frame: &FrameLayout,
    ) -> Result<Option<Tracked>> {
        self.begin([frame.width as f32, frame.height as f32]);
        if let Some(b) = self.follow {
            if let Some(t) = self.keep(est.estimate_gpu_frame(src, frame, b)?) {
                return Ok(Some(t));
            }
        }
        let found = match est.detector() {
            Some(_) => detected(est.people_gpu_frame(src, frame)?),
            None => whole(est.estimate_gpu_frame(src, frame, Boxes::Auto)?),
        };
        Ok(self.start(found))
    }

    /// [`Tracker::track_gpu_frame`] awaiting the readbacks (the browser's path).
    pub async fn track_gpu_frame_async(
        &mut self,
        est: &mut Estimator,
        src: &wgpu::Buffer,
        frame: &FrameLayout,
    ) -> Result<Option<Tracked>> {
        self.begin([frame.width as f32, frame.height as f32]);
        if let Some(b) = self.follow {
            if let Some(t) = self.keep(est.estimate_gpu_frame_async(src, frame, b).await?) {
                return Ok(Some(t));
            }
        }
        let found = match est.detector() {
            Some(_) => detected(est.people_gpu_frame_async(src, frame).await?),
            None => whole(est.estimate_gpu_frame_async(src, frame, Boxes::Auto).await?),
        };
        Ok(self.start(found))
    }

    /// A frame of another size (a folder of differently sized images): the box means nothing.
    fn begin(&mut self, size: [f32; 2]) {
        if size != self.size {
            self.follow = None;
            self.size = size;
        }
    }

    /// The followed pose, if it is still trusted (else the track is lost).
    fn keep(&mut self, poses: Vec<Pose>) -> Option<Tracked> {
        let pose = poses.into_iter().next()?;
        self.follow = self.next(&pose);
        self.follow.map(|_| Tracked { pose, step: TrackStep::Followed, detection: None })
    }

    /// A new track from the top person found (`detection` None: no detector, the whole picture).
    fn start(&mut self, found: Vec<(Pose, Option<Detection>)>) -> Option<Tracked> {
        let (pose, detection) = found.into_iter().next()?;
        self.follow = self.next(&pose);
        Some(Tracked { pose, step: TrackStep::Found, detection })
    }

    fn next(&self, pose: &Pose) -> Option<[f32; 4]> {
        if !self.opts.follow {
            return None;
        }
        next_box(&pose.keypoints, self.opts.follow_threshold, self.size[0], self.size[1])
    }
}

/// Detected people as (pose, detection) pairs.
fn detected(people: Vec<Person>) -> Vec<(Pose, Option<Detection>)> {
    people.into_iter().map(|p| (p.pose, Some(p.detection))).collect()
}

/// Poses of `Boxes::Auto` without a detector (the whole picture): no detection.
fn whole(poses: Vec<Pose>) -> Vec<(Pose, Option<Detection>)> {
    poses.into_iter().map(|p| (p, None)).collect()
}
