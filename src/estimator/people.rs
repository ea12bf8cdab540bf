//! Finding the people before their poses: the estimator's person detector behind
//! [`Boxes::Auto`](super::Boxes::Auto).
//!
//! On the GPU a picture is uploaded once; the detector's letterbox and every person's crop are
//! cut from that one buffer by the preprocessing kernel. The detector's maps come back (3 small
//! planes), peaks and boxes are decoded on the CPU, then all people's crops run through the
//! pose network as one batch, and once more on the boxes of their keypoints
//! ([`PeopleOptions::refine_passes`](crate::detector::PeopleOptions)).

use super::{packed_rgba, upload_frame, Backend, Estimator, Picture};
use crate::detector::{distinct_people, people_from_detections, refined_boxes, Person, PersonDetector};
use crate::error::{Error, Result};
use crate::pipeline::crop::ImageRef;
use crate::pipeline::preprocess_gpu::FrameLayout;

impl Estimator {
    /// The person detector behind [`Boxes::Auto`](super::Boxes::Auto), if one is attached.
    pub fn detector(&self) -> Option<&PersonDetector> {
        self.detector.as_ref()
    }

    /// The attached detector, to change its [`DetectConfig`](crate::pipeline::detect::DetectConfig)
    /// (score threshold, maximum number of people).
    pub fn detector_mut(&mut self) -> Option<&mut PersonDetector> {
        self.detector.as_mut()
    }

    /// Attaches `detector` (None: detach, so that `Boxes::Auto` is the whole picture) and
    /// returns the previous one. It must run where the pose network runs: both on the GPU or
    /// both on the CPU executor.
    pub fn set_detector(&mut self, detector: Option<PersonDetector>) -> Result<Option<PersonDetector>> {
        if let Some(d) = &detector {
            if d.on_gpu() != self.on_gpu() {
                return Err(Error::Input(format!(
                    "the detector runs on the {} but the pose network on the {}; build both with the same device",
                    if d.on_gpu() { "GPU" } else { "CPU" },
                    if self.on_gpu() { "GPU" } else { "CPU" }
                )));
            }
        }
        Ok(std::mem::replace(&mut self.detector, detector))
    }

    /// Everyone the detector finds in `image` (at most its `max_people`, highest detection score
    /// first), each with their pose; an empty list for a picture without people. Boxes and
    /// keypoints are in the picture's coordinates. Errors without an attached detector.
    pub fn people<'a>(&mut self, image: impl Into<Picture<'a>>) -> Result<Vec<Person>> {
        let picture = image.into();
        let s = checked_scale(&picture)?;
        let mut det = self.take_detector()?;
        let found = self.people_with(&mut det, &picture.pixels);
        self.detector = Some(det);
        Ok(to_caller(found?, s))
    }

    /// [`Estimator::people`] without blocking the thread (GPU readbacks are awaited).
    pub async fn people_async<'a>(&mut self, image: impl Into<Picture<'a>>) -> Result<Vec<Person>> {
        let picture = image.into();
        let s = checked_scale(&picture)?;
        let mut det = self.take_detector()?;
        let found = match &self.backend {
            Backend::Gpu { ctx, .. } => match upload_frame(ctx, &packed_rgba(&picture.pixels)) {
                Ok(src) => {
                    let layout = packed_layout(&picture.pixels);
                    self.people_in_gpu_frame_async(&mut det, &src, &layout).await
                }
                Err(e) => Err(e),
            },
            Backend::Cpu => self.people_with(&mut det, &picture.pixels),
        };
        self.detector = Some(det);
        Ok(to_caller(found?, s))
    }

    /// [`Estimator::people`] for a frame already on the GPU (see
    /// [`Estimator::estimate_gpu_frame`]): detector and pose crops read the same buffer.
    pub fn people_gpu_frame(&mut self, src: &wgpu::Buffer, frame: &FrameLayout) -> Result<Vec<Person>> {
        let mut det = self.take_detector()?;
        let found = self.people_in_gpu_frame(&mut det, src, frame);
        self.detector = Some(det);
        found
    }

    /// [`Estimator::people_gpu_frame`] awaiting the readbacks instead of blocking (the
    /// browser's path).
    pub async fn people_gpu_frame_async(&mut self, src: &wgpu::Buffer, frame: &FrameLayout) -> Result<Vec<Person>> {
        let mut det = self.take_detector()?;
        let found = self.people_in_gpu_frame_async(&mut det, src, frame).await;
        self.detector = Some(det);
        found
    }

    fn take_detector(&mut self) -> Result<PersonDetector> {
        self.detector.take().ok_or_else(|| {
            Error::Input("no person detector attached (EstimatorOptions::find_people, Estimator::set_detector)".into())
        })
    }

    /// People in working pixels; on the GPU the image is uploaded once for detector and crops.
    fn people_with(&mut self, det: &mut PersonDetector, image: &ImageRef) -> Result<Vec<Person>> {
        if let Backend::Gpu { ctx, .. } = &self.backend {
            let src = upload_frame(ctx, &packed_rgba(image))?;
            return self.people_in_gpu_frame(det, &src, &packed_layout(image));
        }
        let dets = det.detect(image)?;
        let opts = self.opts.people;
        people_from_detections(self, dets, &opts, |est, boxes| est.estimate_batch(image, boxes))
    }

    fn people_in_gpu_frame(
        &mut self,
        det: &mut PersonDetector,
        src: &wgpu::Buffer,
        frame: &FrameLayout,
    ) -> Result<Vec<Person>> {
        let dets = det.detect_gpu_frame(src, frame)?;
        let opts = self.opts.people;
        people_from_detections(self, dets, &opts, |est, boxes| est.estimate_gpu_frame(src, frame, boxes))
    }

    /// [`people_from_detections`] with awaited readbacks (an async closure cannot borrow the
    /// estimator mutably, so the loop is spelled out; the steps are the same helpers).
    async fn people_in_gpu_frame_async(
        &mut self,
        det: &mut PersonDetector,
        src: &wgpu::Buffer,
        frame: &FrameLayout,
    ) -> Result<Vec<Person>> {
        let dets = det.detect_gpu_frame_async(src, frame).await?;
        if dets.is_empty() {
            return Ok(Vec::new());
        }
        let opts = self.opts.people;
        let mut boxes: Vec<[f32; 4]> = dets.iter().map(|d| d.bbox).collect();
        let mut poses = self.gpu_frame_poses_async(src, frame, &boxes).await?;
        for _ in 0..opts.refine_passes {
            let Some(refined) = refined_boxes(&poses, &boxes, opts.refine_threshold) else { break };
            boxes = refined;
            poses = self.gpu_frame_poses_async(src, frame, &boxes).await?;
        }
        Ok(distinct_people(poses, dets, &opts))
    }
}

fn checked_scale(picture: &Picture) -> Result<f32> {
    let s = picture.scale;
    if !(s.is_finite() && s > 0.0) {
        return Err(Error::Input(format!("a picture's scale must be finite and positive, got {s}")));
    }
    Ok(s)
}

fn packed_layout(image: &ImageRef) -> FrameLayout {
    FrameLayout::rgba(image.width as u32, image.height as u32)
}

/// People found in working pixels, in the caller's coordinates.
fn to_caller(mut people: Vec<Person>, s: f32) -> Vec<Person> {
    if s != 1.0 {
        for p in &mut people {
            for k in &mut p.pose.keypoints {
                k.x *= s;
                k.y *= s;
            }
            p.pose.bbox = p.pose.bbox.map(|v| v * s);
            p.detection.bbox = p.detection.bbox.map(|v| v * s);
        }
    }
    people
}
