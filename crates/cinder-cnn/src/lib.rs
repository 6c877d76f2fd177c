//! Convolutional networks for image classification: the models, the shared
//! training loop (schedules, clipping, checkpoints, resume), the reports it
//! writes, and turning a user's image file into a model input.

pub mod imagefile;
pub mod models;
pub mod report;
pub mod train;
