//! Epilogue fusion: bias, batch norm in evaluation mode and an activation
//! after a matmul or a convolution are computed in the matmul's own kernel,
//! as it writes its output. Checked with the dispatch counter, and the
//! values against plain host arithmetic.

mod common;

use cinder::nn::{BatchNorm2d, Conv2d, Module};
use cinder::tensor::Conv2dOptions;
use cinder::{Result, Tensor};

fn dispatches_to_realize(t: &Tensor) -> Result<u64> {
    let device = t.device().clone();
    let before = device.stats().dispatches;
    t.realize()?;
    Ok(device.stats().dispatches - before)
}

#[test]
fn linear_bias_relu_is_one_kernel() -> Result<()> {
    // The small-product kernel, then the 32x32 block storing whole vec4s
    // (32 columns) and single elements (30 columns).
    for (n, k, m) in [(37, 29, 23), (32, 300, 32), (30, 301, 30)] {
        linear_bias_relu(n, k, m)?;
    }
    Ok(())
}

fn linear_bias_relu(n: usize, k: usize, m: usize) -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    let xs: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7) % 13) as f32 / 6.0 - 1.0)
        .collect();
    let ws: Vec<f32> = (0..k * m)
        .map(|i| ((i * 5) % 11) as f32 / 5.0 - 1.0)
        .collect();
    let bs: Vec<f32> = (0..m).map(|i| i as f32 / 10.0 - 1.0).collect();
    let x = Tensor::from_slice(&device, &xs, &[n, k])?;
    let w = Tensor::from_slice(&device, &ws, &[k, m])?;
    let b = Tensor::from_slice(&device, &bs, &[m])?;
    device.realize(&[x.node().clone(), w.node().clone(), b.node().clone()])?;
    let y = x.matmul(&w)?.add(&b)?.relu()?;
    assert_eq!(
        dispatches_to_realize(&y)?,
        1,
        "matmul, bias and ReLU in one kernel ({n}x{k} @ {k}x{m})"
    );
    let got = y.to_vec::<f32>()?;
    for r in 0..n {
        for c in 0..m {
            let mut acc = bs[c] as f64;
            for j in 0..k {
                acc += xs[r * k + j] as f64 * ws[j * m + c] as f64;
            }
            let want = acc.max(0.0);
            let have = got[r * m + c] as f64;
            assert!(
                (have - want).abs() < 1e-4 * (1.0 + want.abs()),
                "[{r}, {c}]: {have} vs {want}"
            );
        }
    }
    Ok(())
}

#[test]
fn conv_bias_batchnorm_relu_fuse_into_the_matmul() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    device.manual_seed(4);
    let conv = Conv2d::new(&device, 3, 6, 3, Conv2dOptions::default().padding(1), true)?;
    let mut bn = BatchNorm2d::new(&device, 6)?;
    bn.eval();
    // Statistics other than the initial 0 and 1, so that they matter.
    let stats: Vec<f32> = (0..6).map(|i| 0.1 * i as f32).collect();
    let var: Vec<f32> = (0..6).map(|i| 0.5 + 0.2 * i as f32).collect();
    bn.running_mean = Tensor::from_slice(&device, &stats, &[6])?;
    bn.running_var = Tensor::from_slice(&device, &var, &[6])?;
    let x = Tensor::rand_seeded(&device, &[2, 3, 7, 5], -1.0, 1.0, 9)?;
    let inputs: Vec<_> = [&x, &conv.weight, &bn.running_mean, &bn.running_var]
        .iter()
        .map(|t| t.node().clone())
        .chain(conv.bias.iter().map(|b| b.node().clone()))
        .chain(bn.weight.iter().map(|w| w.node().clone()))
        .chain(bn.bias.iter().map(|b| b.node().clone()))
        .collect();
    device.realize(&inputs)?;

    let plain = conv.forward(&x)?;
    // The unfolded input (with the row of ones that meets the bias), the
    // weight with the bias as its last column, and the matmul writing the
    // convolution: the bias is part of the product.
    assert_eq!(dispatches_to_realize(&plain)?, 3);
    let y = bn.forward(&conv.forward(&x)?)?.relu()?;
    // The same three, plus one for batch norm's per-channel scale (used
    // twice): normalisation and ReLU run in the matmul's write.
    assert_eq!(dispatches_to_realize(&y)?, 4);

    let conv_out = plain.to_vec::<f32>()?;
    let got = y.to_vec::<f32>()?;
    for (i, (&c, &g)) in conv_out.iter().zip(&got).enumerate() {
        let ch = (i / 35) % 6;
        let want = ((c - stats[ch]) / (var[ch] + 1e-5).sqrt()).max(0.0);
        assert!((g - want).abs() < 1e-5, "element {i}: {g} vs {want}");
    }
    Ok(())
}

