//! `cinder train mlp`: the 64-128-10 perceptron on the bundled digits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use cinder::data::{DataLoader, Digits};
use cinder::nn::{Adam, Linear, Module, Optimizer, ReLU, Sequential};
use cinder::{Device, Result, Tensor};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Subcommand)]
pub enum TrainCommand {
    /// A 64-128-10 multilayer perceptron on the bundled 8x8 handwritten digits.
    Mlp {
        #[arg(long, default_value_t = 20)]
        epochs: usize,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// AdamW learning rate.
        #[arg(long, default_value_t = 3e-3)]
        lr: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where to write the trained weights (safetensors, PyTorch names).
        #[arg(long, default_value = "runs/mlp")]
        out: PathBuf,
    },
    /// A convolutional network (the LeNet-style one, or --arch resnet) on the
    /// bundled digits (or MNIST with --mnist DIR), with checkpoints, curves
    /// and a confusion matrix.
    Cnn(crate::cnn::TrainCnn),
}

pub fn run(cmd: TrainCommand) -> Result<()> {
    match cmd {
        TrainCommand::Mlp {
            epochs,
            batch_size,
            lr,
            seed,
            out,
        } => train_mlp(epochs, batch_size, lr, seed, &out),
        TrainCommand::Cnn(args) => crate::cnn::train(args),
    }
}

pub fn mlp(device: &Device) -> Result<Sequential> {
    Ok(Sequential::new()
        .add(Linear::new(device, 64, 128, true)?)
        .add(ReLU)
        .add(Linear::new(device, 128, 10, true)?))
}

fn train_mlp(
    epochs: usize,
    batch_size: usize,
    lr: f32,
    seed: u64,
    out: &std::path::Path,
) -> Result<()> {
    let device = Device::new()?;
    device.manual_seed(seed);
    println!("adapter: {} ({})", device.adapter_name(), device.backend());
    let split = Digits::load()?.split();
    println!(
        "digits: {} train, {} held-out test (fixed seeded split)",
        split.train.len(),
        split.test.len()
    );
    let loader = DataLoader::new(Arc::new(split.train), batch_size, true, seed)?;
    let model = mlp(&device)?;
    let mut opt = Adam::adamw(model.parameters(), f64::from(lr))?;

    let bar = ProgressBar::new((epochs * loader.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40.cyan/blue} {pos}/{len} steps [{elapsed_precise}] {per_sec} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let mut samples = 0usize;
    for epoch in 0..epochs {
        let mut sum = 0.0;
        let mut n = 0;
        for batch in loader.epoch(epoch) {
            let (x, y) = batch.to_tensors(&device)?;
            let loss = model.forward(&x)?.cross_entropy(&y)?;
            opt.step(&loss.backward()?)?;
            let l = loss.item()?;
            if !l.is_finite() {
                bar.abandon();
                return Err(cinder::Error::invalid(
                    "train",
                    format!("loss became {l} in epoch {epoch}; lower --lr"),
                ));
            }
            sum += l;
            n += 1;
            samples += batch.len();
            bar.inc(1);
            let rate = samples as f64 / start.elapsed().as_secs_f64();
            bar.set_message(format!(
                "epoch {epoch} loss {:.4} {rate:.0} samples/s",
                sum / n as f32
            ));
        }
    }
    bar.finish();
    let train_time = start.elapsed().as_secs_f64();

    let _no_grad = cinder::no_grad();
    let test = &split.test;
    let x = Tensor::from_slice(&device, &test.features, &[test.len(), 64])?;
    let predicted = model.forward(&x)?.argmax(-1, false)?.to_vec::<i32>()?;
    let correct = predicted
        .iter()
        .zip(&test.labels)
        .filter(|(p, t)| p == t)
        .count();
    println!(
        "test accuracy: {:.2}% ({correct}/{}); trained {epochs} epochs in {train_time:.1} s ({:.0} samples/s)",
        100.0 * correct as f64 / test.len() as f64,
        test.len(),
        samples as f64 / train_time
    );
    let path = out.join("mlp.safetensors");
    cinder::nn::save(&path, &model)?;
    println!("weights: {}", path.display());
    Ok(())
}
