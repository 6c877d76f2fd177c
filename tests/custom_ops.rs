//! Kernels of one's own: custom ops computed by the user's WGSL, against f64
//! references, their gradients against finite differences, and their part
//! in planning (fused inputs, cached plans, clear errors).

mod common;

#[path = "../examples/custom_op.rs"]
#[allow(dead_code)]
mod example;

use std::sync::Arc;

use cinder::tensor::{CustomKernel, CustomOp};
use cinder::{DType, Error, Result, Tensor};
use example::cumsum;

/// `a + t * (b - a)`, three inputs of one shape, on the default grid.
struct Lerp;

impl CustomKernel for Lerp {
    fn name(&self) -> &str {
        "lerp"
    }

    fn wgsl(&self) -> String {
        "
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> t: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> dims: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= dims[0]) { return; }
    out[i] = a[i] + t[i] * (b[i] - a[i]);
}
"
        .to_string()
    }

    fn params(&self, output: &[usize], _inputs: &[&[usize]]) -> Vec<u32> {
        vec![output.iter().product::<usize>() as u32]
    }
}

impl CustomOp for Lerp {
    fn output(&self, inputs: &[&Tensor]) -> Result<(Vec<usize>, DType)> {
        match inputs {
            [a, b, t] if a.shape() == b.shape() && a.shape() == t.shape() => {
                Ok((a.shape().to_vec(), DType::F32))
            }
            _ => Err(Error::shape("lerp", "three tensors of one shape")),
        }
    }

    fn backward(
        &self,
        inputs: &[Tensor],
        _out: &Tensor,
        g: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let (a, b, t) = (&inputs[0], &inputs[1], &inputs[2]);
        Ok(vec![
            Some(g.mul(&t.rsub_scalar(1.0)?)?),
            Some(g.mul(t)?),
            Some(g.mul(&b.sub(a)?)?),
        ])
    }
}

fn lerp(a: &Tensor, b: &Tensor, t: &Tensor) -> Result<Tensor> {
    Tensor::custom(Arc::new(Lerp), &[a, b, t])
}

/// `n` values from a fixed stream in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

#[test]
fn cumsum_matches_an_f64_reference_on_awkward_shapes() -> Result<()> {
    let device = common::device();
    for shape in [
        vec![1usize],
        vec![7, 13],
        vec![3, 33, 5],
        vec![127, 1],
        vec![2, 1000],
    ] {
        let n: usize = shape.iter().product();
        let cols = shape[shape.len() - 1];
        let x = values(n, n as u64);
        let got = cumsum(&Tensor::from_slice(&device, &x, &shape)?)?.to_vec::<f32>()?;
        for (r, row) in x.chunks(cols).enumerate() {
            let mut acc = 0.0f64;
            for (j, &v) in row.iter().enumerate() {
                acc += v as f64;
                let have = got[r * cols + j] as f64;
                assert!(
                    (have - acc).abs() <= 1e-5 + 1e-4 * acc.abs() + 1e-6 * (j as f64),
                    "{shape:?} row {r} column {j}: {have} vs {acc}"
                );
            }
        }
    }
    Ok(())
}

/// The gradient of `sum(f(inputs) * w)` for random `w`, analytic against
/// central differences of the f32 forward pass.
fn check_grad(
    name: &str,
    inputs: &[Vec<f32>],
    shape: &[usize],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    let device = common::device();
    let n: usize = shape.iter().product();
    let w = values(n, 99);
    let loss_of = |xs: &[Vec<f32>], track: bool| -> Result<(Tensor, Vec<Tensor>)> {
        let ts: Vec<Tensor> = xs
            .iter()
            .map(|x| {
                let t = Tensor::from_slice(&device, x, shape)?;
                Ok(if track { t.requires_grad_() } else { t })
            })
            .collect::<Result<_>>()?;
        let y = f(&ts)?;
        let loss = y.mul(&Tensor::from_slice(&device, &w, shape)?)?.sum_all()?;
        Ok((loss, ts))
    };
    let (loss, ts) = loss_of(inputs, true)?;
    let grads = loss.backward()?;
    let eps = 1e-2f32;
    for (k, t) in ts.iter().enumerate() {
        let analytic = grads
            .get(t)
            .ok_or_else(|| Error::invalid("test", "no gradient"))?
            .to_vec::<f32>()?;
        for e in 0..n {
            let mut plus = inputs.to_vec();
            plus[k][e] += eps;
            let mut minus = inputs.to_vec();
            minus[k][e] -= eps;
            let fd = (loss_of(&plus, false)?.0.item()? as f64
                - loss_of(&minus, false)?.0.item()? as f64)
                / (2.0 * eps as f64);
            let a = analytic[e] as f64;
            assert!(
                (a - fd).abs() <= 2e-3 + 2e-2 * fd.abs(),
                "{name}: input {k} element {e}: analytic {a} vs finite differences {fd}"
            );
        }
    }
    Ok(())
}

