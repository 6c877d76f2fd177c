//! Trains a 64-128-10 multilayer perceptron on the bundled handwritten digits
//! and reports accuracy on the held-out split: the same loop as
//! `cinder train mlp`, with progress bars, `metrics.csv`, `curves.png` and a
//! checkpoint in `runs/digits_mlp`.
//!
//!     cargo run --release --example digits_mlp

use std::time::Instant;

use cinder::cnn::models::ModelSpec;
use cinder::cnn::train::{train, TrainOptions};
use cinder::prelude::*;
use cinder::train::{Progress, Schedule, Start};

fn main() -> Result<()> {
    let device = Device::new()?;
    device.manual_seed(0);
    println!("adapter: {} ({})", device.adapter_name(), device.backend());

    // The MLP flattens each [1, 8, 8] image into 64 features.
    let split = Digits::load()?.split_images();
    let spec = ModelSpec::mlp(8, 8, 128, 10);
    let options = TrainOptions {
        epochs: 20,
        batch_size: 32,
        lr: 3e-3,
        weight_decay: 0.01,
        schedule: Schedule::constant(),
        clip_grad_norm: None,
        augment: false,
        label_smoothing: 0.0,
        seed: 0,
        data: "digits".into(),
        out_dir: "runs/digits_mlp".into(),
        start: Start::Overwrite,
    };
    let start = Instant::now();
    let (_history, evaluation) = train(&spec, split, &options, &device, &mut Progress::new())?;
    println!(
        "test accuracy {:.2}% after {:.1} s of training",
        100.0 * evaluation.accuracy,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
