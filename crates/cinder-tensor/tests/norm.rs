//! Normalisation, dropout, resampling and padding against f64 CPU references
//! on awkward shapes, with gradients checked against finite differences.

mod common;

use cinder_tensor::{PadMode, Tensor};
use common::*;

fn channel_norm_ref(x: &Arr, w: &Arr, b: &Arr, eps: f64) -> Arr {
    let [n, c] = [x.shape[0], x.shape[1]];
    let plane: usize = x.shape[2..].iter().product();
    let mut out = x.data.clone();
    for ch in 0..c {
        let idx = |s: usize, p: usize| (s * c + ch) * plane + p;
        let vals: Vec<f64> = (0..n)
            .flat_map(|s| (0..plane).map(move |p| (s, p)))
            .map(|(s, p)| x.data[idx(s, p)])
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
        for s in 0..n {
            for p in 0..plane {
                let i = idx(s, p);
                out[i] = (x.data[i] - mean) / (var + eps).sqrt() * w.data[ch] + b.data[ch];
            }
        }
    }
    Arr::new(&x.shape, out)
}

#[test]
fn batch_norm_train_forward_and_gradients() {
    let mut rng = Rng::named("batch_norm_train");
    let (shape, c) = ([3, 5, 4, 7], 5);
    check_grad_ref(
        "batch_norm train",
        &[
            rand_input(&mut rng, &shape, -2.0, 2.0),
            rand_input(&mut rng, &[c], 0.5, 1.5),
            rand_input(&mut rng, &[c], -1.0, 1.0),
        ],
        |t| Ok(t[0].batch_norm_train(Some(&t[1]), Some(&t[2]), 1e-5)?.0),
        |a| channel_norm_ref(&a[0], &a[1], &a[2], 1e-5),
    );
}

/// Without weight and bias, on a `[N, C]` batch (BatchNorm1d) and on a
/// 3-D one whose values sit far from zero: the closed-form gradient must
/// match the reference's differences with the mean subtracted.
#[test]
fn batch_norm_train_gradients_without_affine() {
    let mut rng = Rng::named("batch_norm_train_plain");
    for (shape, lo, hi) in [([6usize, 4, 1], -1.0, 1.0), ([2, 3, 5], 40.0, 44.0)] {
        let c = shape[1];
        let (ones, zeros) = (Arr::new(&[c], vec![1.0; c]), Arr::new(&[c], vec![0.0; c]));
        let flat = shape[2] == 1;
        let dims: Vec<usize> = if flat {
            shape[..2].to_vec()
        } else {
            shape.to_vec()
        };
        check_grad_ref(
            "batch_norm train without affine",
            &[rand_input(&mut rng, &dims, lo, hi)],
            |t| Ok(t[0].batch_norm_train(None, None, 1e-5)?.0),
            |a| channel_norm_ref(&a[0], &ones, &zeros, 1e-5),
        );
    }
}

#[test]
fn batch_norm_statistics_are_unbiased() -> cinder_tensor::Result<()> {
    let mut rng = Rng::named("batch_norm_stats");
    let x = rng.vec(2 * 3 * 5, -1.0, 1.0);
    let t = tensor(&x, &[2, 3, 5]);
    let (_, mean, var) = t.batch_norm_train(None, None, 1e-5)?;
    let (mean, var) = (mean.to_vec::<f32>()?, var.to_vec::<f32>()?);
    for ch in 0..3 {
        let vals: Vec<f64> = (0..2)
            .flat_map(|s| (0..5).map(move |p| (s * 3 + ch) * 5 + p))
            .map(|i| x[i] as f64)
            .collect();
        let m = vals.iter().sum::<f64>() / 10.0;
        let v = vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 9.0;
        assert!((mean[ch] as f64 - m).abs() < 1e-5, "mean {ch}");
        assert!(
            (var[ch] as f64 - v).abs() < 1e-5,
            "var {ch}: {} vs {v}",
            var[ch]
        );
    }
    Ok(())
}

