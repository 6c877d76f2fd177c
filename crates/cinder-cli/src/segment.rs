//! `cinder train segment`: a U-Net on scenes of real handwritten digits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cinder::cnn::annotations::masked_images;
use cinder::cnn::overlay::segmentation_sheet;
use cinder::cnn::segment::{
    self, class_name, load_scene_image, load_unet, predict_masks, UNet, UNetSpec,
};
use cinder::data::{DigitScenes, Mnist, SceneList, SceneSource};
use cinder::nn::checkpoint::write_atomic;
use cinder::train::{Progress, RunDir};
use cinder::{Device, Error, Result, Tensor};
use clap::Args;

use crate::cnn::{report_each, RunArgs, ScheduleArg};
use cinder::train::TrainOptions;

pub type Scenes = Arc<dyn SceneSource>;

/// A user's images split for training: one in five held out.
pub fn held_out_fifth(list: SceneList) -> Result<(Scenes, Scenes)> {
    let (train, held_out) = list.hold_out_every(5)?;
    if held_out.is_empty() {
        return Err(Error::invalid(
            "train",
            "fewer than 5 images: none would be held out to measure against",
        ));
    }
    Ok((Arc::new(train), Arc::new(held_out)))
}

/// Where a scene run's digits come from, and how many scenes it draws.
#[derive(Args)]
pub struct SceneArgs {
    /// Training scenes, drawn from the training digits.
    #[arg(long, default_value_t = 4000)]
    scenes: usize,
    /// Held-out scenes, drawn from the held-out digits, measured after every epoch.
    #[arg(long, default_value_t = 1000)]
    held_out: usize,
    /// Draw the scenes' digits from MNIST's IDX files in this directory
    /// (default: the 5000 shipped real MNIST digits).
    #[arg(long)]
    mnist: Option<PathBuf>,
}

impl SceneArgs {
    /// The training and held-out scenes for `seed`.
    pub fn scenes(&self, seed: u64) -> Result<(Scenes, Scenes)> {
        let split = match &self.mnist {
            Some(dir) => Mnist::load(dir)?,
            None => Mnist::bundled()?,
        };
        let (train, held_out) = DigitScenes::from_split(split, self.scenes, self.held_out, seed)?;
        Ok((Arc::new(train), Arc::new(held_out)))
    }

    /// The data's name in the run's settings and output.
    pub fn name(&self) -> String {
        match &self.mnist {
            Some(dir) => format!("scenes of mnist:{}", dir.display()),
            None => "scenes of mnist-5k".to_string(),
        }
    }
}

/// What a scene task's run needs: its options, its training and held-out
/// scenes, and the device, seeded.
pub struct SceneRun {
    pub options: TrainOptions,
    pub train: Scenes,
    pub held_out: Scenes,
    pub device: Device,
}

/// Prepares a scene task's run the same way for every task: the run's
/// options (10 epochs, batch 16, AdamW at 2e-3 on a cosine schedule, into
/// `default_out`), the user's images (one in five held out) or drawn
/// scenes, and the device; prints the adapter and what is trained.
pub fn scene_run(
    data: &SceneArgs,
    user_data: Option<(String, SceneList)>,
    run: &RunArgs,
    default_out: &str,
    arch: &str,
    parameters: impl FnOnce(&Device) -> Result<usize>,
) -> Result<SceneRun> {
    let name = user_data
        .as_ref()
        .map_or_else(|| data.name(), |(name, _)| name.clone());
    let mut options = run.options(&name, default_out, 10, 2e-3, ScheduleArg::Cosine)?;
    options.batch_size = run.batch_size.unwrap_or(16);
    let (train, held_out) = match user_data {
        Some((_, list)) => held_out_fifth(list)?,
        None => data.scenes(options.seed)?,
    };
    let device = Device::new()?;
    println!("adapter: {} ({})", device.adapter_name(), device.backend());
    println!(
        "{name}: {} training and {} held-out scenes of {side}x{side}; {arch} ({} parameters)",
        train.len(),
        held_out.len(),
        parameters(&device)?,
        side = train.side(),
    );
    device.manual_seed(options.seed);
    Ok(SceneRun {
        options,
        train,
        held_out,
        device,
    })
}

/// The files a scene task's run wrote.
pub fn print_run_files(out_dir: &Path) {
    let run = RunDir::new(out_dir);
    println!(
        "wrote {} (for `cinder predict`), {}, {}, {} and {}",
        run.model("model").display(),
        run.checkpoint().display(),
        run.metrics().display(),
        run.curves().display(),
        run.dir.join("predictions").display()
    );
}

