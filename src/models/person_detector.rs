//! The person detector: finds the people in a whole image so the pose networks get a crop.
//!
//! A CenterNet-style single-shot detector (Zhou, Wang, Krähenbühl, "Objects as Points", 2019)
//! built from the FasterPose parts: a ResNet-18 layout at half width (32-64-128 channels) up to
//! stride 16, and FasterPose's low-resolution head (3x3 conv + pixel shuffle x4 + sigmoid), so it
//! runs on every executor, exports to ONNX and trains with the same engine as the pose networks.
//! The input is the whole image letterboxed into a square (see
//! [`crate::pipeline::detect`]); the three output maps at stride 4 are
//!
//! - channel 0: person-centre heatmap (probability that a box centre lies in the cell);
//! - channel 1: box width / input width;
//! - channel 2: box height / input height,
//!
//! sizes in `[0, 1]` through the same sigmoid, read at the centre peaks. The box it predicts is
//! the pose crop's box (LSP's: the extent of the labelled joints enlarged by 25%,
//! [`crate::data::box_from_keypoints`]), so a detection is exactly what the pose networks were
//! trained to be given. Several people come out as several peaks ([`crate::pipeline::detect`]).
//!
//! Cost at 128x128: 0.26 GFLOPs, about a quarter of the default pose network.

use super::fasterpose::{Backbone, FasterPoseArch, Head};
use super::{Arch, Family, ModelConfig};

/// Output channels: centre heatmap, width, height.
pub const DETECTOR_CHANNELS: usize = 3;

/// The detector `wgpose predict` and the Estimator use when no box is given.
pub const DEFAULT_DETECTOR: &str = "person-detector-r18w32";

pub(super) fn configs() -> Vec<ModelConfig> {
    vec![ModelConfig {
        name: DEFAULT_DETECTOR,
        family: Family::PersonDetector,
        input: [3, 128, 128],
        joints: DETECTOR_CHANNELS,
        paper_params: None,
        paper_gflops: None,
        note: "Person detector (CenterNet-style): ResNet-18 layout at half width up to stride 16, FasterPose \
               low-resolution head to 3 sigmoid maps at stride 4 (person centre, box width, box height). Trained \
               on whole LSPET images; its boxes are LSP pose boxes.",
        arch: Arch::FasterPose(FasterPoseArch {
            backbone: Backbone::ResNet18,
            stride: 16,
            head: Head::LowRes { kernel: 3 },
            base_width: 32,
        }),
    }]
}
