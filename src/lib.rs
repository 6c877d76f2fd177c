pub use cinder_runtime as runtime;
