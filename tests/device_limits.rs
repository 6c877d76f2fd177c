//! No hidden device limits: a device that requests only WebGPU's default
//! limits (8 storage buffers per kernel, what a browser gives) runs graphs
//! with large fan-ins, and a device with small storage bindings runs
//! products, convolutions and optimizer steps several bindings large.
//! Sizes no kernel can handle are errors that name the tensor, before any
//! shader is generated.

mod common;

use std::sync::OnceLock;

use cinder::nn::{
    Adam, Conv2d, Flatten, Linear, MaxPool2d, Module, Optimizer, ReLU, Sequential, Sgd,
};
use cinder::runtime::{wgpu, DeviceOptions};
use cinder::tensor::Conv2dOptions;
use cinder::{Device, Error, Result, Tensor};

/// A device that asks for `wgpu::Limits::default()` only.
fn webgpu_device() -> Device {
    static DEVICE: OnceLock<Result<Device, String>> = OnceLock::new();
    let device = DEVICE.get_or_init(|| {
        Device::with_options(&DeviceOptions {
            limits: Some(wgpu::Limits::default()),
            ..DeviceOptions::from_env()
        })
        .map_err(|e| e.to_string())
    });
    match device {
        Ok(d) => {
            assert_eq!(d.limits().max_storage_buffers_per_shader_stage, 8);
            d.clone()
        }
        Err(e) => panic!("{e}"),
    }
}

/// Storage bindings of 256 KiB, everything else the adapter's own.
const SMALL_BINDING: u64 = 1 << 18;

fn small_binding_device() -> Device {
    static DEVICE: OnceLock<Result<Device, String>> = OnceLock::new();
    let device = DEVICE.get_or_init(|| {
        let mut limits = common::device().limits().clone();
        limits.max_storage_buffer_binding_size = SMALL_BINDING;
        Device::with_options(&DeviceOptions {
            limits: Some(limits),
            ..DeviceOptions::from_env()
        })
        .map_err(|e| e.to_string())
    });
    match device {
        Ok(d) => d.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// `n` values from a fixed xorshift stream in [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.max(1);
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn close(got: &[f32], want: &[f64], atol: f64, rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= atol + rtol * w.abs(),
            "{what}: element {i}: {g} vs {w}"
        );
    }
}

#[test]
fn concat_and_stack_of_a_thousand_tensors() -> Result<()> {
    let device = webgpu_device();
    let parts: Vec<Tensor> = (0..1000)
        .map(|i| Tensor::from_slice(&device, &values(6, i + 1), &[2, 3]))
        .collect::<Result<_>>()?;
    let refs: Vec<&Tensor> = parts.iter().collect();
    let joined = Tensor::concat(&refs, 0)?.to_vec::<f32>()?;
    let want: Vec<f32> = (0..1000).flat_map(|i| values(6, i + 1)).collect();
    assert_eq!(joined, want);
    // Along the last dimension the parts interleave.
    let stacked = Tensor::stack(&refs, 2)?;
    assert_eq!(stacked.shape(), &[2, 3, 1000]);
    let stacked = stacked.to_vec::<f32>()?;
    for (i, part) in [0usize, 1, 517, 999]
        .iter()
        .map(|&i| (i, values(6, i as u32 + 1)))
    {
        for (e, &v) in part.iter().enumerate() {
            assert_eq!(stacked[e * 1000 + i], v, "part {i}, element {e}");
        }
    }
    Ok(())
}

#[test]
fn a_sum_of_two_hundred_separately_reduced_terms() -> Result<()> {
    let device = webgpu_device();
    let mut total: Option<Tensor> = None;
    let mut want = 0.0f64;
    for i in 0..200 {
        let v = values(17, i + 7);
        want += v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
        let term = Tensor::from_slice(&device, &v, &[17])?
            .square()?
            .sum_all()?;
        total = Some(match total {
            None => term,
            Some(t) => t.add(&term)?,
        });
    }
    let got = total.map(|t| t.item()).transpose()?.unwrap_or(0.0) as f64;
    assert!((got - want).abs() <= 1e-4 * want, "{got} vs {want}");
    Ok(())
}

