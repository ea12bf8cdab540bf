//! The one error type of the library. Every fallible public function returns `Result<T>`.

use std::fmt;

/// Everything that can go wrong in wgpose, typed so callers can react to the kind.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A node's inputs do not fit its operator (wrong rank, channel count, spatial size).
    #[error("shape error at node `{node}`: {msg}")]
    Shape {
        /// Name of the node whose inputs are wrong.
        node: String,
        /// What does not fit.
        msg: String,
    },
    /// The graph itself is malformed (dangling input, cycle, empty output list).
    #[error("invalid graph: {0}")]
    Graph(String),
    /// Data handed to an executor is unusable (wrong length, NaN, zero-sized).
    #[error("invalid input: {0}")]
    Input(String),
    /// A tensor or buffer would exceed what the device or a sane configuration allows.
    #[error("too large: {0}")]
    TooLarge(String),
    /// No wgpu adapter could be found; the message names what to install.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// wgpu reported a validation or out-of-memory error.
    #[error("GPU error: {0}")]
    Gpu(String),
    /// The device was lost (driver reset, GPU removed).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file, as given.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not what it should be.
    #[error("{path}: {msg}")]
    Format {
        /// The file, as given.
        path: String,
        /// What is wrong with its content.
        msg: String,
    },
}

impl Error {
    pub(crate) fn shape(node: &str, msg: impl fmt::Display) -> Self {
        Error::Shape { node: node.to_string(), msg: msg.to_string() }
    }
}

/// `std::result::Result` with wgpose's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
