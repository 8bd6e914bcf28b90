//! The encoder's errors, in-process and over HTTP alike.

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