/// `count` parameters of 5 elements and the gradient of `sum(p_i * c_i)`.
fn many_parameters(
    device: &Device,
    count: u32,
) -> Result<(Vec<Tensor>, cinder::Gradients, Vec<Vec<f32>>)> {
    let params: Vec<Tensor> = (0..count)
        .map(|i| Ok(Tensor::from_slice(device, &values(5, i + 11), &[5])?.requires_grad_()))
        .collect::<Result<_>>()?;
    let coefs: Vec<Vec<f32>> = (0..count).map(|i| values(5, i + 5000)).collect();
    let mut loss: Option<Tensor> = None;
    for (p, c) in params.iter().zip(&coefs) {
        let term = p.mul(&Tensor::from_slice(device, c, &[5])?)?.sum_all()?;
        loss = Some(match loss {
            None => term,
            Some(l) => l.add(&term)?,
        });
    }
    let loss = loss.ok_or_else(|| Error::invalid("test", "no parameters"))?;
    Ok((params, loss.backward()?, coefs))
}

#[test]
fn clip_grad_norm_over_two_hundred_parameters() -> Result<()> {
    let device = webgpu_device();
    let (params, mut grads, coefs) = many_parameters(&device, 200)?;
    let norm = grads.clip_grad_norm(&params, 1.0)?.item()? as f64;
    let want: f64 = coefs
        .iter()
        .flatten()
        .map(|&c| (c as f64) * (c as f64))
        .sum::<f64>()
        .sqrt();
    assert!((norm - want).abs() <= 1e-4 * want, "norm {norm} vs {want}");
    let scale = 1.0 / (want + 1e-6);
    for i in [0usize, 99, 199] {
        let g = grads
            .get(&params[i])
            .ok_or_else(|| Error::invalid("test", "no gradient"))?;
        let want: Vec<f64> = coefs[i].iter().map(|&c| c as f64 * scale).collect();
        close(&g.to_vec::<f32>()?, &want, 1e-6, 1e-4, "clipped gradient");
    }
    Ok(())
}

#[test]
fn an_optimizer_step_over_three_hundred_parameters() -> Result<()> {
    let device = webgpu_device();
    let (params, grads, coefs) = many_parameters(&device, 300)?;
    let lr = 0.01;
    let mut opt = Adam::new(params.clone(), lr)?;
    opt.step(&grads)?;
    // Adam's first step moves each weight by lr * g / (|g| + eps).
    for i in [0usize, 150, 299] {
        let start = values(5, i as u32 + 11);
        let want: Vec<f64> = start
            .iter()
            .zip(&coefs[i])
            .map(|(&p, &g)| p as f64 - lr * g as f64 / ((g as f64).abs() + 1e-8))
            .collect();
        close(
            &params[i].to_vec::<f32>()?,
            &want,
            1e-6,
            1e-5,
            "updated weight",
        );
    }
    Ok(())
}

#[test]
fn a_cnn_trains_on_webgpu_limits() -> Result<()> {
    let device = webgpu_device();
    device.manual_seed(3);
    let model = Sequential::new()
        .add(Conv2d::new(&device, 1, 8, 3, Default::default(), true)?)
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Flatten)
        .add(Linear::new(&device, 8 * 3 * 3, 10, true)?);
    let x = Tensor::from_slice(&device, &values(16 * 64, 9), &[16, 1, 8, 8])?;
    let labels: Vec<i32> = (0..16).map(|i| i % 10).collect();
    let y = Tensor::from_slice(&device, &labels, &[16])?;
    let mut opt = Adam::new(model.parameters(), 1e-2)?;
    let mut losses = Vec::new();
    for _ in 0..15 {
        let loss = model.forward(&x)?.cross_entropy(&y)?;
        opt.step(&loss.backward()?)?;
        losses.push(loss.item()?);
    }
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[14] < 0.5 * losses[0], "losses {losses:?}");
    Ok(())
}

/// `a [m, k] @ b [k, n]` in f64.
fn matmul_ref(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = a[i * k + p] as f64;
            for j in 0..n {
                c[i * n + j] += x * b[p * n + j] as f64;
            }
        }
    }
    c
}

