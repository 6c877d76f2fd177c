//! Modules, layers, initialisers, optimizers and checkpoints, with PyTorch's
//! names and semantics.

pub mod activation;
pub mod checkpoint;
pub mod conv;
pub mod init;
pub mod layers;
pub mod module;
pub mod norm;
pub mod optim;
mod recurrence;
pub mod rnn;

pub use activation::{
    Hardsigmoid, Hardswish, Hardtanh, LogSigmoid, Mish, ReLU6, SiLU, Softplus, ELU, GELU, SELU,
};
pub use checkpoint::{load, save};
pub use conv::{
    AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, Conv2d, ConvTranspose2d, MaxPool2d,
    MaxUnpool2d,
};
pub use layers::{Flatten, Identity, LeakyReLU, Linear, ReLU, Sequential, Sigmoid, Softmax, Tanh};
pub use module::Module;
pub use norm::{
    BatchNorm1d, BatchNorm2d, Dropout, GroupNorm, InstanceNorm2d, LayerNorm, Upsample, UpsampleMode,
};
pub use optim::{Adam, Optimizer, Sgd};
pub use rnn::{
    gru, gru_cell, lstm, lstm_cell, rnn, rnn_cell, Cell, CellKind, CellParams, Embedding,
    Recurrent, RnnOptions, RnnOutput, State,
};
