//! Every differentiable op's backward rule against finite differences.
//!
//! Each check (see `common::check_grad_full`) builds the loss
//! `sum(w * f(inputs))` with fixed random weights, runs `backward`, and compares
//! the analytic gradient with
//! - central differences of the f32 GPU forward pass (eps 1e-2, tolerance
//!   2e-3 + 2e-2*|b|, sized for f32 differences), and, where the op has an f64
//!   CPU reference (`check_grad_ref`),
//! - central differences of that reference in f64, at the architecture's
//!   gradient tolerance 1e-4 + 1e-3*|b|.
//!
//! Inputs stay away from kinks (relu and abs at 0, ties of max/min/maximum) by
//! more than eps; the behaviour at ties is checked exactly in separate tests.

// Tables of test cases are written as `vec![...]` of shapes for readability.
#![allow(clippy::useless_vec, clippy::type_complexity)]

mod common;

use cinder_tensor::{no_grad, with_no_grad, Error, Result, Tensor};
use common::*;

// ---- unary ---------------------------------------------------------------------------------

fn unary_grad(
    name: &str,
    x: Vec<f32>,
    gpu: impl Fn(&Tensor) -> Result<Tensor>,
    cpu: impl Fn(f64) -> f64,
) {
    let shape = [3, 5];
    assert_eq!(x.len(), 15);
    check_grad_ref(
        name,
        &[input(x, &shape)],
        |t| gpu(&t[0]),
        |a| a[0].map(&cpu),
    );
}

#[test]
fn grad_neg() {
    let mut r = Rng::named("neg");
    unary_grad("neg", r.vec(15, -2.0, 2.0), |t| t.neg(), |x| -x);
}

#[test]
fn grad_exp() {
    let mut r = Rng::named("exp");
    unary_grad("exp", r.vec(15, -2.0, 2.0), |t| t.exp(), f64::exp);
}

#[test]
fn grad_log() {
    let mut r = Rng::named("log");
    unary_grad("log", r.vec(15, 0.2, 3.0), |t| t.log(), f64::ln);
}

#[test]
fn grad_sqrt() {
    let mut r = Rng::named("sqrt");
    unary_grad("sqrt", r.vec(15, 0.2, 3.0), |t| t.sqrt(), f64::sqrt);
}

#[test]
fn grad_rsqrt() {
    let mut r = Rng::named("rsqrt");
    unary_grad(
        "rsqrt",
        r.vec(15, 0.3, 3.0),
        |t| t.rsqrt(),
        |x| 1.0 / x.sqrt(),
    );
}

#[test]
fn grad_abs() {
    let mut r = Rng::named("abs");
    unary_grad(
        "abs",
        r.away_from_zero(15, -2.0, 2.0, 0.05),
        |t| t.abs(),
        f64::abs,
    );
}

#[test]
fn grad_relu() {
    let mut r = Rng::named("relu");
    unary_grad(
        "relu",
        r.away_from_zero(15, -2.0, 2.0, 0.05),
        |t| t.relu(),
        |x| x.max(0.0),
    );
}

#[test]
fn grad_sigmoid() {
    let mut r = Rng::named("sigmoid");
    unary_grad("sigmoid", r.vec(15, -4.0, 4.0), |t| t.sigmoid(), sigmoid);
}

#[test]
fn grad_tanh() {
    let mut r = Rng::named("tanh");
    unary_grad("tanh", r.vec(15, -2.0, 2.0), |t| t.tanh(), f64::tanh);
}

#[test]
fn grad_gelu() {
    let mut r = Rng::named("gelu");
    unary_grad("gelu", r.vec(15, -3.0, 3.0), |t| t.gelu(), gelu);
}

#[test]
fn grad_recip_sin_cos_square() {
    let mut r = Rng::named("recip");
    let x: Vec<f32> = r
        .vec(15, 0.4, 2.0)
        .iter()
        .enumerate()
        .map(|(i, v)| if i.is_multiple_of(2) { *v } else { -v })
        .collect();
    unary_grad("recip", x, |t| t.recip(), |x| 1.0 / x);
    unary_grad("sin", r.vec(15, -3.0, 3.0), |t| t.sin(), f64::sin);
    unary_grad("cos", r.vec(15, -3.0, 3.0), |t| t.cos(), f64::cos);
    unary_grad("square", r.vec(15, -2.0, 2.0), |t| t.square(), |x| x * x);
}

#[test]
fn grad_sign_is_zero() {
    let x = tensor(&[-2.0, 0.5, 3.0], &[3]).requires_grad_();
    let g = ok(
        "backward",
        x.sign()
            .and_then(|s| s.mul(&x))
            .and_then(|p| p.sum_all())
            .and_then(|l| l.backward()),
    );
    // d/dx (sign(x) * x) = sign(x): all of it through the second factor.
    let gx = read_f32("grad", g.get(&x).expect("gradient of x"));
    assert_close_msg("d(sign(x)*x)/dx", &gx, &[-1.0, 1.0, 1.0], 0.0, 0.0);
}

#[test]
fn grad_scalar_ops_and_clamp() {
    let mut r = Rng::named("scalar_ops");
    // Away from the clamp bounds -1 and 1.
    let x: Vec<f32> = r
        .vec(15, -2.0, 2.0)
        .iter()
        .map(|&v| {
            if (v.abs() - 1.0).abs() < 0.05 {
                v * 0.9
            } else {
                v
            }
        })
        .collect();
    check_grad_ref(
        "scalar ops",
        &[input(x.clone(), &[15])],
        |t| {
            t[0].add_scalar(1.5)?
                .mul_scalar(-2.0)?
                .sub_scalar(0.5)?
                .div_scalar(4.0)?
                .rsub_scalar(3.0)
        },
        |a| a[0].map(|v| 3.0 - ((v + 1.5) * -2.0 - 0.5) / 4.0),
    );
    check_grad_ref(
        "clamp",
        &[input(x, &[15])],
        |t| t[0].clamp(-1.0, 1.0),
        |a| a[0].map(|v| v.clamp(-1.0, 1.0)),
    );
}

