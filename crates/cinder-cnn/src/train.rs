//! Image classification on cinder-train's loop: the data as batches, the
//! classifier task with the model's description in its files, and the run's
//! settings.

use std::path::PathBuf;
use std::sync::Arc;

use cinder_data::{DataLoader, InMemoryDataset, RandomAffine, Split};
use cinder_nn::checkpoint::{check_finite, load_tensors, read_metadata};
use cinder_nn::Module;
use cinder_tensor::{Device, Error, Result, Tensor};
use cinder_train::{
    Batches, ClassBatch, Classifier, Evaluation, History, Observer, Schedule, Settings, Start,
    Trainer,
};

use crate::models::ModelSpec;

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

/// The training images' augmentation: rotations within ±10 degrees, shifts
/// within ±7% of the size (2 pixels of MNIST's 28) and scalings by 0.9 to
/// 1.1, the jitter a hand puts into a digit (no flips: a flipped 2 is no 2).
pub fn augmentation() -> RandomAffine {
    RandomAffine::new(InMemoryDataset::INPUT)
        .degrees(10.0)
        .translate(0.07, 0.07)
        .scale(0.9, 1.1)
}

/// A classifier training run.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    /// AdamW's base learning rate.
    pub lr: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    pub clip_grad_norm: Option<f32>,
    /// Random rotations, shifts and scalings of each training image
    /// ([`augmentation`]), seeded per sample and epoch.
    pub augment: bool,
    /// The training loss's label smoothing, in [0, 1).
    pub label_smoothing: f32,
    /// Seeds the model's initialisation, the shuffling and the augmentation.
    pub seed: u64,
    /// Names the data in the run's settings (`digits`, `mnist-5k`, a path).
    pub data: String,
    pub out_dir: PathBuf,
    pub start: Start,
}

impl TrainOptions {
    /// Rejects settings that cannot train and a folder that holds a run not
    /// asked to be continued or replaced: what to check before any work.
    pub fn check(&self, spec: &ModelSpec) -> Result<()> {
        spec.validate()?;
        self.validate()?;
        self.trainer(spec).check()
    }

    /// Rejects settings that cannot train.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::invalid("train", "the batch size must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid(
                "train",
                format!("the learning rate must be positive, got {}", self.lr),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::invalid(
                "train",
                format!(
                    "the weight decay must be at least 0, got {}",
                    self.weight_decay
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::invalid(
                "train",
                format!(
                    "label smoothing must be in [0, 1), got {}",
                    self.label_smoothing
                ),
            ));
        }
        self.trainer(&ModelSpec::lenet(8, 8, 10)).check_settings()
    }

    fn trainer(&self, spec: &ModelSpec) -> Trainer {
        let mut trainer = Trainer::new(&self.out_dir, self.epochs);
        trainer.title = format!(
            "{} on {} ({})",
            spec.arch_name(),
            self.data,
            self.out_dir.display()
        );
        trainer.schedule = self.schedule;
        trainer.clip_grad_norm = self.clip_grad_norm;
        trainer.start = self.start;
        trainer.settings = Settings::new()
            .with("arch", spec.arch_name())
            .with("input", format!("{:?}", spec.input_shape()))
            .with("classes", spec.classes)
            .with("dropout", spec.dropout)
            .with("data", &self.data)
            .with("batch_size", self.batch_size)
            .with("lr", self.lr)
            .with("weight_decay", self.weight_decay)
            .with("seed", self.seed)
            .with("augment", self.augment)
            .with("label_smoothing", self.label_smoothing);
        trainer
    }
}

/// Trains a model of `spec` on `split.train`, evaluating on `split.test`
/// after every epoch, into `options.out_dir`: `model.safetensors` (with the
/// model's description, for `cinder eval` and `predict`), the checkpoint,
/// `metrics.csv`, `curves.png`, `confusion.txt`. The caller seeds the
/// device (`manual_seed`) before, so the initialisation is reproducible.
pub fn train(
    spec: &ModelSpec,
    split: Split,
    options: &TrainOptions,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<(History, Evaluation)> {
    options.validate()?;
    let trainer = options.trainer(spec);
    trainer.check()?;
    if split.train.feature_shape != spec.input_shape() {
        return Err(Error::shape(
            "train",
            format!(
                "the data's images are {:?}, the model takes {:?}",
                split.train.feature_shape,
                spec.input_shape()
            ),
        ));
    }
    let model = spec.build(device)?;
    let held_out = OrderedBatches {
        data: Arc::new(split.test),
        batch_size: 500,
        device: device.clone(),
    };
    let mut task = Classifier::new(
        model,
        options.lr,
        options.weight_decay,
        Box::new(held_out),
        spec.classes,
    )?;
    task.label_smoothing = options.label_smoothing;
    task.metadata = spec.to_metadata().into_iter().collect();
    task.metadata.sort();
    let mut loader = DataLoader::new(
        Arc::new(split.train),
        options.batch_size,
        true,
        options.seed,
    )?;
    if options.augment {
        loader = loader.with_transform(augmentation())?;
    }
    let data = ShuffledBatches {
        loader,
        device: device.clone(),
    };
    let history = trainer.fit(&mut task, &data, device, observer)?;
    let evaluation = task
        .last_evaluation()
        .cloned()
        .ok_or_else(|| Error::invalid("train", "the run evaluated nothing"))?;
    Ok((history, evaluation))
}

/// The model in a `model.safetensors` written by a run (its description is
/// in the file's header), with its weights, in evaluation mode. A training
/// checkpoint (the one `--resume` continues) is refused with a pointer to
/// the model file next to it, and so are weights with NaN or infinite
/// values (see [`check_finite`]): a diverged run's model would otherwise
/// "predict" with NaN probabilities.
pub fn load_model(path: &std::path::Path, device: &Device) -> Result<(ModelSpec, Box<dyn Module>)> {
    let meta = read_metadata(path)?;
    let spec = ModelSpec::from_metadata(&meta)?;
    if meta.contains_key("cinder.global_step") || meta.contains_key("cinder.optimizer_steps") {
        return Err(Error::bad_file(
            path,
            "a training checkpoint (for --resume); pass the model.safetensors next to it",
        ));
    }
    let mut model = spec.build(device)?;
    load_tensors(path, &model.state_dict())?;
    // The file is the culprit, so the error names it.
    check_finite(&model.state_dict()).map_err(|e| Error::bad_file(path, e.to_string()))?;
    model.eval();
    Ok((spec, model))
}
