//! `cinder train cnn`, `cinder train mlp`, `cinder eval` and `cinder
//! predict`: image classification with the LeNet-style network, the small
//! ResNet or the digits' perceptron, on cinder-train's loop.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cinder::cnn::imagefile::load_image;
use cinder::cnn::models::{Arch, ModelSpec};
use cinder::cnn::train::{check, load_model, train, OrderedBatches, TrainOptions};
use cinder::data::{Digits, InMemoryDataset, Mnist, Split};
use cinder::train::classify::{evaluate, format_confusion};
use cinder::train::{Progress, RunDir, Schedule, Start};
use cinder::{Device, Error, Result, Tensor};
use clap::{Args, ValueEnum};

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

/// Data shipped with cinder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DataArg {
    /// The 8x8 handwritten digits (1437 training, 360 held-out images).
    Digits,
    /// 5000 real MNIST digits, 28x28 (4000 training, 1000 held out).
    #[value(name = "mnist-5k")]
    Mnist5k,
}

/// Settings every classifier run has.
#[derive(Args, Clone)]
pub struct RunArgs {
    #[arg(long)]
    epochs: Option<usize>,
    /// Samples per batch (default: 32; 64 for gan; 16 for segment, detect
    /// and char-lm, where a sample is a stretch of the text).
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// AdamW's base learning rate.
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    weight_decay: f64,
    /// Learning-rate schedule, stepped once per epoch.
    #[arg(long, value_enum)]
    schedule: Option<ScheduleArg>,
    /// Epochs between decays of the step schedule.
    #[arg(long, default_value_t = 5)]
    step_size: usize,
    /// Decay factor of the step schedule.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    gamma: f64,
    /// Optimizer steps of linear learning-rate warm-up.
    #[arg(long, default_value_t = 0)]
    warmup_steps: u64,
    /// Label smoothing of the training loss, in [0, 1).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    label_smoothing: f32,
    /// Clip the gradients' joint L2 norm to this value (default: none; 1
    /// for char-lm).
    #[arg(long, allow_negative_numbers = true)]
    clip_grad: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory: checkpoint.safetensors, model.safetensors,
    /// metrics.csv, curves.png, confusion.txt, settings.txt, timings.csv.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out, with the same settings (--epochs may grow).
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Replace the run in --out.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
pub struct TrainCnn {
    /// The network.
    #[arg(long, value_enum, default_value_t = ArchArg::Lenet)]
    arch: ArchArg,
    /// The data to train on.
    #[arg(long, value_enum, default_value_t = DataArg::Digits, conflicts_with = "mnist")]
    data: DataArg,
    /// Train on MNIST's IDX files in this directory (the full set, say).
    #[arg(long)]
    mnist: Option<PathBuf>,
    /// Random rotations (±10°), shifts (±7%: 2 px of 28) and scalings (0.9 to 1.1) of
    /// the training images, seeded.
    #[arg(long)]
    augment: bool,
    /// The LeNet's dropout before its classifier layer.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    dropout: f32,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
pub struct TrainMlp {
    /// Hidden units.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    #[command(flatten)]
    run: RunArgs,
}

/// Where the data comes from, named as the run's settings record it.
enum DataSource {
    Bundled(DataArg),
    Mnist(PathBuf),
}

impl DataSource {
    fn name(&self) -> String {
        match self {
            DataSource::Bundled(DataArg::Digits) => "digits".into(),
            DataSource::Bundled(DataArg::Mnist5k) => "mnist-5k".into(),
            DataSource::Mnist(dir) => format!("mnist:{}", dir.display()),
        }
    }

    fn load(&self) -> Result<Split> {
        match self {
            DataSource::Bundled(DataArg::Digits) => Ok(Digits::load()?.split_images()),
            DataSource::Bundled(DataArg::Mnist5k) => Mnist::bundled(),
            DataSource::Mnist(dir) => Mnist::load(dir),
        }
    }

