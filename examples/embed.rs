//! Embedding cinder in an application: open a device, train a small classifier
//! on data the program makes itself, save a checkpoint, load it into a fresh
//! model and predict.
//!
//!     cargo run --release --example embed

use cinder::nn::{Adam, Linear, Module, Optimizer, ReLU, Sequential};
use cinder::{Device, Tensor};

fn main() {
    // Without a GPU adapter this fails with an error that says how to install one.
    let device = match Device::new() {
        Ok(device) => device,
        Err(e) => {
            eprintln!("no device: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = run(&device) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// 4 inputs -> 16 hidden units -> 3 class scores.
fn model(device: &Device) -> cinder::Result<Sequential> {
    Ok(Sequential::new()
        .add(Linear::new(device, 4, 16, true)?)
        .add(ReLU)
        .add(Linear::new(device, 16, 3, true)?))
}

/// `n` points in [-1, 1)^4 from a fixed xorshift stream; the label of a point is
/// which of its first three coordinates is largest (the fourth is noise).
fn dataset(n: usize, seed: u32) -> (Vec<f32>, Vec<i32>) {
    let mut state = seed.max(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
    };
    let mut points = Vec::with_capacity(n * 4);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let p = [next(), next(), next(), next()];
        let mut label = 0;
        for c in 1..3 {
            if p[c] > p[label] {
                label = c;
            }
        }
        points.extend_from_slice(&p);
        labels.push(label as i32);
    }
    (points, labels)
}

fn run(device: &Device) -> cinder::Result<()> {
    println!("adapter: {} ({})", device.adapter_name(), device.backend());
    device.manual_seed(0);

    let n = 256;
    let (points, labels) = dataset(n, 1);
    let x = Tensor::from_slice(device, &points, &[n, 4])?;
    let y = Tensor::from_slice(device, &labels, &[n])?;

    let net = model(device)?;
    let mut opt = Adam::new(net.parameters(), 1e-2)?;
    let steps = 200;
    for step in 0..steps {
        let loss = net.forward(&x)?.cross_entropy(&y)?;
        // One submit: forward, backward and every parameter's update.
        opt.step(&loss.backward()?)?;
        if step % 50 == 0 || step == steps - 1 {
            // Reading a value is the only point where the program waits for the GPU.
            println!("step {step:3}  loss {:.4}", loss.item()?);
        }
    }

    let path =
        std::env::temp_dir().join(format!("cinder-embed-{}.safetensors", std::process::id()));
    cinder::nn::save(&path, &net)?;
    println!("saved {}", path.display());

    let restored = model(device)?;
    cinder::nn::load(&path, &restored)?;
    let _ = std::fs::remove_file(&path);

    // Inference: no autodiff bookkeeping while the guard is alive.
    let _no_grad = cinder::no_grad();
    let (test_points, test_labels) = dataset(8, 2);
    let test_x = Tensor::from_slice(device, &test_points, &[8, 4])?;
    let predicted = restored
        .forward(&test_x)?
        .argmax(-1, false)?
        .to_vec::<i32>()?;
    for (i, (p, want)) in predicted.iter().zip(&test_labels).enumerate() {
        let point = &test_points[i * 4..(i + 1) * 4];
        println!("{point:5.2?} -> class {p} (rule says {want})");
    }
    Ok(())
}
