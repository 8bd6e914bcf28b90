//! redrec encoder: the item and user towers (ONNX, run by ONNX Runtime) and their
//! tokenizer, usable in-process or as the `redrec encoder` HTTP service.

pub mod api;
pub mod batcher;
pub mod client;
mod contract;
pub mod error;
pub mod manifest;
pub mod pool;
pub mod runtime;
pub mod serve;
pub mod server;
pub mod service;
pub mod tower;

pub use batcher::BatchConfig;
pub use client::{EncoderClient, EncoderHandle};
pub use error::EncoderError;
pub use manifest::Manifest;
pub use pool::EncoderConfig;
pub use runtime::Device;
pub use serve::{serve, TowersConfig};
pub use service::Towers;
pub use tower::{Encoder, UserHistory};
