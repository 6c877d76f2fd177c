//! cinder's `Tensor`: the handle users hold, every op with its shape rule, and
//! reverse-mode autodiff.

mod activation;
mod autograd;
pub mod boxes;
mod conv;
mod custom;
mod loss;
mod norm;
mod ops;
mod pool;
pub mod shape;
mod tensor;

pub use activation::Approximate;
pub use autograd::{freeze, no_grad, with_no_grad, FreezeGuard, Gradients, NoGradGuard};
pub use boxes::{batched_nms, nms};
pub use cinder_runtime::{CustomKernel, CUSTOM_WG};
pub use cinder_runtime::{DType, Device, Error, Result, Stats};
pub use conv::{Conv2dOptions, Pool2dOptions};
pub use custom::CustomOp;
pub use loss::{CrossEntropyOptions, NllLossOptions, Reduction};
pub use norm::PadMode;
pub use tensor::{read_all, Element, Tensor};

/// The runtime underneath, for code that needs nodes, effects or adapters.
pub use cinder_runtime as runtime;
