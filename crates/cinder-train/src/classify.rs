//! Classification: a task for any model that maps a batch to class scores
//! (cross-entropy, AdamW, accuracy, a confusion matrix), its held-out
//! evaluation, the confusion matrix as a table, and a run's settings
//! ([`TrainOptions`]).

use std::path::PathBuf;

use cinder_nn::{Adam, Module, Optimizer};
use cinder_tensor::{read_all, CrossEntropyOptions, DType, Error, Result, Tensor};

use crate::run::{Settings, Start};
use crate::schedule::Schedule;
use crate::trainer::{Batches, Step, Task, Trainer};

/// A batch on the device: inputs and their `i32` classes.
pub struct ClassBatch {
    pub x: Tensor,
    pub y: Tensor,
}

/// A classifier's held-out results.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub predicted: Vec<i32>,
    pub labels: Vec<i32>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

/// Mean cross-entropy, accuracy and confusion matrix of `model` (which the
/// caller puts in evaluation mode) over every batch of `data`'s epoch 0.
pub fn evaluate(
    model: &dyn Module,
    data: &dyn Batches<Batch = ClassBatch>,
    classes: usize,
) -> Result<Evaluation> {
    let _no_grad = cinder_tensor::no_grad();
    let (mut loss_sum, mut seen) = (0.0f64, 0usize);
    let mut predicted = Vec::new();
    let mut labels = Vec::new();
    for batch in data.epoch(0) {
        let ClassBatch { x, y } = batch?;
        let n = y.numel();
        let logits = model.forward(&x)?;
        let loss = logits.cross_entropy(&y)?;
        let best = logits.argmax(-1, false)?.to_dtype(DType::F32)?;
        let values = read_all(&[&loss, &best, &y.to_dtype(DType::F32)?])?;
        loss_sum += values[0][0] as f64 * n as f64;
        seen += n;
        predicted.extend(values[1].iter().map(|&p| p as i32));
        labels.extend(values[2].iter().map(|&l| l as i32));
    }
    let correct = predicted
        .iter()
        .zip(&labels)
        .filter(|(p, t)| p == t)
        .count();
    Ok(Evaluation {
        loss: loss_sum / seen.max(1) as f64,
        accuracy: correct as f64 / seen.max(1) as f64,
        confusion: confusion_matrix(&labels, &predicted, classes)?,
        predicted,
        labels,
    })
}

/// A classifier: one model, AdamW, cross-entropy; reports the training
/// loss and accuracy, and after each epoch the held-out loss and accuracy
/// and `confusion.txt`.
pub struct Classifier {
    pub model: Box<dyn Module>,
    pub optimizer: Adam,
    pub held_out: Box<dyn Batches<Batch = ClassBatch>>,
    pub classes: usize,
    /// Header metadata of `model.safetensors` (what built the model).
    pub metadata: Vec<(String, String)>,
    /// The training loss's label smoothing, in [0, 1) (PyTorch's
    /// `label_smoothing`); held-out losses are plain cross-entropy.
    pub label_smoothing: f32,
    params: Vec<Tensor>,
    last: Option<Evaluation>,
}

impl Classifier {
    /// `model` trained with AdamW at rate `lr` and decoupled `weight_decay`.
    pub fn new(
        model: Box<dyn Module>,
        lr: f64,
        weight_decay: f64,
        held_out: Box<dyn Batches<Batch = ClassBatch>>,
        classes: usize,
    ) -> Result<Classifier> {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::invalid(
                "classifier",
                format!("the learning rate must be positive, got {lr}"),
            ));
        }
        if !(weight_decay.is_finite() && weight_decay >= 0.0) {
            return Err(Error::invalid(
                "classifier",
                format!("the weight decay must be at least 0, got {weight_decay}"),
            ));
        }
        let params = model.parameters();
        let optimizer = Adam::adamw(params.clone(), lr)?.weight_decay(weight_decay);
        Ok(Classifier {
            model,
            optimizer,
            held_out,
            classes,
            metadata: Vec::new(),
            label_smoothing: 0.0,
            params,
            last: None,
        })
    }

    /// The last epoch's held-out evaluation.
    pub fn last_evaluation(&self) -> Option<&Evaluation> {
        self.last.as_ref()
    }
}

