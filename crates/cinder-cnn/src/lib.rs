//! Convolutional networks for image classification: the models (and the
//! digits' perceptron), classification on cinder-train's loop, and turning a
//! user's image file into a model input.

pub mod imagefile;
pub mod models;
pub mod train;