#[test]
fn custom_gradients_match_finite_differences() -> Result<()> {
    let shape = [3, 5];
    check_grad("cumsum", &[values(15, 1)], &shape, |t| cumsum(&t[0]))?;
    // Fused element-wise inputs (computed into buffers for the kernel), and
    // a custom op read by another.
    check_grad(
        "lerp of expressions",
        &[values(15, 2), values(15, 3), values(15, 4)],
        &shape,
        |t| {
            let y = lerp(&t[0].exp()?, &t[1].tanh()?, &t[2].sigmoid()?)?;
            cumsum(&y)
        },
    )?;
    Ok(())
}

#[test]
fn a_new_instance_of_the_same_op_replays_the_cached_plan() -> Result<()> {
    // A device of its own: the other tests' plans would move its counters.
    let device = cinder::Device::new()?;
    let w = Tensor::zeros(&device, &[4, 6]).requires_grad_();
    let target = Tensor::from_slice(&device, &values(24, 5), &[4, 6])?;
    // Uploaded now: step 0 would otherwise upload it, and later steps (which
    // find it realized) would be another plan.
    target.realize()?;
    let mut opt = cinder::nn::Adam::new(vec![w.clone()], 0.05)?;
    use cinder::nn::Optimizer;
    let mut first_loss = None;
    let mut after_first = None;
    for step in 0..30 {
        // `cumsum` makes a new `Cumsum` every call: identity is its source.
        let loss = cumsum(&w)?.mse_loss(&target)?;
        opt.step(&loss.backward()?)?;
        let l = loss.item()?;
        first_loss.get_or_insert(l);
        if step == 0 {
            after_first = Some(device.stats());
        } else if let Some(before) = after_first {
            let now = device.stats();
            assert_eq!(now.plans_compiled, before.plans_compiled, "step {step}");
            assert_eq!(
                now.pipelines_created, before.pipelines_created,
                "step {step}"
            );
            assert_eq!(now.buffers_created, before.buffers_created, "step {step}");
        }
        if step == 29 {
            assert!(l < 0.1 * first_loss.unwrap_or(f32::MAX), "loss {l}");
        }
    }
    Ok(())
}

/// A kernel that does not compile, and one with a wrong gradient count.
struct Broken;

impl CustomKernel for Broken {
    fn name(&self) -> &str {
        "broken"
    }

    fn wgsl(&self) -> String {
        "
@group(0) @binding(0) var<storage, read> a_line_the_error_must_not_carry: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(1)
fn main() {
    let x: f32 = undefined_thing;
}
"
        .to_string()
    }
}

impl CustomOp for Broken {
    fn output(&self, inputs: &[&Tensor]) -> Result<(Vec<usize>, DType)> {
        Ok((inputs[0].shape().to_vec(), DType::F32))
    }

    fn backward(&self, _i: &[Tensor], _o: &Tensor, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.clone()), Some(g.clone())])
    }
}

