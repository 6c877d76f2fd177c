//! Segmentation: the U-Net's shapes and names, the on-device confusion
//! counts and Dice loss against CPU counts, and a U-Net that learns scenes
//! of real digits on cinder-train's loop.

mod common;

use std::sync::Arc;

use cinder::cnn::segment::{
    confusion_counts, dice_loss, load_unet, train, Confusion, UNet, UNetSpec,
};
use cinder::data::{DigitScenes, Mnist, SceneConfig};
use cinder::nn::Module;
use cinder::train::{Schedule, Silent, Start, TrainOptions};
use cinder::Tensor;

fn small_spec() -> UNetSpec {
    UNetSpec {
        in_channels: 1,
        classes: DigitScenes::MASK_CLASSES,
        width: 8,
        depth: 2,
    }
}

#[test]
fn unet_keeps_the_image_size_and_names_its_parameters() {
    // Initialising draws seeds from the shared device's stream, which the
    // learning test below resets: not while it trains.
    let _serial = common::serial();
    let device = common::device();
    let unet = UNet::new(&device, small_spec()).unwrap();
    let x = Tensor::zeros(&device, &[2, 1, 32, 24]);
    assert_eq!(unet.forward(&x).unwrap().shape(), [2, 11, 32, 24]);
    let names: Vec<String> = unet.state_dict().into_iter().map(|(n, _)| n).collect();
    for want in [
        "encoder.0.0.weight",
        "encoder.2.4.running_var",
        "decoder.0.up.weight",
        "decoder.1.conv.3.weight",
        "head.bias",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let err = unet
        .forward(&Tensor::zeros(&device, &[1, 1, 30, 32]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("multiples of 4"), "{err}");
}

#[test]
fn confusion_and_dice_match_cpu_counts() {
    let device = common::device();
    let (n, classes, h, w) = (3, 5, 7, 9);
    let pixels = n * h * w;
    let logits: Vec<f32> = (0..n * classes * h * w)
        .map(|i| ((i * 7919 % 1013) as f32 / 101.3).sin())
        .collect();
    let masks: Vec<i32> = (0..pixels)
        .map(|i| (i * 31 % 11 % classes) as i32)
        .collect();
    let lt = Tensor::from_slice(&device, &logits, &[n, classes, h, w]).unwrap();
    let mt = Tensor::from_slice(&device, &masks, &[n, h, w]).unwrap();
    let got = confusion_counts(&lt, &mt, classes)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();

    let at = |b: usize, c: usize, p: usize| logits[(b * classes + c) * h * w + p];
    let mut want = vec![0f32; classes * classes];
    let (mut overlap, mut prob_sum, mut truth_sum) = (
        vec![0f64; classes],
        vec![0f64; classes],
        vec![0f64; classes],
    );
    for b in 0..n {
        for p in 0..h * w {
            let truth = masks[b * h * w + p] as usize;
            let best = (0..classes)
                .max_by(|&i, &j| at(b, i, p).total_cmp(&at(b, j, p)))
                .unwrap();
            want[truth * classes + best] += 1.0;
            let z: f64 = (0..classes).map(|c| (at(b, c, p) as f64).exp()).sum();
            for c in 0..classes {
                let prob = (at(b, c, p) as f64).exp() / z;
                prob_sum[c] += prob;
                if c == truth {
                    overlap[c] += prob;
                    truth_sum[c] += 1.0;
                }
            }
        }
    }
    assert_eq!(got, want);
    let mut confusion = Confusion::new(classes);
    confusion.add(&got);
    assert_eq!(confusion.counts.iter().sum::<u64>(), pixels as u64);

    let dice_want = 1.0
        - (0..classes)
            .map(|c| (2.0 * overlap[c] + 1.0) / (prob_sum[c] + truth_sum[c] + 1.0))
            .sum::<f64>()
            / classes as f64;
    let dice = dice_loss(&lt, &mt, classes).unwrap().item().unwrap() as f64;
    assert!((dice - dice_want).abs() < 1e-5, "{dice} vs {dice_want}");
}

#[test]
fn unet_learns_scenes_of_real_digits() {
    let _serial = common::serial();
    let device = common::device();
    let split = Mnist::bundled().unwrap();
    let config = SceneConfig {
        canvas: 32,
        digits: (1, 2),
        size: (14.0, 22.0),
        ..SceneConfig::default()
    };
    let scenes = |digits, len, seed| {
        DigitScenes::with_config(Arc::new(digits), len, seed, config.clone()).unwrap()
    };
    let train_scenes = scenes(split.train, 96, 1);
    let held_out = scenes(split.test, 32, 2);
    let out = common::scratch("segment");
    let options = TrainOptions {
        epochs: 4,
        batch_size: 8,
        lr: 5e-3,
        weight_decay: 0.0,
        schedule: Schedule::constant(),
        clip_grad_norm: None,
        augment: false,
        label_smoothing: 0.0,
        seed: 5,
        data: "scenes".into(),
        out_dir: out.clone(),
        start: Start::New,
    };
    device.manual_seed(9);
    let history = train(
        &small_spec(),
        Arc::new(train_scenes),
        Arc::new(held_out),
        0.5,
        &options,
        &device,
        &mut Silent,
    )
    .unwrap();
    let column = |name: &str| -> Vec<f64> {
        history
            .rows
            .iter()
            .map(|r| r.get(name).unwrap_or(f64::NAN))
            .collect()
    };
    let (loss, iou) = (column("train_loss"), column("mean_iou"));
    // 48 steps find the ink; telling the digits apart takes the full run.
    assert!(loss[3] < 0.85 * loss[0], "training loss {loss:?}");
    assert!(iou[3] > iou[0], "held-out mean IoU {iou:?}");
    assert!(column("iou_background")[3] > 0.85);
    assert!(out.join("predictions/epoch_004.png").is_file());
    let unet = load_unet(&out.join("model.safetensors"), &device).unwrap();
    assert_eq!(unet.spec, small_spec());
    let _ = std::fs::remove_dir_all(&out);
}