#[test]
fn products_several_bindings_large() -> Result<()> {
    let device = small_binding_device();
    let elements = (SMALL_BINDING / 4) as usize;
    // A, B and C each about two bindings; K and N off any block size.
    let (m, k, n) = (350, 351, 353);
    assert!(m * k > elements && k * n > elements && m * n > elements);
    let (a, b) = (values(m * k, 1), values(k * n, 2));
    let c = Tensor::from_slice(&device, &a, &[m, k])?
        .matmul(&Tensor::from_slice(&device, &b, &[k, n])?)?
        .to_vec::<f32>()?;
    close(
        &c,
        &matmul_ref(&a, &b, m, k, n),
        1e-4,
        1e-4,
        "tiled product",
    );
    // Batched: three batches of 200 x 150 @ 150 x 250, B shared.
    let (batch, m, k, n) = (3, 200, 150, 250);
    let (a, b) = (values(batch * m * k, 3), values(k * n, 4));
    let c = Tensor::from_slice(&device, &a, &[batch, m, k])?
        .matmul(&Tensor::from_slice(&device, &b, &[k, n])?)?
        .to_vec::<f32>()?;
    for i in 0..batch {
        let want = matmul_ref(&a[i * m * k..(i + 1) * m * k], &b, m, k, n);
        close(
            &c[i * m * n..(i + 1) * m * n],
            &want,
            1e-4,
            1e-4,
            "batched tile",
        );
    }
    Ok(())
}

#[test]
fn a_convolution_several_bindings_large_matches_an_unconstrained_device() -> Result<()> {
    let small = small_binding_device();
    let full = common::device();
    let run = |device: &Device| -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        device.manual_seed(5);
        let conv = Conv2d::new(device, 6, 20, 3, Conv2dOptions::default().padding(1), true)?;
        let x = Tensor::from_slice(device, &values(4 * 6 * 30 * 30, 6), &[4, 6, 30, 30])?
            .requires_grad_();
        let y = conv.forward(&x)?;
        let grads = y.square()?.sum_all()?.backward()?;
        let params = conv.parameters();
        let missing = || Error::invalid("test", "no gradient");
        Ok((
            y.to_vec::<f32>()?,
            grads.get(&x).ok_or_else(missing)?.to_vec::<f32>()?,
            grads.get(&params[0]).ok_or_else(missing)?.to_vec::<f32>()?,
        ))
    };
    let (y, dx, dw) = run(&small)?;
    // The unfolded input alone is 4 * 30 * 30 x 54 floats: 760 KiB.
    assert!(y.len() * 4 > SMALL_BINDING as usize);
    let (y_full, dx_full, dw_full) = run(&full)?;
    let as_f64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    close(&y, &as_f64(&y_full), 1e-4, 1e-4, "output");
    close(&dx, &as_f64(&dx_full), 1e-3, 1e-4, "input gradient");
    close(&dw, &as_f64(&dw_full), 1e-2, 1e-4, "weight gradient");
    Ok(())
}

#[test]
fn a_concatenation_bigger_than_a_binding() -> Result<()> {
    let device = small_binding_device();
    // Twelve parts of 40000 floats: the whole is nearly two bindings.
    let parts: Vec<Vec<f32>> = (0..12).map(|k| values(40_000, k + 40)).collect();
    let tensors: Vec<Tensor> = parts
        .iter()
        .map(|p| Tensor::from_slice(&device, p, &[200, 200]))
        .collect::<Result<_>>()?;
    let joined = Tensor::concat(&tensors.iter().collect::<Vec<_>>(), 1)?.to_vec::<f32>()?;
    for (k, part) in parts.iter().enumerate() {
        for row in [0usize, 77, 199] {
            let got = &joined[row * 2400 + k * 200..row * 2400 + (k + 1) * 200];
            assert_eq!(
                got,
                &part[row * 200..(row + 1) * 200],
                "part {k}, row {row}"
            );
        }
    }
    Ok(())
}

#[test]
fn an_integer_concatenation_bigger_than_a_binding() -> Result<()> {
    let device = small_binding_device();
    let parts: Vec<Vec<i32>> = (0..12)
        .map(|k| (0..10_000).map(|i| i * 13 + k).collect())
        .collect();
    let tensors: Vec<Tensor> = parts
        .iter()
        .map(|p| Tensor::from_slice(&device, p, &[100, 100]))
        .collect::<Result<_>>()?;
    let joined = Tensor::concat(&tensors.iter().collect::<Vec<_>>(), 1)?.to_vec::<i32>()?;
    for (k, part) in parts.iter().enumerate() {
        let row = 42;
        let got = &joined[row * 1200 + k * 100..row * 1200 + (k + 1) * 100];
        assert_eq!(got, &part[row * 100..(row + 1) * 100], "part {k}");
    }
    Ok(())
}

