//! Losses (`loss.rs`) against f64 references written from PyTorch's
//! formulas: class weights, ignored targets (all of them too), label
//! smoothing, class-probability targets, spatial `[N, C, d1, ...]` inputs,
//! the three reductions, huge logits, and gradients by finite differences.

#![allow(clippy::type_complexity, clippy::too_many_arguments)]

mod common;

use cinder_tensor::{CrossEntropyOptions, DType, Error, NllLossOptions, Reduction, Tensor};
use common::*;

const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

// ---- f64 references ------------------------------------------------------------------------

/// The shape of one value per target: the input's without dim 1 (`[]` for
/// a 1-D input).
fn lead_shape(shape: &[usize]) -> Vec<usize> {
    if shape.len() == 1 {
        return Vec::new();
    }
    std::iter::once(shape[0])
        .chain(shape[2..].iter().copied())
        .collect()
}

/// Element `k` of the class dim at target position `r` (row-major over the
/// lead shape).
fn class_at(x: &Arr, r: usize, k: usize) -> f64 {
    if x.rank() == 1 {
        return x.data[k];
    }
    let lead = lead_shape(&x.shape);
    let lc = unravel(r, &lead);
    let mut c = vec![lc[0], k];
    c.extend_from_slice(&lc[1..]);
    x.at(&c)
}

fn reduce(per: Vec<f64>, lead: &[usize], red: Reduction, divisor: f64) -> Arr {
    match red {
        Reduction::None => Arr::new(lead, per),
        Reduction::Sum => Arr::new(&[], vec![per.iter().sum()]),
        Reduction::Mean => Arr::new(&[], vec![per.iter().sum::<f64>() / divisor]),
    }
}

/// PyTorch's `nll_loss` (`logits` false) or `cross_entropy` with class
/// indices, including `cross_entropy_loss_label_smoothing`.
fn class_loss_ref(
    x: &Arr,
    targets: &[i32],
    weight: Option<&[f64]>,
    ignore: i32,
    red: Reduction,
    smoothing: f64,
    logits: bool,
) -> Arr {
    let c = if x.rank() == 1 {
        x.shape[0]
    } else {
        x.shape[1]
    };
    let lead = lead_shape(&x.shape);
    let w = |k: usize| weight.map_or(1.0, |w| w[k]);
    let (mut per, mut total_weight) = (Vec::new(), 0.0);
    for (r, &t) in targets.iter().enumerate() {
        let row: Vec<f64> = (0..c).map(|k| class_at(x, r, k)).collect();
        let logp: Vec<f64> = if logits {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            row.iter().map(|v| v - lse).collect()
        } else {
            row
        };
        if t == ignore {
            per.push(0.0);
            continue;
        }
        let t = t as usize;
        total_weight += w(t);
        let nll = -w(t) * logp[t];
        let smooth: f64 = -(0..c).map(|k| w(k) * logp[k]).sum::<f64>();
        per.push((1.0 - smoothing) * nll + smoothing / c as f64 * smooth);
    }
    reduce(per, &lead, red, total_weight)
}

/// `cross_entropy` with class probabilities (same shape as the input).
fn prob_ce_ref(x: &Arr, p: &Arr, weight: Option<&[f64]>, red: Reduction, smoothing: f64) -> Arr {
    let c = if x.rank() == 1 {
        x.shape[0]
    } else {
        x.shape[1]
    };
    let lead = lead_shape(&x.shape);
    let rows = numel(&lead);
    let mut per = Vec::new();
    for r in 0..rows {
        let row: Vec<f64> = (0..c).map(|k| class_at(x, r, k)).collect();
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let mut acc = 0.0;
        for (k, v) in row.iter().enumerate() {
            let t = class_at(p, r, k) * (1.0 - smoothing) + smoothing / c as f64;
            acc -= weight.map_or(1.0, |w| w[k]) * t * (v - lse);
        }
        per.push(acc);
    }
    reduce(per, &lead, red, rows as f64)
}