#[test]
fn grad_at_kinks_follows_pytorch() {
    // PyTorch: relu'(0) = 0, abs'(0) = 0, and clamp passes the gradient where
    // lo <= x <= hi, bounds included (it is not split like maximum/minimum).
    let x = tensor(&[0.0, -0.0, 1.0, -1.0, 2.0, -2.0], &[6]).requires_grad_();
    let grad_of = |name: &str, y: Result<Tensor>| -> Vec<f32> {
        let g = ok(name, y.and_then(|y| y.sum_all()).and_then(|l| l.backward()));
        read_f32(name, g.get(&x).expect("gradient of x"))
    };
    let g = grad_of("relu", x.relu());
    assert_close_msg(
        "relu' at [0, -0, 1, -1, 2, -2]",
        &g,
        &[0.0, 0.0, 1.0, 0.0, 1.0, 0.0],
        0.0,
        0.0,
    );
    let g = grad_of("abs", x.abs());
    assert_close_msg(
        "abs' at [0, -0, 1, -1, 2, -2]",
        &g,
        &[0.0, 0.0, 1.0, -1.0, 1.0, -1.0],
        0.0,
        0.0,
    );
    let g = grad_of("clamp", x.clamp(-1.0, 1.0));
    assert_close_msg(
        "clamp(x, -1, 1)' at [0, -0, 1, -1, 2, -2]",
        &g,
        &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0],
        0.0,
        0.0,
    );
}

#[test]
fn grad_pow_edge_cases_follow_pytorch() {
    // PyTorch's pow backward: d/da is 0 where b == 0 (even at a == 0, where
    // b * a^(b-1) would be 0 * inf), and d/db is 0 where a == 0 and b >= 0
    // (where out * log(a) would be 0 * -inf).
    let a = tensor(&[0.0, 0.0, 2.0, 3.0, 0.0], &[5]).requires_grad_();
    let b = tensor(&[2.0, 0.0, 0.0, 1.0, 1.0], &[5]).requires_grad_();
    let g = ok(
        "pow",
        a.pow(&b)
            .and_then(|y| y.sum_all())
            .and_then(|l| l.backward()),
    );
    let ga = read_f32("grad a", g.get(&a).expect("gradient of a"));
    let gb = read_f32("grad b", g.get(&b).expect("gradient of b"));
    let what = "at a = [0, 0, 2, 3, 0], b = [2, 0, 0, 1, 1]";
    assert_close_msg(
        &format!("d(a^b)/da {what}"),
        &ga,
        &[0.0, 0.0, 0.0, 1.0, 1.0],
        GRAD_ATOL,
        GRAD_RTOL,
    );
    let want_b = [0.0, 0.0, 2f64.ln(), 3.0 * 3f64.ln(), 0.0];
    assert_close_msg(
        &format!("d(a^b)/db {what}"),
        &gb,
        &want_b,
        GRAD_ATOL,
        GRAD_RTOL,
    );
}

// ---- binary ------------------------------------------------------------------------------

fn grad_pairs() -> Vec<(Vec<usize>, Vec<usize>)> {
    vec![
        (vec![3, 4], vec![3, 4]),
        (vec![3, 4], vec![4]),
        (vec![4], vec![3, 4]),
        (vec![3, 1], vec![1, 4]),
        (vec![2, 3, 1], vec![3, 4]),
        (vec![], vec![2, 3]),
        (vec![2, 3], vec![]),
        (vec![2, 1, 3], vec![2, 2, 1]),
    ]
}

fn binary_grad(
    name: &str,
    gen_a: impl Fn(&mut Rng, usize) -> Vec<f32>,
    gen_b: impl Fn(&mut Rng, usize) -> Vec<f32>,
    gpu: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    cpu: impl Fn(f64, f64) -> f64,
) {
    let mut rng = Rng::named(name);
    for (sa, sb) in grad_pairs() {
        let a = input(gen_a(&mut rng, numel(&sa)), &sa);
        let b = input(gen_b(&mut rng, numel(&sb)), &sb);
        check_grad_ref(
            &format!("{name} {sa:?} with {sb:?}"),
            &[a, b],
            |t| gpu(&t[0], &t[1]),
            |x| x[0].zip(&x[1], &cpu),
        );
    }
}

fn uni(lo: f64, hi: f64) -> impl Fn(&mut Rng, usize) -> Vec<f32> {
    move |r, n| r.vec(n, lo, hi)
}

/// Odd (or even) multiples of 0.1: values from the two never tie, and differ
/// by at least 0.1, far more than eps.
fn tenths(odd: bool) -> impl Fn(&mut Rng, usize) -> Vec<f32> {
    move |r, n| {
        (0..n)
            .map(|_| (2 * r.index(15) as i32 - 14 + odd as i32) as f32 * 0.1)
            .collect()
    }
}

#[test]
fn grad_add() {
    binary_grad(
        "add",
        uni(-2.0, 2.0),
        uni(-2.0, 2.0),
        |a, b| a.add(b),
        |a, b| a + b,
    );
}

#[test]
fn grad_sub() {
    binary_grad(
        "sub",
        uni(-2.0, 2.0),
        uni(-2.0, 2.0),
        |a, b| a.sub(b),
        |a, b| a - b,
    );
}

#[test]
fn grad_mul() {
    binary_grad(
        "mul",
        uni(-2.0, 2.0),
        uni(-2.0, 2.0),
        |a, b| a.mul(b),
        |a, b| a * b,
    );
}

