//! Modules, layers, initialisers, optimizers and checkpoints, with PyTorch's
//! names and semantics.

pub mod checkpoint;
pub mod init;
pub mod layers;
pub mod module;
pub mod optim;

pub use checkpoint::{load, save};
pub use layers::{
    Flatten, Identity, LeakyReLU, Linear, ReLU, Sequential, Sigmoid, Softmax, Tanh, GELU,
};
pub use module::Module;
pub use optim::{Adam, Optimizer, Sgd};
