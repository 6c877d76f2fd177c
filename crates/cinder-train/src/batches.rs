//! A dataset's batches on the device, for [`crate::Trainer`]: shuffled per
//! epoch for training, in order for evaluation.

use std::sync::Arc;

use cinder_data::{DataLoader, InMemoryDataset};
use cinder_tensor::{Device, Result, Tensor};

use crate::classify::ClassBatch;
use crate::trainer::Batches;

/// A shuffled epoch of a dataset, as device batches: a [`DataLoader`] seeded
/// by the run's seed, so epoch `e` always has the same order.
pub struct ShuffledBatches {
    pub loader: DataLoader,
    pub device: Device,
}

impl Batches for ShuffledBatches {
    type Batch = ClassBatch;

    fn len(&self) -> usize {
        self.loader.len()
    }

    fn epoch(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<ClassBatch>> + '_> {
        Box::new(self.loader.try_epoch(epoch).map(|b| {
            b?.to_tensors(&self.device)
                .map(|(x, y)| ClassBatch { x, y })
        }))
    }
}

/// A dataset in its own order, as device batches (held-out evaluation).
pub struct OrderedBatches {
    pub data: Arc<InMemoryDataset>,
    pub batch_size: usize,
    pub device: Device,
}

impl Batches for OrderedBatches {
    type Batch = ClassBatch;

    fn len(&self) -> usize {
        self.data.len().div_ceil(self.batch_size.max(1))
    }

    fn epoch(&self, _epoch: usize) -> Box<dyn Iterator<Item = Result<ClassBatch>> + '_> {
        let step = self.batch_size.max(1);
        Box::new((0..self.data.len()).step_by(step).map(move |start| {
            let rows = start..(start + step).min(self.data.len());
            let per = self.data.feature_len();
            let mut shape = vec![rows.len()];
            shape.extend_from_slice(&self.data.feature_shape);
            let x = Tensor::from_slice(
                &self.device,
                &self.data.features[rows.start * per..rows.end * per],
                &shape,
            )?;
            let y =
                Tensor::from_slice(&self.device, &self.data.labels[rows.clone()], &[rows.len()])?;
            Ok(ClassBatch { x, y })
        }))
    }
}