impl Task for Classifier {
    type Batch = ClassBatch;

    fn models(&mut self) -> Vec<(&str, &mut dyn Module)> {
        vec![("model", self.model.as_mut())]
    }

    fn optimizers(&mut self) -> Vec<(&str, &mut dyn Optimizer)> {
        vec![("adamw", &mut self.optimizer)]
    }

    fn train_step(&mut self, batch: ClassBatch, step: &mut Step) -> Result<()> {
        let ClassBatch { x, y } = batch;
        let logits = self.model.forward(&x)?;
        let loss = if self.label_smoothing > 0.0 {
            let opts = CrossEntropyOptions {
                label_smoothing: self.label_smoothing,
                ..CrossEntropyOptions::default()
            };
            logits.cross_entropy_with(&y, &opts)?
        } else {
            logits.cross_entropy(&y)?
        };
        let mut grads = loss.backward()?;
        step.clip(&mut grads, &self.params)?;
        let accuracy = logits
            .detach()
            .argmax(-1, false)?
            .eq(&y)?
            .to_dtype(DType::F32)?
            .mean_all()?;
        step.record("loss", &loss)?;
        step.record("accuracy", &accuracy)?;
        step.set_samples(y.numel());
        step.optimize(&mut self.optimizer, &grads)
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        let e = evaluate(self.model.as_ref(), self.held_out.as_ref(), self.classes)?;
        let values = vec![
            ("test_loss".to_string(), e.loss),
            ("test_accuracy".to_string(), e.accuracy),
        ];
        self.last = Some(e);
        Ok(values)
    }

    fn model_metadata(&self, _name: &str) -> Vec<(String, String)> {
        self.metadata.clone()
    }

    fn epoch_files(&mut self, _epoch: usize) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .last
            .as_ref()
            .map(|e| {
                vec![(
                    "confusion.txt".to_string(),
                    format_confusion(&e.confusion).into_bytes(),
                )]
            })
            .unwrap_or_default())
    }
}

/// `m[true][predicted]` counts. Every label and prediction must lie in
/// `0..classes`.
pub fn confusion_matrix(
    labels: &[i32],
    predicted: &[i32],
    classes: usize,
) -> Result<Vec<Vec<usize>>> {
    if labels.len() != predicted.len() {
        return Err(Error::invalid(
            "confusion_matrix",
            format!(
                "{} labels but {} predictions",
                labels.len(),
                predicted.len()
            ),
        ));
    }
    let mut m = vec![vec![0usize; classes]; classes];
    for (i, (&t, &p)) in labels.iter().zip(predicted).enumerate() {
        let class = |v: i32, what: &str| {
            usize::try_from(v)
                .ok()
                .filter(|&c| c < classes)
                .ok_or_else(|| {
                    Error::invalid(
                        "confusion_matrix",
                        format!("{what} {v} at index {i} is outside 0..{classes}"),
                    )
                })
        };
        m[class(t, "label")?][class(p, "prediction")?] += 1;
    }
    Ok(m)
}

