//! Convolution and pooling against plain f64 CPU references on awkward shapes
//! (odd sizes, 1x1 and 7x7 kernels, batch 1, channels not a multiple of 4),
//! with every gradient checked against finite differences.

mod common;

use cinder_tensor::{Conv2dOptions, Pool2dOptions, Tensor};
use common::*;

// ---- f64 references ------------------------------------------------------------------

/// PyTorch's conv2d, straight from its definition.
fn conv2d_ref(x: &Arr, w: &Arr, b: Option<&Arr>, o: Conv2dOptions) -> Arr {
    let [n, ci, h, wd] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let [co, cig, kh, kw] = [w.shape[0], w.shape[1], w.shape[2], w.shape[3]];
    let cog = co / o.groups;
    let oh = (h + 2 * o.padding[0] - o.dilation[0] * (kh - 1) - 1) / o.stride[0] + 1;
    let ow = (wd + 2 * o.padding[1] - o.dilation[1] * (kw - 1) - 1) / o.stride[1] + 1;
    let mut out = vec![0.0; n * co * oh * ow];
    for b_ in 0..n {
        for c in 0..co {
            let g = c / cog;
            for y in 0..oh {
                for xo in 0..ow {
                    let mut acc = b.map_or(0.0, |b| b.data[c]);
                    for k in 0..cig {
                        let cin = g * cig + k;
                        for i in 0..kh {
                            for j in 0..kw {
                                let iy = (y * o.stride[0] + i * o.dilation[0]) as i64
                                    - o.padding[0] as i64;
                                let ix = (xo * o.stride[1] + j * o.dilation[1]) as i64
                                    - o.padding[1] as i64;
                                if iy < 0 || ix < 0 || iy >= h as i64 || ix >= wd as i64 {
                                    continue;
                                }
                                acc += x.at(&[b_, cin, iy as usize, ix as usize])
                                    * w.at(&[c, k, i, j]);
                            }
                        }
                    }
                    out[((b_ * co + c) * oh + y) * ow + xo] = acc;
                }
            }
        }
    }
    let _ = ci;
    Arr::new(&[n, co, oh, ow], out)
}

/// PyTorch's conv_transpose2d: every input pixel scatters its weighted kernel.
fn conv_transpose2d_ref(
    x: &Arr,
    w: &Arr,
    b: Option<&Arr>,
    o: Conv2dOptions,
    output_padding: [usize; 2],
) -> Arr {
    let [n, ci, h, wd] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let [_, cog, kh, kw] = [w.shape[0], w.shape[1], w.shape[2], w.shape[3]];
    let co = cog * o.groups;
    let cig = ci / o.groups;
    let oh =
        (h - 1) * o.stride[0] - 2 * o.padding[0] + o.dilation[0] * (kh - 1) + output_padding[0] + 1;
    let ow = (wd - 1) * o.stride[1] - 2 * o.padding[1]
        + o.dilation[1] * (kw - 1)
        + output_padding[1]
        + 1;
    let mut out = vec![0.0; n * co * oh * ow];
    for b_ in 0..n {
        for c in 0..co {
            for y in 0..oh {
                for xo in 0..ow {
                    out[((b_ * co + c) * oh + y) * ow + xo] = b.map_or(0.0, |b| b.data[c]);
                }
            }
        }
        for cin in 0..ci {
            let g = cin / cig;
            for iy in 0..h {
                for ix in 0..wd {
                    let v = x.at(&[b_, cin, iy, ix]);
                    for k in 0..cog {
                        let c = g * cog + k;
                        for i in 0..kh {
                            for j in 0..kw {
                                let y = (iy * o.stride[0] + i * o.dilation[0]) as i64
                                    - o.padding[0] as i64;
                                let xo = (ix * o.stride[1] + j * o.dilation[1]) as i64
                                    - o.padding[1] as i64;
                                if y < 0 || xo < 0 || y >= oh as i64 || xo >= ow as i64 {
                                    continue;
                                }
                                out[((b_ * co + c) * oh + y as usize) * ow + xo as usize] +=
                                    v * w.at(&[cin, k, i, j]);
                            }
                        }
                    }
                }
            }
        }
    }
    Arr::new(&[n, co, oh, ow], out)
}