#[test]
fn grad_masked() {
    // The mask is a constant (it gets no gradient); masks of -1, 0 and 1,
    // broadcast along the first axis.
    let mut r = Rng::named("masked");
    let mask: Vec<f32> = (0..5).map(|_| r.index(3) as f32 - 1.0).collect();
    let m = tensor(&mask, &[1, 5]);
    let mask_arr = Arr::from_f32(&mask, &[1, 5]);
    check_grad_ref(
        "masked [3, 5] by [1, 5]",
        &[input(r.vec(15, -2.0, 2.0), &[3, 5])],
        |t| t[0].masked(&m),
        |x| x[0].zip(&mask_arr, |a, k| if k != 0.0 { a } else { 0.0 }),
    );
}

/// PyTorch routes a gradient by the mask: where ReLU's output is 0, or where
/// a max-pool window's input is not the maximum, the gradient is 0 even if
/// the incoming one is NaN or infinite (`grad * mask` would give NaN).
#[test]
fn masked_gradients_ignore_nan_where_the_mask_is_zero() {
    let x = tensor(&[-1.0, 2.0, 0.0, 3.0], &[4]).requires_grad_();
    let upstream = tensor(&[f32::NAN, 1.0, f32::INFINITY, 2.0], &[4]);
    let g = ok(
        "relu",
        x.relu()
            .and_then(|y| y.mul(&upstream))
            .and_then(|y| y.sum_all())
            .and_then(|l| l.backward()),
    );
    let gx = read_f32("relu grad", g.get(&x).expect("gradient of x"));
    assert_eq!(gx, [0.0, 1.0, 0.0, 2.0]);

    let x = tensor(&[1.0, 5.0, 3.0, 2.0], &[1, 1, 2, 2]).requires_grad_();
    let nan = tensor(&[f32::NAN], &[1, 1, 1, 1]);
    let g = ok(
        "max_pool2d",
        x.max_pool2d(cinder_tensor::Pool2dOptions::new(2))
            .and_then(|y| y.mul(&nan))
            .and_then(|y| y.sum_all())
            .and_then(|l| l.backward()),
    );
    let gx = read_f32("max_pool2d grad", g.get(&x).expect("gradient of x"));
    assert_eq!([gx[0], gx[2], gx[3]], [0.0, 0.0, 0.0]);
    assert!(gx[1].is_nan(), "the maximum's position gets the NaN");
}

#[test]
fn grad_div() {
    let away = |r: &mut Rng, n: usize| r.away_from_zero(n, -2.0, 2.0, 0.5);
    binary_grad("div", uni(-2.0, 2.0), away, |a, b| a.div(b), |a, b| a / b);
}

#[test]
fn grad_pow() {
    binary_grad(
        "pow",
        uni(0.5, 2.0),
        uni(-2.0, 2.0),
        |a, b| a.pow(b),
        f64::powf,
    );
    let mut r = Rng::named("pow_scalar");
    check_grad_ref(
        "pow_scalar(3)",
        &[input(r.vec(6, -2.0, 2.0), &[6])],
        |t| t[0].pow_scalar(3.0),
        |a| a[0].map(|v| v.powi(3)),
    );
}

#[test]
fn grad_maximum() {
    binary_grad(
        "maximum",
        tenths(true),
        tenths(false),
        |a, b| a.maximum(b),
        f64::max,
    );
}

#[test]
fn grad_minimum() {
    binary_grad(
        "minimum",
        tenths(true),
        tenths(false),
        |a, b| a.minimum(b),
        f64::min,
    );
}

#[test]
fn grad_maximum_minimum_ties_split_evenly() {
    // PyTorch: at a == b, maximum and minimum send half the gradient each way.
    let a = tensor(&[1.0, 2.0, 3.0, -1.0], &[4]).requires_grad_();
    let b = tensor(&[1.0, 0.0, 3.0, 5.0], &[4]).requires_grad_();
    for (name, out) in [("maximum", a.maximum(&b)), ("minimum", a.minimum(&b))] {
        let g = ok(
            name,
            out.and_then(|o| o.sum_all()).and_then(|l| l.backward()),
        );
        let ga = read_f32(name, g.get(&a).expect("gradient of a"));
        let gb = read_f32(name, g.get(&b).expect("gradient of b"));
        let (wa, wb): (Vec<f64>, Vec<f64>) = if name == "maximum" {
            (vec![0.5, 1.0, 0.5, 0.0], vec![0.5, 0.0, 0.5, 1.0])
        } else {
            (vec![0.5, 0.0, 0.5, 1.0], vec![0.5, 1.0, 0.5, 0.0])
        };
        assert_close_msg(&format!("{name} ties: d/da"), &ga, &wa, 0.0, 0.0);
        assert_close_msg(&format!("{name} ties: d/db"), &gb, &wb, 0.0, 0.0);
    }
    // A scalar operand broadcast against ties.
    let x = tensor(&[0.0, 1.0, 0.0], &[3]).requires_grad_();
    let g = ok(
        "relu-like",
        x.maximum_scalar(0.0)
            .and_then(|o| o.sum_all())
            .and_then(|l| l.backward()),
    );
    assert_close_msg(
        "maximum(x, 0) at x = 0",
        &read_f32("grad", g.get(&x).expect("grad")),
        &[0.5, 1.0, 0.5],
        0.0,
        0.0,
    );
}

// ---- reductions ----------------------------------------------------------------------------

fn reduction_configs() -> Vec<(Vec<isize>, bool)> {
    vec![
        (vec![1], false),
        (vec![0, 2], true),
        (vec![-1], true),
        (vec![], false),
        (vec![0], true),
    ]
}

fn reduce_grad(
    name: &str,
    x: Vec<f32>,
    gpu: impl Fn(&Tensor, &[isize], bool) -> Result<Tensor>,
    cpu: impl Fn(&Arr, &[isize], bool) -> Arr,
) {
    let shape = [2, 3, 4];
    for (axes, keepdim) in reduction_configs() {
        check_grad_ref(
            &format!("{name} of {shape:?} over {axes:?} keepdim {keepdim}"),
            &[input(x.clone(), &shape)],
            |t| gpu(&t[0], &axes, keepdim),
            |a| cpu(&a[0], &axes, keepdim),
        );
    }
}

