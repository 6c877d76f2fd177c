//! Mini-batches of an [`InMemoryDataset`], shuffled reproducibly and assembled on a
//! background thread.

use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use cinder_tensor::{Error, Result};

use crate::dataset::InMemoryDataset;
use crate::rng::{mix64, permutation, SplitMix64};

/// Batches that may wait, ready, while the consumer works on the current one: enough
/// to hide the assembly time without holding much memory.
const PREFETCH: usize = 2;

/// One mini-batch, copied out of the dataset in the order the loader chose.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `input_shape.iter().product()` values, sample after sample.
    pub inputs: Vec<f32>,
    /// `[b, ...feature_shape]`, where `b` is the number of samples in this batch.
    pub input_shape: Vec<usize>,
    /// The `b` class labels.
    pub targets: Vec<i32>,
}

impl Batch {
    /// The number of samples.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The inputs as an f32 tensor of `input_shape` and the targets as i32 `[b]`.
    pub fn to_tensors(
        &self,
        device: &cinder_tensor::Device,
    ) -> Result<(cinder_tensor::Tensor, cinder_tensor::Tensor)> {
        let x = cinder_tensor::Tensor::from_slice(device, &self.inputs, &self.input_shape)?;
        let y = cinder_tensor::Tensor::from_slice(device, &self.targets, &[self.targets.len()])?;
        Ok((x, y))
    }
}

/// Splits a dataset into mini-batches, epoch after epoch.
///
/// With `shuffle`, the sample order of an epoch is a fixed function of
/// `(seed, epoch index)`: the same seed gives the same batches on every run, machine
/// and version of cinder, and each epoch gets a different order. Without `shuffle`
/// the samples come in dataset order. Every sample appears exactly once per epoch;
/// the last batch holds the remainder unless [`DataLoader::drop_last`] is set.
#[derive(Debug, Clone)]
pub struct DataLoader {
    dataset: Arc<InMemoryDataset>,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    drop_last: bool,
}

impl DataLoader {
    /// Fails if `batch_size` is 0 or the dataset's fields disagree
    /// (see [`InMemoryDataset::validate`]).
    pub fn new(
        dataset: Arc<InMemoryDataset>,
        batch_size: usize,
        shuffle: bool,
        seed: u64,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::invalid(
                "DataLoader::new",
                "batch_size must be at least 1",
            ));
        }
        // Checked once here so that batch assembly can rely on it; the Arc keeps the
        // dataset from changing afterwards.
        dataset.validate()?;
        Ok(DataLoader {
            dataset,
            batch_size,
            shuffle,
            seed,
            drop_last: false,
        })
    }

    /// Whether to leave out a last batch smaller than `batch_size`, for models that
    /// need a constant batch size (by default it is kept).
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// The number of batches per epoch.
    pub fn len(&self) -> usize {
        let n = self.dataset.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn dataset(&self) -> &Arc<InMemoryDataset> {
        &self.dataset
    }

    /// The order in which epoch `epoch` visits the samples (dataset indices). With
    /// `drop_last`, that epoch's batches take only the first `len() * batch_size`.
    pub fn permutation(&self, epoch: usize) -> Vec<usize> {
        let n = self.dataset.len();
        if !self.shuffle {
            return (0..n).collect();
        }
        // Mixing the seed before adding the epoch keeps nearby seeds' epochs from
        // sharing a generator state (seed 1 epoch 0 vs seed 0 epoch 1, ...).
        // usize -> u64 is lossless on every supported platform.
        let state = mix64(self.seed).wrapping_add(mix64(epoch as u64 ^ 0x005E_ED0F_E90C));
        permutation(n, &mut SplitMix64::new(state))
    }

    /// The batches of epoch `epoch`. They are assembled on a background thread, at
    /// most two ahead of the consumer. Dropping the iterator early stops and joins
    /// that thread.
    pub fn epoch(&self, epoch: usize) -> Epoch {
        self.start_epoch(epoch, true)
    }

    fn start_epoch(&self, epoch: usize, background: bool) -> Epoch {
        let num_batches = self.len();
        if num_batches == 0 {
            return Epoch {
                source: Source::Done,
                remaining: 0,
            };
        }
        let maker = self.batch_maker(epoch);
        if !background {
            return Epoch {
                source: Source::Inline(maker),
                remaining: num_batches,
            };
        }
        let (sender, receiver) = mpsc::sync_channel(PREFETCH);
        let spawned = std::thread::Builder::new()
            .name("cinder-data-loader".into())
            .spawn(move || {
                let mut maker = maker;
                while let Some(batch) = maker.next_batch() {
                    // A send error means the Epoch was dropped: nobody wants more.
                    if sender.send(batch).is_err() {
                        break;
                    }
                }
            });
        let source = match spawned {
            Ok(worker) => Source::Background { receiver, worker },
            // Out of threads (the maker went down with the closure): assemble the
            // batches on the caller's thread instead, which only costs overlap.
            Err(_) => Source::Inline(self.batch_maker(epoch)),
        };
        Epoch {
            source,
            remaining: num_batches,
        }
    }

    fn batch_maker(&self, epoch: usize) -> BatchMaker {
        let mut order = self.permutation(epoch);
        order.truncate(self.len().saturating_mul(self.batch_size));
        BatchMaker {
            dataset: Arc::clone(&self.dataset),
            order,
            batch_size: self.batch_size,
            next: 0,
        }
    }
}

