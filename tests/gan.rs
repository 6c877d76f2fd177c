//! cinder-gan: DCGAN's networks (shapes, PyTorch's names, the DCGAN
//! paper's initial weights, refusals), and a run on the 8x8 digits that
//! writes its files and whose generator learns where the ink is.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use cinder::data::Digits;
use cinder::gan::quality::DigitJudge;
use cinder::gan::train::{self, load_generator, GanTask, LR};
use cinder::gan::GanSpec;
use cinder::nn::Module;
use cinder::train::{Schedule, Silent, Start, Task, TrainOptions};
use cinder::{Result, Tensor};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cinder-gan-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn mean_and_std(values: &[f32]) -> (f32, f32) {
    let n = values.len() as f32;
    let mean = values.iter().sum::<f32>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n;
    (mean, var.sqrt())
}

#[test]
fn dcgan_networks_have_pytorch_names_shapes_and_dcgan_weights() -> Result<()> {
    // It seeds and draws from the device's stream the other tests replay.
    let _serial = common::serial();
    let device = common::device();
    device.manual_seed(3);
    let spec = GanSpec::dcgan(28, 100);
    let g = spec.generator(&device)?;
    let d = spec.discriminator(&device)?;
    let shapes = |m: &dyn Module| -> Vec<(String, Vec<usize>)> {
        m.state_dict()
            .into_iter()
            .map(|(n, t)| (n, t.shape().to_vec()))
            .collect()
    };
    let g_shapes = shapes(&g);
    assert_eq!(
        g_shapes[0],
        ("main.0.weight".to_string(), vec![100, 128, 7, 7])
    );
    assert!(g_shapes.contains(&("main.4.running_var".to_string(), vec![64])));
    assert!(g_shapes.contains(&("main.6.weight".to_string(), vec![64, 1, 4, 4])));
    let d_shapes = shapes(&d);
    assert!(d_shapes.contains(&("main.6.weight".to_string(), vec![1, 6272])));
    assert!(d_shapes.contains(&("main.3.num_batches_tracked".to_string(), vec![])));
    // N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales, zero shifts.
    for (name, t) in g.named_parameters().iter().chain(&d.named_parameters()) {
        let values = t.to_vec::<f32>()?;
        let (mean, std) = mean_and_std(&values);
        if t.dims() == 4 {
            assert!(
                mean.abs() < 0.002 && (std - 0.02).abs() < 0.002,
                "{name}: {mean} {std}"
            );
        }
        if t.dims() == 1 && name.ends_with("weight") {
            assert!(
                (mean - 1.0).abs() < 0.01 && std < 0.04,
                "{name}: {mean} {std}"
            );
        }
        if t.dims() == 1 && name.ends_with("bias") && t.numel() > 1 {
            assert!(values.iter().all(|&v| v == 0.0), "{name}");
        }
    }
    let z = Tensor::randn(&device, &[3, 100])?;
    let images = g.generate(&z, None)?;
    assert_eq!(images.shape(), &[3, 1, 28, 28]);
    assert!(images.to_vec::<f32>()?.iter().all(|v| v.abs() <= 1.0));
    assert_eq!(d.logits(&images, None)?.shape(), &[3]);

    // The conditional one takes a label per sample, and only then.
    let cspec = GanSpec::conditional(8, 16, 10);
    let (cg, cd) = (cspec.generator(&device)?, cspec.discriminator(&device)?);
    let labels = Tensor::from_slice(&device, &[0i32, 9, 4], &[3])?;
    let z = Tensor::randn(&device, &[3, 16])?;
    let images = cg.generate(&z, Some(&labels))?;
    assert_eq!(images.shape(), &[3, 1, 8, 8]);
    // Every layer's output, in eval mode (no running statistics move):
    // the last is the images, the first the 2x2 map of 128 channels.
    let mut cg = cg;
    cg.eval();
    let layers = cg.generate_each(&z, Some(&labels))?;
    assert_eq!(layers.len(), 8);
    assert_eq!(layers[0].shape(), &[3, 128, 2, 2]);
    assert_eq!(
        layers[7].to_vec::<f32>()?,
        cg.generate(&z, Some(&labels))?.to_vec::<f32>()?
    );
    cg.train();
    assert_eq!(cd.logits(&images, Some(&labels))?.shape(), &[3]);
    assert!(cg.generate(&z, None).is_err());
    assert!(g
        .generate(&Tensor::randn(&device, &[3, 100])?, Some(&labels))
        .is_err());
    assert!(cg.generate(&z, Some(&labels.reshape(&[3, 1])?)).is_err());
    assert!(cg
        .generate(&Tensor::randn(&device, &[3, 15])?, Some(&labels))
        .is_err());
    assert!(cd
        .logits(&Tensor::zeros(&device, &[3, 1, 28, 28]), Some(&labels))
        .is_err());
    assert!(GanSpec::dcgan(30, 100).validate().is_err());
    assert!(GanSpec::dcgan(28, 0).validate().is_err());
    let meta = cspec.to_metadata();
    assert_eq!(GanSpec::from_metadata(&meta)?, cspec);
    Ok(())
}