#[test]
fn grad_sum() {
    reduce_grad(
        "sum",
        Rng::named("sum").vec(24, -2.0, 2.0),
        |t, a, k| t.sum(a, k),
        |x, a, k| x.sum(a, k),
    );
}

#[test]
fn grad_mean() {
    reduce_grad(
        "mean",
        Rng::named("mean").vec(24, -2.0, 2.0),
        |t, a, k| t.mean(a, k),
        |x, a, k| x.mean(a, k),
    );
}

#[test]
fn grad_var() {
    let x = Rng::named("var").vec(24, -2.0, 2.0);
    reduce_grad(
        "var unbiased",
        x.clone(),
        |t, a, k| t.var(a, 1, k),
        |x, a, k| x.var(a, 1, k),
    );
    reduce_grad(
        "var population",
        x,
        |t, a, k| t.var(a, 0, k),
        |x, a, k| x.var(a, 0, k),
    );
}

#[test]
fn grad_max() {
    // Distinct values 0.1 apart: the maximum never changes under ±eps.
    let x = Rng::named("max").distinct(24, 0.1, -1.2);
    reduce_grad("max", x, |t, a, k| t.max(a, k), |x, a, k| x.max(a, k));
}

#[test]
fn grad_min() {
    let x = Rng::named("min").distinct(24, 0.1, -1.2);
    reduce_grad("min", x, |t, a, k| t.min(a, k), |x, a, k| x.min(a, k));
}

#[test]
fn grad_max_min_ties_split_evenly() {
    // PyTorch's amax/amin: the gradient is shared evenly among the positions
    // that attain the extreme.
    let x = tensor(&[1.0, 3.0, 3.0, 2.0, -1.0, -1.0, -1.0, 0.0], &[2, 4]).requires_grad_();
    let g = ok(
        "max",
        x.max(&[1], false)
            .and_then(|m| m.sum_all())
            .and_then(|l| l.backward()),
    );
    let gx = read_f32("grad", g.get(&x).expect("gradient"));
    assert_close_msg(
        "max ties",
        &gx,
        &[0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 1.0],
        1e-7,
        0.0,
    );
    let g = ok(
        "min",
        x.min(&[1], false)
            .and_then(|m| m.sum_all())
            .and_then(|l| l.backward()),
    );
    let gx = read_f32("grad", g.get(&x).expect("gradient"));
    let third = 1.0 / 3.0;
    assert_close_msg(
        "min ties",
        &gx,
        &[1.0, 0.0, 0.0, 0.0, third, third, third, 0.0],
        1e-7,
        1e-6,
    );
}

// ---- movement ----------------------------------------------------------------------------

#[test]
fn grad_reshape_flatten_squeeze() {
    let x = Rng::named("reshape").vec(24, -1.0, 1.0);
    let s = [2, 3, 4];
    check_grad_ref(
        "reshape",
        &[input(x.clone(), &s)],
        |t| t[0].reshape(&[4, 6]),
        |a| a[0].reshape(&[4, 6]),
    );
    check_grad_ref(
        "flatten",
        &[input(x.clone(), &s)],
        |t| t[0].flatten(1, 2),
        |a| a[0].reshape(&[2, 12]),
    );
    check_grad_ref(
        "unsqueeze-squeeze",
        &[input(x, &s)],
        |t| t[0].unsqueeze(1)?.mul_scalar(2.0)?.squeeze(1),
        |a| a[0].map(|v| 2.0 * v),
    );
}

#[test]
fn grad_permute_transpose() {
    let x = Rng::named("permute").vec(24, -1.0, 1.0);
    let s = [2, 3, 4];
    for perm in [[2, 0, 1], [1, 2, 0], [0, 2, 1]] {
        // Multiplying by a fixed non-symmetric tensor makes the layout matter.
        check_grad_ref(
            &format!("permute {perm:?}"),
            &[input(x.clone(), &s)],
            |t| t[0].permute(&perm),
            |a| a[0].permute(&perm),
        );
    }
    check_grad_ref(
        "transpose",
        &[input(x.clone(), &s)],
        |t| t[0].transpose(0, -1),
        |a| a[0].transpose(0, -1),
    );
    check_grad_ref(
        "t",
        &[input(x[..12].to_vec(), &[3, 4])],
        |t| t[0].t(),
        |a| a[0].transpose(0, 1),
    );
}

#[test]
fn grad_broadcast_to() {
    let mut r = Rng::named("broadcast_to");
    for (from, to) in [
        (vec![3, 1], vec![2, 3, 4]),
        (vec![], vec![5]),
        (vec![4], vec![3, 4]),
        (vec![1, 3, 1], vec![2, 3, 2]),
    ] {
        let x = r.vec(numel(&from), -1.0, 1.0);
        let to2 = to.clone();
        check_grad_ref(
            &format!("broadcast {from:?} to {to:?}"),
            &[input(x, &from)],
            move |t| t[0].broadcast_to(&to),
            move |a| a[0].broadcast_to(&to2),
        );
    }
}

#[test]
fn grad_narrow_slice_pad() {
    let x = Rng::named("narrow").vec(30, -1.0, 1.0);
    let s = [5, 6];
    check_grad_ref(
        "narrow(0, 1, 3)",
        &[input(x.clone(), &s)],
        |t| t[0].narrow(0, 1, 3),
        |a| a[0].narrow(0, 1, 3),
    );
    check_grad_ref(
        "narrow(-1, 4, 2)",
        &[input(x.clone(), &s)],
        |t| t[0].narrow(-1, 4, 2),
        |a| a[0].narrow(1, 4, 2),
    );
    check_grad_ref(
        "slice(1, 0, 1)",
        &[input(x.clone(), &s)],
        |t| t[0].slice(1, 0, 1),
        |a| a[0].narrow(1, 0, 1),
    );
    check_grad_ref(
        "pad_dim(1, 2, 1)",
        &[input(x, &s)],
        |t| t[0].pad_dim(1, 2, 1),
        |a| a[0].pad_dim(1, 2, 1),
    );
}

