//! A training loop's steady state creates nothing on the GPU and its memory
//! stays flat.

mod common;

use cinder::nn::{Adam, Linear, Module, Optimizer, ReLU, Sequential};
use cinder::{Result, Tensor};

#[test]
fn training_steps_create_nothing_after_the_first() -> Result<()> {
    let device = common::device();
    device.manual_seed(1);
    let model = Sequential::new()
        .add(Linear::new(&device, 64, 128, true)?)
        .add(ReLU)
        .add(Linear::new(&device, 128, 10, true)?);
    let mut opt = Adam::new(model.parameters(), 1e-3)?;
    let batch = 32;
    let step = |i: usize, opt: &mut Adam| -> Result<f32> {
        let xs: Vec<f32> = (0..batch * 64)
            .map(|j| ((i * 31 + j * 7) % 17) as f32 / 17.0)
            .collect();
        let ys: Vec<i32> = (0..batch).map(|j| ((i + j) % 10) as i32).collect();
        let x = Tensor::from_slice(&device, &xs, &[batch, 64])?;
        let y = Tensor::from_slice(&device, &ys, &[batch])?;
        let loss = model.forward(&x)?.cross_entropy(&y)?;
        opt.step(&loss.backward()?)?;
        loss.item()
    };
    step(0, &mut opt)?;
    let after_first = device.stats();
    for i in 1..300 {
        step(i, &mut opt)?;
        let now = device.stats();
        assert_eq!(
            now.pipelines_created, after_first.pipelines_created,
            "step {i} created a pipeline"
        );
        assert_eq!(
            now.shader_modules_created, after_first.shader_modules_created,
            "step {i} created a shader module"
        );
        assert_eq!(
            now.bind_groups_created, after_first.bind_groups_created,
            "step {i} created a bind group"
        );
        assert_eq!(
            now.buffers_created, after_first.buffers_created,
            "step {i} created a buffer"
        );
        assert_eq!(
            now.bytes_allocated, after_first.bytes_allocated,
            "step {i} grew memory"
        );
        assert_eq!(
            now.plans_compiled, after_first.plans_compiled,
            "step {i} compiled a plan"
        );
    }
    let end = device.stats();
    // Each step is one submit for the whole training step and one for reading the loss.
    assert_eq!(end.submits - after_first.submits, 2 * 299);
    Ok(())
}
