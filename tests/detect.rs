//! Detection: the detector's shapes and names, the focal loss against a CPU
//! reference, decoding (peaks, top-k on the device, per-class suppression)
//! on a hand-made output map, and a detector that learns scenes of real
//! digits on cinder-train's loop.

mod common;

use std::sync::Arc;

use cinder::cnn::average_precision::Detection;
use cinder::cnn::detect::{
    candidates, detections, focal_loss, load_detector, train, DetectLoss, Detector, DetectorSpec,
};
use cinder::data::{DigitScenes, Mnist, SceneConfig};
use cinder::nn::Module;
use cinder::train::{Schedule, Silent, Start, TrainOptions};
use cinder::Tensor;

fn small_spec() -> DetectorSpec {
    DetectorSpec {
        in_channels: 1,
        classes: 10,
        width: 8,
    }
}

#[test]
fn detector_maps_at_stride_four_and_names_its_parameters() {
    // Initialising draws seeds from the shared device's stream, which the
    // learning test below resets: not while it trains.
    let _serial = common::serial();
    let device = common::device();
    let detector = Detector::new(&device, small_spec()).unwrap();
    let x = Tensor::zeros(&device, &[2, 1, 32, 24]);
    assert_eq!(detector.forward(&x).unwrap().shape(), [2, 14, 8, 6]);
    let names: Vec<String> = detector.state_dict().into_iter().map(|(n, _)| n).collect();
    for want in [
        "down.0.0.0.weight",
        "down.2.1.1.running_mean",
        "lateral.bias",
        "head.0.weight",
        "out.bias",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let err = detector
        .forward(&Tensor::zeros(&device, &[1, 1, 28, 32]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("multiples of 8"), "{err}");
}

#[test]
fn focal_loss_matches_the_cpu() {
    let device = common::device();
    let n = 2 * 3 * 5 * 7;
    let logits: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 / 12.0) - 4.0)
        .collect();
    let target: Vec<f32> = (0..n)
        .map(|i| match i % 13 {
            0 => 1.0,
            1..=4 => (i % 7) as f32 / 7.0,
            _ => 0.0,
        })
        .collect();
    let centres = target.iter().filter(|&&t| t == 1.0).count();
    let mut want = 0f64;
    for (&x, &y) in logits.iter().zip(&target) {
        let p = 1.0 / (1.0 + (-(x as f64)).exp());
        want -= if y == 1.0 {
            (1.0 - p).powi(2) * p.ln()
        } else {
            (1.0 - y as f64).powi(4) * p.powi(2) * (1.0 - p).ln()
        };
    }
    want /= centres as f64;
    let shape = [2, 3, 5, 7];
    let got = focal_loss(
        &Tensor::from_slice(&device, &logits, &shape).unwrap(),
        &Tensor::from_slice(&device, &target, &shape).unwrap(),
        centres,
    )
    .unwrap()
    .item()
    .unwrap() as f64;
    assert!((got - want).abs() < 1e-4 * want.abs(), "{got} vs {want}");
}

/// The raw box value whose softplus is `d` cells.
fn raw(d: f32) -> f32 {
    (d.exp() - 1.0).ln()
}

#[test]
fn decoding_keeps_peaks_tops_and_suppresses_per_class() {
    let device = common::device();
    let (classes, h, w) = (3, 4, 4);
    let plane = h * w;
    let mut out = vec![-6.0f32; (classes + 4) * plane];
    for c in 0..4 {
        for cell in 0..plane {
            out[(classes + c) * plane + cell] = raw(1.0);
        }
    }
    let mut peak = |class: usize, y: usize, x: usize, logit: f32, sides: [f32; 4]| {
        out[class * plane + y * w + x] = logit;
        for (c, d) in sides.into_iter().enumerate() {
            out[(classes + c) * plane + y * w + x] = raw(d);
        }
    };
    // Class 1 at cell (y 1, x 2), centre (10, 6): box [2, 2, 18, 14].
    peak(1, 1, 2, 2.0, [2.0, 1.0, 2.0, 2.0]);
    // A weaker neighbour of the same class is no peak.
    peak(1, 1, 1, 1.5, [1.0, 1.0, 1.0, 1.0]);
    // Class 0 beside it: its own class's peak, kept though it overlaps.
    peak(0, 1, 3, 0.5, [3.0, 1.0, 1.0, 2.0]);
    // Class 1 again at (3, 3), centre (14, 14), drawing nearly the first
    // box (IoU above 0.5): suppressed.
    peak(1, 3, 3, 1.0, [3.0, 3.0, 1.0, 0.25]);
    // Class 2 at (3, 0), centre (2, 14), too weak to be shown.
    peak(2, 3, 0, -2.0, [0.5, 0.5, 0.5, 0.5]);
    let t = Tensor::from_slice(&device, &out, &[1, classes + 4, h, w]).unwrap();
    let found = candidates(&t, classes, 5).unwrap();
    assert_eq!(found.scores.shape(), [1, 5]);
    assert_eq!(found.boxes.shape(), [1, 5, 4]);
    let got = detections(&found, 0.3, 0.5).unwrap();
    let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
    let want = [
        (1, sigmoid(2.0), [2.0, 2.0, 18.0, 14.0]),
        (0, sigmoid(0.5), [2.0, 2.0, 18.0, 14.0]),
    ];
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].len(), want.len(), "{:?}", got[0]);
    for (d, (class, score, bbox)) in got[0].iter().zip(want) {
        let Detection {
            class: c,
            score: s,
            bbox: b,
        } = *d;
        assert_eq!(c, class, "{d:?}");
        assert!((s - score).abs() < 1e-5, "{d:?}");
        for (p, q) in b.iter().zip(bbox) {
            assert!((p - q).abs() < 1e-3, "{d:?} vs {bbox:?}");
        }
    }
}

#[test]
fn detector_learns_scenes_of_real_digits() {
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
    let out = common::scratch("detect");
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
        DetectLoss::default(),
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
    let (loss, map50) = (column("train_loss"), column("map50"));
    assert!(loss[3] < 0.7 * loss[0], "training loss {loss:?}");
    assert!(map50[3] > map50[0], "held-out mAP@0.5 {map50:?}");
    assert!(out.join("predictions/epoch_004.png").is_file());
    let detector = load_detector(&out.join("model.safetensors"), &device).unwrap();
    assert_eq!(detector.spec, small_spec());
    let _ = std::fs::remove_dir_all(&out);
}