#[test]
fn grad_concat_stack() {
    let mut r = Rng::named("concat");
    let ins = vec![
        rand_input(&mut r, &[2, 1, 3], -1.0, 1.0),
        rand_input(&mut r, &[2, 3, 3], -1.0, 1.0),
        rand_input(&mut r, &[2, 2, 3], -1.0, 1.0),
    ];
    check_grad_ref(
        "concat along 1",
        &ins,
        |t| Tensor::concat(&[&t[0], &t[1], &t[2]], 1),
        |a| Arr::concat(&[&a[0], &a[1], &a[2]], 1),
    );
    // The same tensor twice in one concat: its gradient is the sum of both slices.
    check_grad_ref(
        "concat [x, y, x]",
        &ins[..2],
        |t| Tensor::concat(&[&t[0], &t[1], &t[0]], 1),
        |a| Arr::concat(&[&a[0], &a[1], &a[0]], 1),
    );
    // Ten inputs (the `Concat` op), one of them three times.
    let many: Vec<_> = (0..8)
        .map(|k| rand_input(&mut r, &[2, 1 + k % 3], -1.0, 1.0))
        .collect();
    let order = [0usize, 1, 2, 3, 4, 5, 6, 7, 2, 2];
    check_grad_ref(
        "concat of ten",
        &many,
        |t| Tensor::concat(&order.iter().map(|&k| &t[k]).collect::<Vec<_>>(), 1),
        |a| Arr::concat(&order.iter().map(|&k| &a[k]).collect::<Vec<_>>(), 1),
    );
    let ins = vec![
        rand_input(&mut r, &[2, 3], -1.0, 1.0),
        rand_input(&mut r, &[2, 3], -1.0, 1.0),
    ];
    for dim in [0isize, 1, 2] {
        check_grad_ref(
            &format!("stack along {dim}"),
            &ins,
            |t| Tensor::stack(&[&t[0], &t[1]], dim),
            |a| Arr::stack(&[&a[0], &a[1]], dim),
        );
    }
}

#[test]
fn grad_gather_index_select() {
    let mut r = Rng::named("gather");
    let x = r.vec(20, -1.0, 1.0);
    // Repeated indices: the source gradient sums every pick.
    let idx1 = [0i32, 4, 4, 2, 1, 1, 1, 3, 0, 0, 4, 2];
    let it = tensor_i32(&idx1, &[3, 4]);
    check_grad_ref(
        "gather dim 1, index [3, 4] into [4, 5]",
        &[input(x.clone(), &[4, 5])],
        |t| t[0].gather(1, &it),
        |a| a[0].gather(1, &Arr::from_i32(&idx1, &[3, 4])),
    );
    let idx0 = [3i32, 0, 3, 1, 2, 2, 0, 0];
    let it0 = tensor_i32(&idx0, &[2, 4]);
    check_grad_ref(
        "gather dim 0, index [2, 4] into [4, 5]",
        &[input(x.clone(), &[4, 5])],
        |t| t[0].gather(0, &it0),
        |a| a[0].gather(0, &Arr::from_i32(&idx0, &[2, 4])),
    );
    let iu: Vec<u32> = idx1.iter().map(|&i| i as u32).collect();
    let itu = tensor_u32(&iu, &[3, 4]);
    check_grad_ref(
        "gather with u32 index",
        &[input(x.clone(), &[4, 5])],
        |t| t[0].gather(1, &itu),
        |a| a[0].gather(1, &Arr::from_i32(&idx1, &[3, 4])),
    );
    // 3-D, along the middle, with an index smaller than the source in the
    // other dims (the gradient is zero-padded there) and repeats.
    let x3 = r.vec(24, -1.0, 1.0);
    let idx3 = [3i32, 0, 3, 1, 1, 2, 0, 0, 3, 3];
    let it3 = tensor_i32(&idx3, &[1, 5, 2]);
    check_grad_ref(
        "gather dim 1, index [1, 5, 2] into [2, 4, 3]",
        &[input(x3, &[2, 4, 3])],
        |t| t[0].gather(1, &it3),
        |a| a[0].gather(1, &Arr::from_i32(&idx3, &[1, 5, 2])),
    );
    for dim in [0isize, 1] {
        let sel = [2usize, 0, 2, 3, 2];
        let si: Vec<i32> = sel.iter().map(|&v| v as i32).collect();
        let st = tensor_i32(&si, &[5]);
        check_grad_ref(
            &format!("index_select dim {dim}"),
            &[input(x.clone(), &[4, 5])],
            |t| t[0].index_select(dim, &st),
            |a| a[0].index_select(dim, &sel),
        );
    }
    // Along the first axis the gradient is a product with the one-hot:
    // a source of more than two dims, a u32 index, rows never picked.
    let sel = [3usize, 0, 3, 3, 1, 0, 3];
    let su: Vec<u32> = sel.iter().map(|&v| v as u32).collect();
    let st = tensor_u32(&su, &[7]);
    check_grad_ref(
        "index_select dim 0 of [5, 2, 2] with a u32 index",
        &[input(x[..20].to_vec(), &[5, 2, 2])],
        |t| t[0].index_select(0, &st),
        |a| a[0].index_select(0, &sel),
    );
}

#[test]
fn grad_chain_of_views() {
    let x = Rng::named("chain").vec(24, -1.0, 1.0);
    check_grad_ref(
        "permute-narrow-broadcast-mul",
        &[input(x, &[2, 3, 4])],
        |t| {
            let v = t[0]
                .permute(&[2, 0, 1])?
                .narrow(0, 1, 2)?
                .narrow(2, 2, 1)?
                .broadcast_to(&[3, 2, 2, 5])?;
            v.mul(&v.exp()?)
        },
        |a| {
            let v = a[0]
                .permute(&[2, 0, 1])
                .narrow(0, 1, 2)
                .narrow(2, 2, 1)
                .broadcast_to(&[3, 2, 2, 5]);
            v.mul(&v.map(f64::exp))
        },
    );
}

