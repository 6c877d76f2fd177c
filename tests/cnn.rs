//! The convolutional classifier and its training loop: the loss falls on
//! real digits, a resumed run ends exactly where an uninterrupted one does,
//! and a diverging run stops without overwriting its last checkpoint.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use cinder::cnn::models::ModelSpec;
use cinder::cnn::report::parse_metrics_csv;
use cinder::cnn::train::{evaluate, fit, RunFiles, Schedule, Silent, TrainConfig};
use cinder::data::{Digits, InMemoryDataset};
use cinder::nn::checkpoint::read_metadata;
use cinder::nn::Module;
use cinder::Result;

fn subset(data: &InMemoryDataset, rows: usize) -> InMemoryDataset {
    let per = data.feature_len();
    InMemoryDataset {
        features: data.features[..rows * per].to_vec(),
        feature_shape: data.feature_shape.clone(),
        labels: data.labels[..rows].to_vec(),
        num_classes: data.num_classes,
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cinder-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(out: PathBuf, epochs: usize, lr: f32) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        lr,
        weight_decay: 0.01,
        schedule: Schedule::Cosine { min_lr: 0.0 },
        clip_grad_norm: Some(5.0),
        seed: 3,
        out_dir: out,
    }
}

/// Builds the digits LeNet with a fixed initialisation.
fn lenet(seed: u64) -> Result<(Box<dyn Module>, ModelSpec)> {
    let device = common::device();
    device.manual_seed(seed);
    let spec = ModelSpec::lenet(8, 8, 10);
    Ok((spec.build(&device)?, spec))
}

#[test]
fn lenet_learns_digits_and_resume_loses_nothing() -> Result<()> {
    let _serial = common::serial();
    let split = Digits::load()?.split_images();
    let train = Arc::new(subset(&split.train, 320));
    let test = subset(&split.test, 96);

    // Three epochs in one go.
    let whole_dir = scratch("whole");
    let (mut whole, spec) = lenet(7)?;
    let before = evaluate(whole.as_mut(), &test, 64)?;
    let history = fit(
        whole.as_mut(),
        &spec,
        train.clone(),
        &test,
        &config(whole_dir.clone(), 3, 3e-3),
        false,
        &mut Silent,
    )?;
    assert_eq!(history.len(), 3);
    assert!(
        history[2].test_loss < 0.8 * before.loss,
        "held-out loss did not fall: {} -> {:?}",
        before.loss,
        history.iter().map(|r| r.test_loss).collect::<Vec<_>>()
    );
    assert!(history[2].train_loss < history[0].train_loss);

    // One epoch, then a fresh model resumed for the other two.
    let split_dir = scratch("resumed");
    let (mut first, _) = lenet(7)?;
    fit(
        first.as_mut(),
        &spec,
        train.clone(),
        &test,
        &config(split_dir.clone(), 1, 3e-3),
        false,
        &mut Silent,
    )?;
    let (mut resumed, _) = lenet(99)?;
    let rest = fit(
        resumed.as_mut(),
        &spec,
        train,
        &test,
        &config(split_dir.clone(), 3, 3e-3),
        true,
        &mut Silent,
    )?;
    // Same losses to the bit, and the same weights.
    let strip = |h: &[cinder::cnn::report::EpochRecord]| -> Vec<(f32, f32, f32)> {
        h.iter()
            .map(|r| (r.lr, r.train_loss, r.test_loss))
            .collect()
    };
    assert_eq!(strip(&rest), strip(&history));
    for ((name, a), (_, b)) in whole.state_dict().iter().zip(resumed.state_dict()) {
        assert_eq!(
            a.to_vec::<f32>()?,
            b.to_vec::<f32>()?,
            "{name} differs after resume"
        );
    }

    // The run's files.
    let files = RunFiles::in_dir(&split_dir);
    let csv = std::fs::read_to_string(&files.metrics)
        .map_err(|e| cinder::Error::io(&files.metrics, e))?;
    assert_eq!(parse_metrics_csv(&csv)?.len(), 3);
    let png = std::fs::read(&files.curves).map_err(|e| cinder::Error::io(&files.curves, e))?;
    assert_eq!(&png[1..4], b"PNG");
    let confusion = std::fs::read_to_string(&files.confusion)
        .map_err(|e| cinder::Error::io(&files.confusion, e))?;
    assert!(confusion.contains("recall"), "{confusion}");
    assert_eq!(
        ModelSpec::from_metadata(&read_metadata(&files.model)?)?,
        spec
    );
    let _ = std::fs::remove_dir_all(whole_dir);
    let _ = std::fs::remove_dir_all(split_dir);
    Ok(())
}

