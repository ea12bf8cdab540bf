//! Training on the CPU around the engine of [`crate::autodiff`]: datasets with augmentation and a
//! threaded loader ([`dataset`], [`augment`]), saveable optimiser state ([`optim`]), the
//! training-curve PNG (`plot`) and the `wgpose train` session ([`session`]: logging,
//! validation PCK, checkpoints, resume, final weights with a model card), knowledge
//! distillation from a trained network ([`distill`]) and a moving average of the weights ([`ema`]).

pub mod augment;
pub(crate) mod config;
pub mod dataset;
pub mod detection;
pub mod distill;
pub mod ema;
pub mod optim;
pub(crate) mod plot;
pub mod session;

pub use augment::{make_sample, AugmentConfig, AugmentParams, Occluder, Sample, SampleShape};
pub use config::{InputSize, TrainConfig};
pub use dataset::{Batch, BatchSource, ImageCache, Loader, TrainSet};
pub use ema::WeightAverage;
pub use session::{run, TrainEvent, TrainSummary, ValScore};
