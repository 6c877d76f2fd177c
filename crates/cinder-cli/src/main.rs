//! The `cinder` command: adapters, training, benchmarks.

mod bench;
mod cnn;
mod detect;
mod gan;
mod rnn;
mod segment;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cinder",
    version,
    about = "A deep-learning engine for GPUs, on wgpu"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lists every GPU adapter with its backend, type, driver, limits and features.
    Info,
    /// Trains a model on bundled data.
    Train {
        #[command(subcommand)]
        model: train::TrainCommand,
    },
    /// Held-out accuracy and confusion matrix of a trained classifier.
    Eval {
        /// A model.safetensors written by `cinder train cnn`.
        #[arg(long)]
        checkpoint: std::path::PathBuf,
        /// Evaluate on MNIST's test files in this directory (default: the bundled digits).
        #[arg(long)]
        mnist: Option<std::path::PathBuf>,
    },
    /// Classifies image files (PNG, JPEG; any size and colour), or with
    /// --task spoken-digits WAV recordings (any rate, mono or stereo): top-3
    /// classes. A segmentation model (`cinder train segment`) colours each
    /// image's pixels by digit instead and draws the mask; a detector
    /// (`cinder train detect`) boxes each digit and draws the boxes.
    Predict {
        /// A model.safetensors written by `cinder train cnn`, `cinder train
        /// segment`, `cinder train detect` (or `cinder train rnn --task
        /// spoken-digits`).
        #[arg(long)]
        checkpoint: std::path::PathBuf,
        /// What the files hold (default: what the checkpoint was trained on).
        #[arg(long, value_enum)]
        task: Option<PredictTask>,
        /// Where the pictures of masks or boxes go, one `<name>.segment.png`
        /// or `<name>.detect.png` per image.
        #[arg(long, default_value = "predictions")]
        out: std::path::PathBuf,
        #[arg(required = true)]
        images: Vec<std::path::PathBuf>,
    },
    /// Writes with a trained generative model.
    Generate {
        #[command(subcommand)]
        what: GenerateCommand,
    },
    /// Measures kernels and training steps on the current adapter.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PredictTask {
    Images,
    #[value(name = "spoken-digits")]
    SpokenDigits,
    /// Masks of the digits in scenes (a `cinder train segment` model).
    Segment,
    /// Boxes around the digits in scenes (a `cinder train detect` model).
    Detect,
}

#[derive(Subcommand)]
enum GenerateCommand {
    /// Text from a character model trained by `cinder train rnn --task char-lm`.
    CharLm(rnn::GenerateCharLm),
    /// A grid of digits (or with --interpolate a row walking between two
    /// noise vectors) from a generator trained by `cinder train gan`.
    Gan(gan::GenerateGan),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => info(),
        Command::Train { model } => train::run(model),
        Command::Eval { checkpoint, mnist } => cnn::eval(&checkpoint, mnist.as_deref()),
        Command::Predict {
            checkpoint,
            task,
            out,
            images,
        } => match task.map_or_else(|| trained_on(&checkpoint), Ok) {
            Ok(PredictTask::SpokenDigits) => rnn::predict_spoken_digits(&checkpoint, &images),
            Ok(PredictTask::Images) => cnn::predict(&checkpoint, &images),
            Ok(PredictTask::Segment) => segment::predict_segment(&checkpoint, &images, &out),
            Ok(PredictTask::Detect) => detect::predict_detect(&checkpoint, &images, &out),
            Err(e) => Err(e),
        },
        Command::Generate {
            what: GenerateCommand::CharLm(args),
        } => rnn::generate_char_lm(args),
        Command::Generate {
            what: GenerateCommand::Gan(args),
        } => gan::generate_gan(args),
        Command::Bench { what } => bench::run(what),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// What a model file was trained on, from its header (images unless it
/// says otherwise).
fn trained_on(checkpoint: &std::path::Path) -> cinder::Result<PredictTask> {
    let meta = cinder::nn::checkpoint::read_metadata(checkpoint)?;
    match meta.get("cinder.family").map(String::as_str) {
        Some("segment") => return Ok(PredictTask::Segment),
        Some("detect") => return Ok(PredictTask::Detect),
        _ => {}
    }
    Ok(match meta.get("cinder.task").map(String::as_str) {
        Some("spoken-digits") => PredictTask::SpokenDigits,
        _ => PredictTask::Images,
    })
}

fn info() -> cinder::Result<()> {
    let adapters = cinder::runtime::list_adapters();
    if adapters.is_empty() {
        return Err(cinder::Error::NoAdapter {
            filter: String::new(),
        });
    }
    // A CINDER_BACKEND / CINDER_ADAPTER that matches nothing is a mistake to
    // report (its error lists the adapters), not a list with none marked:
    // every program run with it would fail the same way.
    let (chosen, failure) = match cinder::Device::new() {
        Ok(device) => (Some(device), None),
        Err(e @ cinder::Error::NoMatchingAdapter { .. }) => return Err(e),
        // Any other failure is reported after the list, which helps read it.
        Err(e) => (None, Some(e)),
    };
    for (i, a) in adapters.iter().enumerate() {
        let mark = match &chosen {
            Some(d) if d.adapter_name() == a.name && d.backend() == a.backend => {
                "  <- Device::new() picks this one"
            }
            _ => "",
        };
        println!("[{i}] {} ({}, {}){mark}", a.name, a.backend, a.device_type);
        println!("    driver: {} {}", a.driver, a.driver_info);
        println!("    max buffer size: {} MiB", a.max_buffer_size >> 20);
        println!(
            "    max storage binding: {} MiB",
            a.max_storage_buffer_binding_size >> 20
        );
        println!(
            "    workgroup storage: {} KiB",
            a.max_compute_workgroup_storage_size >> 10
        );
        println!(
            "    invocations per workgroup: {}",
            a.max_compute_invocations_per_workgroup
        );
        println!(
            "    workgroups per dimension: {}",
            a.max_compute_workgroups_per_dimension
        );
        let features = if a.features.is_empty() {
            "none of interest".to_string()
        } else {
            a.features.join(", ")
        };
        println!("    features: {features}");
    }
    println!(
        "Override with CINDER_BACKEND=vulkan|metal|dx12|gl and CINDER_ADAPTER=<name substring>."
    );
    failure.map_or(Ok(()), Err)
}
