//! `cinder train rnn`: recurrent sequence classifiers on cinder-train's loop.

use std::path::PathBuf;
use std::time::Instant;

use cinder::data::{Corpus, Mnist, SpokenDigits};
use cinder::nn::{CellKind, Module};
use cinder::rnn::lm::{self, CharLmSpec, LmOptions};
use cinder::rnn::models::SequenceSpec;
use cinder::rnn::speech;
use cinder::rnn::train::{check, train};
use cinder::train::classify::format_confusion;
use cinder::train::{Progress, RunDir};
use cinder::{Device, Error, Result};
use clap::{Args, ValueEnum};

use crate::cnn::{RunArgs, ScheduleArg};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TaskArg {
    /// The shipped real MNIST digits (4000 training, 1000 held out), each
    /// read as 28 rows of 28 pixels, one row per step.
    #[value(name = "mnist-rows")]
    MnistRows,
    /// A character-level language model (embedding, 2-layer LSTM) on the
    /// text files named by --text (default: the licence texts in
    /// /usr/share/common-licenses), the last 10% held out.
    #[value(name = "char-lm")]
    CharLm,
    /// The shipped spoken digits (1120 clips, 8 voices): trained on six
    /// voices, measured on the two it never hears (m4, f4), clean and in
    /// babble noise (data/spoken-digits-noisy, never trained on).
    #[value(name = "spoken-digits")]
    SpokenDigits,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CellArg {
    Lstm,
    Gru,
    /// An Elman RNN with tanh.
    Rnn,
}

impl CellArg {
    fn kind(self) -> CellKind {
        match self {
            CellArg::Lstm => CellKind::Lstm,
            CellArg::Gru => CellKind::Gru,
            CellArg::Rnn => CellKind::RnnTanh,
        }
    }
}

#[derive(Args)]
pub struct TrainRnn {
    /// What to learn.
    #[arg(long, value_enum, default_value_t = TaskArg::MnistRows)]
    task: TaskArg,
    /// The recurrent cell (default: lstm; gru for spoken-digits).
    #[arg(long, value_enum)]
    cell: Option<CellArg>,
    /// Hidden units per layer and direction (default: 128 for mnist-rows,
    /// 256 for char-lm).
    #[arg(long)]
    hidden: Option<usize>,
    /// Stacked recurrent layers (default: 1 for mnist-rows, 2 for char-lm).
    #[arg(long)]
    layers: Option<usize>,
    /// char-lm: text files to learn, in order.
    #[arg(long, num_args = 1..)]
    text: Vec<PathBuf>,
    /// char-lm: characters of each stretch per batch (steps of
    /// backpropagation through time; the state carries on beyond them).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// char-lm: the character embedding's size.
    #[arg(long, default_value_t = 64)]
    embedding: usize,
    /// mnist-rows: random rotations (±10°), shifts (±2 px) and scalings
    /// (0.9 to 1.1) of the training digits; spoken-digits: white or babble
    /// noise at 5 to 20 dB on 80% of clips, speed 0.9 to 1.1, shifts of up
    /// to 50 ms, gain ±6 dB. Seeded.
    #[arg(long)]
    augment: bool,
    /// Read each sequence both ways.
    #[arg(long)]
    bidirectional: bool,
    /// Dropout between recurrent layers and before the output layer
    /// (default: 0; 0.2 for char-lm, which overfits its text without it).
    #[arg(long, allow_negative_numbers = true)]
    dropout: Option<f32>,
    #[command(flatten)]
    run: RunArgs,
}

pub fn train_rnn(args: TrainRnn) -> Result<()> {
    match args.task {
        TaskArg::MnistRows => train_mnist_rows(args),
        TaskArg::CharLm => train_char_lm(args),
        TaskArg::SpokenDigits => train_spoken_digits(args),
    }
}

fn train_mnist_rows(args: TrainRnn) -> Result<()> {
    let spec = SequenceSpec {
        cell: args.cell.unwrap_or(CellArg::Lstm).kind(),
        num_layers: args.layers.unwrap_or(1),
        bidirectional: args.bidirectional,
        dropout: args.dropout.unwrap_or(0.0),
        ..SequenceSpec::lstm(28, 28, args.hidden.unwrap_or(128), 10)
    };
    let mut options = args
        .run
        .options("mnist-5k", "runs/rnn", 12, 2e-3, ScheduleArg::Cosine)?;
    options.augment = args.augment;
    // Before any work: settings that cannot train, and a folder that holds
    // a run not asked to be continued or replaced.
    check(&spec, &options)?;
    let device = Device::new()?;
    device.manual_seed(options.seed);
    println!("adapter: {} ({})", device.adapter_name(), device.backend());
    let split = Mnist::bundled()?;
    println!(
        "mnist-5k read row by row: {} training and {} held-out digits, {} steps of {} pixels, model {} ({} parameters)",
        split.train.len(),
        split.test.len(),
        spec.steps,
        spec.input_size,
        spec.arch_name(),
        spec.build(&device)?.num_parameters(),
    );
    device.manual_seed(options.seed);
    let started = Instant::now();
    let mut progress = Progress::new();
    let (history, evaluation) = train(&spec, split, &options, &device, &mut progress)?;
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
        "wrote {}, {}, {}, {} and {}",
        run.model("model").display(),
        run.checkpoint().display(),
        run.metrics().display(),
        run.curves().display(),
        run.dir.join("confusion.txt").display()
    );
    Ok(())
}