/// An LSTM cell's step: one gate product, sliced into the four gates; the
/// cell and hidden state computed from them. Every value is kept (a
/// backward pass would read them all), so each needs a buffer.
fn lstm_step(
    x: &Tensor,
    h: &Tensor,
    c: &Tensor,
    w: &Tensor,
    u: &Tensor,
    hidden: usize,
) -> Result<Vec<Tensor>> {
    let gates = x.matmul(w)?.add(&h.matmul(u)?)?;
    let gate = |k: usize| gates.narrow(1, k * hidden, hidden);
    let i = gate(0)?.sigmoid()?;
    let f = gate(1)?.sigmoid()?;
    let g = gate(2)?.tanh()?;
    let o = gate(3)?.sigmoid()?;
    let c2 = f.mul(c)?.add(&i.mul(&g)?)?;
    let h2 = o.mul(&c2.tanh()?)?;
    Ok(vec![i, f, g, o, c2, h2])
}

#[test]
fn lstm_gates_cell_and_hidden_state_run_in_one_kernel_after_the_product() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    let (batch, input, hidden) = (5, 7, 6);
    let data = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 37) % 29) as f32 / 14.0 - 1.0)
            .collect()
    };
    let (xs, hs, cs) = (
        data(batch * input, 1),
        data(batch * hidden, 2),
        data(batch * hidden, 3),
    );
    let (ws, us) = (data(input * 4 * hidden, 4), data(hidden * 4 * hidden, 5));
    let x = Tensor::from_slice(&device, &xs, &[batch, input])?;
    let h = Tensor::from_slice(&device, &hs, &[batch, hidden])?;
    let c = Tensor::from_slice(&device, &cs, &[batch, hidden])?;
    let w = Tensor::from_slice(&device, &ws, &[input, 4 * hidden])?;
    let u = Tensor::from_slice(&device, &us, &[hidden, 4 * hidden])?;
    let inputs: Vec<_> = [&x, &h, &c, &w, &u]
        .iter()
        .map(|t| t.node().clone())
        .collect();
    device.realize(&inputs)?;

    let values = lstm_step(&x, &h, &c, &w, &u, hidden)?;
    let nodes: Vec<_> = values.iter().map(|t| t.node().clone()).collect();
    let before = device.stats().dispatches;
    device.realize(&nodes)?;
    // h @ U, then x @ W adding it in its epilogue, then one kernel for the
    // four gates, the cell and the hidden state (six kernels before).
    assert_eq!(device.stats().dispatches - before, 3);

    // Against host arithmetic.
    let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
    let mut want: Vec<Vec<f64>> = vec![Vec::new(); 6];
    for b in 0..batch {
        for j in 0..hidden {
            let gate = |k: usize| -> f64 {
                let col = k * hidden + j;
                let mut acc = 0.0;
                for p in 0..input {
                    acc += xs[b * input + p] as f64 * ws[p * 4 * hidden + col] as f64;
                }
                for p in 0..hidden {
                    acc += hs[b * hidden + p] as f64 * us[p * 4 * hidden + col] as f64;
                }
                acc
            };
            let (i, f, g, o) = (
                sigmoid(gate(0)),
                sigmoid(gate(1)),
                gate(2).tanh(),
                sigmoid(gate(3)),
            );
            let c2 = f * cs[b * hidden + j] as f64 + i * g;
            for (k, v) in [i, f, g, o, c2, o * c2.tanh()].into_iter().enumerate() {
                want[k].push(v);
            }
        }
    }
    for (k, t) in values.iter().enumerate() {
        for (e, (&got, &w)) in t.to_vec::<f32>()?.iter().zip(&want[k]).enumerate() {
            assert!(
                (got as f64 - w).abs() < 1e-5,
                "value {k}, element {e}: {got} vs {w}"
            );
        }
    }
    Ok(())
}