/// Window positions along one axis, as PyTorch computes them for pooling.
fn pool_positions(size: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> usize {
    let room = size + 2 * p - d * (k - 1) - 1;
    let mut n = if ceil {
        room.div_ceil(s) + 1
    } else {
        room / s + 1
    };
    if ceil && (n - 1) * s >= size + p {
        n -= 1;
    }
    n
}

/// Max over each window's taps inside the image; avg with PyTorch's divisor.
fn pool_ref(x: &Arr, o: Pool2dOptions, max: bool, count_include_pad: bool) -> Arr {
    let [n, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let pos = |axis: usize, size: usize| {
        pool_positions(
            size,
            o.kernel[axis],
            o.stride[axis],
            o.padding[axis],
            o.dilation[axis],
            o.ceil_mode,
        )
    };
    let (oh, ow) = (pos(0, h), pos(1, w));
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for b in 0..n {
        for ch in 0..c {
            for y in 0..oh {
                for xo in 0..ow {
                    let y0 = (y * o.stride[0]) as i64 - o.padding[0] as i64;
                    let x0 = (xo * o.stride[1]) as i64 - o.padding[1] as i64;
                    let mut best = f64::NEG_INFINITY;
                    let mut sum = 0.0;
                    for i in 0..o.kernel[0] {
                        for j in 0..o.kernel[1] {
                            let iy = y0 + (i * o.dilation[0]) as i64;
                            let ix = x0 + (j * o.dilation[1]) as i64;
                            if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                continue;
                            }
                            let v = x.at(&[b, ch, iy as usize, ix as usize]);
                            best = best.max(v);
                            sum += v;
                        }
                    }
                    if max {
                        out.push(best);
                    } else {
                        let (limit_y, limit_x, lo_y, lo_x) = if count_include_pad {
                            ((h + o.padding[0]) as i64, (w + o.padding[1]) as i64, y0, x0)
                        } else {
                            (h as i64, w as i64, y0.max(0), x0.max(0))
                        };
                        let rows = (y0 + o.kernel[0] as i64).min(limit_y) - lo_y;
                        let cols = (x0 + o.kernel[1] as i64).min(limit_x) - lo_x;
                        out.push(sum / (rows * cols) as f64);
                    }
                }
            }
        }
    }
    Arr::new(&[n, c, oh, ow], out)
}

fn adaptive_avg_ref(x: &Arr, out: [usize; 2]) -> Arr {
    let [n, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let mut v = Vec::new();
    for b in 0..n {
        for ch in 0..c {
            for i in 0..out[0] {
                let (y0, y1) = (i * h / out[0], ((i + 1) * h).div_ceil(out[0]));
                for j in 0..out[1] {
                    let (x0, x1) = (j * w / out[1], ((j + 1) * w).div_ceil(out[1]));
                    let mut s = 0.0;
                    for y in y0..y1 {
                        for col in x0..x1 {
                            s += x.at(&[b, ch, y, col]);
                        }
                    }
                    v.push(s / ((y1 - y0) * (x1 - x0)) as f64);
                }
            }
        }
    }
    Arr::new(&[n, c, out[0], out[1]], v)
}

// ---- checks ---------------------------------------------------------------------------

struct ConvCase {
    x: [usize; 4],
    w: [usize; 4],
    bias: bool,
    opts: Conv2dOptions,
}

fn conv_case(name: &str, case: ConvCase) {
    let mut rng = Rng::named(name);
    let mut inputs = vec![
        rand_input(&mut rng, &case.x, -1.0, 1.0),
        rand_input(&mut rng, &case.w, -1.0, 1.0),
    ];
    if case.bias {
        inputs.push(rand_input(&mut rng, &[case.w[0]], -1.0, 1.0));
    }
    let opts = case.opts;
    check_grad_ref(
        name,
        &inputs,
        |t| t[0].conv2d(&t[1], t.get(2), opts),
        |a| conv2d_ref(&a[0], &a[1], a.get(2), opts),
    );
}

#[test]
fn conv2d_3x3_padded_with_bias() {
    conv_case(
        "conv2d 3x3 pad 1",
        ConvCase {
            x: [2, 3, 7, 9],
            w: [5, 3, 3, 3],
            bias: true,
            opts: Conv2dOptions::default().padding(1),
        },
    );
}

#[test]
fn conv2d_7x7_strided_batch_1() {
    conv_case(
        "conv2d 7x7 stride 2 pad 3",
        ConvCase {
            x: [1, 2, 11, 8],
            w: [3, 2, 7, 7],
            bias: true,
            opts: Conv2dOptions::default().stride(2).padding(3),
        },
    );
}

#[test]
fn conv2d_1x1() {
    conv_case(
        "conv2d 1x1",
        ConvCase {
            x: [2, 5, 5, 3],
            w: [7, 5, 1, 1],
            bias: false,
            opts: Conv2dOptions::default(),
        },
    );
}

/// Output channels in whole texels and stride 1: on a CPU adapter the input
/// gradient is the convolution of dY with the flipped kernel, its windows
/// fetched from dY^T's texture (see `conv2d_input_gradient_fetches_windows_from_a_texture`),
/// here checked against finite differences with a dilated kernel that is
/// not square.
#[test]
fn conv2d_channels_in_texels_dilated() {
    conv_case(
        "conv2d 3x2 dilated, 8 output channels",
        ConvCase {
            x: [2, 3, 7, 9],
            w: [8, 3, 3, 2],
            bias: true,
            opts: Conv2dOptions {
                padding: [1, 2],
                dilation: [1, 2],
                ..Conv2dOptions::default()
            },
        },
    );
}

#[test]
fn conv2d_groups_dilation_uneven_stride() {
    conv_case(
        "conv2d groups 2 dilation 2",
        ConvCase {
            x: [2, 4, 9, 10],
            w: [6, 2, 3, 2],
            bias: true,
            opts: Conv2dOptions {
                stride: [2, 3],
                padding: [1, 2],
                dilation: [2, 1],
                groups: 2,
            },
        },
    );
}

#[test]
fn conv2d_depthwise() {
    conv_case(
        "conv2d depthwise",
        ConvCase {
            x: [2, 3, 6, 5],
            w: [3, 1, 3, 3],
            bias: true,
            opts: Conv2dOptions::default().padding(1).groups(3),
        },
    );
}

/// With its weight frozen, or autodiff off, a convolution over channels in
/// whole texels fetches its windows from a channels-last copy of the
/// input on a CPU adapter (no unfold): its value, and with the weight
/// frozen its input gradient, must match the reference; the frozen weight
/// and bias get no gradient, and thaw when the guard goes.
#[test]
fn conv2d_with_its_weight_frozen_fetches_its_windows() {
    let mut rng = Rng::named("conv2d frozen");
    let opts = Conv2dOptions {
        stride: [2, 1],
        padding: [1, 0],
        dilation: [1, 2],
        groups: 1,
    };
    let (xs, ws) = ([3, 8, 9, 7], [6, 8, 3, 2]);
    let x = rng.vec(numel(&xs), -1.0, 1.0);
    let w = rng.vec(numel(&ws), -1.0, 1.0);
    let b = rng.vec(6, -1.0, 1.0);
    let (xa, wa, ba) = (
        Arr::from_f32(&x, &xs),
        Arr::from_f32(&w, &ws),
        Arr::from_f32(&b, &[6]),
    );
    let weight = tensor(&w, &ws).requires_grad_();
    let bias = tensor(&b, &[6]).requires_grad_();
    let want = conv2d_ref(&xa, &wa, Some(&ba), opts);
    let under_no_grad =
        cinder_tensor::with_no_grad(|| tensor(&x, &xs).conv2d(&weight, Some(&bias), opts));
    check("under no_grad", &ok("conv2d", under_no_grad), &want);

    let xg = tensor(&x, &xs).requires_grad_();
    let y = {
        let _frozen = cinder_tensor::freeze(&[weight.clone(), bias.clone()]);
        assert!(!weight.requires_grad() && xg.requires_grad());
        ok("frozen", xg.conv2d(&weight, Some(&bias), opts))
    };
    assert!(
        weight.requires_grad(),
        "the guard is gone: the weight thaws"
    );
    check("frozen", &y, &want);
    let grads = ok("backward", y.sum_all().and_then(|s| s.backward()));
    assert!(grads.get(&weight).is_none() && grads.get(&bias).is_none());

    let weight_c = weight.clone();
    check_grad_ref(
        "conv2d frozen weight, input gradient",
        &[rand_input(&mut rng, &xs, -1.0, 1.0)],
        move |t| {
            let _frozen = cinder_tensor::freeze(std::slice::from_ref(&weight_c));
            t[0].conv2d(&weight_c, None, opts)
        },
        move |a| conv2d_ref(&a[0], &wa, None, opts),
    );
}

#[test]
fn conv2d_shape_errors() {
    let dev = device();
    let x = Tensor::zeros(dev, &[1, 4, 5, 5]);
    let w = Tensor::zeros(dev, &[6, 3, 3, 3]);
    let err = x
        .conv2d(&w, None, Conv2dOptions::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("conv2d") && err.contains("[6, 3, 3, 3]"),
        "{err}"
    );
    let w = Tensor::zeros(dev, &[2, 4, 7, 7]);
    assert!(x.conv2d(&w, None, Conv2dOptions::default()).is_err());
    let w = Tensor::zeros(dev, &[2, 4, 3, 3]);
    let b = Tensor::zeros(dev, &[3]);
    assert!(x.conv2d(&w, Some(&b), Conv2dOptions::default()).is_err());
    assert!(x
        .conv2d(&w, None, Conv2dOptions::default().stride(0))
        .is_err());
    assert!(Tensor::zeros(dev, &[4, 5, 5])
        .conv2d(&w, None, Conv2dOptions::default())
        .is_err());
}

#[test]
fn conv_transpose2d_strided_output_padding() {
    let mut rng = Rng::named("conv_transpose2d");
    let opts = Conv2dOptions::default().stride(2).padding(1);
    check_grad_ref(
        "conv_transpose2d stride 2 pad 1 output_padding 1",
        &[
            rand_input(&mut rng, &[2, 3, 4, 5], -1.0, 1.0),
            rand_input(&mut rng, &[3, 4, 3, 3], -1.0, 1.0),
            rand_input(&mut rng, &[4], -1.0, 1.0),
        ],
        |t| t[0].conv_transpose2d(&t[1], Some(&t[2]), opts, [1, 1]),
        |a| conv_transpose2d_ref(&a[0], &a[1], Some(&a[2]), opts, [1, 1]),
    );
}

/// A 1x1 input spread by a 5x3 kernel (a DCGAN generator's first layer)
/// is one product, whatever the stride; cropped by padding it takes the
/// fold, which visits only the taps that land on a window (one per pixel).
/// Then a stride of 3 over a kernel of 2 (pixels no tap reaches), padded
/// on one axis, with output padding.
#[test]
fn conv_transpose2d_taps_from_a_point_and_past_the_kernel() {
    let mut rng = Rng::named("conv_transpose2d taps");
    for (what, opts) in [
        ("a product", Conv2dOptions::default().stride(2)),
        ("cropped, a fold", Conv2dOptions::default().padding(1)),
    ] {
        check_grad_ref(
            &format!("conv_transpose2d from 1x1, kernel 5x3, {what}"),
            &[
                rand_input(&mut rng, &[2, 3, 1, 1], -1.0, 1.0),
                rand_input(&mut rng, &[3, 2, 5, 3], -1.0, 1.0),
                rand_input(&mut rng, &[2], -1.0, 1.0),
            ],
            |t| t[0].conv_transpose2d(&t[1], Some(&t[2]), opts, [0, 0]),
            |a| conv_transpose2d_ref(&a[0], &a[1], Some(&a[2]), opts, [0, 0]),
        );
    }
    let opts = Conv2dOptions {
        stride: [3, 3],
        padding: [1, 0],
        dilation: [1, 1],
        groups: 1,
    };
    check_grad_ref(
        "conv_transpose2d stride 3 kernel 2",
        &[
            rand_input(&mut rng, &[1, 2, 3, 4], -1.0, 1.0),
            rand_input(&mut rng, &[2, 3, 2, 2], -1.0, 1.0),
        ],
        |t| t[0].conv_transpose2d(&t[1], None, opts, [1, 2]),
        |a| conv_transpose2d_ref(&a[0], &a[1], None, opts, [1, 2]),
    );
}

#[test]
fn conv_transpose2d_groups_dilation() {
    let mut rng = Rng::named("conv_transpose2d groups");
    let opts = Conv2dOptions {
        stride: [1, 2],
        padding: [0, 1],
        dilation: [2, 1],
        groups: 2,
    };
    check_grad_ref(
        "conv_transpose2d groups 2 dilation 2",
        &[
            rand_input(&mut rng, &[1, 4, 3, 5], -1.0, 1.0),
            rand_input(&mut rng, &[4, 3, 2, 3], -1.0, 1.0),
        ],
        |t| t[0].conv_transpose2d(&t[1], None, opts, [0, 1]),
        |a| conv_transpose2d_ref(&a[0], &a[1], None, opts, [0, 1]),
    );
}

/// Distinct values so that no window has a tie within the finite-difference step.
fn spread_input(rng: &mut Rng, shape: &[usize]) -> Input {
    input(rng.distinct(numel(shape), 0.05, -1.0), shape)
}

#[test]
fn max_pool2d_padded_ceil_mode() {
    let mut rng = Rng::named("max_pool2d");
    let opts = Pool2dOptions::new(3).stride(2).padding(1).ceil_mode(true);
    check_grad_ref(
        "max_pool2d 3x3 stride 2 pad 1 ceil",
        &[spread_input(&mut rng, &[2, 3, 7, 8])],
        |t| t[0].max_pool2d(opts),
        |a| pool_ref(&a[0], opts, true, true),
    );
}

#[test]
fn max_pool2d_default_stride_and_dilation() {
    let mut rng = Rng::named("max_pool2d dilation");
    let opts = Pool2dOptions::new(2);
    check_grad_ref(
        "max_pool2d 2x2",
        &[spread_input(&mut rng, &[1, 3, 9, 6])],
        |t| t[0].max_pool2d(opts),
        |a| pool_ref(&a[0], opts, true, true),
    );
    let opts = Pool2dOptions::new(3).stride(1).dilation(2);
    check_grad_ref(
        "max_pool2d 3x3 dilation 2",
        &[spread_input(&mut rng, &[2, 1, 7, 7])],
        |t| t[0].max_pool2d(opts),
        |a| pool_ref(&a[0], opts, true, true),
    );
}

/// Max-pooling a ReLU's output is computed as the ReLU of the pooled input
/// (see `max_pool2d`): values and gradients must match pooling the ReLU's
/// output, including windows with no positive value (zero gradient) and
/// padding taps. The values stay 0.025 or more from zero and from each
/// other, beyond the finite-difference step. The GPU differences run
/// without autograd, so they take the unswapped path.
#[test]
fn max_pool2d_of_relu() {
    let mut rng = Rng::named("max_pool2d of relu");
    for (opts, shape) in [
        (Pool2dOptions::new(2), [2, 3, 6, 8]),
        (
            Pool2dOptions::new(3).stride(2).padding(1).ceil_mode(true),
            [1, 2, 7, 8],
        ),
    ] {
        let n = numel(&shape);
        let values = rng.distinct(n, 0.05, 0.025 - 0.05 * (n / 2) as f64);
        let relu = |a: &Arr| Arr::new(&a.shape, a.data.iter().map(|&v| v.max(0.0)).collect());
        let windows_without_positive = {
            let pooled = pool_ref(&Arr::from_f32(&values, &shape), opts, true, true);
            pooled.data.iter().filter(|&&v| v < 0.0).count()
        };
        assert!(
            windows_without_positive > 0,
            "some window must have no positive value"
        );
        check_grad_ref(
            &format!("max_pool2d of relu {shape:?}"),
            &[input(values, &shape)],
            |t| t[0].relu()?.max_pool2d(opts),
            |a| pool_ref(&relu(&a[0]), opts, true, true),
        );
    }
}

/// The same at a size where the pooled gradient (after the ReLU's mask) is
/// computed into a buffer of its own rather than inlined into each of the
/// window's taps (large broadcast values are materialized): against
/// PyTorch's rule, the gradient to each window's first maximum of the ReLU's
/// output, times the ReLU's mask there.
#[test]
fn max_pool2d_of_relu_large() {
    let mut rng = Rng::named("max_pool2d of relu, large");
    let [n, c, h, w] = [2, 8, 130, 130];
    let (oh, ow) = (h / 2, w / 2);
    assert!(n * c * oh * ow >= 1 << 16);
    let x = rng.vec(n * c * h * w, -1.0, 1.0);
    let g = rng.vec(n * c * oh * ow, -1.0, 1.0);
    let xt = tensor(&x, &[n, c, h, w]).requires_grad_();
    let y = ok(
        "pool of relu",
        xt.relu().and_then(|r| r.max_pool2d(Pool2dOptions::new(2))),
    );
    let loss = ok(
        "loss",
        y.mul(&tensor(&g, &[n, c, oh, ow]))
            .and_then(|l| l.sum_all()),
    );
    let grads = ok("backward", loss.backward());
    let dx = grads.get(&xt).expect("gradient of x").clone();
    let got = ok("read", cinder_tensor::read_all(&[&y, &dx]));
    let (mut want_y, mut want_dx) = (Vec::new(), vec![0.0f64; x.len()]);
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let taps = [(0, 0), (0, 1), (1, 0), (1, 1)]
                    .map(|(i, j)| plane * h * w + (2 * oy + i) * w + 2 * ox + j);
                let mut first = taps[0];
                for &t in &taps[1..] {
                    if x[t].max(0.0) > x[first].max(0.0) {
                        first = t;
                    }
                }
                want_y.push(x[first].max(0.0) as f64);
                if x[first] > 0.0 {
                    want_dx[first] = g[(plane * oh + oy) * ow + ox] as f64;
                }
            }
        }
    }
    assert_close_msg("pooled", &got[0], &want_y, ATOL, RTOL);
    assert_close_msg("gradient", &got[1], &want_dx, ATOL, RTOL);
}

