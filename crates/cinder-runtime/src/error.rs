use std::path::PathBuf;

/// Every fallible operation in cinder returns this error. Each variant says what
/// happened and, where there is one, what the reader can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no GPU adapter found{filter}. cinder needs a Vulkan, Metal or DX12 driver. On Debian/Ubuntu \
         install the software adapter with `apt-get install mesa-vulkan-drivers libvulkan1` (Mesa lavapipe); \
         on Fedora `dnf install mesa-vulkan-drivers`; on macOS Metal is built in; on Windows update the GPU driver. \
         `cinder info` lists what wgpu can see"
    )]
    NoAdapter { filter: String },

    /// Adapters exist, but `CINDER_BACKEND` / `CINDER_ADAPTER` rule them
    /// all out (or name a backend that does not exist): running on some
    /// other adapter instead would hide the mistake.
    #[error(
        "no GPU adapter matches {filter}. The adapters on this machine: {}. \
         Change or unset the variable (without it, `cinder info` describes each adapter)",
        list_or_none(available)
    )]
    NoMatchingAdapter {
        /// The filter as set, e.g. `CINDER_ADAPTER=rtx` (and why it matches
        /// nothing, where that is not plain).
        filter: String,
        /// Each adapter as "name (backend, type)".
        available: Vec<String>,
    },

    #[error("{op}: shapes do not fit: {detail}")]
    Shape { op: &'static str, detail: String },

    #[error("{op}: {detail}")]
    InvalidArgument { op: &'static str, detail: String },

    #[error("{op}: expected dtype {expected}, got {got}")]
    DType {
        op: &'static str,
        expected: String,
        got: String,
    },

    #[error("out of device memory while allocating {bytes} bytes: {detail}")]
    OutOfMemory { bytes: u64, detail: String },

    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),

    #[error("GPU error: {0}")]
    Gpu(String),

    #[error("{tensor} of shape {shape:?} is too large for adapter {adapter}: {limit}")]
    TooLarge {
        /// What made the tensor (its op).
        tensor: String,
        shape: Vec<usize>,
        /// The limit, and how it is exceeded.
        limit: String,
        adapter: String,
    },

    #[error("{feature} is not supported by adapter {adapter}")]
    Unsupported { feature: String, adapter: String },

    #[error("bad file {}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },

    #[error("{} : {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "a tensor read by a pending computation was modified in place (for example by optimizer.step) \
         before that computation ran; realize it first (read it, or call Tensor::realize) if its old value is needed"
    )]
    ModifiedInPlace,

    #[error("no gradient: {0}")]
    NoGradient(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The items joined for a message; "none" when there are none.
fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join("; ")
    }
}

impl Error {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }

    pub fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            detail: detail.into(),
        }
    }

    pub fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