fn train_char_lm(args: TrainRnn) -> Result<()> {
    if args.cell.is_some_and(|c| c != CellArg::Lstm) || args.bidirectional || args.augment {
        return Err(Error::invalid(
            "train",
            "the character model is a forward LSTM on plain text: --cell, --bidirectional and --augment do not apply",
        ));
    }
    let files = if args.text.is_empty() {
        Corpus::default_files()?
    } else {
        args.text.clone()
    };
    let corpus = Corpus::load(&files)?;
    let data = if args.text.is_empty() {
        format!("{}/*", cinder::data::text::DEFAULT_TEXT_DIR)
    } else {
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let spec = CharLmSpec {
        vocab_size: corpus.vocab.len(),
        embedding_dim: args.embedding,
        hidden_size: args.hidden.unwrap_or(256),
        num_layers: args.layers.unwrap_or(2),
        dropout: args.dropout.unwrap_or(0.2),
    };
    let mut train = args
        .run
        .options(&data, "runs/char-lm", 4, 6e-3, ScheduleArg::Cosine)?;
    // Measured with PyTorch's LSTM on the default text (tools/char_lm.py):
    // more, smaller batches and clipped steps learn it fastest; past four
    // epochs the held-out figure rises again.
    train.batch_size = args.run.batch_size.unwrap_or(16);
    train.clip_grad_norm = train.clip_grad_norm.or(Some(1.0));
    let options = LmOptions {
        train,
        steps: args.steps,
    };
    lm::check(&spec, &options)?;
    let device = Device::new()?;
    println!("adapter: {} ({})", device.adapter_name(), device.backend());
    println!(
        "{} files, {} characters ({} distinct): {} for training, {} held out; model {}",
        files.len(),
        corpus.len(),
        corpus.vocab.len(),
        corpus.train.len(),
        corpus.held_out.len(),
        spec.arch_name()
    );
    device.manual_seed(options.train.seed);
    let started = Instant::now();
    let mut progress = Progress::new();
    let report = lm::train(&spec, &corpus, &options, &device, &mut progress)?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(last) = report.history.rows.last() {
        println!(
            "held-out: {:.3} bits per character after {} epochs ({seconds:.1} s this run); \
             a character n-gram on the {} before: {:.3}",
            last.get("test_bits_per_char").unwrap_or(f64::NAN),
            last.epoch,
            lm::BASELINE_ORDER - 1,
            report.baseline_bits_per_char
        );
    }
    let run = RunDir::new(&options.train.out_dir);
    println!(
        "wrote {} (for `cinder generate char-lm`), {}, {} and {}",
        run.model("model").display(),
        run.checkpoint().display(),
        run.metrics().display(),
        run.curves().display()
    );
    Ok(())
}

#[derive(Args)]
pub struct GenerateCharLm {
    /// A char-lm run's model.safetensors.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text to continue (its characters must be in the model's vocabulary).
    #[arg(long, default_value = "")]
    prompt: String,
    /// Divides the scores before sampling: below 1 safer, above 1 wilder.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f64,
    /// Characters to write.
    #[arg(long, default_value_t = 400)]
    length: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn generate_char_lm(args: GenerateCharLm) -> Result<()> {
    let device = Device::new()?;
    let (model, vocab) = lm::load(&args.checkpoint, &device)?;
    let text = lm::generate(
        &model,
        &vocab,
        &args.prompt,
        args.temperature,
        args.length,
        args.seed,
    )?;
    println!("{}{text}", args.prompt);
    Ok(())
}

fn train_spoken_digits(args: TrainRnn) -> Result<()> {
    let cell = args.cell.unwrap_or(CellArg::Gru);
    if cell == CellArg::Rnn {
        return Err(Error::invalid(
            "train",
            "spoken digits take --cell lstm or gru",
        ));
    }
    let spec = SequenceSpec {
        num_layers: args.layers.unwrap_or(1),
        bidirectional: args.bidirectional,
        dropout: args.dropout.unwrap_or(0.0),
        ..speech::spec(cell.kind(), args.hidden.unwrap_or(128))
    };
    let mut options = args.run.options(
        "spoken-digits",
        "runs/spoken-digits",
        30,
        3e-3,
        ScheduleArg::Cosine,
    )?;
    options.augment = args.augment;
    speech::check(&spec, &options)?;
    let device = Device::new()?;
    println!("adapter: {} ({})", device.adapter_name(), device.backend());
    let clean = SpokenDigits::bundled()?;
    let (train, held_out) = clean.split_by_voice(&SpokenDigits::HELD_OUT_VOICES)?;
    let noisy = SpokenDigits::bundled_noisy()?.into_clips();
    println!(
        "spoken digits: {} training clips ({} voices), {} held out (voices {}), {} of them in noise; model {}",
        train.len(),
        clean.voices().len() - SpokenDigits::HELD_OUT_VOICES.len(),
        held_out.len(),
        SpokenDigits::HELD_OUT_VOICES.join(", "),
        noisy.len(),
        spec.arch_name()
    );
    device.manual_seed(options.seed);
    let started = Instant::now();
    let mut progress = Progress::new();
    let report = speech::train(
        &spec,
        train,
        held_out,
        noisy,
        &options,
        &device,
        &mut progress,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "held-out voices: {:.2}% clean, {:.2}% in noise, after {} epochs ({seconds:.1} s this run)",
        100.0 * report.clean_accuracy,
        100.0 * report.noisy_accuracy,
        report.history.rows.len()
    );
    let run = RunDir::new(&options.out_dir);
    println!(
        "wrote {} (for `cinder predict --task spoken-digits`), {}, {} and {}",
        run.model("model").display(),
        run.checkpoint().display(),
        run.metrics().display(),
        run.curves().display()
    );
    Ok(())
}

/// The digit spoken in each WAV file; a bad file is reported and the rest
/// still run.
pub fn predict_spoken_digits(checkpoint: &std::path::Path, files: &[PathBuf]) -> Result<()> {
    let device = Device::new()?;
    let model = cinder::rnn::train::load_model(checkpoint, &device)?;
    crate::cnn::classify_each(files, |path| speech::classify_file(&model, path))
}
