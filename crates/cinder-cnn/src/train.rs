//! The shared training loop for classifiers: AdamW, a learning-rate
//! schedule, optional gradient clipping, evaluation after every epoch, and a
//! checkpoint after every epoch that `resume` continues from exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cinder_data::{DataLoader, InMemoryDataset};
use cinder_nn::checkpoint::{load_tensors, save_tensors_with_metadata, write_atomic};
use cinder_nn::module::prefixed;
use cinder_nn::{Adam, Module, Optimizer};
use cinder_tensor::{no_grad, read_all, Device, Error, Result, Tensor};

use crate::models::ModelSpec;
use crate::report::{
    confusion_matrix, curves_png, format_confusion, metrics_csv, parse_metrics_csv, EpochRecord,
};

/// The learning rate per epoch, as PyTorch's schedulers step once per epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    Constant,
    /// `StepLR`: multiply by `gamma` every `step_size` epochs.
    Step {
        step_size: usize,
        gamma: f32,
    },
    /// `CosineAnnealingLR` with `T_max` = the number of epochs.
    Cosine {
        min_lr: f32,
    },
}

impl Schedule {
    pub fn lr_at(&self, base: f32, epoch: usize, epochs: usize) -> f32 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { step_size, gamma } => {
                base * gamma.powi((epoch / step_size.max(1)) as i32)
            }
            Schedule::Cosine { min_lr } => {
                let t = epoch as f64 / epochs.max(1) as f64;
                (min_lr as f64
                    + (base - min_lr) as f64 * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0)
                    as f32
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// AdamW's base learning rate.
    pub lr: f32,
    pub weight_decay: f32,
    pub schedule: Schedule,
    /// Clip the gradients' joint L2 norm to this.
    pub clip_grad_norm: Option<f32>,
    /// Seeds the shuffling (and nothing else: initialisation is the caller's).
    pub seed: u64,
    /// Where checkpoints, metrics, curves and the confusion matrix go.
    pub out_dir: PathBuf,
}

/// What a training run reports as it goes; the command line draws progress
/// bars from these.
pub trait Observer {
    fn epoch_started(&mut self, _epoch: usize, _batches: usize, _lr: f32) {}
    fn batch_finished(&mut self, _epoch: usize, _loss: f32, _samples: usize) {}
    fn epoch_finished(&mut self, _record: &EpochRecord) {}
}

/// Reports nothing.
pub struct Silent;
impl Observer for Silent {}

/// Held-out results of a model.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub loss: f32,
    pub accuracy: f32,
    pub predicted: Vec<i32>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

/// The files a run writes into its output directory.
pub struct RunFiles {
    /// Model, optimizer state and progress: what `resume` reads.
    pub checkpoint: PathBuf,
    /// The model's weights alone, with PyTorch names and the model's description.
    pub model: PathBuf,
    pub metrics: PathBuf,
    pub curves: PathBuf,
    pub confusion: PathBuf,
}

impl RunFiles {
    pub fn in_dir(dir: &Path) -> RunFiles {
        RunFiles {
            checkpoint: dir.join("checkpoint.safetensors"),
            model: dir.join("model.safetensors"),
            metrics: dir.join("metrics.csv"),
            curves: dir.join("curves.png"),
            confusion: dir.join("confusion.txt"),
        }
    }
}

fn batch_tensors(
    device: &Device,
    data: &InMemoryDataset,
    rows: std::ops::Range<usize>,
) -> Result<(Tensor, Tensor)> {
    let per = data.feature_len();
    let mut shape = vec![rows.len()];
    shape.extend_from_slice(&data.feature_shape);
    let x = Tensor::from_slice(
        device,
        &data.features[rows.start * per..rows.end * per],
        &shape,
    )?;
    let y = Tensor::from_slice(device, &data.labels[rows.clone()], &[rows.len()])?;
    Ok((x, y))
}

/// Loss, accuracy and confusion matrix of `model` (switched to evaluation
/// mode) on `data`, in batches of `batch_size`.
pub fn evaluate(
    model: &mut dyn Module,
    data: &InMemoryDataset,
    batch_size: usize,
) -> Result<Evaluation> {
    let device = first_device(model)?;
    model.eval();
    let _no_grad = no_grad();
    let mut predicted = Vec::with_capacity(data.len());
    let mut loss_sum = 0.0f64;
    let step = batch_size.max(1);
    for start in (0..data.len()).step_by(step) {
        let rows = start..(start + step).min(data.len());
        let n = rows.len();
        let (x, y) = batch_tensors(&device, data, rows)?;
        let logits = model.forward(&x)?;
        let loss = logits.cross_entropy(&y)?;
        let best = logits.argmax(-1, false)?;
        let values = read_all(&[&loss, &best.to_dtype(cinder_tensor::DType::F32)?])?;
        loss_sum += values[0][0] as f64 * n as f64;
        predicted.extend(values[1].iter().map(|&p| p as i32));
    }
    let correct = predicted
        .iter()
        .zip(&data.labels)
        .filter(|(p, t)| p == t)
        .count();
    let n = data.len().max(1);
    Ok(Evaluation {
        loss: (loss_sum / n as f64) as f32,
        accuracy: correct as f32 / n as f32,
        confusion: confusion_matrix(&data.labels, &predicted, data.num_classes)?,
        predicted,
    })
}

fn first_device(model: &dyn Module) -> Result<Device> {
    model
        .parameters()
        .first()
        .map(|p| p.device().clone())
        .ok_or_else(|| Error::invalid("train", "the model has no parameters"))
}

/// Everything a checkpoint holds, by name.
fn checkpoint_tensors(model: &dyn Module, opt: &mut Adam) -> Result<Vec<(String, Tensor)>> {
    let mut all = prefixed("model", model.state_dict());
    all.extend(prefixed("optimizer", opt.state_tensors()?));
    Ok(all)
}

/// Trains `model` (built from `spec`) on `train`, evaluating on `test`
/// after every epoch and writing the run's files after each. With `resume`,
/// continues from the checkpoint in `cfg.out_dir`: weights, optimizer state,
/// epoch and history, so the run ends exactly as an uninterrupted one would.
pub fn fit(
    model: &mut dyn Module,
    spec: &ModelSpec,
    train: Arc<InMemoryDataset>,
    test: &InMemoryDataset,
    cfg: &TrainConfig,
    resume: bool,
    observer: &mut dyn Observer,
) -> Result<Vec<EpochRecord>> {
    if cfg.epochs == 0 {
        return Err(Error::invalid("train", "epochs must be at least 1"));
    }
    let device = first_device(model)?;
    let files = RunFiles::in_dir(&cfg.out_dir);
    let params = model.parameters();
    let mut opt =
        Adam::adamw(params.clone(), f64::from(cfg.lr))?.weight_decay(f64::from(cfg.weight_decay));
    let mut history = Vec::new();
    if resume {
        history = restore(model, &mut opt, &files, cfg)?;
    }
    let loader = DataLoader::new(train, cfg.batch_size, true, cfg.seed)?;
    for epoch in history.len()..cfg.epochs {
        let started = Instant::now();
        let lr = cfg.schedule.lr_at(cfg.lr, epoch, cfg.epochs);
        opt.set_lr(f64::from(lr));
        model.train();
        observer.epoch_started(epoch, loader.len(), lr);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for batch in loader.epoch(epoch) {
            let (x, y) = batch.to_tensors(&device)?;
            let logits = model.forward(&x)?;
            let loss = logits.cross_entropy(&y)?;
            let mut grads = loss.backward()?;
            if let Some(max_norm) = cfg.clip_grad_norm {
                grads.clip_grad_norm(&params, max_norm)?;
            }
            let hits = logits
                .detach()
                .argmax(-1, false)?
                .eq(&y)?
                .to_dtype(cinder_tensor::DType::F32)?
                .sum_all()?;
            opt.step_realizing(&grads, &[&hits])?;
            let values = read_all(&[&loss, &hits])?;
            let l = values[0][0];
            if !l.is_finite() {
                return Err(Error::invalid(
                    "train",
                    format!(
                        "the loss became {l} in epoch {} (learning rate {lr}); stopped without \
                         overwriting the last checkpoint ({}). Lower --lr or set --clip-grad",
                        epoch + 1,
                        files.checkpoint.display()
                    ),
                ));
            }
            loss_sum += l as f64 * batch.len() as f64;
            correct += values[1][0] as usize;
            seen += batch.len();
            observer.batch_finished(epoch, l, batch.len());
        }
        let eval = evaluate(model, test, 500)?;
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            train_loss: (loss_sum / seen.max(1) as f64) as f32,
            train_accuracy: correct as f32 / seen.max(1) as f32,
            test_loss: eval.loss,
            test_accuracy: eval.accuracy,
            seconds: started.elapsed().as_secs_f64(),
        };
        history.push(record.clone());
        save_run(model, spec, &mut opt, &files, &history, &eval)?;
        observer.epoch_finished(&record);
    }
    Ok(history)
}