/// Three epochs on the 8x8 digits, measured by a digit classifier trained
/// first: a grid of samples per epoch, both networks' files, losses
/// recorded; the generated images' mean image and the classifier's
/// features of them come much closer to the real digits' than the
/// untrained generator's; the saved generator loads and draws.
#[test]
fn dcgan_trains_on_the_digits_and_its_generator_loads() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    let split = Digits::load()?.split_images();
    let spec = GanSpec::dcgan(8, 16);
    let out = scratch("digits");
    let options = TrainOptions {
        epochs: 3,
        batch_size: 32,
        lr: LR * 5.0,
        weight_decay: 0.0,
        schedule: Schedule::constant(),
        clip_grad_norm: None,
        augment: false,
        label_smoothing: 0.1,
        seed: 1,
        data: "digits".into(),
        out_dir: out.clone(),
        start: Start::New,
    };
    let judge_dir = out.join("judge");
    device.manual_seed(5);
    DigitJudge::train(&split, &judge_dir, &device, &mut Silent)?;
    let judge = || DigitJudge::load(&judge_dir.join("model.safetensors"), 8, &device);
    device.manual_seed(2);
    let untrained: HashMap<String, f64> =
        GanTask::new(&spec, split.test.clone(), LR, 0.0, Some(judge()?), &device)?
            .evaluate()?
            .into_iter()
            .collect();
    device.manual_seed(2);
    let history = train::train(
        &spec,
        split.train,
        split.test,
        Some(judge()?),
        &options,
        &device,
        &mut Silent,
    )?;
    let last_fid = history
        .rows
        .last()
        .and_then(|r| r.get("fid_digits"))
        .unwrap_or(f64::NAN);
    assert!(
        last_fid < 0.5 * untrained["fid_digits"],
        "Fréchet distance {last_fid} (untrained: {})",
        untrained["fid_digits"]
    );
    let untrained = untrained["mean_image_rmse"];
    let last = history
        .rows
        .last()
        .and_then(|r| r.get("mean_image_rmse"))
        .unwrap_or(f64::NAN);
    assert!(
        last < 0.6 * untrained,
        "mean image {last} from the digits' (untrained: {untrained})"
    );
    for row in &history.rows {
        for key in [
            "train_d_loss",
            "train_g_loss",
            "train_d_accuracy",
            "class_share_min",
            "class_share_max",
            "confident_share",
        ] {
            assert!(
                row.get(key).is_some_and(f64::is_finite),
                "{key} in epoch {}",
                row.epoch
            );
        }
    }
    for file in [
        "samples/epoch_001.png",
        "samples/epoch_003.png",
        "samples/overview.png",
        "generator.safetensors",
        "discriminator.safetensors",
        "curves.png",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let grid = image::open(out.join("samples/epoch_003.png"))
        .map_err(|e| cinder::Error::invalid("test", e.to_string()))?;
    // 8 cells of 8 pixels drawn 7x7, a pixel of border each, and one.
    assert_eq!((grid.width(), grid.height()), (8 * 57 + 1, 8 * 57 + 1));
    // One row of the grid per epoch, and a closing border.
    let overview = image::open(out.join("samples/overview.png"))
        .map_err(|e| cinder::Error::invalid("test", e.to_string()))?;
    assert_eq!(
        (overview.width(), overview.height()),
        (8 * 57 + 1, 3 * 57 + 1)
    );

    let generator = load_generator(&out.join("generator.safetensors"), &device)?;
    assert_eq!(generator.spec, spec);
    let z = Tensor::randn_seeded(&device, &[4, 16], 0.0, 1.0, 9)?;
    let images = generator.generate(&z, None)?.to_vec::<f32>()?;
    assert!(images.iter().all(|v| v.is_finite() && v.abs() <= 1.0));
    // The checkpoint is for --resume, not for drawing.
    assert!(load_generator(&out.join("checkpoint.safetensors"), &device).is_err());
    std::fs::remove_dir_all(&out).ok();
    Ok(())
}

