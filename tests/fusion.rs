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
