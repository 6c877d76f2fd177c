//! Max pooling with indices, `max_unpool2d`, adaptive max pooling, group
//! and instance normalisation, and replicate/circular padding against f64
//! references, with gradients by finite differences.

#![allow(clippy::type_complexity)]

mod common;

use cinder_tensor::{Error, PadMode, Pool2dOptions, Tensor};
use common::*;

// ---- references -------------------------------------------------------------------------------

/// PyTorch's number of windows along one axis.
fn windows(size: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> usize {
    let span = d * (k - 1) + 1;
    let room = size + 2 * p - span;
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

/// Max pooling as PyTorch's CPU kernel: the first strictly greater value
/// in scan order wins; the index is `h * W + w` in the input plane.
fn max_pool_ref(x: &Arr, o: &Pool2dOptions) -> (Arr, Vec<i32>) {
    let [n, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let oh = windows(
        h,
        o.kernel[0],
        o.stride[0],
        o.padding[0],
        o.dilation[0],
        o.ceil_mode,
    );
    let ow = windows(
        w,
        o.kernel[1],
        o.stride[1],
        o.padding[1],
        o.dilation[1],
        o.ceil_mode,
    );
    let mut vals = Vec::new();
    let mut idx = Vec::new();
    for b in 0..n {
        for ch in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut best = (f64::NEG_INFINITY, -1i64);
                    for ky in 0..o.kernel[0] {
                        for kx in 0..o.kernel[1] {
                            let iy = (oy * o.stride[0] + ky * o.dilation[0]) as i64
                                - o.padding[0] as i64;
                            let ix = (ox * o.stride[1] + kx * o.dilation[1]) as i64
                                - o.padding[1] as i64;
                            if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                continue;
                            }
                            let v = x.at(&[b, ch, iy as usize, ix as usize]);
                            if best.1 < 0 || v > best.0 {
                                best = (v, iy * w as i64 + ix);
                            }
                        }
                    }
                    vals.push(best.0);
                    idx.push(best.1 as i32);
                }
            }
        }
    }
    (Arr::new(&[n, c, oh, ow], vals), idx)
}