#[test]
fn batch_norm_eval_uses_given_statistics() {
    let mut rng = Rng::named("batch_norm_eval");
    let shape = [2, 3, 5, 3];
    let stats_mean = rng.vec(3, -1.0, 1.0);
    let stats_var = rng.vec(3, 0.5, 2.0);
    let (m, v) = (stats_mean.clone(), stats_var.clone());
    check_grad_ref(
        "batch_norm eval",
        &[
            rand_input(&mut rng, &shape, -2.0, 2.0),
            rand_input(&mut rng, &[3], 0.5, 1.5),
            rand_input(&mut rng, &[3], -1.0, 1.0),
        ],
        move |t| {
            let rm = tensor(&stats_mean, &[3]);
            let rv = tensor(&stats_var, &[3]);
            t[0].batch_norm_eval(&rm, &rv, Some(&t[1]), Some(&t[2]), 1e-5)
        },
        move |a| {
            let mut out = a[0].clone();
            for (i, y) in out.data.iter_mut().enumerate() {
                let ch = (i / 15) % 3;
                *y = (*y - m[ch] as f64) / (v[ch] as f64 + 1e-5).sqrt() * a[1].data[ch]
                    + a[2].data[ch];
            }
            out
        },
    );
}

#[test]
fn layer_norm_trailing_dims() {
    let mut rng = Rng::named("layer_norm");
    check_grad_ref(
        "layer_norm over [3, 5]",
        &[
            rand_input(&mut rng, &[2, 3, 5], -2.0, 2.0),
            rand_input(&mut rng, &[3, 5], 0.5, 1.5),
            rand_input(&mut rng, &[3, 5], -1.0, 1.0),
        ],
        |t| t[0].layer_norm(&[3, 5], Some(&t[1]), Some(&t[2]), 1e-5),
        |a| {
            let mut out = a[0].clone();
            for row in out.data.chunks_mut(15) {
                let mean = row.iter().sum::<f64>() / 15.0;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 15.0;
                for (k, y) in row.iter_mut().enumerate() {
                    *y = (*y - mean) / (var + 1e-5).sqrt() * a[1].data[k] + a[2].data[k];
                }
            }
            out
        },
    );
    let x = Tensor::zeros(device(), &[2, 3, 5]);
    assert!(x.layer_norm(&[5, 3], None, None, 1e-5).is_err());
}

#[test]
fn dropout_is_seeded_scaled_and_masks_gradients() -> cinder_tensor::Result<()> {
    let dev = device();
    let n = 20_000;
    let x = Tensor::ones(dev, &[n]).requires_grad_();
    dev.manual_seed(11);
    let y = x.dropout(0.3, true)?;
    let grads = y.sum_all()?.backward()?;
    let values = y.to_vec::<f32>()?;
    let g = grads.get(&x).expect("gradient").to_vec::<f32>()?;
    let kept = values.iter().filter(|&&v| v != 0.0).count();
    let frac = kept as f64 / n as f64;
    assert!((frac - 0.7).abs() < 0.02, "kept {frac}");
    for (v, gv) in values.iter().zip(&g) {
        assert!(*v == 0.0 || (*v - 1.0 / 0.7).abs() < 1e-6, "value {v}");
        assert_eq!(v, gv, "the gradient is the same mask and scale");
    }
    dev.manual_seed(11);
    assert_eq!(
        Tensor::ones(dev, &[n])
            .dropout(0.3, true)?
            .to_vec::<f32>()?,
        values
    );
    assert_eq!(x.dropout(0.3, false)?.to_vec::<f32>()?, vec![1.0; n]);
    assert!(x.dropout(1.5, true).is_err());
    Ok(())
}

