//! cinder's datasets and data loading.
//!
//! - [`Digits`]: the 8x8 handwritten digits bundled with the crate (1797 samples, a
//!   fixed train/test split), available offline from any working directory.
//! - [`Mnist`] and the [`idx`] reader: MNIST-style IDX files, plain or gzip-compressed.
//! - [`DataLoader`]: seeded, reproducible mini-batches of an [`InMemoryDataset`], built
//!   on a background thread while the caller trains on the previous one.
//!
//! ```
//! use std::sync::Arc;
//! use cinder_data::{DataLoader, Digits};
//!
//! let split = Digits::load()?.split();
//! let loader = DataLoader::new(Arc::new(split.train), 64, true, 7)?;
//! for epoch in 0..2 {
//!     for batch in loader.epoch(epoch) {
//!         assert_eq!(batch.input_shape[1..], [64]);
//!         assert_eq!(batch.inputs.len(), batch.targets.len() * 64);
//!     }
//! }
//! # Ok::<(), cinder_tensor::Error>(())
//! ```

pub mod collate;
mod dataset;
pub mod digits;
mod gzip;
pub mod idx;
pub mod loader;
mod prefetch;
mod rng;
pub mod sample;
pub mod transform;

#[cfg(test)]
mod kinds_tests;

pub use collate::{BatchField, Collate, SampleBatch};
pub use dataset::{from_fn, Dataset, FromFn, InMemoryDataset, Split};
pub use digits::Digits;
pub use idx::{read_idx, write_idx, IdxArray, Mnist};
pub use loader::{Batch, Batches, DataLoader, Epoch, Loader};
pub use sample::{Field, FieldData, FieldElement, Sample};
pub use transform::{
    Compose, Normalize, RandomAffine, RandomCrop, RandomHorizontalFlip, RandomVerticalFlip,
    Transform,
};
