//! `cinder train cnn`, `cinder eval` and `cinder predict`: image
//! classification with the LeNet-style network or the small ResNet.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cinder::cnn::imagefile::load_image;
use cinder::cnn::models::{Arch, ModelSpec};
use cinder::cnn::report::{format_confusion, EpochRecord};
use cinder::cnn::train::{evaluate, fit, Observer, RunFiles, Schedule, TrainConfig};
use cinder::data::{Digits, Mnist, Split};
use cinder::nn::checkpoint::load_tensors;
use cinder::nn::Module;
use cinder::{Device, Error, Result, Tensor};
use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScheduleArg {
    Constant,
    Step,
    Cosine,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ArchArg {
    /// Two 3x3 convolutions with max-pooling, then two linear layers.
    Lenet,
    /// The small ResNet: a 3x3 stem and three basic blocks (16, 32, 64
    /// channels) with batch norm.
    Resnet,
}

#[derive(Args)]
pub struct TrainCnn {
    /// The network.
    #[arg(long, value_enum, default_value_t = ArchArg::Lenet)]
    arch: ArchArg,
    #[arg(long, default_value_t = 15)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// AdamW's base learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f32,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f32,
    /// Learning-rate schedule, stepped once per epoch.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    schedule: ScheduleArg,
    /// Epochs between decays of the step schedule.
    #[arg(long, default_value_t = 5)]
    step_size: usize,
    /// Decay factor of the step schedule.
    #[arg(long, default_value_t = 0.5)]
    gamma: f32,
    /// Clip the gradients' joint L2 norm to this value.
    #[arg(long)]
    clip_grad: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory: checkpoint.safetensors, model.safetensors,
    /// metrics.csv, curves.png and confusion.txt.
    #[arg(long, default_value = "runs/cnn")]
    out: PathBuf,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Train on MNIST's IDX files in this directory instead of the bundled digits.
    #[arg(long)]
    mnist: Option<PathBuf>,
}

/// The data a model of `spec` was trained on: MNIST from `mnist`, or the
/// bundled digits with their fixed split (with the LeNet for its images).
fn dataset(mnist: Option<&Path>) -> Result<(Split, ModelSpec, &'static str)> {
    Ok(match mnist {
        Some(dir) => {
            let split = Mnist::load(dir)?;
            let [_, h, w] = split.train.feature_shape[..] else {
                return Err(Error::invalid(
                    "mnist",
                    "images must have shape [1, rows, cols]",
                ));
            };
            (split, ModelSpec::lenet(h, w, Mnist::NUM_CLASSES), "MNIST")
        }
        None => (
            Digits::load()?.split_images(),
            ModelSpec::lenet(8, 8, Digits::NUM_CLASSES),
            "bundled digits",
        ),
    })
}

struct Bars {
    multi: MultiProgress,
    epoch: Option<ProgressBar>,
    overall: ProgressBar,
    started: Instant,
    samples: usize,
    loss_sum: f64,
    batches: usize,
}

impl Observer for Bars {
    fn epoch_started(&mut self, epoch: usize, batches: usize, lr: f32) {
        let bar = self.multi.add(ProgressBar::new(batches as u64));
        bar.set_style(
            ProgressStyle::with_template(
                "epoch {prefix:>3} {bar:30.cyan/blue} {pos}/{len} batches {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("{}", epoch + 1));
        bar.set_message(format!("lr {lr:.2e}"));
        self.epoch = Some(bar);
        self.loss_sum = 0.0;
        self.batches = 0;
    }

    fn batch_finished(&mut self, _epoch: usize, loss: f32, samples: usize) {
        self.samples += samples;
        self.loss_sum += loss as f64;
        self.batches += 1;
        if let Some(bar) = &self.epoch {
            bar.inc(1);
            let rate = self.samples as f64 / self.started.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4} {rate:.0} samples/s",
                self.loss_sum / self.batches as f64
            ));
        }
    }

    fn epoch_finished(&mut self, r: &EpochRecord) {
        if let Some(bar) = self.epoch.take() {
            bar.finish_and_clear();
        }
        self.overall.inc(1);
        let _ = self.multi.println(format!(
            "epoch {:3}  lr {:.2e}  train loss {:.4} acc {:6.2}%  test loss {:.4} acc {:6.2}%  {:.1} s",
            r.epoch,
            r.lr,
            r.train_loss,
            100.0 * r.train_accuracy,
            r.test_loss,
            100.0 * r.test_accuracy,
            r.seconds
        ));
    }
}

