//! `cinder train detect`: a CenterNet-style detector on scenes of real
//! handwritten digits, and `predict` with its boxes drawn.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cinder::cnn::annotations::boxed_images;
use cinder::cnn::detect::{self, load_detector, DetectLoss, Detector, DetectorSpec, SHOWN_SCORE};
use cinder::cnn::overlay::detection_sheet;
use cinder::cnn::segment::load_scene_image;
use cinder::train::Progress;
use cinder::{Device, Result, Tensor};
use clap::Args;

use crate::cnn::{report_each, RunArgs};
use crate::segment::{print_run_files, scene_run, write_picture, SceneArgs, SceneRun, SCENE_SIDE};

#[derive(Args)]
pub struct TrainDetect {
    #[command(flatten)]
    data: SceneArgs,
    /// Train on your own images instead of scenes: a JSON file of boxes,
    /// either a list of {"image": "a.png", "boxes": [[x0, y0, x1, y1], ...],
    /// "classes": [3, ...]} or a COCO file (images, annotations with [x, y,
    /// w, h] boxes, categories); one image in five is held out.
    #[arg(long)]
    boxes: Option<PathBuf>,
    /// Where the images named in --boxes are (default: the file's folder).
    #[arg(long, requires = "boxes")]
    images: Option<PathBuf>,
    /// Channels at stride 2 (twice that at stride 4, four times at stride 8).
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Weight of the GIoU box loss beside the heatmap's focal loss.
    #[arg(long, default_value_t = 2.0)]
    giou: f32,
    /// Weight of the L1 box loss (in cells of 4 pixels).
    #[arg(long, default_value_t = 0.1)]
    l1: f32,
    #[command(flatten)]
    run: RunArgs,
}

pub fn train_detect(args: TrainDetect) -> Result<()> {
    let mut spec = DetectorSpec {
        width: args.width,
        ..DetectorSpec::digit_scenes()
    };
    let user_data = match &args.boxes {
        Some(file) => {
            let list = boxed_images(file, args.images.as_deref(), SCENE_SIDE)?;
            spec.classes = list.max_class() as usize + 1;
            Some((format!("boxes:{}", file.display()), list))
        }
        None => None,
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
        "runs/detect",
        &spec.arch_name(),
        |device| Ok(cinder::nn::Module::num_parameters(&spec.build(device)?)),
    )?;
    let started = Instant::now();
    let mut progress = Progress::new();
    let loss = DetectLoss {
        giou: args.giou,
        l1: args.l1,
    };
    let history = detect::train(
        &spec,
        train,
        held_out,
        loss,
        &options,
        &device,
        &mut progress,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(last) = history.rows.last() {
        let get = |k: &str| last.get(k).unwrap_or(f64::NAN);
        println!(
            "after {} epochs ({seconds:.1} s this run): held-out mAP@0.5 {:.3}, mAP@0.5:0.95 {:.3}",
            last.epoch,
            get("map50"),
            get("map"),
        );
        let per_class: Vec<String> = (0..spec.classes)
            .map(|c| format!("{c} {:.3}", get(&format!("ap50_{c}"))))
            .collect();
        println!("AP@0.5 per digit: {}", per_class.join(", "));
    }
    print_run_files(&options.out_dir);
    Ok(())
}

/// Finds the digits in each image: prints each box with its digit and
/// score and writes `OUT/<name>.detect.png`, the image with its boxes.
pub fn predict_detect(checkpoint: &Path, images: &[PathBuf], out: &Path) -> Result<()> {
    let device = Device::new()?;
    let model = load_detector(checkpoint, &device)?;
    report_each(images, "searched", |path| {
        predict_one(&model, &device, path, out)
    })
}

fn predict_one(model: &Detector, device: &Device, path: &Path, out: &Path) -> Result<String> {
    let side = SCENE_SIDE;
    let image = load_scene_image(path, side)?;
    let x = Tensor::from_slice(device, &image, &[1, 1, side, side])?;
    let found = detect::detect(model, &x, SHOWN_SCORE)?;
    let png = detection_sheet(&image, &found, None, side)?;
    let picture = write_picture(out, path, "detect", &png)?;
    let boxes: Vec<String> = found
        .iter()
        .flatten()
        .map(|d| {
            let b = d.bbox;
            format!(
                "{} ({:.2}) at [{:.0}, {:.0}, {:.0}, {:.0}]",
                d.class, d.score, b[0], b[1], b[2], b[3]
            )
        })
        .collect();
    let found = if boxes.is_empty() {
        "no digit".to_string()
    } else {
        boxes.join(", ")
    };
    Ok(format!("{found}; boxes in {}", picture.display()))
}
