//! The optimiser with saveable state lives in the training engine ([`crate::autodiff::Optimizer`]);
//! these names are kept for the session code.

pub use crate::autodiff::optim::{Kind, Optimizer as Optim};