/// Copies batches out of the dataset in a given order.
struct BatchMaker {
    dataset: Arc<InMemoryDataset>,
    /// Truncated to the samples that the epoch's batches hold.
    order: Vec<usize>,
    batch_size: usize,
    /// Position in `order` of the next batch's first sample.
    next: usize,
}

impl BatchMaker {
    fn next_batch(&mut self) -> Option<Batch> {
        let end = self
            .order
            .len()
            .min(self.next.saturating_add(self.batch_size));
        let indices = self.order.get(self.next..end).filter(|s| !s.is_empty())?;
        self.next = end;
        let dataset = &*self.dataset;
        let f = dataset.feature_len();
        let mut inputs = Vec::with_capacity(indices.len() * f);
        let mut targets = Vec::with_capacity(indices.len());
        for &i in indices {
            // `sample` returns None only for an inconsistent dataset, which
            // DataLoader::new rejected.
            let (features, label) = dataset.sample(i)?;
            inputs.extend_from_slice(features);
            targets.push(label);
        }
        let mut input_shape = Vec::with_capacity(1 + dataset.feature_shape.len());
        input_shape.push(indices.len());
        input_shape.extend_from_slice(&dataset.feature_shape);
        Some(Batch {
            inputs,
            input_shape,
            targets,
        })
    }
}

/// The batches of one epoch, from [`DataLoader::epoch`].
pub struct Epoch {
    source: Source,
    remaining: usize,
}

enum Source {
    Background {
        receiver: Receiver<Batch>,
        worker: JoinHandle<()>,
    },
    Inline(BatchMaker),
    Done,
}

impl Epoch {
    /// Stops the worker, if any, and waits for it. Returns its panic, if it had one.
    fn finish(&mut self) -> Option<Box<dyn std::any::Any + Send>> {
        self.remaining = 0;
        match std::mem::replace(&mut self.source, Source::Done) {
            Source::Background { receiver, worker } => {
                // Dropping the receiver first makes a blocked or upcoming send fail,
                // so the worker returns and the join cannot hang.
                drop(receiver);
                worker.join().err()
            }
            Source::Inline(_) | Source::Done => None,
        }
    }
}

