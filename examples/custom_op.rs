//! A kernel of one's own: a running (cumulative) sum along the last axis,
//! which cinder does not have. The forward pass is a WGSL compute shader; the
//! backward pass is built from tensor ops, one of them the new op itself.
//! The op is planned, cached and differentiated like a built-in one.
//!
//!     cargo run --release --example custom_op

use std::sync::Arc;

use cinder::tensor::{CustomKernel, CustomOp};
use cinder::{DType, Device, Error, Result, Tensor};

/// `y[.., j] = x[.., 0] + ... + x[.., j]` along the last axis.
pub struct Cumsum;

impl CustomKernel for Cumsum {
    fn name(&self) -> &str {
        "cumsum"
    }

    fn wgsl(&self) -> String {
        // Binding 0: the input; 1: the output; 2: the parameters below.
        // One invocation per row, walking its columns.
        "
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> dims: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let rows = dims[0];
    let cols = dims[1];
    let row = gid.y * 65535u * 64u + gid.x;
    if (row >= rows) { return; }
    var acc = 0.0;
    for (var j = 0u; j < cols; j++) {
        acc += x[row * cols + j];
        y[row * cols + j] = acc;
    }
}
"
        .to_string()
    }

    /// One invocation per row, 64 to a workgroup.
    fn workgroups(&self, output: &[usize], _inputs: &[&[usize]]) -> [u32; 3] {
        let groups = rows(output).div_ceil(64).max(1);
        let y = groups.div_ceil(65535);
        [groups.min(65535) as u32, y as u32, 1]
    }

    fn params(&self, output: &[usize], _inputs: &[&[usize]]) -> Vec<u32> {
        vec![rows(output) as u32, cols(output) as u32]
    }
}

impl CustomOp for Cumsum {
    fn output(&self, inputs: &[&Tensor]) -> Result<(Vec<usize>, DType)> {
        match inputs {
            [x] if x.dtype() == DType::F32 && x.dims() >= 1 => Ok((x.shape().to_vec(), DType::F32)),
            _ => Err(Error::invalid(
                "cumsum",
                "takes one f32 tensor of at least one dimension",
            )),
        }
    }

    /// `y_j` sums `x_i` for `i <= j`, so `x_i`'s gradient sums `g_j` for
    /// `j >= i`: the row's total, less the running sum before `i`.
    fn backward(
        &self,
        _inputs: &[Tensor],
        _output: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let total = grad.sum(&[-1], true)?;
        let running = cumsum(grad)?;
        Ok(vec![Some(total.sub(&running)?.add(grad)?)])
    }
}

fn rows(shape: &[usize]) -> usize {
    shape[..shape.len().saturating_sub(1)].iter().product()
}

fn cols(shape: &[usize]) -> usize {
    shape.last().copied().unwrap_or(1)
}

/// The running sum of `x` along its last axis.
pub fn cumsum(x: &Tensor) -> Result<Tensor> {
    Tensor::custom(Arc::new(Cumsum), &[x])
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let device = Device::new()?;
    println!("adapter: {} ({})", device.adapter_name(), device.backend());

    let x = Tensor::from_slice(
        &device,
        &[1.0f32, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0],
        &[2, 4],
    )?;
    println!(
        "cumsum of {:?}:\n  {:?}",
        x.to_vec::<f32>()?,
        cumsum(&x)?.to_vec::<f32>()?
    );

    // Fit w so that the running sum of w is a ramp 0.5, 1.0, ..., 4.0: the
    // optimizer differentiates through the custom kernel.
    let target: Vec<f32> = (1..=8).map(|i| 0.5 * i as f32).collect();
    let target = Tensor::from_slice(&device, &target, &[1, 8])?;
    let w = Tensor::zeros(&device, &[1, 8]).requires_grad_();
    let mut opt = cinder::nn::Adam::new(vec![w.clone()], 0.1)?;
    use cinder::nn::Optimizer;
    for step in 0..300 {
        let loss = cumsum(&w)?.mse_loss(&target)?;
        opt.step(&loss.backward()?)?;
        if step % 100 == 0 || step == 299 {
            println!("step {step:3}  loss {:.6}", loss.item()?);
        }
    }
    println!("w (each step of the ramp, 0.5): {:.3?}", w.to_vec::<f32>()?);
    Ok(())
}
