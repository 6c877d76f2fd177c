//! `cinder train gan` and `cinder generate gan`: DCGAN (or the conditional
//! one) on handwritten digits, and pictures from a trained generator.

use std::path::PathBuf;
use std::time::Instant;

use cinder::data::{Digits, Mnist, Split};
use cinder::gan::grid::image_grid;
use cinder::gan::quality::{DigitJudge, JUDGE_EPOCHS};
use cinder::gan::train::{self, load_generator, LR};
use cinder::gan::GanSpec;
use cinder::nn::checkpoint::write_atomic;
use cinder::train::{Progress, RunDir};
use cinder::{Device, Error, Result, Tensor};
use clap::Args;

use crate::cnn::{DataArg, RunArgs, ScheduleArg};

#[derive(Args)]
pub struct TrainGan {
    /// The images to learn.
    #[arg(long, value_enum, default_value_t = DataArg::Mnist5k, conflicts_with = "mnist")]
    data: DataArg,
    /// Learn MNIST's IDX files in this directory (the full set, say).
    #[arg(long)]
    mnist: Option<PathBuf>,
    /// Feed the digit's class to both networks, so `generate gan --digit`
    /// can ask for one.
    #[arg(long)]
    conditional: bool,
    /// Size of the generator's Gaussian noise.
    #[arg(long, default_value_t = 100)]
    latent: usize,
    /// The digit classifier that measures the generated digits (a LeNet
    /// `model.safetensors` of `cinder train cnn` on the same image size).
    /// Default: OUT/judge/model.safetensors, trained there first if missing.
    #[arg(long)]
    judge: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

pub fn train_gan(args: TrainGan) -> Result<()> {
    let (name, split): (String, Box<dyn FnOnce() -> Result<Split>>) = match (&args.mnist, args.data)
    {
        (Some(dir), _) => {
            let dir = dir.clone();
            (
                format!("mnist:{}", dir.display()),
                Box::new(move || Mnist::load(dir)),
            )
        }
        (None, DataArg::Digits) => (
            "digits".into(),
            Box::new(|| Ok(Digits::load()?.split_images())),
        ),
        (None, DataArg::Mnist5k) => ("mnist-5k".into(), Box::new(Mnist::bundled)),
    };
    let side = if args.mnist.is_none() && args.data == DataArg::Digits {
        8
    } else {
        28
    };
    let spec = if args.conditional {
        GanSpec::conditional(side, args.latent, 10)
    } else {
        GanSpec::dcgan(side, args.latent)
    };
    let mut options = args
        .run
        .options(&name, "runs/gan", 25, LR, ScheduleArg::Constant)?;
    options.batch_size = args.run.batch_size.unwrap_or(64);
    // DCGAN's Adam has no weight decay.
    options.weight_decay = 0.0;
    train::check(&spec, &options)?;
    let device = Device::new()?;
    println!("adapter: {} ({})", device.adapter_name(), device.backend());
    let split = split()?;
    let judge = match &args.judge {
        Some(path) => DigitJudge::load(path, side, &device)?,
        None => {
            let dir = options.out_dir.join("judge");
            let path = dir.join("model.safetensors");
            if path.is_file() {
                DigitJudge::load(&path, side, &device)?
            } else {
                println!(
                    "training the digit classifier that measures the generated digits ({} epochs, into {})",
                    JUDGE_EPOCHS,
                    dir.display()
                );
                device.manual_seed(options.seed);
                DigitJudge::train(&split, &dir, &device, &mut Progress::new())?
            }
        }
    };
    println!(
        "{name}: {} training and {} held-out images of {side}x{side}; {} ({} + {} parameters)",
        split.train.len(),
        split.test.len(),
        spec.arch_name(),
        cinder::nn::Module::num_parameters(&spec.generator(&device)?),
        cinder::nn::Module::num_parameters(&spec.discriminator(&device)?),
    );
    device.manual_seed(options.seed);
    let started = Instant::now();
    let mut progress = Progress::new();
    let history = train::train(
        &spec,
        split.train,
        split.test,
        Some(judge),
        &options,
        &device,
        &mut progress,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(last) = history.rows.last() {
        let get = |k: &str| last.get(k).unwrap_or(f64::NAN);
        println!(
            "after {} epochs ({seconds:.1} s this run): Fréchet distance on the digit classifier {:.2} \
             (first epoch {:.2}), class shares {:.1}% to {:.1}%, {:.1}% called with 90% confidence",
            last.epoch,
            get("fid_digits"),
            history.rows[0].get("fid_digits").unwrap_or(f64::NAN),
            100.0 * get("class_share_min"),
            100.0 * get("class_share_max"),
            100.0 * get("confident_share"),
        );
        if spec.is_conditional() {
            println!(
                "{:.1}% of the digits asked for are called as that digit",
                100.0 * get("asked_digit_share")
            );
        }
    }
    let run = RunDir::new(&options.out_dir);
    println!(
        "wrote {} (for `cinder generate gan`), {}, {}, {}, {} and {}",
        run.model("generator").display(),
        run.model("discriminator").display(),
        run.checkpoint().display(),
        run.metrics().display(),
        run.curves().display(),
        run.samples().display()
    );
    Ok(())
}

#[derive(Args)]
pub struct GenerateGan {
    /// A GAN run's generator.safetensors.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Images to draw.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Seeds the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The digit to draw (a conditional GAN only).
    #[arg(long)]
    digit: Option<u32>,
    /// One row walking in `n` steps from one noise vector to another.
    #[arg(long)]
    interpolate: bool,
    /// The PNG to write.
    #[arg(long, default_value = "grid.png")]
    out: PathBuf,
}

pub fn generate_gan(args: GenerateGan) -> Result<()> {
    if args.n == 0 {
        return Err(Error::invalid("generate", "--n must be at least 1"));
    }
    let device = Device::new()?;
    let generator = load_generator(&args.checkpoint, &device)?;
    let spec = generator.spec;
    let labels = match (args.digit, spec.is_conditional()) {
        (Some(d), true) if (d as usize) < spec.classes => Some(Tensor::from_slice(
            &device,
            &vec![d as i32; args.n],
            &[args.n],
        )?),
        (Some(d), true) => {
            return Err(Error::invalid(
                "generate",
                format!(
                    "--digit {d}: this GAN draws classes 0 to {}",
                    spec.classes - 1
                ),
            ))
        }
        (Some(_), false) => {
            return Err(Error::invalid(
                "generate",
                "--digit needs a conditional GAN (`cinder train gan --conditional`)",
            ))
        }
        // Without a digit, a conditional GAN draws the classes in turn.
        (None, true) => {
            let l: Vec<i32> = (0..args.n).map(|i| (i % spec.classes) as i32).collect();
            Some(Tensor::from_slice(&device, &l, &[args.n])?)
        }
        (None, false) => None,
    };
    let noise = if args.interpolate {
        let ends = Tensor::randn_seeded(&device, &[2, spec.latent], 0.0, 1.0, args.seed)?
            .to_vec::<f32>()?;
        let (a, b) = ends.split_at(spec.latent);
        let steps = (args.n.max(2) - 1) as f32;
        let walk: Vec<f32> = (0..args.n)
            .flat_map(|i| {
                let t = i as f32 / steps;
                a.iter().zip(b).map(move |(x, y)| x + (y - x) * t)
            })
            .collect();
        Tensor::from_slice(&device, &walk, &[args.n, spec.latent])?
    } else {
        Tensor::randn_seeded(&device, &[args.n, spec.latent], 0.0, 1.0, args.seed)?
    };
    let images = {
        let _no_grad = cinder::no_grad();
        generator
            .generate(&noise, labels.as_ref())?
            .to_vec::<f32>()?
    };
    let columns = if args.interpolate {
        args.n
    } else {
        8.min(args.n)
    };
    let side = spec.image_size;
    let png = image_grid(&images, args.n, side, columns, (56 / side).max(1))?;
    write_atomic(&args.out, &png)?;
    println!(
        "wrote {} ({} images of {side}x{side} from {})",
        args.out.display(),
        args.n,
        spec.arch_name()
    );
    Ok(())
}