fn save_run(
    model: &dyn Module,
    spec: &ModelSpec,
    opt: &mut Adam,
    files: &RunFiles,
    history: &[EpochRecord],
    eval: &Evaluation,
) -> Result<()> {
    let mut meta = spec.to_metadata();
    meta.insert(
        "cinder.optimizer_steps".to_string(),
        opt.counters()
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    meta.insert("cinder.history".to_string(), metrics_csv(history));
    save_tensors_with_metadata(&files.checkpoint, &checkpoint_tensors(model, opt)?, meta)?;
    save_tensors_with_metadata(&files.model, &model.state_dict(), spec.to_metadata())?;
    write_atomic(&files.metrics, metrics_csv(history).as_bytes())?;
    write_atomic(&files.curves, &curves_png(history)?)?;
    write_atomic(
        &files.confusion,
        format_confusion(&eval.confusion).as_bytes(),
    )
}

/// Loads weights and optimizer state; returns the finished epochs' history.
fn restore(
    model: &mut dyn Module,
    opt: &mut Adam,
    files: &RunFiles,
    cfg: &TrainConfig,
) -> Result<Vec<EpochRecord>> {
    if !files.checkpoint.exists() {
        return Err(Error::invalid(
            "train",
            format!(
                "--resume: there is no checkpoint at {}; train without --resume first",
                files.checkpoint.display()
            ),
        ));
    }
    let targets = checkpoint_tensors(model, opt)?;
    let meta: HashMap<String, String> = load_tensors(&files.checkpoint, &targets)?;
    let bad = |what: &str| Error::bad_file(&files.checkpoint, format!("bad or missing {what}"));
    let steps = meta
        .get("cinder.optimizer_steps")
        .ok_or_else(|| bad("optimizer steps"))?;
    let counters = steps
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| bad("optimizer steps"))?;
    opt.set_counters(&counters)?;
    let history = parse_metrics_csv(meta.get("cinder.history").ok_or_else(|| bad("history"))?)?;
    if history.len() > cfg.epochs {
        return Err(Error::invalid(
            "train",
            format!(
                "--resume: the checkpoint has {} epochs, more than --epochs {}",
                history.len(),
                cfg.epochs
            ),
        ));
    }
    Ok(history)
}