// ---- matmul ------------------------------------------------------------------------------

fn matmul_grad(rng: &mut Rng, sa: &[usize], sb: &[usize]) {
    let a = rand_input(rng, sa, -1.0, 1.0);
    let b = rand_input(rng, sb, -1.0, 1.0);
    check_grad_ref(
        &format!("matmul {sa:?} @ {sb:?}"),
        &[a, b],
        |t| t[0].matmul(&t[1]),
        |x| x[0].matmul(&x[1]),
    );
}

#[test]
fn grad_matmul_2d() {
    let mut r = Rng::named("matmul_2d");
    for (sa, sb) in [
        ([3, 4], [4, 5]),
        ([1, 3], [3, 1]),
        ([5, 1], [1, 2]),
        ([1, 1], [1, 1]),
        ([2, 7], [7, 3]),
    ] {
        matmul_grad(&mut r, &sa, &sb);
    }
}

#[test]
fn grad_matmul_batched_and_broadcast() {
    let mut r = Rng::named("matmul_batched");
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![2, 3, 4], vec![2, 4, 2]),
        (vec![2, 1, 3, 4], vec![3, 4, 2]),
        (vec![2, 3, 4], vec![4, 2]),
        (vec![3, 4], vec![2, 4, 2]),
        (vec![1, 3, 4], vec![4, 2]),
        (vec![2, 1, 2, 3], vec![1, 2, 3, 2]),
        // K = 1, an outer product (a broadcast multiply in the runtime).
        (vec![2, 3, 1], vec![2, 1, 4]),
        (vec![3, 1], vec![2, 1, 4]),
        // M = 1 or N = 1, a matrix-vector product (a reduction in the runtime).
        (vec![2, 1, 5], vec![2, 5, 3]),
        (vec![3, 5], vec![2, 5, 1]),
        (vec![1, 4], vec![4, 1]),
    ];
    for (sa, sb) in cases {
        matmul_grad(&mut r, &sa, &sb);
    }
}

#[test]
fn grad_matmul_vectors() {
    let mut r = Rng::named("matmul_vectors");
    for (sa, sb) in [
        (vec![4], vec![4, 3]),
        (vec![3, 4], vec![4]),
        (vec![4], vec![2, 4, 3]),
        (vec![2, 3, 4], vec![4]),
    ] {
        matmul_grad(&mut r, &sa, &sb);
    }
}

#[test]
fn grad_matmul_dot() {
    // [k] @ [k]: PyTorch's dot product (0-d).
    let mut r = Rng::named("matmul_dot");
    matmul_grad(&mut r, &[5], &[5]);
}

#[test]
fn grad_matmul_of_views() {
    let mut r = Rng::named("matmul_views");
    let a = rand_input(&mut r, &[4, 3], -1.0, 1.0);
    let b = rand_input(&mut r, &[5, 4], -1.0, 1.0);
    check_grad_ref(
        "a^T @ b^T",
        &[a, b],
        |t| t[0].t()?.matmul(&t[1].t()?),
        |x| x[0].transpose(0, 1).matmul(&x[1].transpose(0, 1)),
    );
    let s = rand_input(&mut r, &[3, 3], -1.0, 1.0);
    check_grad_ref(
        "x @ x",
        &[s],
        |t| t[0].matmul(&t[0]),
        |x| x[0].matmul(&x[0]),
    );
}

// ---- normalised exponentials and losses -------------------------------------------------------

#[test]
fn grad_softmax_log_softmax() {
    let mut r = Rng::named("softmax");
    let x = r.vec(12, -3.0, 3.0);
    for dim in [0isize, 1, -1] {
        check_grad_ref(
            &format!("softmax dim {dim}"),
            &[input(x.clone(), &[3, 4])],
            |t| t[0].softmax(dim),
            |a| a[0].softmax(dim),
        );
        check_grad_ref(
            &format!("log_softmax dim {dim}"),
            &[input(x.clone(), &[3, 4])],
            |t| t[0].log_softmax(dim),
            |a| a[0].log_softmax(dim),
        );
    }
    // Large logits: the max-shift keeps everything finite.
    let big: Vec<f32> = x.iter().map(|v| v + 500.0).collect();
    check_grad_ref(
        "softmax around 500",
        &[input(big.clone(), &[3, 4])],
        |t| t[0].softmax(-1),
        |a| a[0].softmax(-1),
    );
    check_grad_ref(
        "log_softmax around 500",
        &[input(big, &[3, 4])],
        |t| t[0].log_softmax(-1),
        |a| a[0].log_softmax(-1),
    );
    let x3 = r.vec(2 * 3 * 2, -2.0, 2.0);
    check_grad_ref(
        "softmax [2,3,2] dim 1",
        &[input(x3, &[2, 3, 2])],
        |t| t[0].softmax(1),
        |a| a[0].softmax(1),
    );
}

#[test]
fn grad_cross_entropy() {
    let mut r = Rng::named("cross_entropy");
    let targets = [1usize, 0, 4, 4];
    let ti: Vec<i32> = targets.iter().map(|&v| v as i32).collect();
    let tt = tensor_i32(&ti, &[4]);
    let x = r.vec(20, -3.0, 3.0);
    let chk = check_grad_ref(
        "cross_entropy [4, 5]",
        &[input(x.clone(), &[4, 5])],
        |t| t[0].cross_entropy(&tt),
        |a| a[0].cross_entropy(&targets),
    );
    assert_eq!(chk.out_shape, Vec::<usize>::new(), "cross_entropy is 0-d");
    // The closed form: w * (softmax(x) - one_hot) / N.
    let p = Arr::from_f32(&x, &[4, 5]).softmax(-1);
    let onehot = Arr::one_hot(&targets.map(|v| v as i64), &[4], 5);
    let want = p.sub(&onehot).map(|v| v * chk.weights[0] / 4.0);
    assert_close_msg(
        "cross_entropy gradient vs closed form",
        &chk.grads[0],
        &want.data,
        GRAD_ATOL,
        GRAD_RTOL,
    );
    let big: Vec<f32> = r.vec(20, -3.0, 3.0).iter().map(|v| v * 100.0).collect();
    check_grad_ref(
        "cross_entropy of large logits",
        &[input(big, &[4, 5])],
        |t| t[0].cross_entropy(&tt),
        |a| a[0].cross_entropy(&targets),
    );
}

