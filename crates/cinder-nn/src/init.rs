//! Seeded initialisers with PyTorch's formulas (`torch.nn.init`). Random
//! numbers are generated on the GPU and the result is realized at once, so a
//! parameter is a plain buffer that optimizers can update in place.

use cinder_tensor::{Device, Error, Result, Tensor};

/// Fan-in and fan-out of a weight: `[out, in, k...]` as PyTorch computes them.
pub fn fans(shape: &[usize]) -> Result<(usize, usize)> {
    if shape.len() < 2 {
        return Err(Error::invalid(
            "init",
            format!("fan in/out needs at least 2 dims, got {shape:?}"),
        ));
    }
    let receptive: usize = shape[2..].iter().product();
    Ok((shape[1] * receptive, shape[0] * receptive))
}

/// The recommended gain for a nonlinearity (`torch.nn.init.calculate_gain`).
pub fn gain(nonlinearity: &str, param: Option<f32>) -> Result<f32> {
    Ok(match nonlinearity {
        "linear" | "conv1d" | "conv2d" | "conv3d" | "sigmoid" | "identity" => 1.0,
        "tanh" => 5.0 / 3.0,
        "relu" => 2f32.sqrt(),
        "leaky_relu" => {
            let slope = param.unwrap_or(0.01);
            (2.0 / (1.0 + slope * slope)).sqrt()
        }
        "selu" => 0.75,
        other => {
            return Err(Error::invalid(
                "init",
                format!("unknown nonlinearity {other:?}"),
            ))
        }
    })
}

fn realized(t: Tensor) -> Result<Tensor> {
    t.realize()?;
    Ok(t.detach())
}

pub fn uniform(device: &Device, shape: &[usize], low: f32, high: f32) -> Result<Tensor> {
    realized(Tensor::rand_seeded(
        device,
        shape,
        low,
        high,
        device.next_seed(),
    )?)
}

pub fn normal(device: &Device, shape: &[usize], mean: f32, std: f32) -> Result<Tensor> {
    realized(Tensor::randn_seeded(
        device,
        shape,
        mean,
        std,
        device.next_seed(),
    )?)
}

pub fn zeros(device: &Device, shape: &[usize]) -> Result<Tensor> {
    realized(Tensor::zeros(device, shape))
}

pub fn ones(device: &Device, shape: &[usize]) -> Result<Tensor> {
    realized(Tensor::ones(device, shape))
}

/// `kaiming_uniform_(a, mode='fan_in', nonlinearity='leaky_relu')`.
pub fn kaiming_uniform(device: &Device, shape: &[usize], a: f32) -> Result<Tensor> {
    let (fan_in, _) = fans(shape)?;
    let bound = gain("leaky_relu", Some(a))? * (3.0 / fan_in.max(1) as f32).sqrt();
    uniform(device, shape, -bound, bound)
}

/// `kaiming_normal_(mode='fan_in', nonlinearity='relu')`.
pub fn kaiming_normal(device: &Device, shape: &[usize]) -> Result<Tensor> {
    let (fan_in, _) = fans(shape)?;
    normal(
        device,
        shape,
        0.0,
        gain("relu", None)? / (fan_in.max(1) as f32).sqrt(),
    )
}

pub fn xavier_uniform(device: &Device, shape: &[usize], gain: f32) -> Result<Tensor> {
    let (fan_in, fan_out) = fans(shape)?;
    let bound = gain * (6.0 / (fan_in + fan_out).max(1) as f32).sqrt();
    uniform(device, shape, -bound, bound)
}

pub fn xavier_normal(device: &Device, shape: &[usize], gain: f32) -> Result<Tensor> {
    let (fan_in, fan_out) = fans(shape)?;
    normal(
        device,
        shape,
        0.0,
        gain * (2.0 / (fan_in + fan_out).max(1) as f32).sqrt(),
    )
}
