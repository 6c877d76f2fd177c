//! Spoken digits: log-mel features of each clip (normalised per clip, two
//! 10 ms frames to a step), a recurrent classifier over the clip's real
//! length, trained on six voices with seeded noise, speed, shift and gain
//! augmentation, and measured on the two voices it never heard, clean and
//! in babble noise.

use std::path::Path;

use cinder_data::audio::{augment, read_wav, resample, AugmentConfig, Clip};
use cinder_data::{sample_seed, LogMel, Rng, SpokenDigits};
use cinder_nn::{Adam, Module, Optimizer};
use cinder_tensor::{no_grad, read_all, DType, Device, Error, Result, Tensor};
use cinder_train::{Batches, History, Observer, Step, Task, TrainOptions, Trainer};

use crate::models::{SequenceClassifier, SequenceSpec};

/// 10 ms frames a clip may span (1 s); longer clips are cut.
pub const MAX_FRAMES: usize = 100;
/// Frames concatenated into one step: halves the steps the recurrence
/// walks, at no loss (a digit's sounds last far longer than 20 ms).
pub const FRAMES_PER_STEP: usize = 2;
/// Steps per clip and features per step.
pub const STEPS: usize = MAX_FRAMES / FRAMES_PER_STEP;
pub const STEP_FEATURES: usize = LogMel::BANDS * FRAMES_PER_STEP;

/// A clip's model input: `STEPS * STEP_FEATURES` values (zeros past its
/// end) and its length in steps. Each mel band is normalised to zero mean
/// and unit variance over the clip, so loudness and the microphone's
/// colouring drop out.
pub fn features(mel: &LogMel, samples: &[f32]) -> Result<(Vec<f32>, usize)> {
    let (values, frames) = mel.compute(samples)?;
    let bands = LogMel::BANDS;
    let frames = frames.min(MAX_FRAMES);
    let mut out = vec![0f32; MAX_FRAMES * bands];
    for band in 0..bands {
        let column = (0..frames).map(|f| values[f * bands + band] as f64);
        let mean = column.clone().sum::<f64>() / frames.max(1) as f64;
        let var = column.map(|v| (v - mean) * (v - mean)).sum::<f64>() / frames.max(1) as f64;
        let scale = 1.0 / (var + 1e-5).sqrt();
        for f in 0..frames {
            out[f * bands + band] = ((values[f * bands + band] as f64 - mean) * scale) as f32;
        }
    }
    Ok((out, frames.div_ceil(FRAMES_PER_STEP).max(1)))
}

/// A batch of clips: `[B, STEPS, STEP_FEATURES]`, their classes and
/// lengths in steps.
pub struct SpeechBatch {
    pub x: Tensor,
    pub y: Tensor,
    pub lengths: Vec<usize>,
}

/// Clips as batches: shuffled and augmented per `(seed, epoch, clip)` when
/// seeded (training), in order and as recorded otherwise (evaluation).
pub struct ClipBatches {
    pub clips: Vec<Clip>,
    pub batch_size: usize,
    /// Shuffling and augmentation; `None` for evaluation.
    pub seed: Option<u64>,
    pub augment: AugmentConfig,
    pub device: Device,
    mel: LogMel,
}

impl ClipBatches {
    pub fn new(
        clips: Vec<Clip>,
        batch_size: usize,
        seed: Option<u64>,
        augment: AugmentConfig,
        device: Device,
    ) -> ClipBatches {
        ClipBatches {
            clips,
            batch_size: batch_size.max(1),
            seed,
            augment,
            device,
            mel: LogMel::new(),
        }
    }

    fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.clips.len()).collect();
        if let Some(seed) = self.seed {
            let mut rng = Rng::new(sample_seed(seed, epoch, usize::MAX));
            for i in (1..order.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                order.swap(i, j);
            }
        }
        order
    }

    fn batch(&self, epoch: usize, indices: &[usize]) -> Result<SpeechBatch> {
        let others: Vec<&[f32]> = self.clips.iter().map(|c| c.samples.as_slice()).collect();
        let mut x = Vec::with_capacity(indices.len() * STEPS * STEP_FEATURES);
        let mut y = Vec::with_capacity(indices.len());
        let mut lengths = Vec::with_capacity(indices.len());
        for &i in indices {
            let clip = &self.clips[i];
            let (values, steps) = match self.seed {
                Some(seed) => {
                    let mut rng = Rng::new(sample_seed(seed, epoch, i));
                    let heard = augment(&clip.samples, &others, &mut rng, &self.augment)?;
                    features(&self.mel, &heard)?
                }
                None => features(&self.mel, &clip.samples)?,
            };
            x.extend_from_slice(&values);
            y.push(clip.label as i32);
            lengths.push(steps);
        }
        Ok(SpeechBatch {
            x: Tensor::from_vec(&self.device, x, &[indices.len(), STEPS, STEP_FEATURES])?,
            y: Tensor::from_slice(&self.device, &y, &[indices.len()])?,
            lengths,
        })
    }
}

impl Batches for ClipBatches {
    type Batch = SpeechBatch;

    fn len(&self) -> usize {
        self.clips.len().div_ceil(self.batch_size)
    }

    fn epoch(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<SpeechBatch>> + '_> {
        let order = self.order(epoch);
        let chunks: Vec<Vec<usize>> = order
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        Box::new(chunks.into_iter().map(move |c| self.batch(epoch, &c)))
    }
}

/// Accuracy of `model` over every clip of `data`.
pub fn accuracy(model: &SequenceClassifier, data: &ClipBatches) -> Result<(f64, f64)> {
    let _no_grad = no_grad();
    let (mut correct, mut seen, mut loss_sum) = (0usize, 0usize, 0f64);
    for batch in data.epoch(0) {
        let batch = batch?;
        let logits = model.classify(&batch.x, Some(&batch.lengths))?;
        let loss = logits.cross_entropy(&batch.y)?;
        let hits = logits
            .argmax(-1, false)?
            .eq(&batch.y)?
            .to_dtype(DType::F32)?
            .sum_all()?;
        let values = read_all(&[&loss, &hits])?;
        let n = batch.lengths.len();
        loss_sum += values[0][0] as f64 * n as f64;
        correct += values[1][0] as usize;
        seen += n;
    }
    Ok((
        correct as f64 / seen.max(1) as f64,
        loss_sum / seen.max(1) as f64,
    ))
}

/// Training the classifier on clips: AdamW, cross-entropy over each clip's
/// real length; after each epoch the accuracy on the held-out voices,
/// clean and in noise.
pub struct SpeechTask {
    pub model: SequenceClassifier,
    pub optimizer: Adam,
    pub held_out: ClipBatches,
    pub noisy: ClipBatches,
    pub metadata: Vec<(String, String)>,
    params: Vec<Tensor>,
}

impl Task for SpeechTask {
    type Batch = SpeechBatch;

    fn models(&mut self) -> Vec<(&str, &mut dyn Module)> {
        vec![("model", &mut self.model)]
    }

    fn optimizers(&mut self) -> Vec<(&str, &mut dyn Optimizer)> {
        vec![("adamw", &mut self.optimizer)]
    }

    fn train_step(&mut self, batch: SpeechBatch, step: &mut Step) -> Result<()> {
        let logits = self.model.classify(&batch.x, Some(&batch.lengths))?;
        let loss = logits.cross_entropy(&batch.y)?;
        let mut grads = loss.backward()?;
        step.clip(&mut grads, &self.params)?;
        let accuracy = logits
            .detach()
            .argmax(-1, false)?
            .eq(&batch.y)?
            .to_dtype(DType::F32)?
            .mean_all()?;
        step.record("loss", &loss)?;
        step.record("accuracy", &accuracy)?;
        step.set_samples(batch.lengths.len());
        step.optimize(&mut self.optimizer, &grads)
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        let (clean, loss) = accuracy(&self.model, &self.held_out)?;
        let (noisy, noisy_loss) = accuracy(&self.model, &self.noisy)?;
        Ok(vec![
            ("test_loss".into(), loss),
            ("test_accuracy".into(), clean),
            ("noisy_loss".into(), noisy_loss),
            ("noisy_accuracy".into(), noisy),
        ])
    }

    fn model_metadata(&self, _name: &str) -> Vec<(String, String)> {
        self.metadata.clone()
    }
}