#[test]
fn grad_mse_loss() {
    let mut r = Rng::named("mse");
    let a = rand_input(&mut r, &[3, 4], -2.0, 2.0);
    let b = rand_input(&mut r, &[3, 4], -2.0, 2.0);
    check_grad_ref(
        "mse_loss",
        &[a, b],
        |t| t[0].mse_loss(&t[1]),
        |x| x[0].mse_loss(&x[1]),
    );
}

#[test]
fn grad_where_cond() {
    let mut r = Rng::named("where");
    let c = [1u32, 0, 0, 1, 1, 0];
    let ct = tensor_u32(&c, &[3, 1, 2]);
    let a = rand_input(&mut r, &[1, 4, 2], -2.0, 2.0);
    let b = rand_input(&mut r, &[3, 4, 1], -2.0, 2.0);
    let ca = Arr::new(&[3, 1, 2], c.iter().map(|&v| v as f64).collect());
    check_grad_ref(
        "where cond [3,1,2] a [1,4,2] b [3,4,1]",
        &[a, b],
        |t| Tensor::where_cond(&ct, &t[0], &t[1]),
        |x| {
            let s = [3, 4, 2];
            let (cc, aa, bb) = (
                ca.broadcast_to(&s),
                x[0].broadcast_to(&s),
                x[1].broadcast_to(&s),
            );
            Arr::from_fn(&s, |i| if cc.at(i) != 0.0 { aa.at(i) } else { bb.at(i) })
        },
    );
    // A condition computed from the input itself (a piecewise function).
    let x = r.away_from_zero(12, -2.0, 2.0, 0.05);
    check_grad_ref(
        "where(x > 0, x^2, -x)",
        &[input(x, &[12])],
        |t| {
            let cond = t[0].gt(&Tensor::zeros(device(), &[]))?;
            Tensor::where_cond(&cond, &t[0].square()?, &t[0].neg()?)
        },
        |a| a[0].map(|v| if v > 0.0 { v * v } else { -v }),
    );
}

#[test]
fn grad_composite_network() {
    // A small MLP with a loss: every rule composed.
    let mut r = Rng::named("mlp");
    let x = rand_input(&mut r, &[4, 3], -1.0, 1.0);
    let w1 = rand_input(&mut r, &[3, 5], -1.0, 1.0);
    let b1 = rand_input(&mut r, &[5], -0.5, 0.5);
    let w2 = rand_input(&mut r, &[5, 2], -1.0, 1.0);
    let targets = [0usize, 1, 1, 0];
    let tt = tensor_i32(&[0, 1, 1, 0], &[4]);
    check_grad_ref(
        "mlp: cross_entropy(tanh(x @ w1 + b1) @ w2)",
        &[x, w1, b1, w2],
        |t| {
            t[0].matmul(&t[1])?
                .add(&t[2])?
                .tanh()?
                .matmul(&t[3])?
                .cross_entropy(&tt)
        },
        |a| {
            a[0].matmul(&a[1])
                .add(&a[2])
                .map(f64::tanh)
                .matmul(&a[3])
                .cross_entropy(&targets)
        },
    );
}

// ---- the checker itself ----------------------------------------------------------------------

/// `detach(x) * x` has the value x^2 but the analytic gradient x (one factor is
/// cut from the graph): both comparisons must reject it.
#[test]
#[should_panic(expected = "differences")]
fn checker_rejects_a_wrong_gradient() {
    check_grad_ref(
        "detach(x) * x",
        &[input(vec![0.5, -1.0, 2.0], &[3])],
        |t| t[0].detach().mul(&t[0]),
        |a| a[0].map(|v| v * v),
    );
}

#[test]
#[should_panic(expected = "GPU central differences")]
fn checker_rejects_a_wrong_gradient_without_reference() {
    check_grad("detach(x) * x", &[input(vec![0.5, -1.0, 2.0], &[3])], |t| {
        t[0].detach().mul(&t[0])
    });
}

// ---- autograd semantics --------------------------------------------------------------------

#[test]
fn tensor_used_twice_accumulates() {
    let xs = [-1.5f32, 0.0, 0.5, 2.0];
    let x = tensor(&xs, &[4]).requires_grad_();
    // d/dx (x*x + x) = 2x + 1: both uses of x contribute.
    let g = ok(
        "backward",
        x.mul(&x)
            .and_then(|y| y.add(&x))
            .and_then(|y| y.sum_all())
            .and_then(|l| l.backward()),
    );
    let gx = read_f32("grad", g.get(&x).expect("gradient of x"));
    let want: Vec<f64> = xs.iter().map(|&v| 2.0 * v as f64 + 1.0).collect();
    assert_close_msg("d(x*x + x)/dx", &gx, &want, GRAD_ATOL, GRAD_RTOL);
    // A diamond: y = exp(x), z = y*y + y.
    check_grad_ref(
        "diamond exp(x)^2 + exp(x)",
        &[input(xs.to_vec(), &[4])],
        |t| {
            let y = t[0].exp()?;
            y.mul(&y)?.add(&y)
        },
        |a| a[0].map(|v| v.exp() * v.exp() + v.exp()),
    );
    // x + x.
    let g = ok(
        "backward",
        x.add(&x)
            .and_then(|y| y.sum_all())
            .and_then(|l| l.backward()),
    );
    assert_close_msg(
        "d(x + x)/dx",
        &read_f32("grad", g.get(&x).expect("grad")),
        &[2.0; 4],
        0.0,
        0.0,
    );
}

