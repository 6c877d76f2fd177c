//! DCGAN training on cinder-train's loop, following the DCGAN recipe:
//! binary cross-entropy on logits, Adam at 2e-4 with betas (0.5, 0.999)
//! for both networks, the discriminator's step on real images and on the
//! generator's output cut from the generator's graph, then the generator's
//! step against the updated discriminator; optional one-sided label
//! smoothing (real images' target `1 - s`). Both networks, both optimizers
//! and the device's random stream are checkpointed, so a resumed run ends
//! where an uninterrupted one does.

use std::sync::Arc;

use cinder_data::{DataLoader, InMemoryDataset};
use cinder_nn::checkpoint::load_trained;
use cinder_nn::{Adam, Module, Optimizer};
use cinder_tensor::{freeze, no_grad, DType, Device, Error, Reduction, Result, Tensor};
use cinder_train::classify::ClassBatch;
use cinder_train::{
    Batches, History, Observer, Settings, ShuffledBatches, Step, Task, TrainOptions, Trainer,
};

use crate::grid::{image_grid, stack_first_rows};
use crate::models::{Discriminator, GanSpec, Generator};
use crate::quality::{coverage, frechet_distance, DigitJudge};

/// DCGAN's Adam: 2e-4 and betas (0.5, 0.999).
pub const LR: f64 = 2e-4;
pub const BETAS: (f64, f64) = (0.5, 0.999);

/// Samples in the grid drawn after every epoch from the same noise.
pub const GRID_SAMPLES: usize = 64;
/// Seeds the grid's fixed noise, apart from the run's own stream.
const GRID_SEED: u64 = 0x5eed_0f9a;

/// `logits`' mean binary cross-entropy against a constant target.
fn bce(logits: &Tensor, target: f32) -> Result<Tensor> {
    let t = Tensor::full(logits.device(), logits.shape(), target);
    logits.binary_cross_entropy_with_logits(&t, None, None, Reduction::Mean)
}

/// A GAN's two networks and their optimizers, with the data's held-out
/// images to measure against.
pub struct GanTask {
    pub generator: Generator,
    pub discriminator: Discriminator,
    pub g_opt: Adam,
    pub d_opt: Adam,
    /// The real images' target: 1, or less with one-sided smoothing.
    pub real_target: f32,
    pub held_out: InMemoryDataset,
    /// The classifier whose features and calls measure the generated
    /// digits after every epoch.
    pub judge: Option<DigitJudge>,
    /// The run's folder, where earlier epochs' grids are read back for
    /// `samples/overview.png`.
    pub run_dir: Option<std::path::PathBuf>,
    fixed_noise: Tensor,
    fixed_labels: Option<Tensor>,
    device: Device,
}

/// Images scaled from [0, 1] to the generator's [-1, 1].
fn to_tanh_range(x: &Tensor) -> Result<Tensor> {
    x.mul_scalar(2.0)?.add_scalar(-1.0)
}

impl GanTask {
    /// Both networks freshly initialised, each with DCGAN's Adam at `lr`;
    /// `label_smoothing` lowers the real images' target to `1 - s`.
    pub fn new(
        spec: &GanSpec,
        held_out: InMemoryDataset,
        lr: f64,
        label_smoothing: f32,
        judge: Option<DigitJudge>,
        device: &Device,
    ) -> Result<GanTask> {
        let generator = spec.generator(device)?;
        let discriminator = spec.discriminator(device)?;
        let g_opt = Adam::new(generator.parameters(), lr)?.betas(BETAS.0, BETAS.1);
        let d_opt = Adam::new(discriminator.parameters(), lr)?.betas(BETAS.0, BETAS.1);
        let fixed_noise =
            Tensor::randn_seeded(device, &[GRID_SAMPLES, spec.latent], 0.0, 1.0, GRID_SEED)?;
        fixed_noise.realize()?;
        // A conditional grid asks for each class in turn, a row each.
        let fixed_labels = if spec.is_conditional() {
            let labels: Vec<i32> = (0..GRID_SAMPLES)
                .map(|i| ((i / 8) % spec.classes) as i32)
                .collect();
            Some(Tensor::from_slice(device, &labels, &[GRID_SAMPLES])?)
        } else {
            None
        };
        Ok(GanTask {
            generator,
            discriminator,
            g_opt,
            d_opt,
            real_target: 1.0 - label_smoothing,
            held_out,
            judge,
            run_dir: None,
            fixed_noise,
            fixed_labels,
            device: device.clone(),
        })
    }

    /// The fixed noise's images, `[64, 1, S, S]`, with the generator in
    /// evaluation mode.
    pub fn grid_samples(&mut self) -> Result<Tensor> {
        let _no_grad = no_grad();
        self.generator.eval();
        let images = self
            .generator
            .generate(&self.fixed_noise, self.fixed_labels.as_ref());
        self.generator.train();
        images
    }
}

impl Task for GanTask {
    type Batch = ClassBatch;

