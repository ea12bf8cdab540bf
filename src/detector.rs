//! Finding the people in a whole image: the trained person detector
//! ([`crate::models::person_detector`]) run on the image's letterbox view and decoded into
//! person boxes ([`crate::pipeline::detect`]).
//!
//! The boxes it returns are *tight* person boxes: the detector predicts LSP pose boxes (the
//! labelled joints' extent enlarged by 25%), and [`PersonDetector::detect`] shrinks them by that
//! 25% again, so they mean what a user-given `--bbox` means and the estimator's usual crop
//! padding (1.25) reproduces exactly the crop the pose networks were trained on.
//! [`PersonDetector::detect_lsp_boxes`] gives the unshrunk boxes (LSP evaluation pads by 1.0).

use std::path::Path;

use crate::data::LSP_BOX_ENLARGE;
use crate::error::{Error, Result};
use crate::graph::passes::optimize_for_inference;
use crate::graph::Graph;
use crate::models::{load_model, Family, ModelConfig, WeightsSource};
use crate::pipeline::crop::{warp_batch, CropTransform, ImageRef, Normalization};
use crate::pipeline::detect::{decode_detection_batch, letterbox, DetectConfig, Detection};
use crate::tensor::Tensor;

/// A loaded person detector (CPU executor; the [`crate::estimator::Estimator`] runs the same
/// graph on the GPU when it has one).
pub struct PersonDetector {
    pub config: ModelConfig,
    pub weights: WeightsSource,
    pub detect: DetectConfig,
    graph: Graph,
}

impl PersonDetector {
    /// The detector `config` with `weights` (else its shipped weights). Unlike the pose
    /// networks there is no random-initialisation fallback: an untrained detector's boxes are
    /// garbage, so missing weights are an error.
    pub fn new(config: &ModelConfig, weights: Option<&Path>, detect: DetectConfig) -> Result<Self> {
        if config.family != Family::PersonDetector {
            return Err(Error::Input(format!("{} is not a person detector", config.name)));
        }
        detect.check()?;
        let (graph, weights, _) = load_model(config, weights, 0)?;
        if let WeightsSource::RandomInit { .. } = weights {
            return Err(Error::Input(format!(
                "no weights for the person detector {} (expected {}); give a weights file or a box",
                config.name,
                crate::models::shipped_weights_path(config.name).display()
            )));
        }
        Ok(PersonDetector { config: *config, weights, detect, graph: optimize_for_inference(&graph) })
    }

    /// The inference graph (for executors other than the CPU).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The letterbox crop of a `w x h` image for this detector's input.
    pub fn crop_for(&self, w: usize, h: usize) -> Result<CropTransform> {
        letterbox(w, h, self.config.input[2], self.config.input[1])
    }

    /// Detector maps `[1, 3, h, w]` of `image` (CPU executor).
    pub fn maps(&self, image: &ImageRef) -> Result<(Tensor, CropTransform)> {
        let crop = self.crop_for(image.width, image.height)?;
        let [_, in_h, in_w] = self.config.input;
        let x = warp_batch(image, &[crop], in_w, in_h, &Normalization::IMAGENET)?;
        let outs = crate::cpu::run(&self.graph, &[x])?;
        let maps = outs.into_iter().last().ok_or_else(|| Error::Graph("the detector produced no output".into()))?;
        Ok((maps, crop))
    }

    /// People in `image` as LSP pose boxes, highest score first.
    pub fn detect_lsp_boxes(&self, image: &ImageRef) -> Result<Vec<Detection>> {
        let (maps, crop) = self.maps(image)?;
        self.decode_lsp(&maps, &crop)
    }

    /// Decodes `[1, 3, h, w]` maps into LSP pose boxes.
    pub fn decode_lsp(&self, maps: &Tensor, crop: &CropTransform) -> Result<Vec<Detection>> {
        Ok(decode_detection_batch(maps, std::slice::from_ref(crop), &self.detect)?.remove(0))
    }

    /// People in `image` as tight boxes (see the module docs), highest score first.
    pub fn detect(&self, image: &ImageRef) -> Result<Vec<Detection>> {
        Ok(self.detect_lsp_boxes(image)?.into_iter().map(tight).collect())
    }
}

/// An LSP pose box shrunk back to the joints' extent (inverse of the 25% enlargement).
pub fn tight(d: Detection) -> Detection {
    let [x, y, w, h] = d.bbox;
    let (cx, cy) = (x + w / 2.0, y + h / 2.0);
    let (w, h) = (w / LSP_BOX_ENLARGE, h / LSP_BOX_ENLARGE);
    Detection { bbox: [cx - w / 2.0, cy - h / 2.0, w, h], score: d.score }
}
