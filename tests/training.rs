//! The first network: an MLP on the bundled digits learns, and seeded training
//! repeats bit for bit.

mod common;

use std::sync::Arc;

use cinder::data::{DataLoader, Digits};
use cinder::nn::{Adam, Linear, Module, Optimizer, ReLU, Sequential};
use cinder::{Device, Result};

fn mlp(device: &Device) -> Result<Sequential> {
    Ok(Sequential::new()
        .add(Linear::new(device, 64, 128, true)?)
        .add(ReLU)
        .add(Linear::new(device, 128, 10, true)?))
}

/// Losses of `steps` seeded training steps on the digits.
fn train(device: &Device, seed: u64, steps: usize) -> Result<Vec<f32>> {
    // The seed stream is per device (like torch.manual_seed), and tests in one
    // binary share the device on parallel threads: one run at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    device.manual_seed(seed);
    let split = Digits::load()?.split();
    let loader = DataLoader::new(Arc::new(split.train), 32, true, seed)?;
    let model = mlp(device)?;
    let mut opt = Adam::adamw(model.parameters(), 3e-3)?;
    let mut losses = Vec::new();
    'outer: for epoch in 0.. {
        for batch in loader.epoch(epoch) {
            let (x, y) = batch.to_tensors(device)?;
            let loss = model.forward(&x)?.cross_entropy(&y)?;
            opt.step(&loss.backward()?)?;
            losses.push(loss.item()?);
            if losses.len() == steps {
                break 'outer;
            }
        }
    }
    Ok(losses)
}

#[test]
fn mlp_loss_falls_on_real_digits() -> Result<()> {
    let device = common::device();
    let losses = train(&device, 3, 120)?;
    let first: f32 = losses[..10].iter().sum::<f32>() / 10.0;
    let last: f32 = losses[110..].iter().sum::<f32>() / 10.0;
    assert!(
        first > 1.5,
        "an untrained 10-class model starts near ln(10): {first}"
    );
    assert!(last < 0.5 * first, "loss fell from {first} to only {last}");
    Ok(())
}

#[test]
fn seeded_training_is_bit_identical() -> Result<()> {
    let device = common::device();
    let a = train(&device, 11, 60)?;
    let b = train(&device, 11, 60)?;
    let a_bits: Vec<u32> = a.iter().map(|x| x.to_bits()).collect();
    let b_bits: Vec<u32> = b.iter().map(|x| x.to_bits()).collect();
    assert_eq!(a_bits, b_bits);
    let c = train(&device, 12, 60)?;
    assert_ne!(a, c, "a different seed must give a different run");
    Ok(())
}