#[test]
fn custom_op_errors_are_clear() -> Result<()> {
    let device = common::device();
    let x = Tensor::from_slice(&device, &[1.0f32, 2.0], &[2])?;
    // A shader that does not compile: the error names the op and the
    // problem; the WGSL goes to the log, not into the message.
    let err = Tensor::custom(Arc::new(Broken), &[&x])?
        .to_vec::<f32>()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("broken") && msg.contains("undefined_thing"),
        "{msg}"
    );
    assert!(!msg.contains("a_line_the_error_must_not_carry"), "{msg}");
    // The shape rule's error.
    let err = lerp(&x, &x, &Tensor::zeros(&device, &[3])).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    // A backward rule returning one gradient too many.
    let p = x.requires_grad_();
    let y = Tensor::custom(Arc::new(Broken), &[&p])?;
    match y.sum_all()?.backward() {
        Ok(_) => panic!("a backward rule with a gradient too many was accepted"),
        Err(e) => assert!(e.to_string().contains("2 gradients for 1 inputs"), "{e}"),
    }
    Ok(())
}

/// Each row of a `[rows, cols]` tensor reversed through a private array
/// that the kernel fills whole before reading (so it may skip WGSL's
/// zeroing of it): `cols` up to `REVERSE_MAX`.
struct ReverseRows;

const REVERSE_MAX: usize = 300;

impl CustomKernel for ReverseRows {
    fn name(&self) -> &str {
        "reverse rows"
    }

    fn wgsl(&self) -> String {
        format!(
            "
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> dims: array<u32>;

var<private> row: array<f32, {REVERSE_MAX}>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {{
    let r = wid.x * 64u + lid;
    let cols = dims[1];
    if (r >= dims[0]) {{ return; }}
    for (var k = 0u; k < {REVERSE_MAX}u; k++) {{
        row[k] = select(0.0, x[r * cols + min(k, cols - 1u)], k < cols);
    }}
    for (var k = 0u; k < cols; k++) {{
        out[r * cols + k] = row[cols - 1u - k];
    }}
}}
"
        )
    }

    fn workgroups(&self, output: &[usize], _inputs: &[&[usize]]) -> [u32; 3] {
        [output[0].div_ceil(64) as u32, 1, 1]
    }

    fn params(&self, output: &[usize], _inputs: &[&[usize]]) -> Vec<u32> {
        vec![output[0] as u32, output[1] as u32]
    }

    fn writes_private_arrays_first(&self) -> bool {
        true
    }
}

impl CustomOp for ReverseRows {
    fn output(&self, inputs: &[&Tensor]) -> Result<(Vec<usize>, DType)> {
        match inputs {
            [x] if x.shape().len() == 2 && (1..=REVERSE_MAX).contains(&x.shape()[1]) => {
                Ok((x.shape().to_vec(), DType::F32))
            }
            _ => Err(Error::shape(
                "reverse rows",
                format!("one [rows, cols] tensor, cols in 1..={REVERSE_MAX}"),
            )),
        }
    }

    fn backward(
        &self,
        _inputs: &[Tensor],
        _out: &Tensor,
        g: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(Tensor::custom(Arc::new(ReverseRows), &[g])?)])
    }
}

#[test]
fn a_kernel_that_writes_its_private_arrays_first_computes_the_same() -> Result<()> {
    let device = common::device();
    let before = device.stats().spirv_pipelines_created;
    for (rows, cols) in [(1, 1), (70, 13), (129, REVERSE_MAX)] {
        let x = values(rows * cols, cols as u64);
        let got = Tensor::custom(
            Arc::new(ReverseRows),
            &[&Tensor::from_slice(&device, &x, &[rows, cols])?],
        )?
        .to_vec::<f32>()?;
        for (r, row) in x.chunks(cols).enumerate() {
            let want: Vec<f32> = row.iter().rev().copied().collect();
            assert_eq!(
                got[r * cols..(r + 1) * cols],
                want[..],
                "{rows}x{cols} row {r}"
            );
        }
    }
    // On a Vulkan CPU adapter (lavapipe, as in CI) it was compiled without
    // the zeroing; elsewhere it took the ordinary path and still agrees.
    if device.is_cpu() && device.backend() == "Vulkan" {
        let spirv = device.stats().spirv_pipelines_created - before;
        assert!(spirv >= 1, "{spirv} kernels took the SPIR-V path");
    }
    Ok(())
}