/// Writes each value at its index of an `[N, C, OH, OW]` plane of zeros,
/// in row-major order (the last write wins, as PyTorch's CPU kernel).
fn unpool_ref(x: &Arr, idx: &[i32], out: [usize; 2]) -> Arr {
    let [n, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let plane = out[0] * out[1];
    let mut data = vec![0.0; n * c * plane];
    for p in 0..n * c {
        for i in 0..h * w {
            data[p * plane + idx[p * h * w + i] as usize] = x.data[p * h * w + i];
        }
    }
    Arr::new(&[n, c, out[0], out[1]], data)
}

fn adaptive_max_ref(x: &Arr, out: [usize; 2]) -> (Arr, Vec<i32>) {
    let [n, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let span =
        |size: usize, cells: usize, i: usize| (i * size / cells, ((i + 1) * size).div_ceil(cells));
    let (mut vals, mut idx) = (Vec::new(), Vec::new());
    for b in 0..n {
        for ch in 0..c {
            for i in 0..out[0] {
                for j in 0..out[1] {
                    let (r0, r1) = span(h, out[0], i);
                    let (c0, c1) = span(w, out[1], j);
                    let mut best = (f64::NEG_INFINITY, -1i64);
                    for r in r0..r1 {
                        for q in c0..c1 {
                            let v = x.at(&[b, ch, r, q]);
                            if best.1 < 0 || v > best.0 {
                                best = (v, (r * w + q) as i64);
                            }
                        }
                    }
                    vals.push(best.0);
                    idx.push(best.1 as i32);
                }
            }
        }
    }
    (Arr::new(&[n, c, out[0], out[1]], vals), idx)
}

fn group_norm_ref(x: &Arr, groups: usize, w: Option<&Arr>, b: Option<&Arr>, eps: f64) -> Arr {
    let (n, c) = (x.shape[0], x.shape[1]);
    let spatial: usize = x.shape[2..].iter().product();
    let per = c / groups * spatial;
    let mut out = x.data.clone();
    for s in 0..n {
        for g in 0..groups {
            let start = (s * c + g * (c / groups)) * spatial;
            let vals = &x.data[start..start + per];
            let mean = vals.iter().sum::<f64>() / per as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / per as f64;
            for (k, v) in vals.iter().enumerate() {
                let ch = g * (c / groups) + k / spatial;
                let y = (v - mean) / (var + eps).sqrt();
                let y = y * w.map_or(1.0, |w| w.data[ch]) + b.map_or(0.0, |b| b.data[ch]);
                out[start + k] = y;
            }
        }
    }
    Arr::new(&x.shape, out)
}

fn pad_ref(x: &Arr, pad: [usize; 4], mode: PadMode) -> Arr {
    let r = x.rank();
    let [left, right, top, bottom] = pad;
    let (h, w) = (x.shape[r - 2], x.shape[r - 1]);
    let mut shape = x.shape.clone();
    shape[r - 2] = h + top + bottom;
    shape[r - 1] = w + left + right;
    let src = |i: usize, before: usize, n: usize| -> usize {
        let j = i as i64 - before as i64;
        match mode {
            PadMode::Replicate => j.clamp(0, n as i64 - 1) as usize,
            PadMode::Circular => j.rem_euclid(n as i64) as usize,
            _ => unreachable!("reference for replicate and circular only"),
        }
    };
    Arr::from_fn(&shape, |cd| {
        let mut s = cd.to_vec();
        s[r - 2] = src(cd[r - 2], top, h);
        s[r - 1] = src(cd[r - 1], left, w);
        x.at(&s)
    })
}

fn pool_cases() -> Vec<(Vec<usize>, Pool2dOptions)> {
    vec![
        (vec![2, 3, 7, 9], Pool2dOptions::new(2)),
        (vec![2, 3, 7, 9], Pool2dOptions::new(3).stride(2).padding(1)),
        (vec![1, 5, 8, 8], Pool2dOptions::new(3).stride(1)),
        (vec![1, 2, 9, 7], Pool2dOptions::new(2).dilation(2)),
        (vec![2, 1, 7, 7], Pool2dOptions::new(2).ceil_mode(true)),
        (vec![1, 1, 1, 1], Pool2dOptions::new(1)),
    ]
}

// ---- max pooling with indices -----------------------------------------------------------------

#[test]
fn max_pool2d_with_indices_matches_pytorch() {
    let mut rng = Rng::named("max_pool_indices");
    for (shape, o) in pool_cases() {
        let x = rng.distinct(numel(&shape), 0.01, -2.0);
        let (vals, idx) = ok(
            "max_pool2d_with_indices",
            tensor(&x, &shape).max_pool2d_with_indices(o),
        );
        let (want, want_idx) = max_pool_ref(&Arr::from_f32(&x, &shape), &o);
        let what = format!("max_pool2d_with_indices {shape:?} {o:?}");
        check(&what, &vals, &want);
        assert_eq!(idx.shape(), &want.shape[..], "{what}: index shape");
        assert_eq!(read_i32(&what, &idx), want_idx, "{what}: indices");
        // The values agree with plain max pooling.
        check(
            &what,
            &ok("max_pool2d", tensor(&x, &shape).max_pool2d(o)),
            &want,
        );
    }
}

#[test]
fn max_pool2d_indices_take_the_first_maximum() {
    // Ties: PyTorch keeps the first maximum in scan order.
    let x = [1.0, 3.0, 3.0, 0.0, 3.0, 3.0, 2.0, 2.0, 2.0];
    let (_, idx) = ok(
        "pool",
        tensor(&x, &[1, 1, 3, 3]).max_pool2d_with_indices(Pool2dOptions::new(2).stride(1)),
    );
    assert_eq!(read_i32("indices", &idx), vec![1, 1, 4, 4]);
}

#[test]
fn max_pool2d_with_indices_gradient() {
    let mut rng = Rng::named("max_pool_indices grad");
    for (shape, o) in pool_cases().into_iter().take(4) {
        let x = rng.distinct(numel(&shape), 0.05, -3.0);
        check_grad_ref(
            &format!("max_pool2d_with_indices {shape:?}"),
            &[input(x, &shape)],
            |t| Ok(t[0].max_pool2d_with_indices(o)?.0),
            |a| max_pool_ref(&a[0], &o).0,
        );
    }
}

// ---- max_unpool2d ------------------------------------------------------------------------------

#[test]
fn max_unpool2d_inverts_max_pool2d() {
    let mut rng = Rng::named("unpool");
    let cases: Vec<(
        Vec<usize>,
        [usize; 2],
        [usize; 2],
        [usize; 2],
        Option<[usize; 2]>,
    )> = vec![
        (vec![2, 3, 8, 6], [2, 2], [2, 2], [0, 0], None),
        // The pooled input's own odd size, given back as output_size.
        (vec![1, 2, 7, 9], [2, 2], [2, 2], [0, 0], Some([7, 9])),
        (vec![1, 2, 7, 9], [3, 3], [2, 2], [1, 1], Some([7, 9])),
        // Overlapping windows: maxima shared by several windows.
        (vec![2, 2, 6, 7], [3, 3], [1, 1], [0, 0], Some([6, 7])),
        (vec![1, 3, 9, 9], [3, 2], [2, 1], [1, 0], Some([9, 9])),
    ];
    for (shape, k, s, p, out) in cases {
        let o = Pool2dOptions {
            kernel: k,
            stride: s,
            padding: p,
            dilation: [1, 1],
            ceil_mode: false,
        };
        let x = rng.distinct(numel(&shape), 0.01, -1.0);
        let (pooled, idx) = ok("pool", tensor(&x, &shape).max_pool2d_with_indices(o));
        let y = ok("unpool", pooled.max_unpool2d(&idx, k, s, p, out));
        let size = out.unwrap_or([
            (pooled.shape()[2] - 1) * s[0] + k[0] - 2 * p[0],
            (pooled.shape()[3] - 1) * s[1] + k[1] - 2 * p[1],
        ]);
        let (pv, pi) = max_pool_ref(&Arr::from_f32(&x, &shape), &o);
        let what = format!("max_unpool2d {shape:?} k {k:?} s {s:?} p {p:?} out {out:?}");
        // Shared maxima are written once, not summed.
        check(&what, &y, &unpool_ref(&pv, &pi, size));
    }
}

#[test]
fn max_unpool2d_of_repeated_indices_writes_the_last() {
    // Indices shared by overlapping windows with different values: PyTorch's
    // CPU kernel writes in order, so the last one stays.
    let x = tensor(&[1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2]);
    let idx = tensor_i32(&[4, 4, 4, 8], &[1, 1, 2, 2]);
    let y = ok("unpool", x.max_unpool2d(&idx, [2, 2], [1, 1], [0, 0], None));
    let got = read_f32("unpool", &y);
    assert_eq!(got, vec![0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 4.0]);
    // The gradient of every element is the output gradient at its index.
    let xl = x.clone().requires_grad_();
    let w = tensor(
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        &[1, 1, 3, 3],
    );
    let g = ok(
        "backward",
        xl.max_unpool2d(&idx, [2, 2], [1, 1], [0, 0], None)
            .and_then(|y| y.mul(&w))
            .and_then(|y| y.sum_all())
            .and_then(|l| l.backward()),
    );
    let got = read_f32("grad", g.get(&xl).expect("gradient"));
    assert_eq!(got, vec![5.0, 5.0, 5.0, 9.0]);
}

#[test]
fn max_unpool2d_gradient() {
    let mut rng = Rng::named("unpool grad");
    let x = rng.distinct(2 * 2 * 6 * 6, 0.05, -2.0);
    let (_, idx) = ok(
        "pool",
        tensor(&x, &[2, 2, 6, 6]).max_pool2d_with_indices(Pool2dOptions::new(2)),
    );
    let idx_host = read_i32("indices", &idx);
    check_grad_ref(
        "max_unpool2d",
        &[rand_input(&mut rng, &[2, 2, 3, 3], -1.0, 1.0)],
        |t| t[0].max_unpool2d(&idx, [2, 2], [2, 2], [0, 0], None),
        |a| unpool_ref(&a[0], &idx_host, [6, 6]),
    );
}

#[test]
fn max_unpool2d_errors() {
    let x = tensor(&[0.0; 4], &[1, 1, 2, 2]);
    let idx = tensor_i32(&[0; 4], &[1, 1, 2, 2]);
    let msg = |r: cinder_tensor::Result<Tensor>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let m = msg(x.max_unpool2d(&idx, [2, 2], [2, 2], [0, 0], Some([6, 4])));
    assert!(
        m.contains("output_size") && m.contains("between 2 and 6"),
        "{m}"
    );
    let m = msg(x.max_unpool2d(
        &tensor_i32(&[0; 2], &[1, 1, 1, 2]),
        [2, 2],
        [2, 2],
        [0, 0],
        None,
    ));
    assert!(m.contains("indices") && m.contains("[1, 1, 1, 2]"), "{m}");
    assert!(matches!(
        x.max_unpool2d(&x, [2, 2], [2, 2], [0, 0], None),
        Err(Error::DType { .. })
    ));
    assert!(x.max_unpool2d(&idx, [0, 2], [2, 2], [0, 0], None).is_err());
}

// ---- adaptive max pooling ----------------------------------------------------------------------

#[test]
fn adaptive_max_pool2d_matches_pytorch() {
    let mut rng = Rng::named("adaptive_max");
    let cases: Vec<(Vec<usize>, [usize; 2])> = vec![
        (vec![2, 3, 7, 10], [3, 4]),
        (vec![1, 2, 7, 10], [1, 1]),
        (vec![2, 1, 8, 10], [2, 5]),
        (vec![1, 3, 5, 3], [7, 4]),
        (vec![1, 1, 13, 1], [5, 1]),
    ];
    for (shape, out) in cases {
        let x = rng.distinct(numel(&shape), 0.05, -1.5);
        let xt = tensor(&x, &shape);
        let (want, want_idx) = adaptive_max_ref(&Arr::from_f32(&x, &shape), out);
        let what = format!("adaptive_max_pool2d {shape:?} -> {out:?}");
        check(&what, &ok(&what, xt.adaptive_max_pool2d(out)), &want);
        let (v, idx) = ok(&what, xt.adaptive_max_pool2d_with_indices(out));
        check(&what, &v, &want);
        assert_eq!(read_i32(&what, &idx), want_idx, "{what}: indices");
        check_grad_ref(
            &what,
            &[input(x.clone(), &shape)],
            |t| t[0].adaptive_max_pool2d(out),
            |a| adaptive_max_ref(&a[0], out).0,
        );
    }
    assert!(tensor(&[0.0; 4], &[1, 1, 2, 2])
        .adaptive_max_pool2d([0, 1])
        .is_err());
}

// ---- group and instance normalisation ---------------------------------------------------------

#[test]
fn group_norm_matches_pytorch() {
    let mut rng = Rng::named("group_norm");
    let cases: Vec<(Vec<usize>, usize)> = vec![
        (vec![3, 6, 5], 3),
        (vec![2, 6, 3, 4], 2),
        (vec![1, 5, 7], 5),
        (vec![2, 4, 13], 1),
        (vec![4, 3], 3),
        (vec![2, 9, 1, 3], 3),
    ];
    for (shape, groups) in cases {
        let c = shape[1];
        let x = rng.vec(numel(&shape), -3.0, 5.0);
        let w = rng.vec(c, 0.5, 1.5);
        let b = rng.vec(c, -0.5, 0.5);
        let (wa, ba) = (Arr::from_f32(&w, &[c]), Arr::from_f32(&b, &[c]));
        let what = format!("group_norm {shape:?} groups {groups}");
        let y = ok(
            &what,
            tensor(&x, &shape).group_norm(
                groups,
                Some(&tensor(&w, &[c])),
                Some(&tensor(&b, &[c])),
                1e-5,
            ),
        );
        check(
            &what,
            &y,
            &group_norm_ref(
                &Arr::from_f32(&x, &shape),
                groups,
                Some(&wa),
                Some(&ba),
                1e-5,
            ),
        );
        let y = ok(
            &what,
            tensor(&x, &shape).group_norm(groups, None, None, 1e-3),
        );
        check(
            &what,
            &y,
            &group_norm_ref(&Arr::from_f32(&x, &shape), groups, None, None, 1e-3),
        );
    }
    let x = tensor(&[0.0; 12], &[1, 6, 2]);
    let m = x
        .group_norm(4, None, None, 1e-5)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(m.contains("group_norm") && m.contains("4 groups"), "{m}");
    assert!(x.group_norm(0, None, None, 1e-5).is_err());
    assert!(x
        .group_norm(3, Some(&tensor(&[1.0; 3], &[3])), None, 1e-5)
        .is_err());
}

#[test]
fn group_and_instance_norm_gradients() {
    let mut rng = Rng::named("group_norm grad");
    let shape = [2, 4, 3];
    let eps = 1e-5;
    check_grad_ref(
        "group_norm (x, weight, bias)",
        &[
            rand_input(&mut rng, &shape, -2.0, 2.0),
            rand_input(&mut rng, &[4], 0.5, 1.5),
            rand_input(&mut rng, &[4], -0.5, 0.5),
        ],
        |t| t[0].group_norm(2, Some(&t[1]), Some(&t[2]), eps as f32),
        |a| group_norm_ref(&a[0], 2, Some(&a[1]), Some(&a[2]), eps),
    );
    check_grad_ref(
        "instance_norm (x, weight, bias)",
        &[
            rand_input(&mut rng, &[2, 3, 2, 3], -2.0, 2.0),
            rand_input(&mut rng, &[3], 0.5, 1.5),
            rand_input(&mut rng, &[3], -0.5, 0.5),
        ],
        |t| t[0].instance_norm(Some(&t[1]), Some(&t[2]), eps as f32),
        |a| group_norm_ref(&a[0], 3, Some(&a[1]), Some(&a[2]), eps),
    );
}

#[test]
fn instance_norm_matches_pytorch() {
    let mut rng = Rng::named("instance_norm");
    for shape in [vec![2, 3, 4, 5], vec![1, 7, 3, 3], vec![3, 2, 13]] {
        let c = shape[1];
        let x = rng.vec(numel(&shape), -2.0, 4.0);
        let w = rng.vec(c, 0.5, 1.5);
        let b = rng.vec(c, -0.5, 0.5);
        let what = format!("instance_norm {shape:?}");
        let y = ok(&what, tensor(&x, &shape).instance_norm(None, None, 1e-5));
        check(
            &what,
            &y,
            &group_norm_ref(&Arr::from_f32(&x, &shape), c, None, None, 1e-5),
        );
        let y = ok(
            &what,
            tensor(&x, &shape).instance_norm(
                Some(&tensor(&w, &[c])),
                Some(&tensor(&b, &[c])),
                1e-5,
            ),
        );
        let want = group_norm_ref(
            &Arr::from_f32(&x, &shape),
            c,
            Some(&Arr::from_f32(&w, &[c])),
            Some(&Arr::from_f32(&b, &[c])),
            1e-5,
        );
        check(&what, &y, &want);
    }
    // One value per channel has no spread to normalise (PyTorch raises).
    let m = tensor(&[0.0; 6], &[2, 3, 1, 1])
        .instance_norm(None, None, 1e-5)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(m.contains("spatial"), "{m}");
}

#[test]
fn layer_norm_without_affine_parameters() {
    let mut rng = Rng::named("layer_norm plain");
    let x = rng.vec(3 * 7, -2.0, 3.0);
    let y = ok(
        "layer_norm",
        tensor(&x, &[3, 7]).layer_norm(&[7], None, None, 1e-5),
    );
    // Over the last dim alone, layer norm is group norm of [N, 1, 7] with
    // one group.
    let want = group_norm_ref(&Arr::from_f32(&x, &[3, 1, 7]), 1, None, None, 1e-5).reshape(&[3, 7]);
    check("layer_norm without weight and bias", &y, &want);
}

// ---- padding -----------------------------------------------------------------------------------

#[test]
fn replicate_and_circular_padding() {
    let mut rng = Rng::named("pad modes");
    let cases: Vec<(Vec<usize>, [usize; 4])> = vec![
        (vec![2, 3, 4, 5], [2, 1, 3, 0]),
        (vec![1, 1, 1, 1], [2, 2, 1, 1]),
        (vec![3, 7], [0, 3, 2, 2]),
        (vec![1, 2, 3, 3], [3, 3, 3, 3]),
    ];
    for (shape, pad) in cases {
        for mode in [PadMode::Replicate, PadMode::Circular] {
            if mode == PadMode::Circular
                && (pad[0].max(pad[1]) > shape[shape.len() - 1]
                    || pad[2].max(pad[3]) > shape[shape.len() - 2])
            {
                continue;
            }
            let x = rng.vec(numel(&shape), -2.0, 2.0);
            let what = format!("pad2d {shape:?} {pad:?} {mode:?}");
            let y = ok(&what, tensor(&x, &shape).pad2d(pad, mode));
            let want = pad_ref(&Arr::from_f32(&x, &shape), pad, mode);
            check(&what, &y, &want);
            check_grad_ref(
                &what,
                &[input(x, &shape)],
                |t| t[0].pad2d(pad, mode),
                |a| pad_ref(&a[0], pad, mode),
            );
        }
    }
    // pad1d pads the last dim alone.
    let x = tensor(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let y = ok("pad1d", x.pad1d([2, 1], PadMode::Replicate));
    assert_eq!(
        read_f32("pad1d", &y),
        vec![1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 4.0, 4.0, 4.0, 5.0, 6.0, 6.0]
    );
    let y = ok("pad1d", x.pad1d([1, 2], PadMode::Circular));
    assert_eq!(
        read_f32("pad1d", &y),
        vec![3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 6.0, 4.0, 5.0, 6.0, 4.0, 5.0]
    );
    let m = x
        .pad1d([4, 0], PadMode::Circular)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(m.contains("Circular") && m.contains("wrap"), "{m}");
}
