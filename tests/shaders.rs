//! Every shader, hand-written or generated, passes naga's validator.

mod common;

use cinder::nn::{Adam, Linear, Module, Optimizer, ReLU, Sequential, Sgd};
use cinder::{DType, Result, Tensor};

fn validate(name: &str, source: &str) {
    let module = naga::front::wgsl::parse_str(source).unwrap_or_else(|e| {
        panic!(
            "{name} does not parse:\n{}\n{source}",
            e.emit_to_string(source)
        )
    });
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{name} does not validate: {e:?}\n{source}"));
}

#[test]
fn hand_written_shaders_validate() {
    for (name, source) in cinder::runtime::shader_sources() {
        if name == "prelude.wgsl" {
            // Functions only; validated as part of every generated kernel.
            validate(
                name,
                &format!("{source}\n@compute @workgroup_size(1) fn main() {{}}"),
            );
        } else {
            validate(name, source);
        }
    }
}

#[test]
fn generated_kernels_validate() -> Result<()> {
    let device = common::device();
    // A spread of ops so that many kernel shapes get generated.
    let model = Sequential::new()
        .add(Linear::new(&device, 6, 5, true)?)
        .add(ReLU)
        .add(Linear::new(&device, 5, 3, true)?);
    let mut adam = Adam::new(model.parameters(), 1e-3)?;
    let mut sgd = Sgd::new(model.parameters(), 1e-3)?.momentum(0.9);
    let x = Tensor::randn_seeded(&device, &[4, 6], 0.0, 1.0, 3)?;
    let y = Tensor::from_slice(&device, &[0i32, 2, 1, 0], &[4])?;
    let loss = model.forward(&x)?.cross_entropy(&y)?;
    adam.step(&loss.backward()?)?;
    let loss = model
        .forward(&x)?
        .gelu()?
        .tanh()?
        .sigmoid()?
        .softmax(0)?
        .var(&[0], 1, false)?
        .sum_all()?;
    sgd.step(&loss.backward()?)?;
    let z = Tensor::concat(&[&x, &x.exp()?], 1)?
        .narrow(1, 3, 5)?
        .permute(&[1, 0])?;
    let idx = Tensor::from_slice(&device, &[2i32, 0], &[2])?;
    let img = x.reshape(&[1, 2, 3, 4])?;
    let (pooled, indices) = img.max_pool2d_with_indices(cinder::tensor::Pool2dOptions::new(2))?;
    let parts = [
        x.log1p()?.softplus(2.0, 3.0)?.elu(0.5)?.sum_all()?,
        x.leaky_relu(0.1)?
            .hardswish()?
            .hardtanh(-1.0, 1.0)?
            .mean_all()?,
        x.logsigmoid()?.gelu_tanh()?.mish()?.sum_all()?,
        x.binary_cross_entropy_with_logits(
            &x.sigmoid()?,
            None,
            None,
            cinder::tensor::Reduction::Mean,
        )?,
        pooled
            .max_unpool2d(&indices, [2, 2], [2, 2], [0, 0], Some([3, 4]))?
            .group_norm(2, None, None, 1e-5)?
            .sum_all()?,
        img.adaptive_max_pool2d([2, 3])?.sum_all()?,
        z.index_select(0, &idx)?.sum_all()?,
        z.argmax(0, false)?.to_dtype(DType::F32)?.sum_all()?,
        x.pow_scalar(2.0)?.max(&[1], false)?.sum_all()?,
        Tensor::where_cond(&x.gt(&x.neg()?)?, &x, &x.sqrt()?.log()?)?.mean_all()?,
    ];
    for p in &parts {
        p.realize()?;
    }
    // lavapipe compiles a kernel's machine code when the queue first runs it;
    // a process that exits meanwhile tears LLVM down under that compile.
    device.synchronize()?;
    let kernels = device.compiled_kernels();
    assert!(
        kernels.len() > 10,
        "only {} kernels compiled",
        kernels.len()
    );
    for (i, source) in kernels.iter().enumerate() {
        validate(&format!("kernel {i}"), source);
    }
    Ok(())
}