#[test]
fn max_pool2d_gradient_goes_to_the_first_maximum() -> cinder_tensor::Result<()> {
    // A window of equal values: PyTorch routes the whole gradient to one tap.
    let x = Tensor::from_slice(device(), &[1.0f32; 4], &[1, 1, 2, 2])?.requires_grad_();
    let y = x.max_pool2d(Pool2dOptions::new(2))?;
    let g = y.sum_all()?.backward()?;
    let gx = g.get(&x).expect("gradient of x").to_vec::<f32>()?;
    assert_eq!(gx, vec![1.0, 0.0, 0.0, 0.0]);
    Ok(())
}

#[test]
fn avg_pool2d_divisors() {
    let mut rng = Rng::named("avg_pool2d");
    for include in [true, false] {
        let opts = Pool2dOptions::new(3).stride(2).padding(1).ceil_mode(true);
        check_grad_ref(
            &format!("avg_pool2d 3x3 stride 2 pad 1 ceil count_include_pad={include}"),
            &[rand_input(&mut rng, &[2, 3, 8, 7], -1.0, 1.0)],
            |t| t[0].avg_pool2d(opts, include),
            |a| pool_ref(&a[0], opts, false, include),
        );
    }
}

#[test]
fn adaptive_avg_pool2d_uneven_cells() {
    let mut rng = Rng::named("adaptive_avg_pool2d");
    for out in [[3, 4], [1, 1], [7, 9]] {
        check_grad_ref(
            &format!("adaptive_avg_pool2d to {out:?}"),
            &[rand_input(&mut rng, &[2, 3, 7, 9], -1.0, 1.0)],
            |t| t[0].adaptive_avg_pool2d(out),
            |a| adaptive_avg_ref(&a[0], out),
        );
    }
}