    fn models(&mut self) -> Vec<(&str, &mut dyn Module)> {
        vec![
            ("generator", &mut self.generator),
            ("discriminator", &mut self.discriminator),
        ]
    }

    fn optimizers(&mut self) -> Vec<(&str, &mut dyn Optimizer)> {
        vec![
            ("generator", &mut self.g_opt),
            ("discriminator", &mut self.d_opt),
        ]
    }

    fn train_step(&mut self, batch: ClassBatch, step: &mut Step) -> Result<()> {
        let spec = self.generator.spec;
        let n = batch.x.shape()[0];
        let side = spec.image_size;
        let real = to_tanh_range(&batch.x.reshape(&[n, 1, side, side])?)?;
        let labels = spec.is_conditional().then_some(&batch.y);
        let noise = Tensor::randn(&self.device, &[n, spec.latent])?;
        // The generator's update is submitted after the discriminator's: its
        // layers' outputs are computed in the first submit and kept for it.
        let layers = self.generator.generate_each(&noise, labels)?;
        for output in &layers {
            step.keep(output);
        }
        let fake = layers
            .last()
            .ok_or_else(|| Error::invalid("gan", "the generator has no layers"))?
            .clone();

        let d_real = self.discriminator.logits(&real, labels)?;
        let d_fake = self.discriminator.logits(&fake.detach(), labels)?;
        let d_loss = bce(&d_real, self.real_target)?.add(&bce(&d_fake, 0.0)?)?;
        let mut d_grads = d_loss.backward()?;
        step.clip(&mut d_grads, &self.discriminator.parameters())?;
        step.record("d_loss", &d_loss)?;
        // How often the discriminator is right, before its update.
        let zero = Tensor::zeros(&self.device, &[n]);
        let right = d_real
            .gt(&zero)?
            .to_dtype(DType::F32)?
            .add(&d_fake.le(&zero)?.to_dtype(DType::F32)?)?
            .mean_all()?
            .mul_scalar(0.5)?;
        step.record("d_accuracy", &right)?;
        step.optimize(&mut self.d_opt, &d_grads)?;

        // The generator's loss through the updated discriminator, frozen:
        // its weights take no gradient here (PyTorch's recipe computes and
        // drops them), so its convolutions keep no unfolded input for one.
        let g_logits = {
            let _frozen = freeze(&self.discriminator.parameters());
            self.discriminator.logits(&fake, labels)?
        };
        let g_loss = bce(&g_logits, 1.0)?;
        let mut g_grads = g_loss.backward()?;
        step.clip(&mut g_grads, &self.generator.parameters())?;
        step.record("g_loss", &g_loss)?;
        step.set_samples(n);
        step.optimize(&mut self.g_opt, &g_grads)
    }

    /// On up to 1000 held-out images and as many generated ones (for a
    /// conditional GAN, asked for the held-out images' classes): how far
    /// the generated mean image lies from the real one (root mean square
    /// over the pixels, in the data's [0, 1]), and with a judge the
    /// Fréchet distance between its features of both, the smallest and
    /// largest class share among generated digits, the share it calls with
    /// 90% confidence and, for a conditional GAN, the share called as the
    /// digit asked for. (The discriminator's own scores are no measure: in
    /// evaluation mode its batch norm's running statistics mix real and
    /// generated batches.)
    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        let spec = self.generator.spec;
        let n = self.held_out.len().min(1000);
        let side = spec.image_size;
        let real = Tensor::from_slice(
            &self.device,
            &self.held_out.features[..n * side * side],
            &[n, 1, side, side],
        )?;
        let asked = &self.held_out.labels[..n];
        let labels = Tensor::from_slice(&self.device, asked, &[n])?;
        let labels = spec.is_conditional().then_some(&labels);
        let noise = Tensor::randn(&self.device, &[n, spec.latent])?;
        let fake = self
            .generator
            .generate(&noise, labels)?
            .add_scalar(1.0)?
            .mul_scalar(0.5)?;
        let rmse = fake
            .mean(&[0], false)?
            .sub(&real.mean(&[0], false)?)?
            .square()?
            .mean_all()?
            .sqrt()?;
        let mut values = vec![("mean_image_rmse".to_string(), rmse.item()? as f64)];
        if let Some(judge) = &self.judge {
            let (real, fake) = (judge.judge(&real)?, judge.judge(&fake)?);
            let dim = real.features.len() / n;
            let fid = frechet_distance(&real.features, &fake.features, dim)?;
            let classes = fake.probabilities.len() / n;
            let cover = coverage(&fake.probabilities, classes);
            let shares = &cover.class_shares;
            values.extend([
                ("fid_digits".to_string(), fid),
                (
                    "class_share_min".to_string(),
                    shares.iter().copied().fold(f64::INFINITY, f64::min),
                ),
                (
                    "class_share_max".to_string(),
                    shares.iter().copied().fold(0.0, f64::max),
                ),
                ("confident_share".to_string(), cover.confident),
                // The same call on real digits, for scale.
                (
                    "confident_share_real".to_string(),
                    coverage(&real.probabilities, classes).confident,
                ),
            ]);
            if spec.is_conditional() {
                let hits =
                    fake.probabilities
                        .chunks_exact(classes)
                        .zip(asked)
                        .filter(|(row, &want)| {
                            let best = row.iter().enumerate().fold(
                                (0, f32::NEG_INFINITY),
                                |m, (i, &p)| if p > m.1 { (i, p) } else { m },
                            );
                            best.0 == want as usize
                        })
                        .count();
                values.push(("asked_digit_share".to_string(), hits as f64 / n as f64));
            }
        }
        Ok(values)
    }

    fn model_metadata(&self, _name: &str) -> Vec<(String, String)> {
        let mut meta: Vec<(String, String)> =
            self.generator.spec.to_metadata().into_iter().collect();
        meta.sort();
        meta
    }

    /// `samples/epoch_NNN.png`, the fixed noise's grid, and
    /// `samples/overview.png`: the first row of every epoch's grid so far,
    /// one under another.
    fn epoch_files(&mut self, epoch: usize) -> Result<Vec<(String, Vec<u8>)>> {
        let images = self.grid_samples()?.to_vec::<f32>()?;
        let side = self.generator.spec.image_size;
        let scale = (56 / side).max(1);
        let grid = image_grid(&images, GRID_SAMPLES, side, 8, scale)?;
        let mut files = vec![(format!("samples/epoch_{epoch:03}.png"), grid.clone())];
        if let Some(dir) = &self.run_dir {
            let mut grids = Vec::with_capacity(epoch);
            for earlier in 1..epoch {
                let path = dir.join(format!("samples/epoch_{earlier:03}.png"));
                // A grid deleted by hand leaves its row out, not the run.
                if let Ok(bytes) = std::fs::read(&path) {
                    grids.push(bytes);
                }
            }
            grids.push(grid);
            files.push((
                "samples/overview.png".to_string(),
                stack_first_rows(&grids, side * scale + 1)?,
            ));
        }
        Ok(files)
    }
}