/// A terminal table: one row per true class, one column per predicted class,
/// then the row total and the class's recall; the last row holds column
/// totals and the overall accuracy.
pub fn format_confusion(m: &[Vec<usize>]) -> String {
    let cols = m.iter().map(Vec::len).max().unwrap_or(0).max(m.len());
    let at = |t: usize, p: usize| m.get(t).and_then(|row| row.get(p)).copied().unwrap_or(0);
    let total: usize = m.iter().flatten().sum();
    let correct: usize = (0..m.len()).map(|c| at(c, c)).sum();
    let w = total.to_string().len().max(cols.to_string().len()).max(5) + 1;
    let percent = |num: usize, den: usize| {
        if den == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * num as f64 / den as f64)
        }
    };

    let mut out = format!("{:>9}", "true\\pred");
    for p in 0..cols {
        out.push_str(&format!("{p:>w$}"));
    }
    out.push_str(&format!("{:>w$}{:>8}\n", "total", "recall"));
    for (t, row) in m.iter().enumerate() {
        out.push_str(&format!("{t:>9}"));
        for p in 0..cols {
            out.push_str(&format!("{:>w$}", at(t, p)));
        }
        let row_total: usize = row.iter().sum();
        out.push_str(&format!(
            "{row_total:>w$}{:>8}\n",
            percent(at(t, t), row_total)
        ));
    }
    out.push_str(&format!("{:>9}", "total"));
    for p in 0..cols {
        let col_total: usize = (0..m.len()).map(|t| at(t, p)).sum();
        out.push_str(&format!("{col_total:>w$}"));
    }
    out.push_str(&format!("{total:>w$}{:>8}\n", percent(correct, total)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn confusion_counts_a_hand_example() -> TestResult {
        let labels = [0, 0, 1, 1, 1, 2];
        let predicted = [0, 1, 1, 1, 2, 2];
        let m = confusion_matrix(&labels, &predicted, 3)?;
        assert_eq!(m, vec![vec![1, 1, 0], vec![0, 2, 1], vec![0, 0, 1]]);

        assert!(confusion_matrix(&[0, 1], &[0], 3).is_err());
        assert!(confusion_matrix(&[0, 3], &[0, 0], 3).is_err());
        assert!(confusion_matrix(&[0, 1], &[-1, 0], 3).is_err());
        Ok(())
    }

    #[test]
    fn confusion_table_shows_counts_totals_and_recall() {
        let m = vec![vec![1, 1, 0], vec![0, 2, 1], vec![0, 0, 1234]];
        let table = format_confusion(&m);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].contains("total") && lines[0].contains("recall"));
        let row1: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(row1, ["1", "0", "2", "1", "3", "66.7%"], "{table}");
        let last: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(
            last,
            ["total", "1", "3", "1235", "1239", "99.8%"],
            "{table}"
        );
        // Columns line up: every row has the same width.
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{table}");
    }
}

/// A classifier training run, whatever the model: the model crate gives the
/// model's own settings (architecture, input, classes) to [`Self::trainer`].
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    /// AdamW's base learning rate.
    pub lr: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    pub clip_grad_norm: Option<f32>,
    /// The task's own random augmentation of each training sample, seeded
    /// per sample and epoch.
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
        self.trainer("", Settings::new()).check_settings()
    }

    /// The loop for this run of the model that `model` describes (`arch`
    /// names it in the curves' title), recording both in the run's settings.
    pub fn trainer(&self, arch: &str, model: Settings) -> Trainer {
        let mut trainer = Trainer::new(&self.out_dir, self.epochs);
        trainer.title = format!("{arch} on {} ({})", self.data, self.out_dir.display());
        trainer.schedule = self.schedule;
        trainer.clip_grad_norm = self.clip_grad_norm;
        trainer.start = self.start;
        trainer.settings = model
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

/// Trains `model` as a classifier of `classes` classes with `trainer`
/// (made by [`TrainOptions::trainer`]) on `train`'s shuffled batches,
/// evaluating on `held_out` after every epoch; `metadata` describes the
/// model in its file's header. Returns the history and the last
/// evaluation. The caller seeds the device before building `model`.
#[allow(clippy::too_many_arguments)]
pub fn fit_classifier(
    trainer: &Trainer,
    model: Box<dyn Module>,
    metadata: Vec<(String, String)>,
    classes: usize,
    train: cinder_data::DataLoader,
    held_out: cinder_data::InMemoryDataset,
    options: &TrainOptions,
    device: &cinder_tensor::Device,
    observer: &mut dyn crate::Observer,
) -> Result<(crate::History, Evaluation)> {
    let held_out = crate::OrderedBatches {
        data: std::sync::Arc::new(held_out),
        batch_size: 500,
        device: device.clone(),
    };
    let mut task = Classifier::new(
        model,
        options.lr,
        options.weight_decay,
        Box::new(held_out),
        classes,
    )?;
    task.label_smoothing = options.label_smoothing;
    task.metadata = metadata;
    task.metadata.sort();
    let data = crate::ShuffledBatches {
        loader: train,
        device: device.clone(),
    };
    let history = trainer.fit(&mut task, &data, device, observer)?;
    let evaluation = task
        .last_evaluation()
        .cloned()
        .ok_or_else(|| Error::invalid("train", "the run evaluated nothing"))?;
    Ok((history, evaluation))
}