#[test]
fn pool_errors() {
    let x = Tensor::zeros(device(), &[1, 1, 4, 4]);
    assert!(x.max_pool2d(Pool2dOptions::new(5)).is_err());
    assert!(x.max_pool2d(Pool2dOptions::new(2).padding(2)).is_err());
    assert!(x.max_pool2d(Pool2dOptions::new(0)).is_err());
    assert!(x
        .avg_pool2d(Pool2dOptions::new(2).dilation(2), true)
        .is_err());
    assert!(x.adaptive_avg_pool2d([0, 2]).is_err());
}

/// One convolution's forward and gradients at sizes for the texture
/// matmuls (on a CPU adapter), against f64 loops (the finite differences of
/// these formulas are checked on the small shapes above), on a device of
/// its own so that its counters see this step only. Returns the texture
/// products and the operand packs the step ran.
fn conv_texture_step(
    name: &str,
    [n, ci, h, w, co]: [usize; 5],
    kernel: [usize; 2],
    opts: Conv2dOptions,
) -> (u64, u64) {
    let mut rng = Rng::named(name);
    let [kh, kw] = kernel;
    let (x, wt, b) = (
        rng.vec(n * ci * h * w, -1.0, 1.0),
        rng.vec(co * ci * kh * kw, -1.0, 1.0),
        rng.vec(co, -1.0, 1.0),
    );
    let (xa, wa, ba) = (
        Arr::from_f32(&x, &[n, ci, h, w]),
        Arr::from_f32(&wt, &[co, ci, kh, kw]),
        Arr::from_f32(&b, &[co]),
    );
    let want = conv2d_ref(&xa, &wa, Some(&ba), opts);
    let [oh, ow] = [want.shape[2], want.shape[3]];
    let dy = rng.vec(n * co * oh * ow, -1.0, 1.0);
    let (got, counts) = gradient_step(
        name,
        &[(&x, &[n, ci, h, w]), (&wt, &[co, ci, kh, kw]), (&b, &[co])],
        (&dy, &[n, co, oh, ow]),
        |t| t[0].conv2d(&t[1], Some(&t[2]), opts),
    );
    assert_close_msg(&format!("{name}: forward"), &got[0], &want.data, ATOL, RTOL);
    let [want_dx, want_dw, want_db] = conv2d_grads_ref(
        (&x, [n, ci, h, w]),
        (&wt, [co, kh, kw]),
        (&dy, [oh, ow]),
        opts,
    );
    for (what, got, want) in [
        ("input gradient", &got[1], &want_dx),
        ("weight gradient", &got[2], &want_dw),
        ("bias gradient", &got[3], &want_db),
    ] {
        assert_close_msg(&format!("{name}: {what}"), got, want, GRAD_ATOL, GRAD_RTOL);
    }
    counts
}

