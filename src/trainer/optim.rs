//! The optimiser with saveable state lives in the training engine ([`crate::train::optim`]);
//! these names are kept for the session code.

pub use crate::train::optim::{Kind, Optimizer as Optim};