/// A conditional GAN trained for two epochs in one go and one trained for
/// one, then resumed for the second (from another seed, which the
/// checkpoint replaces), end with the same measures and, to the bit, the
/// same weights and batch-norm statistics in both networks: both
/// optimizers' moments and the random stream travel in the checkpoint.
#[test]
fn conditional_gan_resumes_where_it_stopped() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    let split = Digits::load()?.split_images();
    let (train_set, held_out) = (split.train.head(192), split.test.head(96));
    let spec = GanSpec::conditional(8, 16, 10);
    let options = |out: &PathBuf, epochs: usize, start: Start| TrainOptions {
        epochs,
        batch_size: 32,
        lr: LR,
        weight_decay: 0.0,
        schedule: Schedule::constant(),
        clip_grad_norm: None,
        augment: false,
        label_smoothing: 0.1,
        seed: 3,
        data: "digits head".into(),
        out_dir: out.clone(),
        start,
    };
    let run = |out: &PathBuf, epochs: usize, start: Start, seed: u64| {
        device.manual_seed(seed);
        train::train(
            &spec,
            train_set.clone(),
            held_out.clone(),
            None,
            &options(out, epochs, start),
            &device,
            &mut Silent,
        )
    };
    let whole_dir = scratch("resume-whole");
    let whole = run(&whole_dir, 2, Start::New, 4)?;
    let split_dir = scratch("resume-split");
    run(&split_dir, 1, Start::New, 4)?;
    let resumed = run(&split_dir, 2, Start::Resume, 77)?;
    assert_eq!(resumed, whole);
    for name in ["generator", "discriminator"] {
        let read = |dir: &PathBuf| -> Result<HashMap<String, Vec<f32>>> {
            let file = dir.join(format!("{name}.safetensors"));
            let mut net: Box<dyn Module> = if name == "generator" {
                Box::new(spec.generator(&device)?)
            } else {
                Box::new(spec.discriminator(&device)?)
            };
            cinder::nn::checkpoint::load_tensors(&file, &net.state_dict())?;
            net.eval();
            net.state_dict()
                .into_iter()
                .filter(|(_, t)| t.dtype() == cinder::DType::F32)
                .map(|(k, t)| Ok((k, t.to_vec::<f32>()?)))
                .collect()
        };
        let (a, b) = (read(&whole_dir)?, read(&split_dir)?);
        assert!(a.len() >= 8, "{name}: {:?}", a.keys());
        for (key, value) in &a {
            assert_eq!(Some(value), b.get(key), "{name}.{key} differs after resume");
        }
    }
    assert!(split_dir.join("samples/epoch_002.png").is_file());
    for dir in [whole_dir, split_dir] {
        std::fs::remove_dir_all(dir).ok();
    }
    Ok(())
}
