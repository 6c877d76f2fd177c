//! cinder's GPU side: devices, buffer pool, the lazy graph, WGSL generation,
//! the planner (fusion, liveness, plan cache) and the executor.

mod ahead;
mod canon;
mod codegen;
mod custom;
mod device;
mod error;
mod exec;
mod graph;
mod kernels;
mod plan;
mod pool;
mod spirv;

pub use canon::Effect;
pub use custom::{CustomKernel, CUSTOM_WG};
pub use device::{list_adapters, AdapterReport, CacheSizes, Device, DeviceOptions, Stats};
pub use error::{Error, Result};
pub use graph::{
    contiguous_strides, numel, BinaryOp, DType, Fill, Node, OptimKind, ReduceOp, UnaryOp, ViewSpec,
    Window2d,
};
pub use kernels::shader_sources;
pub use pool::Storage;
/// The wgpu this runtime is built on (for `DeviceOptions::limits`, say).
pub use wgpu;