impl Iterator for Epoch {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.remaining == 0 {
            self.finish();
            return None;
        }
        let batch = match &mut self.source {
            Source::Background { receiver, .. } => receiver.recv().ok(),
            Source::Inline(maker) => maker.next_batch(),
            Source::Done => None,
        };
        match batch {
            Some(batch) => {
                self.remaining -= 1;
                Some(batch)
            }
            None => {
                // The worker stopped early, which only a bug in this crate can cause;
                // re-raise its panic rather than silently shortening the epoch.
                if let Some(panic) = self.finish() {
                    std::panic::resume_unwind(panic);
                }
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Epoch {}

impl Drop for Epoch {
    fn drop(&mut self) {
        // A worker panic is not re-raised here: panicking in drop would abort if
        // the consumer is already unwinding.
        let _ = self.finish();
    }
}

impl std::fmt::Debug for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.source {
            Source::Background { .. } => "background",
            Source::Inline(_) => "inline",
            Source::Done => "done",
        };
        f.debug_struct("Epoch")
            .field("remaining", &self.remaining)
            .field("mode", &mode)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;
    use std::time::Duration;

    /// Sample i has features [i, i + 0.5] and label i % 7, so a batch tells which
    /// samples it holds.
    fn indexed(n: usize) -> Arc<InMemoryDataset> {
        let features = (0..n).flat_map(|i| [i as f32, i as f32 + 0.5]).collect();
        let labels = (0..n).map(|i| (i % 7) as i32).collect();
        let ds = InMemoryDataset::new(features, vec![2], labels, 7).expect("consistent"); // ok: fixture
        Arc::new(ds)
    }

    /// The sample indices of each batch, checking that features and labels agree.
    fn indices(batches: impl Iterator<Item = Batch>) -> Vec<Vec<usize>> {
        batches
            .map(|b| {
                assert_eq!(b.input_shape, [b.len(), 2]);
                assert_eq!(b.inputs.len(), b.len() * 2);
                (0..b.len())
                    .map(|k| {
                        let i = b.inputs[2 * k] as usize;
                        assert_eq!(b.inputs[2 * k + 1], i as f32 + 0.5);
                        assert_eq!(b.targets[k], (i % 7) as i32);
                        i
                    })
                    .collect()
            })
            .collect()
    }

    fn flat(batches: &[Vec<usize>]) -> Vec<usize> {
        batches.concat()
    }

    #[test]
    fn covers_every_index_once_per_epoch() -> TestResult {
        let loader = DataLoader::new(indexed(103), 10, true, 42)?;
        assert_eq!(loader.len(), 11);
        for epoch in 0..4 {
            let batches = indices(loader.epoch(epoch));
            assert_eq!(batches.len(), 11);
            assert!(batches[..10].iter().all(|b| b.len() == 10));
            let mut all = flat(&batches);
            assert_eq!(all, loader.permutation(epoch));
            all.sort_unstable();
            assert_eq!(all, (0..103).collect::<Vec<_>>(), "epoch {epoch}");
        }
        Ok(())
    }

    #[test]
    fn same_seed_same_order() -> TestResult {
        let a = DataLoader::new(indexed(50), 8, true, 7)?;
        let b = DataLoader::new(indexed(50), 8, true, 7)?;
        for epoch in 0..3 {
            assert_eq!(indices(a.epoch(epoch)), indices(b.epoch(epoch)));
        }
        assert_eq!(
            indices(a.epoch(1)),
            indices(a.epoch(1)),
            "an epoch can be replayed"
        );
        let other_seed = DataLoader::new(indexed(50), 8, true, 8)?;
        assert_ne!(
            flat(&indices(a.epoch(0))),
            flat(&indices(other_seed.epoch(0)))
        );
        Ok(())
    }

    #[test]
    fn different_epochs_different_orders() -> TestResult {
        let loader = DataLoader::new(indexed(100), 16, true, 1)?;
        let orders: Vec<Vec<usize>> = (0..5).map(|e| flat(&indices(loader.epoch(e)))).collect();
        for i in 0..orders.len() {
            assert_ne!(
                orders[i],
                (0..100).collect::<Vec<_>>(),
                "epoch {i} is shuffled"
            );
            for j in 0..i {
                assert_ne!(orders[i], orders[j], "epochs {i} and {j}");
            }
        }
        Ok(())
    }

    #[test]
    fn order_is_pinned() -> TestResult {
        // Guards the documented promise that a seed means the same order in every
        // version of cinder: changing the generator or the seed mixing fails here.
        let loader = DataLoader::new(indexed(10), 3, true, 42)?;
        assert_eq!(loader.permutation(0), PINNED_SEED42_EPOCH0);
        assert_eq!(loader.permutation(1), PINNED_SEED42_EPOCH1);
        Ok(())
    }
    // Cross-checked against an independent Python model of SplitMix64 + Fisher–Yates.
    const PINNED_SEED42_EPOCH0: [usize; 10] = [2, 9, 8, 1, 5, 3, 6, 4, 7, 0];
    const PINNED_SEED42_EPOCH1: [usize; 10] = [6, 9, 2, 7, 0, 8, 5, 1, 4, 3];

    #[test]
    fn no_shuffle_keeps_dataset_order() -> TestResult {
        let loader = DataLoader::new(indexed(10), 4, false, 99)?;
        let expected = vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]];
        assert_eq!(indices(loader.epoch(0)), expected);
        assert_eq!(indices(loader.epoch(5)), expected);
        Ok(())
    }

