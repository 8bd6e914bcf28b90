//! Finding and loading ONNX Runtime's shared library (nothing is downloaded: the setup
//! step unpacks it from PyPI's `onnxruntime` wheel), once per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::builder::SessionBuilder;

use crate::error::EncoderError;

/// Where the towers run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    /// ONNX Runtime's CUDA execution provider (the `cuda` cargo feature and a GPU build
    /// of the library); without either, the towers run on the CPU and say so in the log.
    Cuda,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(format!("unknown device {other:?}; cpu or cuda")),
        }
    }
}

/// Overrides where the library is looked for.
pub const DYLIB_ENV: &str = "REDREC_ORT_DYLIB";
const LIB: &str = "libonnxruntime.so";

/// Where the library may be, most specific first.
pub fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for var in [DYLIB_ENV, "ORT_DYLIB_PATH"] {
        if let Some(p) = std::env::var_os(var) {
            out.push(PathBuf::from(p));
        }
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            out.push(dir.join(LIB));
            out.push(dir.join("../lib").join(LIB));
            // A binary under <repo>/target/...: the repo's setup output.
            out.extend(dir.ancestors().map(|a| a.join(".redrec/lib").join(LIB)));
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        out.push(cwd.join(".redrec/lib").join(LIB));
    }
    out.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../.redrec/lib")
            .join(LIB),
    );
    out.push(PathBuf::from("/opt/redrec/lib").join(LIB));
    out.push(PathBuf::from("/usr/local/lib").join(LIB));
    out
}

pub fn locate() -> Result<PathBuf, EncoderError> {
    let candidates = candidates();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| EncoderError::RuntimeMissing {
            searched: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The process's ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<Environment, EncoderError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = locate().map_err(|e| e.to_string())?;
            tracing::info!(library = %path.display(), "loading ONNX Runtime");
            ort::init_from(&path)
                .map_err(|e| format!("loading {}: {e}", path.display()))?
                .with_name("redrec")
                .build()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(EncoderError::Runtime)
}

/// The device the towers can actually use: CUDA only where this build has the `cuda`
/// feature and the loaded library carries the CUDA execution provider.
pub fn usable_device(wanted: Device) -> Device {
    match wanted {
        Device::Cpu => Device::Cpu,
        Device::Cuda => {
            #[cfg(feature = "cuda")]
            {
                use ort::ep::ExecutionProvider;
                match ort::ep::CUDA::is_available() {
                    Ok(true) => return Device::Cuda,
                    Ok(false) => tracing::warn!(
                        "this ONNX Runtime library has no CUDA execution provider \
                         (install onnxruntime-gpu: scripts/setup.sh --gpu); running on the CPU"
                    ),
                    Err(e) => tracing::warn!("probing CUDA: {e}; running on the CPU"),
                }
            }
            #[cfg(not(feature = "cuda"))]
            tracing::warn!("built without the `cuda` feature; running on the CPU");
            Device::Cpu
        }
    }
}

/// Registers the device's execution provider on a session builder, and says where the
/// session will run. CUDA registration failing (no GPU, missing CUDA libraries) leaves the
/// session on the CPU, with a log line.
pub fn with_device(
    builder: SessionBuilder,
    device: Device,
) -> Result<(SessionBuilder, Device), String> {
    match device {
        Device::Cpu => Ok((builder, Device::Cpu)),
        #[cfg(feature = "cuda")]
        Device::Cuda => {
            let cuda = ort::ep::CUDA::default()
                .with_device_id(0)
                .build()
                .error_on_failure();
            match builder.with_execution_providers([cuda]) {
                Ok(b) => Ok((b, Device::Cuda)),
                Err(e) => {
                    tracing::warn!("CUDA execution provider unusable ({e}); running on the CPU");
                    Ok((e.recover(), Device::Cpu))
                }
            }
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => Ok((builder, Device::Cpu)),
    }
}
