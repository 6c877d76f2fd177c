//! `cinder bench`: medians of repeated runs; the machine is shared and noisy,
//! so min and max are printed too.

use std::time::{Duration, Instant};

use cinder::data::Digits;
use cinder::nn::{Adam, Module, Optimizer};
use cinder::{Device, Result, Tensor};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// GFLOP/s of square matmuls, and the digits MLP's training steps per second.
    Matmul {
        /// Square sizes to time.
        #[arg(long, value_delimiter = ',', default_values_t = vec![256, 512, 1024, 2048])]
        sizes: Vec<usize>,
        /// Timed repetitions per size (after one warm-up).
        #[arg(long, default_value_t = 7)]
        reps: usize,
    },
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Matmul { sizes, reps } => {
            let device = Device::new()?;
            println!("adapter: {} ({})", device.adapter_name(), device.backend());
            for n in sizes {
                matmul(&device, n, reps.max(1))?;
            }
            mlp_steps(&device, reps.max(1))
        }
    }
}

fn summary(times: &mut [Duration]) -> (Duration, Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[0], times[times.len() - 1])
}

fn matmul(device: &Device, n: usize, reps: usize) -> Result<()> {
    let a = Tensor::rand_seeded(device, &[n, n], -1.0, 1.0, 1)?;
    let b = Tensor::rand_seeded(device, &[n, n], -1.0, 1.0, 2)?;
    device.realize(&[a.node().clone(), b.node().clone()])?;
    let mut times = Vec::with_capacity(reps);
    for i in 0..=reps {
        device.synchronize()?;
        let t = Instant::now();
        let c = a.matmul(&b)?;
        c.realize()?;
        device.synchronize()?;
        if i > 0 {
            times.push(t.elapsed());
        }
    }
    let flops = 2.0 * (n as f64).powi(3) / 1e9;
    let (med, min, max) = summary(&mut times);
    println!(
        "matmul {n:5}x{n}x{n}: median {:7.2} GFLOP/s  (min {:7.2}, max {:7.2})  {:8.2} ms median",
        flops / med.as_secs_f64(),
        flops / max.as_secs_f64(),
        flops / min.as_secs_f64(),
        med.as_secs_f64() * 1e3
    );
    Ok(())
}

fn mlp_steps(device: &Device, reps: usize) -> Result<()> {
    let split = Digits::load()?.split();
    let model = crate::train::mlp(device)?;
    let mut opt = Adam::adamw(model.parameters(), 3e-3)?;
    let batch = 32;
    let x = Tensor::from_slice(device, &split.train.features[..batch * 64], &[batch, 64])?;
    let y = Tensor::from_slice(device, &split.train.labels[..batch], &[batch])?;
    let steps = 100;
    let mut rates = Vec::with_capacity(reps);
    for i in 0..=reps {
        let t = Instant::now();
        for _ in 0..steps {
            let loss = model.forward(&x)?.cross_entropy(&y)?;
            opt.step(&loss.backward()?)?;
            loss.item()?;
        }
        if i > 0 {
            rates.push(t.elapsed());
        }
    }
    let (med, min, max) = summary(&mut rates);
    let per = |d: Duration| steps as f64 / d.as_secs_f64();
    println!(
        "mlp 64-128-10 batch {batch} training step (forward, backward, AdamW, loss read): median {:.0} steps/s (min {:.0}, max {:.0}), {:.2} ms/step",
        per(med),
        per(max),
        per(min),
        med.as_secs_f64() * 1e3 / steps as f64
    );
    Ok(())
}