pub fn train(args: TrainCnn) -> Result<()> {
    let device = Device::new()?;
    device.manual_seed(args.seed);
    println!("adapter: {} ({})", device.adapter_name(), device.backend());
    let (split, lenet, name) = dataset(args.mnist.as_deref())?;
    let spec = match args.arch {
        ArchArg::Lenet => lenet,
        ArchArg::Resnet => ModelSpec {
            arch: Arch::ResNet,
            ..lenet
        },
    };
    println!(
        "{name}: {} training and {} held-out images of {:?}",
        split.train.len(),
        split.test.len(),
        spec.input_shape()
    );
    let mut model = spec.build(&device)?;
    let cfg = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        weight_decay: args.weight_decay,
        schedule: match args.schedule {
            ScheduleArg::Constant => Schedule::Constant,
            ScheduleArg::Step => Schedule::Step {
                step_size: args.step_size,
                gamma: args.gamma,
            },
            ScheduleArg::Cosine => Schedule::Cosine { min_lr: 0.0 },
        },
        clip_grad_norm: args.clip_grad,
        seed: args.seed,
        out_dir: args.out.clone(),
    };
    let multi = MultiProgress::new();
    let overall = multi.add(ProgressBar::new(args.epochs as u64));
    overall.set_style(
        ProgressStyle::with_template(
            "run       {bar:30.green/white} {pos}/{len} epochs [{elapsed_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut bars = Bars {
        multi,
        epoch: None,
        overall,
        started: Instant::now(),
        samples: 0,
        loss_sum: 0.0,
        batches: 0,
    };
    let started = Instant::now();
    let test = split.test;
    let history = fit(
        model.as_mut(),
        &spec,
        Arc::new(split.train),
        &test,
        &cfg,
        args.resume,
        &mut bars,
    )?;
    bars.overall.finish();
    let files = RunFiles::in_dir(&args.out);
    if let Some(last) = history.last() {
        println!(
            "held-out accuracy: {:.2}% after {} epochs ({:.1} s this run, {:.0} samples/s)",
            100.0 * last.test_accuracy,
            last.epoch,
            started.elapsed().as_secs_f64(),
            bars.samples as f64 / started.elapsed().as_secs_f64().max(1e-9)
        );
    }
    println!(
        "wrote {}, {}, {}, {} and {}",
        files.checkpoint.display(),
        files.model.display(),
        files.metrics.display(),
        files.curves.display(),
        files.confusion.display()
    );
    Ok(())
}

/// The model a checkpoint describes, with its weights loaded.
fn load_model(device: &Device, checkpoint: &Path) -> Result<(Box<dyn Module>, ModelSpec)> {
    let meta = cinder::nn::checkpoint::read_metadata(checkpoint)?;
    let spec = ModelSpec::from_metadata(&meta)?;
    if meta.contains_key("cinder.optimizer_steps") {
        return Err(Error::invalid(
            "checkpoint",
            format!(
                "{} is a training checkpoint (for --resume); pass the model.safetensors next to it",
                checkpoint.display()
            ),
        ));
    }
    let mut model = spec.build(device)?;
    load_tensors(checkpoint, &model.state_dict())?;
    model.eval();
    Ok((model, spec))
}

pub fn eval(checkpoint: &Path, mnist: Option<&Path>) -> Result<()> {
    let device = Device::new()?;
    let (mut model, spec) = load_model(&device, checkpoint)?;
    let (split, data_spec, name) = dataset(mnist)?;
    if data_spec.input_shape() != spec.input_shape() {
        return Err(Error::invalid(
            "eval",
            format!(
                "the model takes {:?} images, the {name} are {:?}",
                spec.input_shape(),
                data_spec.input_shape()
            ),
        ));
    }
    let e = evaluate(model.as_mut(), &split.test, 500)?;
    println!(
        "{name}, held-out: accuracy {:.2}% ({} images), loss {:.4}",
        100.0 * e.accuracy,
        split.test.len(),
        e.loss
    );
    println!("confusion matrix (rows: true class, columns: predicted):");
    print!("{}", format_confusion(&e.confusion));
    Ok(())
}

/// Classifies each file; a bad file is reported and the rest still run.
pub fn predict(checkpoint: &Path, images: &[PathBuf]) -> Result<()> {
    let device = Device::new()?;
    let (model, spec) = load_model(&device, checkpoint)?;
    let style = spec.image_style();
    let mut failed = 0;
    for path in images {
        let classify = || -> Result<Vec<f32>> {
            let pixels = load_image(path, style)?;
            let [c, h, w] = spec.input_shape();
            let x = Tensor::from_slice(&device, &pixels, &[1, c, h, w])?;
            let _no_grad = cinder::no_grad();
            model.forward(&x)?.softmax(-1)?.to_vec::<f32>()
        };
        match classify() {
            Ok(probs) => {
                let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
                let top: Vec<String> = ranked
                    .iter()
                    .take(3)
                    .map(|(class, p)| format!("{class} ({:.1}%)", 100.0 * p))
                    .collect();
                println!("{}: {}", path.display(), top.join(", "));
            }
            Err(e) => {
                failed += 1;
                eprintln!("{}: error: {e}", path.display());
            }
        }
    }
    if failed > 0 {
        return Err(Error::invalid(
            "predict",
            format!("{failed} of {} files could not be classified", images.len()),
        ));
    }
    Ok(())
}
