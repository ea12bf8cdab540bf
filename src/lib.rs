//! wgpose: human pose estimation networks as WGSL compute shaders on wgpu, with a CPU executor
//! that is the reference for tests and the fallback when no adapter exists.
//!
//! # Where to start
//!
//! Everything a program needs to find people's keypoints is re-exported at the crate root:
//!
//! - [`Estimator`] runs a pose network on pictures, on the GPU or the CPU ([`Device`] picks;
//!   [`Estimator::device_choice`] says which and why). Build it from a named configuration
//!   ([`Estimator::from_name`], see [`models::configs`] and [`ModelConfig`]), from a weights file
//!   ([`Estimator::from_file`]) or with [`EstimatorOptions`] (flip test, decoding, crop padding).
//! - [`Estimator::estimate`] takes a [`Picture`] (a photo from [`image_io::load_rgb`], an
//!   [`image::RgbImage`], a frame) and [`Boxes`]: person boxes `[x, y, w, h]` in the picture's
//!   pixels, or [`Boxes::Auto`] to let the shipped [`PersonDetector`] find everyone. It returns
//!   one [`Pose`] per person: [`Keypoint`]s (`x`, `y` in the picture's pixels, `score` the
//!   heatmap peak, roughly 0..1) in the order of [`Pose::skeleton`]'s joints.
//! - [`Estimator::people`] also returns each [`Person`]'s detection (box and score).
//! - [`Tracker`] follows one person through a video: the detector when nobody is tracked, the
//!   previous frame's keypoints otherwise ([`TrackStep`] says which, [`TrackerOptions`] when).
//! - Every fallible function returns [`Result`], whose [`Error`] says what kind of thing went
//!   wrong (bad input, missing file, no GPU adapter...). Nothing panics on bad input.
//!
//! ```no_run
//! use wgpose::{Boxes, Device, Estimator};
//!
//! // The default shipped network (needs its weights in `models/`, or `WGPOSE_MODELS`).
//! let mut est = Estimator::from_name("fasterpose-r18-s16-lsp", Device::Auto)?;
//! let photo = wgpose::image_io::load_rgb("photo.jpg".as_ref())?;
//! for pose in est.estimate(&photo, Boxes::Auto)? {
//!     println!("person in {:?}, score {:.2}", pose.bbox, pose.score);
//!     for (joint, k) in pose.skeleton.joints.iter().zip(&pose.keypoints) {
//!         println!("  {joint}: ({:.0}, {:.0}) score {:.2}", k.x, k.y, k.score);
//!     }
//! }
//! # Ok::<(), wgpose::Error>(())
//! ```
//!
//! # The rest of the library
//!
//! Around the front door, the modules are the layers it is built from. They are public because
//! the command line, the demo, the browser build, the benchmarks and the tests use them, and
//! they are documented, but below the front door they are **internals, not a stable API**:
//!
//! - the networks: [`models`] (graph builders and named configurations), [`weights`]
//!   (safetensors files with a model card), [`onnx`] (export);
//! - the graph IR and its executors: [`graph`] (operators, shapes, fusion passes, memory plan),
//!   [`gpu`] (WGSL kernels through wgpu), [`cpu`] (the reference and the fast CPU executor),
//!   [`tensor`] (NCHW f32 tensors);
//! - the pipeline around a network: [`pipeline`] (crops, GPU preprocessing, heatmap decoding,
//!   detection decoding, smoothing), [`detector`], [`tracker`], [`skeleton`] (joint orders),
//!   [`image_io`] (loading photos), [`overlay`] (drawing skeletons);
//! - evaluation and training: [`data`] (LSP, COCO, MPII loaders), [`metrics`] (PCK, OKS, COCO
//!   AP), [`autodiff`] (gradients, losses, optimisers), [`training`] (datasets, augmentation,
//!   the `wgpose train` session), [`bench`](mod@bench) (the `wgpose bench` layer set);
//! - small utilities: [`npy`] (`.npy` files), [`rng`] (a seeded generator).

#![warn(missing_docs)]

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

pub use cpu::{pin_cpu_threads, release_spare_buffers};
pub use detector::{Person, PersonDetector};
pub use error::{Error, Result};
pub use estimator::{Boxes, Device, DeviceChoice, Estimator, EstimatorOptions, Picture, Pose};
pub use models::ModelConfig;
pub use pipeline::decode::Keypoint;
pub use tensor::Tensor;
pub use tracker::{TrackStep, Tracked, Tracker, TrackerOptions};
