//! Convolutional networks: image classification (the models, the digits'
//! perceptron, training on cinder-train's loop, a user's image file as a
//! model input), semantic segmentation (a U-Net on scenes of digits) and
//! object detection (a CenterNet-style detector on the same scenes, with
//! average precision), with pictures of masks and boxes over images.

pub mod annotations;
pub mod average_precision;
pub mod detect;
pub mod imagefile;
pub mod models;
pub mod overlay;
pub mod segment;
pub mod train;