/// The gradients of `sum(conv2d(x, w) * dy)` (with a bias) by f64 loops:
/// input, weight and bias.
fn conv2d_grads_ref(
    (x, [n, ci, h, w]): (&[f32], [usize; 4]),
    (wt, [co, kh, kw]): (&[f32], [usize; 3]),
    (dy, [oh, ow]): (&[f32], [usize; 2]),
    opts: Conv2dOptions,
) -> [Vec<f64>; 3] {
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; wt.len()], vec![0.0; co]);
    for b_ in 0..n {
        for c in 0..co {
            for y in 0..oh {
                for xo in 0..ow {
                    let g = dy[((b_ * co + c) * oh + y) * ow + xo] as f64;
                    db[c] += g;
                    for k in 0..ci {
                        for i in 0..kh {
                            for j in 0..kw {
                                let iy = (y * opts.stride[0] + i * opts.dilation[0]) as i64
                                    - opts.padding[0] as i64;
                                let ix = (xo * opts.stride[1] + j * opts.dilation[1]) as i64
                                    - opts.padding[1] as i64;
                                if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                    continue;
                                }
                                let xi = ((b_ * ci + k) * h + iy as usize) * w + ix as usize;
                                let wi = ((c * ci + k) * kh + i) * kw + j;
                                dx[xi] += g * wt[wi] as f64;
                                dw[wi] += g * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    [dx, dw, db]
}

/// `forward` over `inputs` (uploaded, requiring gradients) on a device of
/// its own, so that its counters see this step only, and the gradients of
/// `sum(y * dy)`: returns y and each input's gradient, read back, and the
/// texture products and operand packs the step ran.
fn gradient_step(
    name: &str,
    inputs: &[(&[f32], &[usize])],
    (dy, dy_shape): (&[f32], &[usize]),
    forward: impl Fn(&[Tensor]) -> cinder_tensor::Result<Tensor>,
) -> (Vec<Vec<f32>>, (u64, u64)) {
    let dev = ok(
        "second device",
        cinder_tensor::Device::with_options(&cinder_tensor::runtime::DeviceOptions::from_env()),
    );
    let before = dev.stats();
    let tensors: Vec<Tensor> = inputs
        .iter()
        .map(|(data, shape)| ok("upload", Tensor::from_slice(&dev, data, shape)).requires_grad_())
        .collect();
    let out = ok(name, forward(&tensors));
    let loss = ok(
        "loss",
        Tensor::from_slice(&dev, dy, dy_shape)
            .and_then(|g| out.mul(&g))
            .and_then(|l| l.sum_all()),
    );
    let grads = ok("backward", loss.backward());
    let mut read = vec![out.clone()];
    read.extend(
        tensors
            .iter()
            .map(|t| grads.get(t).expect("gradient").clone()),
    );
    let got = ok(
        "read",
        cinder_tensor::read_all(&read.iter().collect::<Vec<_>>()),
    );
    let stats = dev.stats();
    let counts = (
        stats.texture_products - before.texture_products,
        stats.operand_packs - before.operand_packs,
    );
    if !dev.texture_matmul() {
        assert_eq!(counts, (0, 0), "{name}: no textures on this adapter");
    }
    (got, counts)
}

/// A convolution big enough for the texture matmuls: its unfolded input
/// feeds both the forward product and the weight gradient, its transposed
/// output gradient both the input and weight gradients, and their kernels
/// compute them straight into the products' operand textures. With 38
/// output channels (not whole texels) the input gradient is a GEMM and a
/// fold, whose weight operand is the one pack; the weight gradient is split
/// along K.
#[test]
fn conv2d_operands_computed_into_textures() {
    let counts = conv_texture_step(
        "conv2d into textures",
        [4, 5, 16, 16, 38],
        [3, 3],
        Conv2dOptions::default().padding(1),
    );
    if device().texture_matmul() {
        assert_eq!(counts, (3, 1), "texture products and packs");
    }
}

/// A DCGAN generator's strided transposed convolution at a size for the
/// texture matmuls: the forward is the input gradient of a convolution,
/// computed one output phase at a time (four implicit GEMMs, where the
/// GEMM-then-fold runs one), and its gradients are that convolution's
/// forward and weight gradient; all against f64 loops (the finite
/// differences of the formulas are checked on the small shapes above).
#[test]
fn conv_transpose2d_by_phases() {
    let (n, ci, h, w, co, k) = (4, 64, 7, 7, 32, 4);
    let opts = Conv2dOptions::default().stride(2).padding(1);
    let mut rng = Rng::named("conv_transpose2d phases");
    let (x, wt, b) = (
        rng.vec(n * ci * h * w, -1.0, 1.0),
        rng.vec(ci * co * k * k, -1.0, 1.0),
        rng.vec(co, -1.0, 1.0),
    );
    let (xa, wa, ba) = (
        Arr::from_f32(&x, &[n, ci, h, w]),
        Arr::from_f32(&wt, &[ci, co, k, k]),
        Arr::from_f32(&b, &[co]),
    );
    let want = conv_transpose2d_ref(&xa, &wa, Some(&ba), opts, [0, 0]);
    let [oh, ow] = [want.shape[2], want.shape[3]];
    let dy = rng.vec(n * co * oh * ow, -1.0, 1.0);
    let (got, (products, _)) = gradient_step(
        "conv_transpose2d by phases",
        &[(&x, &[n, ci, h, w]), (&wt, &[ci, co, k, k]), (&b, &[co])],
        (&dy, &[n, co, oh, ow]),
        |t| t[0].conv_transpose2d(&t[1], Some(&t[2]), opts, [0, 0]),
    );
    assert_close_msg("phases: forward", &got[0], &want.data, ATOL, RTOL);
    // The transposed convolution is the adjoint of the convolution of dY
    // by the same weight ([C_in, C_out, K, K] read as [out, in, K, K]): its
    // input gradient is that convolution's forward, its weight gradient
    // that convolution's weight gradient against x.
    let dya = Arr::from_f32(&dy, &[n, co, oh, ow]);
    let want_dx = conv2d_ref(&dya, &wa, None, opts).data;
    let [_, want_dw, _] = conv2d_grads_ref(
        (&dy, [n, co, oh, ow]),
        (&wt, [ci, k, k]),
        (&x, [h, w]),
        opts,
    );
    let want_db: Vec<f64> = (0..co)
        .map(|c| {
            (0..n)
                .flat_map(|b_| &dya.data[(b_ * co + c) * oh * ow..][..oh * ow])
                .sum()
        })
        .collect();
    for (what, got, want) in [
        ("input gradient", &got[1], &want_dx),
        ("weight gradient", &got[2], &want_dw),
        ("bias gradient", &got[3], &want_db),
    ] {
        assert_close_msg(&format!("phases: {what}"), got, want, GRAD_ATOL, GRAD_RTOL);
    }
    if device().texture_matmul() {
        // Four phases and the two gradients' products; the GEMM-then-fold
        // would run three.
        assert_eq!(products, 6, "texture products");
    }
}

/// Over one input channel the input gradient's products have one column:
/// the stride-1 windows stay a product (the texture kernel fetches them, a
/// matrix-vector reduction would compute every window's index anew), and a
/// strided layer keeps the GEMM-then-fold (phases would pad one column to
/// the kernel's 32).
#[test]
fn conv2d_input_gradient_over_one_channel() {
    for (name, kernel, opts) in [
        (
            "one channel 3x3",
            [3, 3],
            Conv2dOptions::default().padding(1),
        ),
        (
            "one channel 4x4 stride 2",
            [4, 4],
            Conv2dOptions::default().stride(2).padding(1),
        ),
    ] {
        conv_texture_step(name, [8, 1, 16, 16, 64], kernel, opts);
    }
}

/// A strided convolution whose stride divides its kernel and its image
/// (a DCGAN's 4x4 stride-2 layers) computes its input gradient one output
/// phase at a time, each a GEMM over dY's windows: the DCGAN layer (its
/// four phases big enough for the implicit texture kernel, where the
/// GEMM-then-fold runs one texture product), a 2x2 stride-2 kernel, an
/// uneven stride (3 down, 1 across) with a kernel that is not square, and
/// padding too wide for the phases (3 on a 4x4 stride-2 kernel: the
/// GEMM-then-fold).
#[test]
fn conv2d_strided_input_gradient_by_phases() {
    for (name, dims, kernel, opts, phases) in [
        (
            "phases 4x4 stride 2",
            [8, 64, 14, 14, 32],
            [4, 4],
            Conv2dOptions::default().stride(2).padding(1),
            Some(4),
        ),
        (
            "phases 2x2 stride 2",
            [3, 68, 24, 24, 8],
            [2, 2],
            Conv2dOptions::default().stride(2),
            None,
        ),
        (
            "phases 6x3 stride 3x1",
            [4, 66, 15, 10, 12],
            [6, 3],
            Conv2dOptions {
                stride: [3, 1],
                padding: [2, 1],
                ..Conv2dOptions::default()
            },
            None,
        ),
        (
            "phases refused, padding 3",
            [2, 4, 8, 8, 4],
            [4, 4],
            Conv2dOptions::default().stride(2).padding(3),
            None,
        ),
    ] {
        let (texture_products, _) = conv_texture_step(name, dims, kernel, opts);
        if let (true, Some(phases)) = (device().texture_matmul(), phases) {
            assert_eq!(texture_products, phases, "{name}: texture products");
        }
    }
}

/// With output channels in whole texels and stride 1, the input gradient is
/// the convolution of dY with the flipped kernel, and the texture kernel
/// fetches dY's windows straight from the dY^T texture (an implicit GEMM,
/// no unfold of dY, no fold): padding, a dilation and a kernel that is not
/// square check that the fetch finds each tap; 6 input channels give a
/// product narrower than its block.
#[test]
fn conv2d_input_gradient_fetches_windows_from_a_texture() {
    for (name, dims, kernel, opts) in [
        (
            "implicit input gradient 3x3",
            [4, 5, 16, 16, 40],
            [3, 3],
            Conv2dOptions::default().padding(1),
        ),
        (
            "implicit input gradient 3x2 dilated",
            [4, 6, 20, 20, 36],
            [3, 2],
            Conv2dOptions {
                padding: [2, 1],
                dilation: [2, 1],
                ..Conv2dOptions::default()
            },
        ),
    ] {
        // No pack: the flipped weights, dY^T and the unfolded input are all
        // computed into their textures (the GEMM-then-fold would pack W).
        let counts = conv_texture_step(name, dims, kernel, opts);
        if device().texture_matmul() {
            assert_eq!(counts, (3, 0), "{name}: texture products and packs");
        }
    }
}

/// A strided, padded convolution whose input is a leaky ReLU of a product's
/// rows read as NCHW (a DCGAN discriminator's second layer): the unfold
/// computes the ReLU of one permuted load at each tap instead of reading a
/// stored copy, its padding taps clamped to the image and discarded, and
/// the permutation's coordinates come from the tap's own. Against f64
/// loops, forward only (the finite differences are checked above).
#[test]
fn conv2d_of_a_leaky_relu_of_a_permuted_product() {
    let (n, c, h, w, co) = (3, 8, 10, 10, 16);
    let opts = Conv2dOptions::default().stride(2).padding(1);
    let mut rng = Rng::named("conv2d of an inlined leaky ReLU");
    let rows = rng.vec(c * n * h * w, -1.0, 1.0);
    let wt = rng.vec(co * c * 16, -1.0, 1.0);
    let x = ok(
        "leaky ReLU of NCHW rows",
        tensor(&rows, &[c, n * h * w])
            .reshape(&[c, n, h, w])
            .and_then(|t| t.permute(&[1, 0, 2, 3]))
            .and_then(|t| t.leaky_relu(0.2)),
    );
    let y = ok("conv2d", x.conv2d(&tensor(&wt, &[co, c, 4, 4]), None, opts));
    let xa = Arr::from_f32(&rows, &[c, n, h, w])
        .permute(&[1, 0, 2, 3])
        .map(|v| if v > 0.0 { v } else { 0.2 * v });
    let want = conv2d_ref(&xa, &Arr::from_f32(&wt, &[co, c, 4, 4]), None, opts);
    check_tol("conv2d of a leaky ReLU", &y, &want, 1e-4, 1e-4);
}
