//! The convolutional classifier on cinder-train's loop: the loss falls on
//! real digits, a resumed run ends exactly where an uninterrupted one does,
//! and a diverging run stops without overwriting its last checkpoint.

mod common;

use std::path::PathBuf;

use cinder::cnn::models::ModelSpec;
use cinder::cnn::train::{load_model, train, TrainOptions};
use cinder::data::{Digits, Split};
use cinder::nn::checkpoint::read_metadata;
use cinder::train::{History, RunDir, Schedule, Silent, Start};
use cinder::Result;

fn digits(train: usize, test: usize) -> Result<Split> {
    let split = Digits::load()?.split_images();
    Ok(Split {
        train: split.train.head(train),
        test: split.test.head(test),
    })
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cinder-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn options(out: PathBuf, epochs: usize, lr: f64, start: Start) -> TrainOptions {
    TrainOptions {
        epochs,
        batch_size: 32,
        lr,
        weight_decay: 0.01,
        schedule: Schedule::cosine(0.0),
        clip_grad_norm: Some(5.0),
        augment: false,
        label_smoothing: 0.0,
        seed: 3,
        data: "digits subset".into(),
        out_dir: out,
        start,
    }
}

/// Trains the digits LeNet from a fixed initialisation (`init` seeds it).
fn run(split: Split, opts: &TrainOptions, init: u64) -> Result<History> {
    let device = common::device();
    device.manual_seed(init);
    let spec = ModelSpec::lenet(8, 8, 10);
    Ok(train(&spec, split, opts, &device, &mut Silent)?.0)
}

fn column(h: &History, name: &str) -> Vec<f64> {
    h.rows
        .iter()
        .map(|r| r.get(name).unwrap_or(f64::NAN))
        .collect()
}

/// With augmentation: a resume must also replay each epoch's jitter.
fn augmented(out: PathBuf, epochs: usize, start: Start) -> TrainOptions {
    TrainOptions {
        augment: true,
        ..options(out, epochs, 5e-3, start)
    }
}

#[test]
fn lenet_learns_digits_and_resume_loses_nothing() -> Result<()> {
    let _serial = common::serial();
    // Three epochs in one go.
    let whole_dir = scratch("whole");
    let history = run(
        digits(320, 96)?,
        &augmented(whole_dir.clone(), 3, Start::New),
        7,
    )?;
    assert_eq!(history.rows.len(), 3);
    let test_loss = column(&history, "test_loss");
    assert!(
        test_loss[2] < 0.8 * test_loss[0],
        "held-out loss did not fall: {test_loss:?}"
    );
    let train_loss = column(&history, "train_loss");
    assert!(train_loss[2] < train_loss[0]);

    // One epoch, then the run resumed for the other two (from another
    // initialisation, which the checkpoint replaces).
    let split_dir = scratch("resumed");
    run(
        digits(320, 96)?,
        &augmented(split_dir.clone(), 1, Start::New),
        7,
    )?;
    let rest = run(
        digits(320, 96)?,
        &augmented(split_dir.clone(), 3, Start::Resume),
        99,
    )?;
    // The same values to the bit, and the same weights.
    assert_eq!(rest, history);
    // The augmentation did change what was trained on.
    let plain_dir = scratch("plain");
    let plain = run(
        digits(320, 96)?,
        &options(plain_dir.clone(), 1, 5e-3, Start::New),
        7,
    )?;
    assert_ne!(plain.rows[0], history.rows[0]);
    let _ = std::fs::remove_dir_all(plain_dir);
    let device = common::device();
    let (_, whole) = load_model(&RunDir::new(&whole_dir).model("model"), &device)?;
    let (_, resumed) = load_model(&RunDir::new(&split_dir).model("model"), &device)?;
    for ((name, a), (_, b)) in whole.state_dict().iter().zip(resumed.state_dict()) {
        assert_eq!(
            a.to_vec::<f32>()?,
            b.to_vec::<f32>()?,
            "{name} differs after resume"
        );
    }

    // The run's files.
    let files = RunDir::new(&split_dir);
    let csv = std::fs::read(files.metrics()).map_err(|e| cinder::Error::io(files.metrics(), e))?;
    assert_eq!(History::from_csv(&csv)?.rows.len(), 3);
    let png = std::fs::read(files.curves()).map_err(|e| cinder::Error::io(files.curves(), e))?;
    assert_eq!(&png[1..4], b"PNG");
    let confusion = std::fs::read_to_string(files.dir.join("confusion.txt"))
        .map_err(|e| cinder::Error::io(files.dir.join("confusion.txt"), e))?;
    assert!(confusion.contains("recall"), "{confusion}");
    assert_eq!(
        ModelSpec::from_metadata(&read_metadata(files.model("model"))?)?,
        ModelSpec::lenet(8, 8, 10)
    );
    let settings = std::fs::read_to_string(files.settings())
        .map_err(|e| cinder::Error::io(files.settings(), e))?;
    assert!(settings.contains("resumed after epoch 1"), "{settings}");
    let _ = std::fs::remove_dir_all(whole_dir);
    let _ = std::fs::remove_dir_all(split_dir);
    Ok(())
}

#[test]
fn diverging_run_stops_and_keeps_its_checkpoint() -> Result<()> {
    let _serial = common::serial();
    let dir = scratch("diverge");
    run(
        digits(64, 32)?,
        &options(dir.clone(), 1, 1e-3, Start::New),
        5,
    )?;
    let files = RunDir::new(&dir);
    let saved =
        std::fs::read(files.checkpoint()).map_err(|e| cinder::Error::io(files.checkpoint(), e))?;
    // A learning rate this large sends the loss to infinity at once. A
    // resume must keep the run's learning rate, so this is a new run, in a
    // folder of its own: the first stays as it was.
    let other = scratch("diverge-new");
    let mut opts = options(other.clone(), 2, 1e30, Start::New);
    opts.clip_grad_norm = None;
    opts.schedule = Schedule::constant();
    let err = run(digits(64, 32)?, &opts, 5)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("`loss` became")
            && err.contains("at epoch 1, step ")
            && err.contains("nothing was saved"),
        "{err}"
    );
    assert!(!RunDir::new(&other).holds_a_run());
    let _ = std::fs::remove_dir_all(other);
    let after =
        std::fs::read(files.checkpoint()).map_err(|e| cinder::Error::io(files.checkpoint(), e))?;
    assert!(saved == after, "the last good checkpoint was overwritten");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[test]
fn resume_without_a_checkpoint_says_so() -> Result<()> {
    let _serial = common::serial();
    let dir = scratch("nothing");
    let err = run(digits(32, 32)?, &options(dir, 1, 1e-3, Start::Resume), 1)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("no run to resume"), "{err}");
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
