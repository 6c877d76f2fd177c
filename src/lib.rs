//! cinder: a deep-learning engine for GPUs on wgpu.
//!
//! ```no_run
//! use cinder::prelude::*;
//!
//! # fn main() -> cinder::Result<()> {
//! let device = Device::new()?;
//! let x = Tensor::from_slice(&device, &[1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
//! let y = x.matmul(&x)?.relu()?;
//! println!("{:?}", y.to_vec::<f32>()?);
//! # Ok(())
//! # }
//! ```

pub use cinder_cnn as cnn;
pub use cinder_data as data;
pub use cinder_gan as gan;
pub use cinder_nn as nn;
pub use cinder_rnn as rnn;
pub use cinder_runtime as runtime;
pub use cinder_tensor as tensor;
pub use cinder_train as train;

pub use cinder_tensor::{
    freeze, no_grad, with_no_grad, DType, Device, Error, Gradients, Result, Stats, Tensor,
};

/// What most programs need, in one import.
pub mod prelude {
    pub use cinder_data::{Batch, DataLoader, Digits, InMemoryDataset};
    pub use cinder_nn::{
        Adam, Conv2d, Flatten, Linear, MaxPool2d, Module, Optimizer, ReLU, Sequential, Sgd,
    };
    pub use cinder_tensor::{
        no_grad, Conv2dOptions, CrossEntropyOptions, DType, Device, Error, Gradients,
        Pool2dOptions, Reduction, Result, Tensor,
    };
}