fn resize_ref(x: &Arr, size: [usize; 2], bilinear: bool, align: bool) -> Arr {
    let [n, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let src = |o: usize, input: usize, output: usize| -> (usize, usize, f64) {
        if !bilinear {
            let s = ((o * input) / output).min(input - 1);
            return (s, s, 0.0);
        }
        let s = if align {
            if output > 1 {
                o as f64 * (input - 1) as f64 / (output - 1) as f64
            } else {
                0.0
            }
        } else {
            ((o as f64 + 0.5) * input as f64 / output as f64 - 0.5).max(0.0)
        };
        let i0 = (s.floor() as usize).min(input - 1);
        (i0, (i0 + 1).min(input - 1), s - i0 as f64)
    };
    let mut out = Vec::new();
    for b in 0..n {
        for ch in 0..c {
            for oy in 0..size[0] {
                let (y0, y1, fy) = src(oy, h, size[0]);
                for ox in 0..size[1] {
                    let (x0, x1, fx) = src(ox, w, size[1]);
                    let at = |y: usize, xx: usize| x.at(&[b, ch, y, xx]);
                    out.push(
                        (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x1))
                            + fy * ((1.0 - fx) * at(y1, x0) + fx * at(y1, x1)),
                    );
                }
            }
        }
    }
    Arr::new(&[n, c, size[0], size[1]], out)
}

#[test]
fn upsample_nearest_and_bilinear() {
    let mut rng = Rng::named("upsample");
    for size in [[7, 10], [3, 2]] {
        check_grad_ref(
            &format!("upsample_nearest2d to {size:?}"),
            &[rand_input(&mut rng, &[2, 3, 4, 5], -1.0, 1.0)],
            |t| t[0].upsample_nearest2d(size),
            |a| resize_ref(&a[0], size, false, false),
        );
        for align in [false, true] {
            check_grad_ref(
                &format!("upsample_bilinear2d to {size:?} align_corners={align}"),
                &[rand_input(&mut rng, &[1, 2, 4, 5], -1.0, 1.0)],
                |t| t[0].upsample_bilinear2d(size, align),
                |a| resize_ref(&a[0], size, true, align),
            );
        }
    }
}

fn pad_ref(x: &Arr, pad: [usize; 4], reflect: bool) -> Arr {
    let [n, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let [l, r, t, btm] = pad;
    let (oh, ow) = (h + t + btm, w + l + r);
    let mirror = |i: i64, size: usize| -> Option<usize> {
        if reflect {
            let i = if i < 0 { -i } else { i };
            let i = if i >= size as i64 {
                2 * (size as i64 - 1) - i
            } else {
                i
            };
            Some(i as usize)
        } else if i < 0 || i >= size as i64 {
            None
        } else {
            Some(i as usize)
        }
    };
    let mut out = Vec::new();
    for b in 0..n {
        for ch in 0..c {
            for y in 0..oh {
                for xx in 0..ow {
                    let sy = mirror(y as i64 - t as i64, h);
                    let sx = mirror(xx as i64 - l as i64, w);
                    out.push(match (sy, sx) {
                        (Some(sy), Some(sx)) => x.at(&[b, ch, sy, sx]),
                        _ => 0.0,
                    });
                }
            }
        }
    }
    Arr::new(&[n, c, oh, ow], out)
}

#[test]
fn pad2d_zeros_and_reflect() {
    let mut rng = Rng::named("pad2d");
    for (pad, mode) in [
        ([1, 2, 3, 0], PadMode::Zeros),
        ([2, 1, 0, 3], PadMode::Reflect),
        ([3, 3, 1, 1], PadMode::Reflect),
    ] {
        let reflect = mode == PadMode::Reflect;
        check_grad_ref(
            &format!("pad2d {pad:?} {mode:?}"),
            &[rand_input(&mut rng, &[2, 1, 5, 4], -1.0, 1.0)],
            |t| t[0].pad2d(pad, mode),
            |a| pad_ref(&a[0], pad, reflect),
        );
    }
    let x = Tensor::zeros(device(), &[1, 1, 3, 3]);
    assert!(x.pad2d([3, 0, 0, 0], PadMode::Reflect).is_err());
}