fn reduce_elements(per: Arr, red: Reduction) -> Arr {
    let n = per.numel() as f64;
    match red {
        Reduction::None => per,
        Reduction::Sum => Arr::new(&[], vec![per.data.iter().sum()]),
        Reduction::Mean => Arr::new(&[], vec![per.data.iter().sum::<f64>() / n]),
    }
}

fn bce_ref(x: &Arr, y: &Arr, w: Option<&Arr>, red: Reduction) -> Arr {
    let per = x.zip(y, |x, y| {
        (y - 1.0) * (-x).ln_1p().max(-100.0) - y * x.ln().max(-100.0)
    });
    let per = match w {
        Some(w) => per.mul(w),
        None => per,
    };
    reduce_elements(per, red)
}

fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

fn bce_logits_ref(x: &Arr, y: &Arr, w: Option<&Arr>, pw: Option<&Arr>, red: Reduction) -> Arr {
    let ls = x.map(log_sigmoid);
    let ls = match pw {
        Some(p) => ls.mul(&p.map(|p| p - 1.0).mul(y).map(|v| v + 1.0)),
        None => ls,
    };
    let per = y.map(|y| 1.0 - y).mul(x).sub(&ls);
    let per = match w {
        Some(w) => per.mul(w),
        None => per,
    };
    reduce_elements(per, red)
}

fn smooth_l1(d: f64, beta: f64) -> f64 {
    let z = d.abs();
    if beta == 0.0 {
        z
    } else if z < beta {
        0.5 * z * z / beta
    } else {
        z - 0.5 * beta
    }
}

fn huber(d: f64, delta: f64) -> f64 {
    let z = d.abs();
    if z < delta {
        0.5 * z * z
    } else {
        delta * (z - 0.5 * delta)
    }
}

// ---- inputs -----------------------------------------------------------------------------------

/// Random targets in `[0, c)`, every fourth one (from the second) set to
/// `ignore`.
fn targets(rng: &mut Rng, n: usize, c: usize, ignore: i32) -> Vec<i32> {
    (0..n)
        .map(|i| {
            if i % 4 == 1 {
                ignore
            } else {
                rng.index(c) as i32
            }
        })
        .collect()
}

