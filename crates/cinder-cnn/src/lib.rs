//! Convolutional networks: image classification (the models, the digits'
//! perceptron, training on cinder-train's loop, a user's image file as a
//! model input) and semantic segmentation (a U-Net on scenes of digits),
//! with pictures of masks over images.

pub mod imagefile;
pub mod models;
pub mod overlay;
pub mod segment;
pub mod train;