    /// `[rows, cols]` of its images.
    fn image_size(&self) -> [usize; 2] {
        match self {
            DataSource::Bundled(DataArg::Digits) => [8, 8],
            _ => [28, 28],
        }
    }
}

impl RunArgs {
    pub(crate) fn options(
        &self,
        data: &str,
        default_out: &str,
        epochs: usize,
        lr: f64,
        schedule: ScheduleArg,
    ) -> Result<TrainOptions> {
        // Checked whichever schedule runs: a step size of 0 is a mistake even
        // where the option goes unused.
        Schedule::step(self.step_size, self.gamma).validate()?;
        let schedule = match self.schedule.unwrap_or(schedule) {
            ScheduleArg::Constant => Schedule::constant(),
            ScheduleArg::Step => Schedule::step(self.step_size, self.gamma),
            ScheduleArg::Cosine => Schedule::cosine(0.0),
        }
        .with_warmup(self.warmup_steps);
        Ok(TrainOptions {
            epochs: self.epochs.unwrap_or(epochs),
            batch_size: self.batch_size.unwrap_or(32),
            lr: self.lr.unwrap_or(lr),
            weight_decay: self.weight_decay,
            schedule,
            clip_grad_norm: self.clip_grad,
            augment: false,
            label_smoothing: self.label_smoothing,
            seed: self.seed,
            data: data.to_string(),
            out_dir: self.out.clone().unwrap_or_else(|| default_out.into()),
            start: if self.resume {
                Start::Resume
            } else if self.overwrite {
                Start::Overwrite
            } else {
                Start::New
            },
        })
    }
}

/// Checks the settings and the output folder, then trains and reports.
fn run(spec: &ModelSpec, source: &DataSource, options: &TrainOptions) -> Result<()> {
    // Before any work: settings that cannot train, and a folder that holds
    // a run not asked to be continued or replaced.
    check(spec, options)?;
    let device = Device::new()?;
    device.manual_seed(options.seed);
    println!("adapter: {} ({})", device.adapter_name(), device.backend());
    let split = source.load()?;
    println!(
        "{}: {} training and {} held-out images of {:?}",
        source.name(),
        split.train.len(),
        split.test.len(),
        spec.input_shape()
    );
    let started = Instant::now();
    let mut progress = Progress::new();
    let (history, evaluation) = train(spec, split, options, &device, &mut progress)?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(last) = history.rows.last() {
        println!(
            "held-out accuracy: {:.2}% after {} epochs ({seconds:.1} s this run)",
            100.0 * last.get("test_accuracy").unwrap_or(f64::NAN),
            last.epoch,
        );
    }
    let run = RunDir::new(&options.out_dir);
    println!("confusion matrix (rows: true class, columns: predicted):");
    print!("{}", format_confusion(&evaluation.confusion));
    println!(
        "wrote {} (weights for `cinder eval`/`predict`), {}, {}, {} and {}",
        run.model("model").display(),
        run.checkpoint().display(),
        run.metrics().display(),
        run.curves().display(),
        run.dir.join("confusion.txt").display()
    );
    Ok(())
}

pub fn train_cnn(args: TrainCnn) -> Result<()> {
    let source = match &args.mnist {
        Some(dir) => DataSource::Mnist(dir.clone()),
        None => DataSource::Bundled(args.data),
    };
    let [h, w] = source.image_size();
    let spec = match args.arch {
        ArchArg::Lenet => ModelSpec::lenet(h, w, 10).with_dropout(args.dropout),
        ArchArg::Resnet => ModelSpec {
            arch: Arch::ResNet,
            ..ModelSpec::lenet(h, w, 10)
        },
    };
    let mut options =
        args.run
            .options(&source.name(), "runs/cnn", 15, 2e-3, ScheduleArg::Cosine)?;
    options.augment = args.augment;
    run(&spec, &source, &options)
}

pub fn train_mlp(args: TrainMlp) -> Result<()> {
    let source = DataSource::Bundled(DataArg::Digits);
    let spec = ModelSpec::mlp(8, 8, args.hidden, 10);
    let options = args
        .run
        .options(&source.name(), "runs/mlp", 20, 3e-3, ScheduleArg::Constant)?;
    run(&spec, &source, &options)
}

/// The held-out data for a model of `spec`: MNIST's test files in `mnist`,
/// or the bundled data of the model's image size.
fn held_out(spec: &ModelSpec, mnist: Option<&Path>) -> Result<(InMemoryDataset, String)> {
    Ok(match (mnist, spec.height) {
        (Some(dir), _) => (
            Mnist::load_test(dir)?,
            format!("MNIST test files in {}", dir.display()),
        ),
        (None, 8) => (Digits::load()?.split_images().test, "bundled digits".into()),
        (None, _) => (Mnist::bundled()?.test, "bundled MNIST (mnist-5k)".into()),
    })
}

pub fn eval(checkpoint: &Path, mnist: Option<&Path>) -> Result<()> {
    let device = Device::new()?;
    let (spec, model) = load_model(checkpoint, &device)?;
    let (test, name) = held_out(&spec, mnist)?;
    if test.feature_shape != spec.input_shape() {
        return Err(Error::invalid(
            "eval",
            format!(
                "the model takes {:?} images, the {name} are {:?}",
                spec.input_shape(),
                test.feature_shape
            ),
        ));
    }
    let count = test.len();
    let batches = OrderedBatches {
        data: std::sync::Arc::new(test),
        batch_size: 500,
        device: device.clone(),
    };
    let e = evaluate(model.as_ref(), &batches, spec.classes)?;
    println!(
        "{name}, held-out: accuracy {:.2}% ({count} images), loss {:.4}",
        100.0 * e.accuracy,
        e.loss
    );
    println!("confusion matrix (rows: true class, columns: predicted):");
    print!("{}", format_confusion(&e.confusion));
    Ok(())
}

/// Classifies each file; a bad file is reported and the rest still run.
pub fn predict(checkpoint: &Path, images: &[PathBuf]) -> Result<()> {
    let device = Device::new()?;
    let (spec, model) = load_model(checkpoint, &device)?;
    let style = spec.image_style();
    classify_each(images, |path| {
        let pixels = load_image(path, style)?;
        let [c, h, w] = spec.input_shape();
        let x = Tensor::from_slice(&device, &pixels, &[1, c, h, w])?;
        let _no_grad = cinder::no_grad();
        model.forward(&x)?.softmax(-1)?.to_vec::<f32>()
    })
}

/// Prints each file's top-3 classes from `classify`'s probabilities; a file
/// that fails is reported and the rest still run, and the command then
/// fails.
pub(crate) fn classify_each(
    files: &[PathBuf],
    classify: impl Fn(&Path) -> Result<Vec<f32>>,
) -> Result<()> {
    report_each(files, "classified", |path| {
        let mut ranked: Vec<(usize, f32)> = classify(path)?.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<String> = ranked
            .iter()
            .take(3)
            .map(|(class, p)| format!("{class} ({:.1}%)", 100.0 * p))
            .collect();
        Ok(top.join(", "))
    })
}

/// Prints `describe`'s line for each file; a file that fails is reported
/// and the rest still run, and the command then fails ("N of M files could
/// not be `done`").
pub(crate) fn report_each(
    files: &[PathBuf],
    done: &str,
    describe: impl Fn(&Path) -> Result<String>,
) -> Result<()> {
    let mut failed = 0;
    for path in files {
        match describe(path) {
            Ok(line) => println!("{}: {line}", path.display()),
            Err(e) => {
                failed += 1;
                eprintln!("{}: error: {e}", path.display());
            }
        }
    }
    if failed > 0 {
        return Err(Error::invalid(
            "predict",
            format!("{failed} of {} files could not be {done}", files.len()),
        ));
    }
    Ok(())
}