fn opts(
    weight: Option<&[f32]>,
    ignore: i32,
    red: Reduction,
    smoothing: f32,
) -> CrossEntropyOptions {
    let mut o = CrossEntropyOptions::default()
        .ignore_index(ignore)
        .reduction(red)
        .label_smoothing(smoothing);
    if let Some(w) = weight {
        o = o.weight(tensor(w, &[w.len()]));
    }
    o
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `[N, C]`, spatial and 1-D inputs with odd sizes.
fn class_shapes() -> Vec<Vec<usize>> {
    vec![
        vec![7, 5],
        vec![1, 3],
        vec![3, 4, 5],
        vec![2, 3, 4, 3],
        vec![5],
        vec![13, 33],
    ]
}

// ---- class losses ------------------------------------------------------------------------------

#[test]
fn cross_entropy_and_nll_follow_pytorch() {
    let mut rng = Rng::named("cross_entropy");
    // Every combination of ignore index, class weight, reduction and
    // smoothing on the first shape; the other shapes take a rotating third
    // of them (each graph compiles kernels of its own, which on a software
    // adapter with a cold shader cache costs more than the arithmetic).
    let mut combination = 0usize;
    for (s, shape) in class_shapes().into_iter().enumerate() {
        let c = if shape.len() == 1 { shape[0] } else { shape[1] };
        let lead = lead_shape(&shape);
        let x = rng.vec(numel(&shape), -4.0, 4.0);
        let xa = Arr::from_f32(&x, &shape);
        let xt = tensor(&x, &shape);
        let w: Vec<f32> = rng.vec(c, 0.2, 2.0);
        for ignore in [-100, 1] {
            let t = targets(&mut rng, numel(&lead), c, ignore);
            let tt = tensor_i32(&t, &lead);
            for weight in [None, Some(&w[..])] {
                for red in REDUCTIONS {
                    combination += 1;
                    if s > 0 && combination % 3 != s % 3 {
                        continue;
                    }
                    for smoothing in [0.0, 0.15] {
                        let what = format!(
                            "cross_entropy {shape:?} ignore {ignore} weight {} {red:?} smoothing {smoothing}",
                            weight.is_some()
                        );
                        let got = ok(
                            &what,
                            xt.cross_entropy_with(&tt, &opts(weight, ignore, red, smoothing)),
                        );
                        let want = class_loss_ref(
                            &xa,
                            &t,
                            weight.map(f64s).as_deref(),
                            ignore,
                            red,
                            smoothing as f64,
                            true,
                        );
                        check(&what, &got, &want);
                    }
                    let what = format!(
                        "nll_loss {shape:?} ignore {ignore} weight {} {red:?}",
                        weight.is_some()
                    );
                    let mut o = NllLossOptions::default()
                        .ignore_index(ignore)
                        .reduction(red);
                    if let Some(w) = weight {
                        o = o.weight(tensor(w, &[c]));
                    }
                    let got = ok(&what, xt.nll_loss_with(&tt, &o));
                    let want = class_loss_ref(
                        &xa,
                        &t,
                        weight.map(f64s).as_deref(),
                        ignore,
                        red,
                        0.0,
                        false,
                    );
                    check(&what, &got, &want);
                }
            }
        }
    }
}

#[test]
fn default_cross_entropy_ignores_minus_100_and_takes_u32() {
    let x = [1.0, 2.0, 0.5, -1.0, 0.0, 3.0, 2.0, 2.0, 1.0];
    let xa = Arr::from_f32(&x, &[3, 3]);
    let t = [2, -100, 0];
    let got = ok(
        "cross_entropy",
        tensor(&x, &[3, 3]).cross_entropy(&tensor_i32(&t, &[3])),
    );
    // The mean over the two targets that count, not over all three.
    let want = class_loss_ref(&xa, &t, None, -100, Reduction::Mean, 0.0, true);
    check("cross_entropy with an ignored target", &got, &want);
    let got = ok(
        "cross_entropy u32",
        tensor(&x, &[3, 3]).cross_entropy(&tensor_u32(&[2, 1, 0], &[3])),
    );
    let want = class_loss_ref(&xa, &[2, 1, 0], None, -100, Reduction::Mean, 0.0, true);
    check("cross_entropy of u32 targets", &got, &want);
    let got = ok(
        "nll_loss",
        tensor(&x, &[3, 3]).nll_loss(&tensor_i32(&t, &[3])),
    );
    let want = class_loss_ref(&xa, &t, None, -100, Reduction::Mean, 0.0, false);
    check("nll_loss with an ignored target", &got, &want);
}

#[test]
fn all_targets_ignored() {
    // PyTorch: the mean over no targets is NaN (0 / 0); the sum is 0 and
    // the unreduced values are zeros.
    let x = tensor(&[1.0, 2.0, 0.5, -1.0, 0.0, 3.0], &[2, 3]);
    let t = tensor_i32(&[-100, -100], &[2]);
    let w = [0.5f32, 1.0, 2.0];
    for weight in [None, Some(&w[..])] {
        for smoothing in [0.0, 0.2] {
            let what = format!("weight {} smoothing {smoothing}", weight.is_some());
            let mean = ok(
                "mean",
                x.cross_entropy_with(&t, &opts(weight, -100, Reduction::Mean, smoothing)),
            );
            let v = read_f32("mean", &mean);
            assert!(v[0].is_nan(), "{what}: mean over no targets gave {v:?}");
            let sum = ok(
                "sum",
                x.cross_entropy_with(&t, &opts(weight, -100, Reduction::Sum, smoothing)),
            );
            assert_eq!(read_f32("sum", &sum), vec![0.0], "{what}: sum");
            let none = ok(
                "none",
                x.cross_entropy_with(&t, &opts(weight, -100, Reduction::None, smoothing)),
            );
            assert_eq!(read_f32("none", &none), vec![0.0, 0.0], "{what}: none");
        }
    }
    let v = read_f32("nll", &ok("nll", x.nll_loss(&t)));
    assert!(v[0].is_nan(), "nll_loss mean over no targets gave {v:?}");
    // And the gradient of the NaN mean is NaN, not an error.
    let xl = x.clone().requires_grad_();
    let g = ok("backward", xl.cross_entropy(&t).and_then(|l| l.backward()));
    assert!(g.get(&xl).is_some());
}

#[test]
fn cross_entropy_of_huge_logits() {
    let x = [1e4, 0.0, -1e4, 0.0, 1e4, -1e4, -1e4, -1e4, 1e4];
    let t = [0, 0, 2];
    let xa = Arr::from_f32(&x, &[3, 3]);
    for red in REDUCTIONS {
        for smoothing in [0.0, 0.1] {
            let what = format!("huge logits {red:?} smoothing {smoothing}");
            let got = ok(
                &what,
                tensor(&x, &[3, 3])
                    .cross_entropy_with(&tensor_i32(&t, &[3]), &opts(None, -100, red, smoothing)),
            );
            let want = class_loss_ref(&xa, &t, None, -100, red, smoothing as f64, true);
            check(&what, &got, &want);
        }
    }
    // The gradient is (softmax - one_hot) / N, finite.
    let xl = tensor(&x, &[3, 3]).requires_grad_();
    let g = ok(
        "backward",
        xl.cross_entropy(&tensor_i32(&t, &[3]))
            .and_then(|l| l.backward()),
    );
    let got = read_f32("grad", g.get(&xl).expect("gradient"));
    let third = 1.0 / 3.0;
    assert_close_msg(
        "d cross_entropy / d logits of 1e4",
        &got,
        &[0.0, 0.0, 0.0, -third, third, 0.0, 0.0, 0.0, 0.0],
        1e-7,
        1e-6,
    );
}

#[test]
fn cross_entropy_with_probabilities() {
    let mut rng = Rng::named("ce probabilities");
    for shape in [vec![6, 4], vec![2, 3, 5], vec![4]] {
        let c = if shape.len() == 1 { shape[0] } else { shape[1] };
        let x = rng.vec(numel(&shape), -3.0, 3.0);
        let p = rng.vec(numel(&shape), 0.0, 1.0);
        let w = rng.vec(c, 0.5, 1.5);
        for weight in [None, Some(&w[..])] {
            for red in REDUCTIONS {
                for smoothing in [0.0, 0.25] {
                    let what = format!(
                        "cross_entropy probabilities {shape:?} weight {} {red:?} smoothing {smoothing}",
                        weight.is_some()
                    );
                    let got = ok(
                        &what,
                        tensor(&x, &shape).cross_entropy_with(
                            &tensor(&p, &shape),
                            &opts(weight, -100, red, smoothing),
                        ),
                    );
                    let want = prob_ce_ref(
                        &Arr::from_f32(&x, &shape),
                        &Arr::from_f32(&p, &shape),
                        weight.map(f64s).as_deref(),
                        red,
                        smoothing as f64,
                    );
                    check(&what, &got, &want);
                }
            }
        }
    }
}

#[test]
fn class_loss_gradients() {
    let mut rng = Rng::named("class loss grad");
    let shape = [4, 3, 2];
    let t = vec![0, 2, -100, 1, 1, 0, 2, -100];
    let tt = tensor_i32(&t, &[4, 2]);
    let w = [0.5f32, 2.0, 1.25];
    for red in REDUCTIONS {
        for smoothing in [0.0f32, 0.2] {
            let o = opts(Some(&w), -100, red, smoothing);
            check_grad_ref(
                &format!("cross_entropy {red:?} smoothing {smoothing}"),
                &[rand_input(&mut rng, &shape, -2.0, 2.0)],
                |x| x[0].cross_entropy_with(&tt, &o),
                |a| {
                    class_loss_ref(
                        &a[0],
                        &t,
                        Some(&f64s(&w)),
                        -100,
                        red,
                        smoothing as f64,
                        true,
                    )
                },
            );
        }
        // Ignoring a real class, 2.
        let t2: Vec<i32> = t.iter().map(|&v| if v < 0 { 1 } else { v }).collect();
        let tt2 = tensor_i32(&t2, &[4, 2]);
        let o = NllLossOptions::default()
            .weight(tensor(&w, &[3]))
            .ignore_index(2)
            .reduction(red);
        check_grad_ref(
            &format!("nll_loss {red:?} ignore 2"),
            &[rand_input(&mut rng, &shape, -3.0, 0.0)],
            |x| x[0].nll_loss_with(&tt2, &o),
            |a| class_loss_ref(&a[0], &t2, Some(&f64s(&w)), 2, red, 0.0, false),
        );
    }
    let p = rng.vec(6, 0.0, 1.0);
    check_grad_ref(
        "cross_entropy probabilities",
        &[rand_input(&mut rng, &[2, 3], -2.0, 2.0), input(p, &[2, 3])],
        |x| x[0].cross_entropy_with(&x[1], &CrossEntropyOptions::default().label_smoothing(0.1)),
        |a| prob_ce_ref(&a[0], &a[1], None, Reduction::Mean, 0.1),
    );
}

#[test]
fn class_loss_errors() {
    let x = tensor(&[0.0; 6], &[2, 3]);
    let msg = |r: cinder_tensor::Result<Tensor>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let m = msg(x.cross_entropy(&tensor_i32(&[0, 1, 2], &[3])));
    assert!(
        m.contains("cross_entropy") && m.contains("[2, 3]") && m.contains("[3]"),
        "{m}"
    );
    let m = msg(x.cross_entropy_with(
        &tensor_i32(&[0, 1], &[2]),
        &CrossEntropyOptions::default().weight(tensor(&[1.0, 1.0], &[2])),
    ));
    assert!(m.contains("weight") && m.contains("[3]"), "{m}");
    let m = msg(x.cross_entropy_with(
        &tensor_i32(&[0, 1], &[2]),
        &CrossEntropyOptions::default().label_smoothing(1.5),
    ));
    assert!(m.contains("label_smoothing"), "{m}");
    assert!(matches!(
        x.nll_loss(&tensor(&[0.0, 1.0], &[2])),
        Err(Error::DType { .. })
    ));
    assert!(x.cross_entropy(&tensor(&[0.0, 1.0], &[2])).is_err());
    let m = msg(x.cross_entropy_with(
        &tensor(&[0.0; 6], &[2, 3]),
        &CrossEntropyOptions::default().ignore_index(0),
    ));
    assert!(m.contains("ignore_index"), "{m}");
    let spatial = tensor(&[0.0; 24], &[2, 3, 4]);
    assert!(spatial
        .cross_entropy(&tensor_i32(&[0; 6], &[2, 3]))
        .is_err());
}

// ---- binary cross-entropy --------------------------------------------------------------------

#[test]
fn binary_cross_entropy_follows_pytorch() {
    let mut rng = Rng::named("bce");
    for shape in [vec![1], vec![7], vec![13, 3], vec![3, 11]] {
        let n = numel(&shape);
        let c = *shape.last().unwrap_or(&1);
        let mut x = rng.vec(n, 0.0, 1.0);
        let y = rng.vec(n, 0.0, 1.0);
        // Exact 0 and 1, where the logs are clamped at -100.
        if n > 3 {
            x[0] = 0.0;
            x[1] = 1.0;
        }
        let w = rng.vec(c, 0.1, 2.0);
        let (xa, ya, wa) = (
            Arr::from_f32(&x, &shape),
            Arr::from_f32(&y, &shape),
            Arr::from_f32(&w, &[c]),
        );
        for weight in [false, true] {
            for red in REDUCTIONS {
                let what = format!("bce {shape:?} weight {weight} {red:?}");
                let wt = tensor(&w, &[c]);
                let got = ok(
                    &what,
                    tensor(&x, &shape).binary_cross_entropy(
                        &tensor(&y, &shape),
                        weight.then_some(&wt),
                        red,
                    ),
                );
                check(&what, &got, &bce_ref(&xa, &ya, weight.then_some(&wa), red));
            }
        }
    }
}

#[test]
fn binary_cross_entropy_gradients() {
    let mut rng = Rng::named("bce grad");
    let x = rng.vec(12, 0.1, 0.9);
    let y = rng.vec(12, 0.0, 1.0);
    let w = rng.vec(4, 0.5, 1.5);
    let wt = tensor(&w, &[4]);
    let wa = Arr::from_f32(&w, &[4]);
    for red in REDUCTIONS {
        check_grad_ref(
            &format!("bce {red:?}"),
            &[input(x.clone(), &[3, 4]), input(y.clone(), &[3, 4])],
            |t| t[0].binary_cross_entropy(&t[1], Some(&wt), red),
            |a| bce_ref(&a[0], &a[1], Some(&wa), red),
        );
    }
    // At x = 0 and 1 PyTorch divides by max(x (1 - x), 1e-12): the
    // gradient is huge and finite, not the derivative of a clamped log.
    let xl = tensor(&[0.0, 1.0, 0.5], &[3]).requires_grad_();
    let g = ok(
        "bce backward",
        xl.binary_cross_entropy(&tensor(&[1.0, 0.0, 1.0], &[3]), None, Reduction::Sum)
            .and_then(|l| l.backward()),
    );
    let got = read_f32("bce grad", g.get(&xl).expect("gradient"));
    assert_close_msg(
        "d bce / dx at x = [0, 1, 0.5], y = [1, 0, 1]",
        &got,
        &[-1e12, 1e12, -2.0],
        0.0,
        1e-6,
    );
}

#[test]
fn binary_cross_entropy_with_logits_follows_pytorch() {
    let mut rng = Rng::named("bce logits");
    for shape in [vec![1], vec![7], vec![13, 3], vec![2, 3, 5]] {
        let n = numel(&shape);
        let c = *shape.last().unwrap_or(&1);
        let x = rng.vec(n, -6.0, 6.0);
        let y = rng.vec(n, 0.0, 1.0);
        let w = rng.vec(c, 0.1, 2.0);
        let pw = rng.vec(c, 0.3, 3.0);
        let arr = |v: &[f32], s: &[usize]| Arr::from_f32(v, s);
        for (weight, pos) in [(false, false), (true, false), (false, true), (true, true)] {
            for red in REDUCTIONS {
                let what =
                    format!("bce_with_logits {shape:?} weight {weight} pos_weight {pos} {red:?}");
                let (wt, pt) = (tensor(&w, &[c]), tensor(&pw, &[c]));
                let got = ok(
                    &what,
                    tensor(&x, &shape).binary_cross_entropy_with_logits(
                        &tensor(&y, &shape),
                        weight.then_some(&wt),
                        pos.then_some(&pt),
                        red,
                    ),
                );
                let (wa, pa) = (arr(&w, &[c]), arr(&pw, &[c]));
                let want = bce_logits_ref(
                    &arr(&x, &shape),
                    &arr(&y, &shape),
                    weight.then_some(&wa),
                    pos.then_some(&pa),
                    red,
                );
                check(&what, &got, &want);
            }
        }
    }
}

#[test]
fn binary_cross_entropy_with_huge_logits() {
    // Exact where log(sigmoid(x)) would be log(0) = -inf.
    let x = [1e4, 1e4, -1e4, -1e4, 0.0, 1e4];
    let y = [1.0, 0.0, 1.0, 0.0, 0.5, 0.25];
    let xl = tensor(&x, &[6]).requires_grad_();
    let pw = tensor(&[3.0], &[1]);
    let loss = ok(
        "bce_with_logits",
        xl.binary_cross_entropy_with_logits(&tensor(&y, &[6]), None, None, Reduction::None),
    );
    assert_close_msg(
        "bce_with_logits at ±1e4",
        &read_f32("loss", &loss),
        &[0.0, 1e4, 1e4, 0.0, 2f64.ln(), 7500.0],
        1e-6,
        1e-6,
    );
    let g = ok(
        "backward",
        xl.binary_cross_entropy_with_logits(&tensor(&y, &[6]), None, Some(&pw), Reduction::Sum)
            .and_then(|l| l.backward()),
    );
    // d/dx = (1 - y) - (1 + (p - 1) y) sigmoid(-x).
    let want: Vec<f64> = x
        .iter()
        .zip(&y)
        .map(|(&x, &y)| {
            let (x, y) = (x as f64, y as f64);
            (1.0 - y) - (1.0 + 2.0 * y) * sigmoid(-x)
        })
        .collect();
    assert_close_msg(
        "d bce_with_logits / dx at ±1e4",
        &read_f32("grad", g.get(&xl).expect("gradient")),
        &want,
        1e-6,
        1e-6,
    );
}

#[test]
fn binary_cross_entropy_with_logits_gradients() {
    let mut rng = Rng::named("bce logits grad");
    let (x, y) = (rng.vec(12, -4.0, 4.0), rng.vec(12, 0.0, 1.0));
    let (w, pw) = (rng.vec(4, 0.5, 1.5), rng.vec(4, 0.5, 3.0));
    let wt = tensor(&w, &[4]);
    let wa = Arr::from_f32(&w, &[4]);
    check_grad_ref(
        "bce_with_logits (x, y, pos_weight)",
        &[input(x, &[3, 4]), input(y, &[3, 4]), input(pw, &[4])],
        |t| t[0].binary_cross_entropy_with_logits(&t[1], Some(&wt), Some(&t[2]), Reduction::Mean),
        |a| bce_logits_ref(&a[0], &a[1], Some(&wa), Some(&a[2]), Reduction::Mean),
    );
}

// ---- regression losses ----------------------------------------------------------------------

#[test]
fn regression_losses_follow_pytorch() {
    let mut rng = Rng::named("regression");
    for n in [1, 7, 13, 33, 127] {
        let shape = if n == 127 { vec![127, 1] } else { vec![n] };
        let x = rng.vec(n, -3.0, 3.0);
        let y = rng.vec(n, -3.0, 3.0);
        let (xt, yt) = (tensor(&x, &shape), tensor(&y, &shape));
        let d = Arr::from_f32(&x, &shape).sub(&Arr::from_f32(&y, &shape));
        for red in REDUCTIONS {
            let cases: Vec<(String, cinder_tensor::Result<Tensor>, Arr)> = vec![
                ("l1".into(), xt.l1_loss(&yt, red), d.map(f64::abs)),
                ("mse".into(), xt.mse_loss_with(&yt, red), d.map(|v| v * v)),
                (
                    "smooth_l1(0)".into(),
                    xt.smooth_l1_loss(&yt, red, 0.0),
                    d.map(|v| smooth_l1(v, 0.0)),
                ),
                (
                    "smooth_l1(0.7)".into(),
                    xt.smooth_l1_loss(&yt, red, 0.7),
                    d.map(|v| smooth_l1(v, 0.7)),
                ),
                (
                    "smooth_l1(2.5)".into(),
                    xt.smooth_l1_loss(&yt, red, 2.5),
                    d.map(|v| smooth_l1(v, 2.5)),
                ),
                (
                    "huber(0.5)".into(),
                    xt.huber_loss(&yt, red, 0.5),
                    d.map(|v| huber(v, 0.5)),
                ),
                (
                    "huber(1.5)".into(),
                    xt.huber_loss(&yt, red, 1.5),
                    d.map(|v| huber(v, 1.5)),
                ),
            ];
            for (name, got, per) in cases {
                let what = format!("{name} [{n}] {red:?}");
                check(&what, &ok(&what, got), &reduce_elements(per, red));
            }
        }
    }
    // mse_loss without a reduction is the mean.
    let got = ok(
        "mse",
        tensor(&[1.0, 2.0], &[2]).mse_loss(&tensor(&[0.0, 0.0], &[2])),
    );
    assert_eq!(read_f32("mse", &got), vec![2.5]);
}

#[test]
fn regression_loss_gradients() {
    let mut rng = Rng::named("regression grad");
    // |x - y| away from 0, 0.7 and 1.5 (the kinks) by more than eps.
    let y = rng.vec(13, -2.0, 2.0);
    let x: Vec<f32> = y
        .iter()
        .map(|&v| loop {
            let x = rng.range(-3.0, 3.0);
            let z = (x - v).abs() as f64;
            if [0.0, 0.7, 1.5].iter().all(|k| (z - k).abs() > 0.05) {
                break x;
            }
        })
        .collect();
    let ya = Arr::from_f32(&y, &[13]);
    let yt = tensor(&y, &[13]);
    let cases: Vec<(
        &str,
        Box<dyn Fn(&Tensor) -> cinder_tensor::Result<Tensor> + '_>,
        Box<dyn Fn(f64) -> f64>,
    )> = vec![
        (
            "l1",
            Box::new(|t| t.l1_loss(&yt, Reduction::None)),
            Box::new(f64::abs),
        ),
        (
            "mse",
            Box::new(|t| t.mse_loss_with(&yt, Reduction::None)),
            Box::new(|d| d * d),
        ),
        (
            "smooth_l1",
            Box::new(|t| t.smooth_l1_loss(&yt, Reduction::None, 0.7)),
            Box::new(|d| smooth_l1(d, 0.7)),
        ),
        (
            "huber",
            Box::new(|t| t.huber_loss(&yt, Reduction::None, 1.5)),
            Box::new(|d| huber(d, 1.5)),
        ),
    ];
    for (name, gpu, cpu) in cases {
        check_grad_ref(
            name,
            &[input(x.clone(), &[13])],
            |t| gpu(&t[0]),
            |a| a[0].sub(&ya).map(&cpu),
        );
    }
    // At the kinks, PyTorch's backward formulas: l1 and smooth_l1 give 0 at
    // d = 0; smooth_l1 gives sign(d) from |d| = beta, huber delta * sign(d).
    let xl = tensor(&[0.0, 0.7, -0.7, 1.5, -1.5], &[5]).requires_grad_();
    let zero = tensor(&[0.0; 5], &[5]);
    let grad = |l: cinder_tensor::Result<Tensor>| -> Vec<f32> {
        let g = ok("backward", l.and_then(|l| l.backward()));
        read_f32("grad", g.get(&xl).expect("gradient"))
    };
    let g = grad(xl.l1_loss(&zero, Reduction::Sum));
    assert_close_msg("l1' at kinks", &g, &[0.0, 1.0, -1.0, 1.0, -1.0], 0.0, 0.0);
    let g = grad(xl.smooth_l1_loss(&zero, Reduction::Sum, 0.7));
    assert_close_msg(
        "smooth_l1(0.7)'",
        &g,
        &[0.0, 1.0, -1.0, 1.0, -1.0],
        1e-6,
        1e-6,
    );
    let g = grad(xl.huber_loss(&zero, Reduction::Sum, 1.5));
    assert_close_msg("huber(1.5)'", &g, &[0.0, 0.7, -0.7, 1.5, -1.5], 1e-6, 1e-6);
    let g = grad(xl.huber_loss(&zero, Reduction::Mean, 1.5));
    assert_close_msg(
        "huber mean'",
        &g,
        &[0.0, 0.14, -0.14, 0.3, -0.3],
        1e-6,
        1e-5,
    );
}

#[test]
fn loss_argument_errors() {
    let x = tensor(&[0.5; 4], &[4]);
    let msg = |r: cinder_tensor::Result<Tensor>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let m = msg(x.smooth_l1_loss(&x, Reduction::Mean, -1.0));
    assert!(m.contains("smooth_l1_loss") && m.contains("beta"), "{m}");
    let m = msg(x.huber_loss(&x, Reduction::Mean, 0.0));
    assert!(m.contains("huber_loss") && m.contains("delta"), "{m}");
    let m = msg(x.binary_cross_entropy(&tensor(&[0.5; 2], &[2]), None, Reduction::Mean));
    assert!(
        m.contains("binary_cross_entropy") && m.contains("[2]"),
        "{m}"
    );
    let m = msg(x.binary_cross_entropy_with_logits(
        &tensor(&[0.5; 2], &[2]),
        None,
        None,
        Reduction::Mean,
    ));
    assert!(m.contains("with_logits"), "{m}");
    let i = tensor_i32(&[1; 4], &[4]);
    assert!(matches!(
        i.l1_loss(&i, Reduction::Mean),
        Err(Error::DType { .. })
    ));
    assert_eq!(
        ok("to f32", i.to_dtype(DType::F32)).dtype(),
        DType::F32,
        "sanity"
    );
}
