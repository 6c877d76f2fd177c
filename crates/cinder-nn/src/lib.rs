//! Modules, layers, initialisers, optimizers and checkpoints, with PyTorch's
//! names and semantics.

pub mod checkpoint;
pub mod conv;
pub mod init;
pub mod layers;
pub mod module;
pub mod norm;
pub mod optim;

pub use checkpoint::{load, save};
pub use conv::{AdaptiveAvgPool2d, AvgPool2d, Conv2d, ConvTranspose2d, MaxPool2d};
pub use layers::{
    Flatten, Identity, LeakyReLU, Linear, ReLU, Sequential, Sigmoid, Softmax, Tanh, GELU,
};
pub use module::Module;
pub use norm::{BatchNorm2d, Dropout, LayerNorm, Upsample, UpsampleMode};
pub use optim::{Adam, Optimizer, Sgd};
