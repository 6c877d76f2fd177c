//! Trains a 64-128-10 multilayer perceptron on the bundled handwritten digits
//! and reports accuracy on the held-out split.
//!
//!     cargo run --release --example digits_mlp

use std::sync::Arc;
use std::time::Instant;

use cinder::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};

fn main() -> Result<()> {
    let device = Device::new()?;
    device.manual_seed(0);
    println!("adapter: {} ({})", device.adapter_name(), device.backend());

    let split = Digits::load()?.split();
    let train = DataLoader::new(Arc::new(split.train), 32, true, 0)?;
    let test = split.test;

    let model = Sequential::new()
        .add(Linear::new(&device, 64, 128, true)?)
        .add(ReLU)
        .add(Linear::new(&device, 128, 10, true)?);
    let mut opt = Adam::adamw(model.parameters(), 3e-3)?;

    let epochs = 20;
    let bar = ProgressBar::new((epochs * train.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {per_sec}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    for epoch in 0..epochs {
        for batch in train.epoch(epoch) {
            let (x, y) = batch.to_tensors(&device)?;
            let loss = model.forward(&x)?.cross_entropy(&y)?;
            opt.step(&loss.backward()?)?;
            bar.set_message(format!("epoch {epoch}  loss {:.4}", loss.item()?));
            bar.inc(1);
        }
    }
    bar.finish();

    let _no_grad = cinder::no_grad();
    let x = Tensor::from_slice(&device, &test.features, &[test.len(), 64])?;
    let predicted = model.forward(&x)?.argmax(-1, false)?.to_vec::<i32>()?;
    let correct = predicted
        .iter()
        .zip(&test.labels)
        .filter(|(p, t)| p == t)
        .count();
    println!(
        "test accuracy {:.2}% ({correct}/{}) after {:.1} s of training",
        100.0 * correct as f64 / test.len() as f64,
        test.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
