//! cinder's datasets and data loading.
//!
//! Data:
//! - [`Digits`]: the 8x8 handwritten digits bundled with the crate (1797 samples, a
//!   fixed train/test split), available offline from any working directory.
//! - [`Mnist`] and the [`idx`] reader: MNIST-style IDX files, plain or gzip-compressed,
//!   and 5000 real MNIST digits bundled ([`Mnist::bundled`]).
//! - [`SpokenDigits`]: 1120 clips of spoken digits by 8 voices, bundled, split by
//!   speaker, and 280 noisy clips of the held-out voices for evaluation.
//!
//! Audio ([`audio`]): [`audio::read_wav`] (any bit depth, mixed to mono),
//! [`audio::resample`] (windowed sinc), [`LogMel`] features (40 mel bands per
//! 10 ms frame of 8 kHz audio) and seeded waveform augmentation
//! ([`audio::augment`]: speed, time shift, white or babble noise at an SNR, gain).
//!
//! Image classification ([`InMemoryDataset`], [`DataLoader`]):
//! - [`DataLoader`]: seeded, reproducible mini-batches of an [`InMemoryDataset`],
//!   built on a background thread while the caller trains on the previous one, as
//!   a [`Batch`] of f32 inputs and i32 classes; with
//!   [`DataLoader::with_transform`], each sample is augmented first, seeded by
//!   `(seed, epoch, sample index)`.
//!
//! Anything else ([`Sample`], [`Dataset`], [`Collate`], [`Loader`], [`transform`]):
//! - [`Sample`]: named [`Field`]s, host arrays of any shape and dtype (f32, i32,
//!   u32): image and class, image and mask, image with boxes and their classes,
//!   a sequence and its label or target sequence.
//! - [`Dataset`]: the trait to implement (`len`, `get(i) -> Result<Sample>`), or
//!   [`from_fn`]; `Vec<Sample>` and [`InMemoryDataset`] are datasets too.
//! - [`Collate`]: stacks a batch's samples field by field, padding the fields whose
//!   sizes differ (with 0 or a value per field) and keeping each sample's shape, so
//!   [`BatchField::lengths`] and [`BatchField::mask`] tell values from padding.
//! - [`Loader`]: shuffles per `(seed, epoch)` in the same order as [`DataLoader`],
//!   reads, transforms and collates on a background thread a bounded number of
//!   batches ahead, and hands errors and panics of user code over as `Err`s.
//! - [`transform`]: seeded [`RandomCrop`], [`RandomHorizontalFlip`],
//!   [`RandomVerticalFlip`], [`RandomAffine`] and [`Normalize`], each of which can
//!   move masks and boxes along with the image, combined with [`Compose`]; any
//!   closure `Fn(&mut Sample, &mut Rng) -> Result<()>` is a [`Transform`] too.
//!
//! Augmented MNIST for a CNN, reproducible across interrupted runs:
//!
//! ```
//! use std::sync::Arc;
//! use cinder_data::{DataLoader, InMemoryDataset, Mnist, RandomAffine};
//!
//! let train = Arc::new(Mnist::bundled()?.train); // [1, 28, 28] images
//! let jitter = RandomAffine::new(InMemoryDataset::INPUT)
//!     .degrees(10.0)
//!     .translate_pixels(2.0, 2.0)
//!     .scale(0.9, 1.1);
//! let loader = DataLoader::new(train, 64, true, 7)?.with_transform(jitter)?;
//! for batch in loader.try_epoch(0).take(3) {
//!     let batch = batch?; // batch.to_tensors(&device) uploads it
//!     assert_eq!(batch.input_shape, [64, 1, 28, 28]);
//! }
//! # Ok::<(), cinder_tensor::Error>(())
//! ```
//!
//! Images with a varying number of boxes, flipped together and padded per batch:
//!
//! ```
//! use std::sync::Arc;
//! use cinder_data::{from_fn, Collate, Field, Loader, RandomHorizontalFlip, Sample};
//!
//! // Image i has i % 3 boxes [x0, y0, x1, y1], each with a class.
//! let scenes = from_fn(8, |i| {
//!     let k = i % 3;
//!     let boxes: Vec<f32> = (0..k).flat_map(|j| [j as f32, 0.0, j as f32 + 2.0, 2.0]).collect();
//!     Ok(Sample::new()
//!         .with("image", Field::new(vec![0.5f32; 3 * 8 * 8], &[3, 8, 8])?)
//!         .with("boxes", Field::new(boxes, &[k, 4])?)
//!         .with("classes", Field::new(vec![1i32; k], &[k])?))
//! });
//! let loader = Loader::new(Arc::new(scenes), 4, true, 1)?
//!     .transform(RandomHorizontalFlip::new("image", 0.5).with_boxes("boxes"))
//!     .collate(Collate::new().pad("classes", -1.0));
//! for batch in loader.epoch(0) {
//!     let batch = batch?;
//!     let classes = batch.field("classes")?; // [4, most boxes], -1 where padded
//!     let counts = classes.lengths(0)?; // boxes per image
//!     let mask = classes.mask(0)?; // [4, most boxes], 1 on real boxes
//!     assert_eq!(mask.shape(), classes.values().shape());
//!     assert_eq!(counts.len(), batch.len());
//! }
//! # Ok::<(), cinder_tensor::Error>(())
//! ```

pub mod audio;
pub mod collate;
mod dataset;
pub mod digits;
mod gzip;
pub mod idx;
pub mod loader;
mod prefetch;
mod rng;
pub mod sample;
pub mod scenes;
pub mod text;
pub mod transform;

#[cfg(test)]
mod kinds_tests;

pub use audio::{LogMel, SpokenDigits};
pub use collate::{BatchField, Collate, SampleBatch};
pub use dataset::{from_fn, Dataset, FromFn, InMemoryDataset, Split};
pub use digits::Digits;
pub use idx::{read_idx, write_idx, IdxArray, Mnist};
pub use loader::{Batch, Batches, DataLoader, Epoch, Loader, TryEpoch};
pub use sample::{Field, FieldData, FieldElement, Sample};
pub use scenes::{DigitScenes, Scene, SceneConfig, SceneList, SceneSamples, SceneSource};
pub use text::{Corpus, NGram, Vocab};
pub use transform::{
    sample_seed, Compose, Normalize, RandomAffine, RandomCrop, RandomHorizontalFlip,
    RandomVerticalFlip, Rng, Transform,
};
