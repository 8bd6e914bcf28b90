//! redrec encoder: the item and user towers (ONNX, run by ONNX Runtime) and their
//! tokenizer, usable in-process or as the `redrec encoder` HTTP service.

pub mod api;
pub mod batcher;
pub mod client;
pub mod manifest;
pub mod runtime;
pub mod server;
pub mod service;
pub mod tower;

pub use batcher::BatchConfig;
pub use client::{EncoderClient, EncoderHandle};
pub use manifest::Manifest;
pub use service::Towers;
pub use tower::{Device, Encoder, EncoderConfig, UserHistory};

#[derive(Debug, Clone, thiserror::Error)]
pub enum EncoderError {
    #[error("ONNX Runtime library not found (looked in: {searched}); run scripts/setup.sh or set REDREC_ORT_DYLIB")]
    RuntimeMissing { searched: String },
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    #[error("model files: {0}")]
    Model(String),
    #[error("model does not match its manifest: {0}")]
    Contract(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("encoder unavailable: {0}")]
    Unavailable(String),
    /// The batch queue is full: shed load, the caller may retry shortly.
    #[error("encoder overloaded: {0}")]
    Overloaded(String),
    /// The request's deadline passed before its batch ran.
    #[error("encoder deadline exceeded")]
    DeadlineExceeded,
}

impl From<ort::Error> for EncoderError {
    fn from(e: ort::Error) -> Self {
        Self::Runtime(e.to_string())
    }
}
