//! wgpose: human pose estimation networks as WGSL compute shaders on wgpu, with a CPU executor
//! that is the reference for tests and the fallback when no adapter exists.

pub mod autodiff;
pub mod bench;
pub mod cpu;
pub mod data;
pub mod detector;
mod error;
pub mod estimator;
pub mod gpu;
pub mod graph;
pub mod image_io;
pub mod metrics;
pub mod models;
pub mod npy;
pub mod onnx;
pub mod overlay;
pub mod pipeline;
pub mod rng;
pub mod skeleton;
pub mod tensor;
pub mod tracker;
pub mod training;
pub mod weights;

pub use detector::{Person, PersonDetector};
pub use error::{Error, Result};
pub use estimator::{Boxes, Device, DeviceChoice, Estimator, EstimatorOptions, Picture, Pose};
pub use models::ModelConfig;
pub use pipeline::decode::Keypoint;
pub use tensor::Tensor;
pub use tracker::{TrackStep, Tracked, Tracker, TrackerOptions};