#[derive(Args)]
pub struct TrainSegment {
    #[command(flatten)]
    data: SceneArgs,
    /// Train on your own images (PNG, JPEG) in this directory instead of
    /// scenes, each with a mask of the same name in --masks; one in five is
    /// held out.
    #[arg(long, requires = "masks")]
    images: Option<PathBuf>,
    /// Grey PNG masks for --images: each pixel's value is its class, 0 for
    /// background.
    #[arg(long, requires = "images")]
    masks: Option<PathBuf>,
    /// Channels of the U-Net's first level (doubled at each of its 3 levels below).
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Weight of the soft Dice term added to the weighted cross-entropy (0 for none).
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    dice: f32,
    #[command(flatten)]
    run: RunArgs,
}

pub fn train_segment(args: TrainSegment) -> Result<()> {
    let mut spec = UNetSpec {
        width: args.width,
        ..UNetSpec::digit_scenes()
    };
    let user_data = match (&args.images, &args.masks) {
        (Some(images), Some(masks)) => {
            let list = masked_images(images, masks, SCENE_SIDE)?;
            spec.classes = (list.max_class() as usize + 1).max(2);
            Some((
                format!("images:{} masks:{}", images.display(), masks.display()),
                list,
            ))
        }
        _ => None,
    };
    spec.validate()?;
    let SceneRun {
        options,
        train,
        held_out,
        device,
    } = scene_run(
        &args.data,
        user_data,
        &args.run,
        "runs/segment",
        &spec.arch_name(),
        |device| Ok(cinder::nn::Module::num_parameters(&spec.build(device)?)),
    )?;
    let started = Instant::now();
    let mut progress = Progress::new();
    let history = segment::train(
        &spec,
        train,
        held_out,
        args.dice,
        &options,
        &device,
        &mut progress,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(last) = history.rows.last() {
        let get = |k: &str| last.get(k).unwrap_or(f64::NAN);
        println!(
            "after {} epochs ({seconds:.1} s this run): held-out mean IoU {:.3}, pixel accuracy {:.2}%",
            last.epoch,
            get("mean_iou"),
            100.0 * get("test_pixel_accuracy"),
        );
        let per_class: Vec<String> = (0..spec.classes)
            .map(|c| {
                let name = class_name(c);
                format!("{name} {:.3}", get(&format!("iou_{name}")))
            })
            .collect();
        println!("IoU per class: {}", per_class.join(", "));
    }
    print_run_files(&options.out_dir);
    Ok(())
}

/// Colours every pixel of each image by the digit the U-Net sees there:
/// prints the digits found (their pixels) and writes
/// `OUT/<name>.segment.png`, the image beside its mask with a legend.
pub fn predict_segment(checkpoint: &Path, images: &[PathBuf], out: &Path) -> Result<()> {
    let device = Device::new()?;
    let model = load_unet(checkpoint, &device)?;
    report_each(images, "segmented", |path| {
        predict_one(&model, &device, path, SCENE_SIDE, out)
    })
}

/// Writes `png` as `OUT/<name>.<kind>.png`, named after the image file
/// it shows, and returns its path.
pub fn write_picture(out: &Path, image: &Path, kind: &str, png: &[u8]) -> Result<PathBuf> {
    let stem = image
        .file_stem()
        .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
    let picture = out.join(format!("{stem}.{kind}.png"));
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_atomic(&picture, png)?;
    Ok(picture)
}

/// The side the scenes, and so the images shown to the U-Net, have.
pub const SCENE_SIDE: usize = 96;

fn predict_one(
    model: &UNet,
    device: &Device,
    path: &Path,
    side: usize,
    out: &Path,
) -> Result<String> {
    let image = load_scene_image(path, side)?;
    let x = Tensor::from_slice(device, &image, &[1, 1, side, side])?;
    let mask = predict_masks(model, &x)?.to_vec::<i32>()?;
    let mut pixels = vec![0usize; model.spec.classes];
    for &c in &mask {
        if let Some(n) = pixels.get_mut(c as usize) {
            *n += 1;
        }
    }
    let mut found: Vec<(usize, usize)> = pixels
        .iter()
        .copied()
        .enumerate()
        .skip(1)
        .filter(|&(_, n)| n > 0)
        .collect();
    found.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    let png = segmentation_sheet(&image, &mask, None, 1, side)?;
    let picture = write_picture(out, path, "segment", &png)?;
    let digits: Vec<String> = found
        .iter()
        .map(|&(c, n)| format!("{} ({n} px)", class_name(c)))
        .collect();
    let found = if digits.is_empty() {
        "no digit".to_string()
    } else {
        digits.join(", ")
    };
    Ok(format!("{found}; mask in {}", picture.display()))
}
