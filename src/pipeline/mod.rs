//! The geometric and decoding parts of the pose pipeline, around the networks:
//!
//! 1. [`crop`]: a person box becomes a [`CropTransform`] (aspect-preserving, padded, optionally
//!    rotated / flipped) and the crop is warped and normalised into the network input, on the
//!    CPU ([`warp_batch`]) or on the GPU straight from an RGBA frame ([`GpuPreprocess`]);
//! 2. the network produces `[N, K, H/4, W/4]` heatmaps;
//! 3. [`decode`](mod@decode): per-joint argmax with quarter-pixel or DARK refinement, the flip test
//!    ([`average_flipped`]), and [`Keypoint::to_image`] back through the crop;
//! 4. [`smoothing`]: One Euro filtering over time for video, and `follow`: the next frame's
//!    crop box from this frame's pose.
//!
//! One coordinate convention throughout: continuous coordinates where pixel `i` covers
//! `[i, i + 1)` and has its centre at `i + 0.5`, in the image, the network input and the heatmaps
//! alike (heatmap coordinates times the stride are input coordinates). See [`crop`].

pub mod crop;
pub mod decode;
pub mod detect;
pub(crate) mod follow;
pub mod preprocess_gpu;
pub mod smoothing;

pub use crop::{validate_box, warp_batch, warp_rgb, CropConfig, CropTransform, ImageRef, Normalization, PixelFormat};
pub use decode::{average_flipped, decode, DecodeConfig, HeatmapKind, Keypoint, Refinement};
pub use detect::{box_ap, box_iou, decode_detections, letterbox, nms, BoxMetrics, DetectConfig, Detection};
pub use preprocess_gpu::{FrameLayout, GpuPreprocess, OutputLayout};
pub use smoothing::{OneEuroConfig, OneEuroFilter, PoseSmoother};