#[test]
fn an_embedding_table_several_bindings_large() -> Result<()> {
    // 2000 rows of 300: about 2.3 bindings. Rows picked from every range,
    // and the table's gradient (each picked row gets its rows' gradients).
    let device = small_binding_device();
    let (rows, width) = (2000, 300);
    let table = values(rows * width, 21);
    let t = Tensor::from_slice(&device, &table, &[rows, width])?.requires_grad_();
    let picks = [0i32, 1999, 700, 1500, 700];
    let idx = Tensor::from_slice(&device, &picks, &[5])?;
    let picked = t.index_select(0, &idx)?;
    let got = picked.to_vec::<f32>()?;
    for (k, &r) in picks.iter().enumerate() {
        let r = r as usize;
        assert_eq!(
            &got[k * width..(k + 1) * width],
            &table[r * width..(r + 1) * width]
        );
    }
    let grads = picked.sum_all()?.backward()?;
    let g = grads
        .get(&t)
        .ok_or_else(|| Error::invalid("test", "no gradient"))?
        .to_vec::<f32>()?;
    for (r, want) in [
        (0usize, 1.0f32),
        (700, 2.0),
        (1500, 1.0),
        (1999, 1.0),
        (3, 0.0),
    ] {
        assert!(
            g[r * width..(r + 1) * width].iter().all(|&v| v == want),
            "row {r}"
        );
    }
    Ok(())
}

#[test]
fn empty_products_over_a_binding() -> Result<()> {
    let device = small_binding_device();
    let big = values(300 * 300, 3);
    let b = Tensor::from_slice(&device, &big, &[300, 300])?;
    // No rows, no depth, no batches: empty results, or zeros.
    let rows = Tensor::zeros(&device, &[0, 300]).matmul(&b)?;
    assert_eq!(rows.shape(), &[0, 300]);
    assert!(rows.to_vec::<f32>()?.is_empty());
    let depth = Tensor::zeros(&device, &[300, 0]).matmul(&Tensor::zeros(&device, &[0, 300]))?;
    assert!(depth.to_vec::<f32>()?.iter().all(|&v| v == 0.0));
    let batches = b.matmul(&Tensor::zeros(&device, &[0, 300, 10]))?;
    assert_eq!(batches.shape(), &[0, 300, 10]);
    assert!(batches.to_vec::<f32>()?.is_empty());
    Ok(())
}

#[test]
fn an_optimizer_step_over_a_parameter_several_bindings_large() -> Result<()> {
    let device = small_binding_device();
    let n = 3 * (SMALL_BINDING / 4) as usize + 1001;
    let start = values(n, 8);
    let p = Tensor::from_slice(&device, &start, &[n])?.requires_grad_();
    let coef = values(n, 9);
    let loss = p
        .mul(&Tensor::from_slice(&device, &coef, &[n])?)?
        .sum_all()?;
    let mut sgd = Sgd::new(vec![p.clone()], 0.5)?;
    sgd.step(&loss.backward()?)?;
    let got = p.to_vec::<f32>()?;
    for i in [0, 1, n / 4, n / 4 + 1, n / 2, 3 * n / 4, n - 2, n - 1] {
        assert_eq!(got[i], start[i] - 0.5 * coef[i], "element {i}");
    }
    Ok(())
}

#[test]
fn sizes_past_the_limits_are_errors_naming_the_tensor() -> Result<()> {
    let device = common::device();
    // Past 32-bit indices: rejected before any shader exists.
    let side = 100_000;
    let a = Tensor::zeros(&device, &[side, 1]).matmul(&Tensor::zeros(&device, &[1, side]))?;
    let err = a.sum_all()?.item().unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::TooLarge { .. }), "{msg}");
    assert!(
        msg.contains("[100000, 100000]") && msg.contains("32-bit"),
        "{msg}"
    );
    // Past the largest buffer.
    let side = 33_000;
    let big = Tensor::ones(&device, &[side, 1]).matmul(&Tensor::ones(&device, &[1, side]))?;
    let err = big.to_vec::<f32>().unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::TooLarge { .. }), "{msg}");
    assert!(
        msg.contains("[33000, 33000]") && msg.contains("max_buffer_size"),
        "{msg}"
    );
    assert!(
        msg.len() < 400,
        "the error carries no generated code: {msg}"
    );
    Ok(())
}
