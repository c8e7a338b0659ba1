//! One error type for the runtime. Every variant carries enough context (file, node, tensor,
//! field) for a one-line message that says what is wrong and where.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The io error is part of the message, not a `source`, so that error chains say it once.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid graph: {0}")]
    Graph(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("{backend} backend: {message}")]
    Backend { backend: &'static str, message: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File { path: path.into(), message: message.into() }
    }
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io { path: path.into(), error }
    }
    pub fn graph(message: impl Into<String>) -> Self {
        Error::Graph(message.into())
    }
    pub fn input(message: impl Into<String>) -> Self {
        Error::Input(message.into())
    }
    pub fn backend(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Backend { backend, message: message.into() }
    }
}
