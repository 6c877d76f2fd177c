//! Generative adversarial networks on cinder: DCGAN's generator and
//! discriminator for one-channel images (28x28 MNIST, the 8x8 digits),
//! with an optional class label fed to both (a conditional GAN), PyTorch's
//! state_dict names, and their training on cinder-train's loop.

pub mod models;

pub use models::{Discriminator, GanSpec, Generator};
pub mod grid;
pub mod quality;
pub mod train;
