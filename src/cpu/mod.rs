//! CPU executor
