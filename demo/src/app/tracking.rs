//! Who is drawn: the library's tracker (the person detector when nobody is tracked, else the
//! crop follows the last pose), One Euro smoothing of the keypoints, and the settings the
//! overlay controls change.

use wgpose::estimator::Estimator;
use wgpose::pipeline::{FrameLayout, Keypoint, OneEuroConfig, PoseSmoother};
use wgpose::skeleton::Skeleton;
use wgpose::{TrackStep, Tracked, Tracker, TrackerOptions};

pub(super) struct Tracking {
    tracker: Tracker,
    /// How this frame's person was found (None: nobody).
    pub(super) step: Option<TrackStep>,
    /// The crop box of this frame's pose (frame pixels).
    pub(super) crop_box: Option<[f32; 4]>,
    /// What is drawn (smoothed when smoothing is on).
    pub(super) keypoints: Vec<Keypoint>,
    pub(super) skeleton: Option<&'static Skeleton>,
    /// Controls: follow the person (else detect every frame), the confidence threshold (for
    /// drawing and for keeping a track), smoothing and its One Euro parameters.
    pub(super) follow: bool,
    pub(super) threshold: f32,
    pub(super) smoothing: bool,
    pub(super) min_cutoff: f32,
    pub(super) beta: f32,
    smoother: Option<PoseSmoother>,
    /// (joints, min_cutoff bits, beta bits) the smoother was built for.
    smoother_key: (usize, u32, u32),
}

impl Tracking {
    pub(super) fn new(threshold: f32, smoothing: bool) -> Self {
        Tracking {
            tracker: Tracker::new(TrackerOptions::default()).expect("default tracker options are valid"),
            step: None,
            crop_box: None,
            keypoints: Vec::new(),
            skeleton: None,
            follow: true,
            threshold,
            smoothing,
            min_cutoff: 1.0,
            beta: 0.05,
            smoother: None,
            smoother_key: (0, 0, 0),
        }
    }

    /// Forgets the person: the next frame runs the detector and starts a new smoothing track.
    pub(super) fn reset(&mut self) {
        self.tracker.reset();
        self.keypoints.clear();
        self.step = None;
        self.crop_box = None;
        if let Some(s) = &mut self.smoother {
            s.reset();
        }
    }

    /// The tracked person's pose in a frame on the GPU.
    pub(super) fn track_gpu_frame(
        &mut self,
        est: &mut Estimator,
        buffer: &wgpu::Buffer,
        layout: &FrameLayout,
    ) -> wgpose::Result<Option<Tracked>> {
        self.sync_options()?;
        self.tracker.track_gpu_frame(est, buffer, layout)
    }

    /// The tracked person's pose in a decoded frame (the CPU executor's path).
    pub(super) fn track(&mut self, est: &mut Estimator, frame: &image::RgbaImage) -> wgpose::Result<Option<Tracked>> {
        self.sync_options()?;
        self.tracker.track(est, frame)
    }

    fn sync_options(&mut self) -> wgpose::Result<()> {
        let opts = TrackerOptions { follow_threshold: self.threshold.clamp(0.0, 1.0), follow: self.follow };
        if *self.tracker.options() != opts {
            self.tracker.set_options(opts)?;
        }
        Ok(())
    }

    /// What to draw for `tracked` at time `t` (seconds): nothing when nobody was found; the
    /// smoother restarts on a new track so it does not pull towards the last person.
    pub(super) fn show(&mut self, tracked: Option<Tracked>, t: f64) {
        self.step = tracked.as_ref().map(|t| t.step);
        self.crop_box = tracked.as_ref().map(|t| t.pose.bbox);
        let Some(tracked) = tracked else {
            self.keypoints.clear();
            return;
        };
        let kps = tracked.pose.keypoints;
        let key = (kps.len(), self.min_cutoff.to_bits(), self.beta.to_bits());
        if self.smoother.is_none() || self.smoother_key != key {
            self.smoother = PoseSmoother::new(kps.len(), OneEuroConfig::new(self.min_cutoff, self.beta)).ok();
            self.smoother_key = key;
        }
        self.keypoints = match &mut self.smoother {
            Some(s) if self.smoothing => {
                if tracked.step == TrackStep::Found {
                    s.reset();
                }
                s.smooth(t, &kps).unwrap_or(kps)
            }
            Some(s) => {
                s.reset();
                kps
            }
            None => kps,
        };
    }
}
