//! Recurrent networks for sequences: a classifier that reads a sequence with
//! a recurrent stack (`cinder_nn::Recurrent`) and classifies its final
//! state ([`models`]), and its tasks on cinder-train's loop ([`train`]):
//! handwritten digits read as 28 rows of 28 pixels; and a character-level
//! language model ([`lm`]) trained on any text and sampled; and spoken
//! digits ([`speech`]) from their log-mel features.

pub mod lm;
pub mod models;
pub mod speech;
pub mod train;

pub use models::{SequenceClassifier, SequenceSpec};