/// The classifier the spoken-digit task trains, `hidden` units wide.
pub fn spec(cell: cinder_nn::CellKind, hidden: usize) -> SequenceSpec {
    SequenceSpec {
        cell,
        ..SequenceSpec::lstm(STEPS, STEP_FEATURES, hidden, SpokenDigits::NUM_CLASSES)
    }
}

/// The sequence classifier's loop, the task named in its settings.
fn trainer(spec: &SequenceSpec, options: &TrainOptions) -> Trainer {
    let mut trainer = crate::train::trainer(spec, options);
    trainer.settings.set("task", "spoken-digits");
    trainer
}

/// Rejects settings that cannot train, a model that does not read these
/// features, and a folder holding a run not asked to be continued or
/// replaced.
pub fn check(spec: &SequenceSpec, options: &TrainOptions) -> Result<()> {
    if (spec.steps, spec.input_size, spec.classes)
        != (STEPS, STEP_FEATURES, SpokenDigits::NUM_CLASSES)
    {
        return Err(Error::invalid(
            "train",
            format!(
                "spoken digits are {STEPS} steps of {STEP_FEATURES} features in {} classes",
                SpokenDigits::NUM_CLASSES
            ),
        ));
    }
    crate::train::check(spec, options)
}

/// What the run measured on the held-out voices after its last epoch.
pub struct SpeechReport {
    pub history: History,
    pub clean_accuracy: f64,
    pub noisy_accuracy: f64,
}

/// Trains on `train` clips (augmented when `options.augment`), measuring
/// `held_out` and `noisy` after every epoch. The caller seeds the device
/// before.
pub fn train(
    spec: &SequenceSpec,
    train: Vec<Clip>,
    held_out: Vec<Clip>,
    noisy: Vec<Clip>,
    options: &TrainOptions,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<SpeechReport> {
    check(spec, options)?;
    let model = spec.build(device)?;
    let params = model.parameters();
    let optimizer = Adam::adamw(params.clone(), options.lr)?.weight_decay(options.weight_decay);
    let mut metadata: Vec<(String, String)> = spec.to_metadata().into_iter().collect();
    metadata.push(("cinder.task".into(), "spoken-digits".into()));
    metadata.sort();
    let plain = || AugmentConfig::none();
    let mut task = SpeechTask {
        model,
        optimizer,
        held_out: ClipBatches::new(held_out, 100, None, plain(), device.clone()),
        noisy: ClipBatches::new(noisy, 100, None, plain(), device.clone()),
        metadata,
        params,
    };
    let augmentation = if options.augment {
        AugmentConfig {
            // Recordings that start early and end late, in noise down to 0 dB,
            // mostly other voices: what the held-out noisy clips sound like.
            max_pad: 1600,
            // Shifts cut speech off an end; keep them small.
            max_shift: 400,
            noise_probability: 0.6,
            snr_db: (0.0, 20.0),
            babble_probability: 0.7,
            ..AugmentConfig::default()
        }
    } else {
        plain()
    };
    let data = ClipBatches::new(
        train,
        options.batch_size,
        Some(options.seed),
        augmentation,
        device.clone(),
    );
    let history = trainer(spec, options).fit(&mut task, &data, device, observer)?;
    let last = history
        .rows
        .last()
        .ok_or_else(|| Error::invalid("train", "the run trained no epoch"))?;
    Ok(SpeechReport {
        clean_accuracy: last.get("test_accuracy").unwrap_or(f64::NAN),
        noisy_accuracy: last.get("noisy_accuracy").unwrap_or(f64::NAN),
        history,
    })
}

/// The class probabilities of the digit spoken in a WAV file (any sample
/// rate, mono or stereo).
pub fn classify_file(model: &SequenceClassifier, path: &Path) -> Result<Vec<f32>> {
    let (samples, rate) = read_wav(path)?;
    let samples = resample(&samples, rate, SpokenDigits::SAMPLE_RATE)?;
    if samples.iter().all(|&s| s.abs() < 1e-4) {
        return Err(Error::bad_file(path, "the recording is silent"));
    }
    let (values, steps) = features(&LogMel::new(), &samples)?;
    let x = Tensor::from_vec(model.device(), values, &[1, STEPS, STEP_FEATURES])?;
    let _no_grad = no_grad();
    model
        .classify(&x, Some(&[steps]))?
        .softmax(-1)?
        .to_vec::<f32>()
}
