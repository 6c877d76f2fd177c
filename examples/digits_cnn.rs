//! Trains a small convolutional network on the bundled handwritten digits,
//! saves it, and classifies one held-out digit from the saved file.
//!
//!     cargo run --release --example digits_cnn

use std::sync::Arc;

use cinder::cnn::report::format_confusion;
use cinder::cnn::train::{evaluate, fit, Observer, Schedule, TrainConfig};
use cinder::prelude::*;

/// Prints one line per epoch; `cinder train cnn` draws progress bars instead.
struct EpochLines;

impl Observer for EpochLines {
    fn epoch_finished(&mut self, r: &cinder::cnn::report::EpochRecord) {
        println!(
            "epoch {:2}  train loss {:.4}  held-out accuracy {:.2}%  ({:.1} s)",
            r.epoch,
            r.train_loss,
            100.0 * r.test_accuracy,
            r.seconds
        );
    }
}

fn main() -> Result<()> {
    let device = Device::new()?;
    device.manual_seed(0);
    println!("adapter: {} ({})", device.adapter_name(), device.backend());

    // 1437 training and 360 held-out 8x8 images, shaped [1, 8, 8].
    let split = Digits::load()?.split_images();

    // conv 3x3 (32) - ReLU - max-pool - conv 3x3 (64) - ReLU - max-pool - 128 - 10,
    // written out here; `ModelSpec::lenet(8, 8, 10).build(&device)` makes the same.
    let same = Conv2dOptions::default().padding(1);
    let mut model = Sequential::new()
        .add(Conv2d::new(&device, 1, 32, 3, same, true)?)
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Conv2d::new(&device, 32, 64, 3, same, true)?)
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Flatten)
        .add(Linear::new(&device, 64 * 2 * 2, 128, true)?)
        .add(ReLU)
        .add(Linear::new(&device, 128, 10, true)?);

    // AdamW with a cosine schedule; a checkpoint after every epoch in runs/digits_cnn.
    let config = TrainConfig {
        epochs: 12,
        batch_size: 32,
        lr: 2e-3,
        weight_decay: 0.01,
        schedule: Schedule::Cosine { min_lr: 0.0 },
        clip_grad_norm: None,
        seed: 0,
        out_dir: "runs/digits_cnn".into(),
    };
    let spec = cinder::cnn::models::ModelSpec::lenet(8, 8, 10);
    let test = split.test;
    fit(
        &mut model,
        &spec,
        Arc::new(split.train),
        &test,
        &config,
        false,
        &mut EpochLines,
    )?;

    let result = evaluate(&mut model, &test, 360)?;
    println!("held-out accuracy: {:.2}%", 100.0 * result.accuracy);
    print!("{}", format_confusion(&result.confusion));

    // Load the saved weights into a fresh network and classify one image.
    let restored = spec.build(&device)?;
    cinder::nn::load("runs/digits_cnn/model.safetensors", restored.as_ref())?;
    let image = Tensor::from_slice(&device, &test.features[..64], &[1, 1, 8, 8])?;
    let _no_grad = no_grad();
    let probabilities = restored.forward(&image)?.softmax(-1)?.to_vec::<f32>()?;
    let (best, p) = probabilities
        .iter()
        .enumerate()
        .fold((0, 0.0f32), |b, (i, &p)| if p > b.1 { (i, p) } else { b });
    println!(
        "first held-out image: label {}, predicted {best} ({:.1}%)",
        test.labels[0],
        100.0 * p
    );
    Ok(())
}