fn trainer(spec: &GanSpec, options: &TrainOptions) -> Trainer {
    let model = Settings::new()
        .with("arch", spec.arch_name())
        .with("betas", format!("{BETAS:?}"));
    options.trainer(&spec.arch_name(), model)
}

/// Rejects settings that cannot train and a folder holding a run not asked
/// to be continued or replaced.
pub fn check(spec: &GanSpec, options: &TrainOptions) -> Result<()> {
    spec.validate()?;
    options.validate()?;
    trainer(spec, options).check()
}

/// Trains a GAN of `spec` on `train`'s images (their labels for a
/// conditional one), measuring against `held_out` after every epoch, into
/// `options.out_dir`: `generator.safetensors`, `discriminator.safetensors`,
/// the checkpoint, `metrics.csv`, `curves.png` and `samples/epoch_NNN.png`;
/// with a `judge`, its measures every epoch (see `GanTask`'s `evaluate`).
/// The caller seeds the device before.
pub fn train(
    spec: &GanSpec,
    train: InMemoryDataset,
    held_out: InMemoryDataset,
    judge: Option<DigitJudge>,
    options: &TrainOptions,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<History> {
    check(spec, options)?;
    let side = spec.image_size;
    for (part, data) in [("training", &train), ("held-out", &held_out)] {
        if data.feature_len() != side * side {
            return Err(Error::shape(
                "train",
                format!(
                    "the {part} images are {:?}, the GAN draws {side}x{side}",
                    data.feature_shape
                ),
            ));
        }
        if spec.is_conditional() && data.num_classes > spec.classes {
            return Err(Error::invalid(
                "train",
                format!(
                    "the {part} data has {} classes, the GAN {}",
                    data.num_classes, spec.classes
                ),
            ));
        }
    }
    if train.len() < options.batch_size {
        return Err(Error::invalid(
            "train",
            format!(
                "{} training images are fewer than one batch of {}",
                train.len(),
                options.batch_size
            ),
        ));
    }
    let mut task = GanTask::new(
        spec,
        held_out,
        options.lr,
        options.label_smoothing,
        judge,
        device,
    )?;
    task.run_dir = Some(options.out_dir.clone());
    // Whole batches only: batch norm on a last batch of one or two images
    // would normalise by almost nothing.
    let loader =
        DataLoader::new(Arc::new(train), options.batch_size, true, options.seed)?.drop_last(true);
    let data = ShuffledBatches {
        loader,
        device: device.clone(),
    };
    debug_assert!(!data.is_empty());
    trainer(spec, options).fit(&mut task, &data, device, observer)
}

/// A generator from a run's `generator.safetensors`, in evaluation mode.
pub fn load_generator(path: &std::path::Path, device: &Device) -> Result<Generator> {
    load_trained(path, "generator.safetensors", |meta| {
        GanSpec::from_metadata(meta)?.generator(device)
    })
}