#[test]
fn detach_stops_gradients() {
    let xs = [-1.5f32, 0.5, 2.0];
    let x = tensor(&xs, &[3]).requires_grad_();
    let d = x.detach();
    assert!(
        !d.requires_grad(),
        "a detached tensor does not require grad"
    );
    // d/dx (detach(x) * x) = detach(x) = x, not 2x.
    let g = ok(
        "backward",
        d.mul(&x)
            .and_then(|y| y.sum_all())
            .and_then(|l| l.backward()),
    );
    let gx = read_f32("grad", g.get(&x).expect("gradient of x"));
    assert_close_msg("d(detach(x) * x)/dx", &gx, &xs.map(|v| v as f64), 0.0, 0.0);
    // A loss made only of detached values has nothing to differentiate.
    let l = ok("loss", d.mul_scalar(3.0).and_then(|y| y.sum_all()));
    assert!(!l.requires_grad());
    assert!(
        matches!(l.backward(), Err(Error::NoGradient(_))),
        "backward of a detached loss must be Err(NoGradient)"
    );
}

/// A freeze applies to the ops recorded while it lives: what they read of
/// a frozen tensor is a constant to their backward, even after the guard;
/// ops recorded before it still route gradients to the tensor, even when a
/// freeze is alive at the backward pass (as PyTorch's graph keeps them).
#[test]
fn freeze_applies_to_the_ops_recorded_under_it() {
    let w = tensor(&[1.0, 2.0], &[2]).requires_grad_();
    let x = tensor(&[3.0, 5.0], &[2]).requires_grad_();
    let product = |w: &Tensor| ok("w * x", w.mul(&x).and_then(|p| p.sum_all()));
    let before = product(&w);
    let during = {
        let _frozen = cinder_tensor::freeze(std::slice::from_ref(&w));
        assert!(!w.requires_grad() && x.requires_grad());
        product(&w)
    };
    assert!(w.requires_grad());
    let grads = {
        let _frozen = cinder_tensor::freeze(std::slice::from_ref(&w));
        ok("backward", before.backward())
    };
    let dw = grads.get(&w).map(|g| read_f32("dw", g));
    assert_eq!(dw, Some(vec![3.0, 5.0]), "recorded before the freeze");
    let grads = ok("backward", during.backward());
    assert!(grads.get(&w).is_none(), "recorded under the freeze");
    let dx = grads.get(&x).map(|g| read_f32("dx", g));
    assert_eq!(dx, Some(vec![1.0, 2.0]));
}

#[test]
fn no_grad_records_nothing() {
    let x = tensor(&[1.0, 2.0, 3.0], &[3]).requires_grad_();
    let y = {
        let _guard = no_grad();
        ok(
            "forward",
            x.mul(&x).and_then(|y| y.exp()).and_then(|y| y.sum_all()),
        )
    };
    assert!(
        !y.requires_grad(),
        "a result computed under no_grad requires grad"
    );
    assert!(y.is_leaf());
    match y.backward() {
        Err(Error::NoGradient(_)) => {}
        Err(e) => panic!("backward under no_grad: wrong error {e}"),
        Ok(_) => panic!("backward of a no_grad result must be Err"),
    }
    // The values are still computed.
    let want = [1f64, 4.0, 9.0].iter().map(|v| v.exp()).sum::<f64>();
    assert_close_msg(
        "no_grad value",
        &[ok("item", y.item())],
        &[want],
        ATOL,
        RTOL,
    );
    let z = with_no_grad(|| x.square());
    assert!(
        !ok("square", z).requires_grad(),
        "with_no_grad records nothing"
    );
    // Recording resumes when the guard is gone.
    let w = ok("square", x.square());
    assert!(w.requires_grad(), "recording did not resume after no_grad");
    let g = ok("backward", w.sum_all().and_then(|l| l.backward()));
    assert_close_msg(
        "after no_grad",
        &read_f32("grad", g.get(&x).expect("grad")),
        &[2.0, 4.0, 6.0],
        0.0,
        0.0,
    );
}

#[test]
fn unused_input_has_no_gradient() {
    let x = tensor(&[1.0, 2.0], &[2]).requires_grad_();
    let unused = tensor(&[5.0, 6.0], &[2]).requires_grad_();
    let constant = tensor(&[3.0, 4.0], &[2]);
    let g = ok(
        "backward",
        x.mul(&constant)
            .and_then(|y| y.sum_all())
            .and_then(|l| l.backward()),
    );
    assert!(
        g.get(&unused).is_none(),
        "an input the loss does not use has a gradient"
    );
    assert!(
        g.get(&constant).is_none(),
        "a tensor that does not require grad has a gradient"
    );
    assert_close_msg(
        "d(x*c)/dx",
        &read_f32("grad", g.get(&x).expect("gradient of x")),
        &[3.0, 4.0],
        0.0,
        0.0,
    );
    assert_eq!(g.len(), 1, "only x has a gradient");
}

#[test]
fn backward_needs_a_scalar_or_an_explicit_gradient() {
    let x = tensor(&[1.0, 2.0, 3.0], &[3]).requires_grad_();
    let y = ok("mul", x.mul_scalar(2.0));
    assert!(
        matches!(y.backward(), Err(Error::Shape { .. })),
        "backward of a [3] tensor must be a shape error"
    );
    let seed = tensor(&[1.0, 10.0, 100.0], &[3]);
    let g = ok("backward_with", y.backward_with(&seed));
    assert_close_msg(
        "backward_with",
        &read_f32("grad", g.get(&x).expect("grad")),
        &[2.0, 20.0, 200.0],
        0.0,
        0.0,
    );
    assert!(
        y.backward_with(&tensor(&[1.0], &[1])).is_err(),
        "backward_with a gradient of the wrong shape"
    );
}