    #[test]
    fn last_partial_batch_and_drop_last() -> TestResult {
        let loader = DataLoader::new(indexed(10), 4, true, 3)?;
        assert_eq!(loader.len(), 3);
        let batches: Vec<Batch> = loader.epoch(0).collect();
        let sizes: Vec<usize> = batches.iter().map(Batch::len).collect();
        assert_eq!(sizes, [4, 4, 2]);
        assert_eq!(batches[2].input_shape, [2, 2]);

        let loader = loader.drop_last(true);
        assert_eq!(loader.len(), 2);
        let batches = indices(loader.epoch(0));
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4]);
        assert_eq!(flat(&batches), loader.permutation(0)[..8]);

        let tiny = DataLoader::new(indexed(3), 4, false, 0)?.drop_last(true);
        assert!(tiny.is_empty());
        assert_eq!(tiny.epoch(0).count(), 0);
        Ok(())
    }

    #[test]
    fn image_shaped_batches() -> TestResult {
        let features = (0..5 * 4).map(|v| v as f32).collect();
        let ds = InMemoryDataset::new(features, vec![1, 2, 2], vec![0, 1, 0, 1, 0], 2)?;
        let loader = DataLoader::new(Arc::new(ds), 2, false, 0)?;
        let batches: Vec<Batch> = loader.epoch(0).collect();
        assert_eq!(batches[0].input_shape, [2, 1, 2, 2]);
        assert_eq!(
            batches[0].inputs,
            (0..8).map(|v| v as f32).collect::<Vec<_>>()
        );
        assert_eq!(batches[2].input_shape, [1, 1, 2, 2]);
        assert_eq!(batches[2].targets, [0]);
        Ok(())
    }

    #[test]
    fn exact_size() -> TestResult {
        let loader = DataLoader::new(indexed(10), 4, true, 0)?;
        let mut epoch = loader.epoch(0);
        assert_eq!(epoch.len(), 3);
        epoch.next();
        assert_eq!(epoch.len(), 2);
        assert_eq!(epoch.by_ref().count(), 2);
        assert_eq!(epoch.len(), 0);
        assert!(epoch.next().is_none());
        Ok(())
    }

    #[test]
    fn inline_and_background_agree() -> TestResult {
        let loader = DataLoader::new(indexed(37), 5, true, 11)?;
        let inline: Vec<Batch> = loader.start_epoch(2, false).collect();
        let background: Vec<Batch> = loader.epoch(2).collect();
        assert_eq!(inline, background);
        Ok(())
    }

    #[test]
    fn empty_dataset() -> TestResult {
        let loader = DataLoader::new(indexed(0), 4, true, 0)?;
        assert_eq!(loader.len(), 0);
        assert_eq!(loader.epoch(0).count(), 0);
        Ok(())
    }

    #[test]
    fn rejects_bad_arguments() {
        let err = DataLoader::new(indexed(4), 0, true, 0).unwrap_err();
        assert!(
            err.to_string().contains("batch_size must be at least 1"),
            "{err}"
        );
        let broken = InMemoryDataset {
            features: vec![0.0; 5],
            feature_shape: vec![2],
            labels: vec![0, 0, 0],
            num_classes: 1,
        };
        let err = DataLoader::new(Arc::new(broken), 2, false, 0).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    }

    /// Runs `f` on another thread and fails (instead of hanging the test run) if it
    /// takes more than a few seconds.
    fn within_seconds(f: impl FnOnce() + Send + 'static) {
        let (done, wait) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            f();
            let _ = done.send(());
        });
        match wait.recv_timeout(Duration::from_secs(20)) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // `f` panicked: report its assertion, not a timeout.
                if let Err(panic) = worker.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("not finished after 20 s: the loader thread did not stop")
            }
        }
    }

    #[test]
    fn early_drop_stops_the_worker() -> TestResult {
        within_seconds(|| {
            let dataset = indexed(1000);
            // 1000 one-sample batches: the worker fills the channel and blocks in send.
            let loader = match DataLoader::new(Arc::clone(&dataset), 1, true, 5) {
                Ok(loader) => loader,
                Err(e) => panic!("{e}"),
            };
            let mut epoch = loader.epoch(0);
            assert!(epoch.next().is_some());
            std::thread::sleep(Duration::from_millis(50));
            // The worker holds a clone of the dataset while it runs.
            assert_eq!(Arc::strong_count(&dataset), 3);
            drop(epoch);
            // Drop joined the worker, so its clone is gone.
            assert_eq!(Arc::strong_count(&dataset), 2);

            // Same for an epoch that was never polled, and for many in a row.
            for e in 0..50 {
                drop(loader.epoch(e));
            }
            assert_eq!(Arc::strong_count(&dataset), 2);
        });
        Ok(())
    }

    #[test]
    fn worker_finishes_after_full_epoch() -> TestResult {
        within_seconds(|| {
            let dataset = indexed(20);
            let loader = match DataLoader::new(Arc::clone(&dataset), 3, true, 5) {
                Ok(loader) => loader,
                Err(e) => panic!("{e}"),
            };
            let mut epoch = loader.epoch(0);
            assert_eq!(epoch.by_ref().count(), 7);
            assert!(epoch.next().is_none());
            // Exhausting the iterator joined the worker even before the drop.
            assert_eq!(Arc::strong_count(&dataset), 2);
        });
        Ok(())
    }
}