#[test]
fn diverging_run_stops_and_keeps_its_checkpoint() -> Result<()> {
    let _serial = common::serial();
    let split = Digits::load()?.split_images();
    let train = Arc::new(subset(&split.train, 64));
    let test = subset(&split.test, 32);
    let dir = scratch("diverge");
    let (mut model, spec) = lenet(5)?;
    fit(
        model.as_mut(),
        &spec,
        train.clone(),
        &test,
        &config(dir.clone(), 1, 1e-3),
        false,
        &mut Silent,
    )?;
    let files = RunFiles::in_dir(&dir);
    let saved =
        std::fs::read(&files.checkpoint).map_err(|e| cinder::Error::io(&files.checkpoint, e))?;
    // A learning rate this large sends the loss to infinity within epoch 2.
    let mut cfg = config(dir.clone(), 2, 1e30);
    cfg.clip_grad_norm = None;
    cfg.schedule = Schedule::Constant;
    let err = fit(model.as_mut(), &spec, train, &test, &cfg, true, &mut Silent)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("epoch 2") && err.contains("--lr"), "{err}");
    let after =
        std::fs::read(&files.checkpoint).map_err(|e| cinder::Error::io(&files.checkpoint, e))?;
    assert!(saved == after, "the last good checkpoint was overwritten");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[test]
fn resume_without_a_checkpoint_says_so() -> Result<()> {
    let _serial = common::serial();
    let split = Digits::load()?.split_images();
    let dir = scratch("nothing");
    let (mut model, spec) = lenet(1)?;
    let err = fit(
        model.as_mut(),
        &spec,
        Arc::new(subset(&split.train, 32)),
        &subset(&split.test, 32),
        &config(dir, 1, 1e-3),
        true,
        &mut Silent,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("no checkpoint"), "{err}");
    Ok(())
}

/// Images whose class is their brightest colour channel, under noise.
fn colour_batch(
    step: usize,
    batch: usize,
    size: usize,
) -> Result<(cinder::Tensor, cinder::Tensor)> {
    let device = common::device();
    let mut state = 0x9E37_79B9u64.wrapping_mul(step as u64 + 1);
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32) / (1u64 << 24) as f32
    };
    let mut xs = Vec::with_capacity(batch * 3 * size * size);
    let mut ys = Vec::with_capacity(batch);
    for i in 0..batch {
        let class = (i + step) % 3;
        ys.push(class as i32);
        for c in 0..3 {
            for _ in 0..size * size {
                let base = if c == class { 0.6 } else { 0.2 };
                xs.push(base + 0.4 * next());
            }
        }
    }
    Ok((
        cinder::Tensor::from_slice(&device, &xs, &[batch, 3, size, size])?,
        cinder::Tensor::from_slice(&device, &ys, &[batch])?,
    ))
}

#[test]
fn resnet_names_and_learns_colours() -> Result<()> {
    use cinder::nn::{Adam, Optimizer};
    let _serial = common::serial();
    let device = common::device();
    device.manual_seed(21);
    let spec = ModelSpec::resnet(16, 16, 3);
    let mut model = spec.build(&device)?;
    let names: Vec<String> = model.state_dict().into_iter().map(|(n, _)| n).collect();
    for want in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.num_batches_tracked",
        "layer2.0.downsample.0.weight",
        "layer3.0.downsample.1.running_mean",
        "fc.bias",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "missing {want} in {names:?}"
        );
    }
    assert!(!names.iter().any(|n| n.starts_with("layer1.0.downsample")));
    let mut opt = Adam::new(model.parameters(), 1e-2)?;
    let mut losses = Vec::new();
    for step in 0..25 {
        let (x, y) = colour_batch(step, 12, 16)?;
        let loss = model.forward(&x)?.cross_entropy(&y)?;
        opt.step(&loss.backward()?)?;
        losses.push(loss.item()?);
    }
    let first: f32 = losses[..5].iter().sum::<f32>() / 5.0;
    let last: f32 = losses[20..].iter().sum::<f32>() / 5.0;
    assert!(last < 0.5 * first, "ResNet loss did not fall: {losses:?}");
    let tracked = model
        .state_dict()
        .into_iter()
        .find(|(n, _)| n == "bn1.num_batches_tracked")
        .map(|(_, t)| t)
        .ok_or_else(|| cinder::Error::invalid("test", "no bn1.num_batches_tracked"))?;
    assert_eq!(tracked.to_vec::<i32>()?, vec![25]);
    model.eval();
    let (x, y) = colour_batch(99, 12, 16)?;
    let predicted = model.forward(&x)?.argmax(-1, false)?.to_vec::<i32>()?;
    let correct = predicted
        .iter()
        .zip(y.to_vec::<i32>()?)
        .filter(|(p, t)| **p == *t)
        .count();
    assert!(correct >= 10, "eval mode classified {correct} of 12");
    Ok(())
}
