//! Activations (`activation.rs`) against f64 references of PyTorch's
//! formulas: forward values on awkward sizes and at special values,
//! gradients by finite differences away from kinks, and PyTorch's exact
//! gradients at the kinks themselves.

#![allow(clippy::type_complexity)]

mod common;

use cinder_tensor::{Approximate, Error, Result, Tensor};
use common::*;

const SIZES: [usize; 6] = [1, 7, 13, 33, 127, 1000];
const SELU_ALPHA: f64 = 1.673_263_242_354_377_3;
const SELU_SCALE: f64 = 1.050_700_987_355_480_5;

// ---- f64 references ------------------------------------------------------------------------

fn leaky_relu(x: f64, s: f64) -> f64 {
    if x > 0.0 {
        x
    } else {
        x * s
    }
}

fn hardswish(x: f64) -> f64 {
    x * (x + 3.0).clamp(0.0, 6.0) / 6.0
}

fn hardsigmoid(x: f64) -> f64 {
    (x + 3.0).clamp(0.0, 6.0) / 6.0
}

fn elu(x: f64, alpha: f64) -> f64 {
    if x > 0.0 || x.is_nan() {
        x
    } else {
        alpha * x.exp_m1()
    }
}

fn selu(x: f64) -> f64 {
    SELU_SCALE * elu(x, SELU_ALPHA)
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn softplus(x: f64, beta: f64, threshold: f64) -> f64 {
    if x * beta > threshold {
        x
    } else {
        (beta * x).exp().ln_1p() / beta
    }
}

fn mish(x: f64) -> f64 {
    x * x.exp().ln_1p().tanh()
}

fn logsigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

fn gelu_tanh(x: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
}

// ---- forward --------------------------------------------------------------------------------

/// Every size in `SIZES` drawn from `gen`, then `specials`, at the forward
/// tolerance (or `atol`, `rtol` where given).
fn forward_case(
    name: &str,
    lo: f64,
    hi: f64,
    specials: &[f32],
    gpu: impl Fn(&Tensor) -> Result<Tensor>,
    cpu: impl Fn(f64) -> f64,
) {
    let mut rng = Rng::named(name);
    for &n in &SIZES {
        let x = rng.vec(n, lo, hi);
        let shape = if n == 1000 { vec![8, 125] } else { vec![n] };
        let y = ok(name, gpu(&tensor(&x, &shape)));
        check(
            &format!("{name} {shape:?}"),
            &y,
            &Arr::from_f32(&x, &shape).map(&cpu),
        );
    }
    let y = ok(name, gpu(&tensor(specials, &[specials.len()])));
    check(
        &format!("{name} at {specials:?}"),
        &y,
        &Arr::from_f32(specials, &[specials.len()]).map(&cpu),
    );
}

const INF: f32 = f32::INFINITY;
const NAN: f32 = f32::NAN;

#[test]
fn leaky_relu_hardtanh_relu6_forward() {
    let sp = [0.0, -0.0, 1.0, -1.0, 6.0, -3.0, 3.0, INF, -INF, NAN];
    forward_case(
        "leaky_relu",
        -5.0,
        5.0,
        &sp,
        |t| t.leaky_relu(0.1),
        |x| leaky_relu(x, 0.1),
    );
    forward_case(
        "leaky_relu(-0.3)",
        -5.0,
        5.0,
        &sp,
        |t| t.leaky_relu(-0.3),
        |x| leaky_relu(x, -0.3),
    );
    forward_case(
        "hardtanh(-0.5, 2)",
        -4.0,
        4.0,
        &[-0.5, 2.0, 0.0, INF, -INF, NAN],
        |t| t.hardtanh(-0.5, 2.0),
        |x| x.clamp(-0.5, 2.0),
    );
    forward_case(
        "relu6",
        -8.0,
        10.0,
        &sp,
        |t| t.relu6(),
        |x| x.clamp(0.0, 6.0),
    );
}

#[test]
fn hardswish_hardsigmoid_forward() {
    let sp = [-3.0, 3.0, 0.0, -4.0, 4.0, INF, -INF, NAN];
    forward_case("hardswish", -6.0, 6.0, &sp, |t| t.hardswish(), hardswish);
    forward_case(
        "hardsigmoid",
        -6.0,
        6.0,
        &sp,
        |t| t.hardsigmoid(),
        hardsigmoid,
    );
}

#[test]
fn elu_selu_forward() {
    let sp = [0.0, -0.0, -1e-6, 1e-6, -30.0, 30.0, -INF, INF, NAN];
    forward_case("elu(1)", -5.0, 5.0, &sp, |t| t.elu(1.0), |x| elu(x, 1.0));
    forward_case("elu(0.7)", -5.0, 5.0, &sp, |t| t.elu(0.7), |x| elu(x, 0.7));
    forward_case("selu", -5.0, 5.0, &sp, |t| t.selu(), selu);
}

#[test]
fn silu_mish_gelu_tanh_forward() {
    let sp = [
        0.0, -0.0, 1.0, -1.0, 20.0, -20.0, 80.0, -80.0, INF, -INF, NAN,
    ];
    forward_case("silu", -8.0, 8.0, &sp, |t| t.silu(), silu);
    forward_case("mish", -8.0, 8.0, &sp, |t| t.mish(), mish);
    let sp = [0.0, 1.0, -1.0, 5.0, -5.0, 30.0, -30.0, INF, NAN];
    forward_case("gelu tanh", -6.0, 6.0, &sp, |t| t.gelu_tanh(), gelu_tanh);
    forward_case(
        "gelu_with(Tanh)",
        -6.0,
        6.0,
        &sp,
        |t| t.gelu_with(Approximate::Tanh),
        gelu_tanh,
    );
    forward_case(
        "gelu_with(None)",
        -6.0,
        6.0,
        &[0.0, 1.0, -1.0],
        |t| t.gelu_with(Approximate::None),
        gelu,
    );
}

#[test]
fn softplus_and_logsigmoid_forward() {
    // Above the threshold softplus is x itself; below, beta = 2 moves it.
    let sp = [
        0.0, 9.9, 10.0, 10.1, 21.0, -30.0, -100.0, 100.0, INF, -INF, NAN,
    ];
    forward_case(
        "softplus(1, 20)",
        -30.0,
        30.0,
        &sp,
        |t| t.softplus(1.0, 20.0),
        |x| softplus(x, 1.0, 20.0),
    );
    forward_case(
        "softplus(2, 20)",
        -15.0,
        15.0,
        &sp,
        |t| t.softplus(2.0, 20.0),
        |x| softplus(x, 2.0, 20.0),
    );
    forward_case(
        "softplus(0.5, 3)",
        -15.0,
        15.0,
        &sp,
        |t| t.softplus(0.5, 3.0),
        |x| softplus(x, 0.5, 3.0),
    );
    let sp = [0.0, 1.0, -1.0, 50.0, -50.0, 1e4, -1e4, INF, -INF, NAN];
    forward_case(
        "logsigmoid",
        -30.0,
        30.0,
        &sp,
        |t| t.logsigmoid(),
        logsigmoid,
    );
}

#[test]
fn softplus_above_threshold_is_exactly_x() {
    // 1.6 * 2 > 3: the input itself, where the log1p form gives 1.6 + 0.0198.
    let x = tensor(&[1.6, 25.0, 1e30], &[3]);
    let got = read_f32("softplus", &ok("softplus", x.softplus(2.0, 3.0)));
    assert_eq!(got, vec![1.6, 25.0, 1e30]);
}

#[test]
fn log1p_is_accurate_for_small_x() {
    // log(1 + x) in f32 loses x below 2^-24 and most of its digits near
    // 1e-5; log1p must keep them, to a few ulp.
    let x: Vec<f32> = vec![
        1e-10, -1e-10, 1e-7, -1e-7, 3e-6, 1e-5, -1e-5, 1e-4, 1e-3, -1e-3, 0.1, -0.5, 1.0, 10.0,
        1e10,
    ];
    let got = read_f32("log1p", &ok("log1p", tensor(&x, &[x.len()]).log1p()));
    let want: Vec<f64> = x.iter().map(|&v| (v as f64).ln_1p()).collect();
    assert_close_msg("log1p (relative 1e-6)", &got, &want, 0.0, 1e-6);
    let mut rng = Rng::named("log1p");
    for &n in &SIZES {
        // Log-uniform magnitudes from 1e-9 to 1e3, both signs above -1.
        let x: Vec<f32> = (0..n)
            .map(|i| {
                let m = (1e-9f64.ln() + (1e3f64.ln() - 1e-9f64.ln()) * rng.uniform()).exp();
                if i % 2 == 0 {
                    m as f32
                } else {
                    -(m.min(0.999)) as f32
                }
            })
            .collect();
        let got = read_f32("log1p", &ok("log1p", tensor(&x, &[n]).log1p()));
        let want: Vec<f64> = x.iter().map(|&v| (v as f64).ln_1p()).collect();
        assert_close_msg(&format!("log1p [{n}]"), &got, &want, 0.0, 2e-6);
    }
    let sp = [0.0, -0.0, -1.0, -2.0, INF, -INF, NAN];
    let got = read_f32("log1p", &ok("log1p", tensor(&sp, &[sp.len()]).log1p()));
    let want = [
        0.0,
        0.0,
        f64::NEG_INFINITY,
        f64::NAN,
        f64::INFINITY,
        f64::NAN,
        f64::NAN,
    ];
    assert_close_msg(
        "log1p at [0, -0, -1, -2, inf, -inf, nan]",
        &got,
        &want,
        0.0,
        0.0,
    );
}

#[test]
fn activations_reject_integers_and_bad_limits() {
    let i = tensor_i32(&[1, 2], &[2]);
    for (name, r) in [
        ("leaky_relu", i.leaky_relu(0.1)),
        ("elu", i.elu(1.0)),
        ("softplus", i.softplus(1.0, 20.0)),
        ("log1p", i.log1p()),
        ("hardswish", i.hardswish()),
    ] {
        assert!(
            matches!(r, Err(Error::DType { .. })),
            "{name} of i32 should be a dtype error"
        );
    }
    let x = tensor(&[0.0], &[1]);
    let err = x
        .hardtanh(1.0, -1.0)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("hardtanh") && err.contains("min_val"), "{err}");
}

// ---- gradients ------------------------------------------------------------------------------

/// `n` values in `[lo, hi]` at least 0.05 away from every point in `kinks`
/// (the finite differences step 1e-2 must not cross one).
fn away(name: &str, n: usize, lo: f64, hi: f64, kinks: &[f64]) -> Vec<f32> {
    let mut rng = Rng::named(name);
    (0..n)
        .map(|_| loop {
            let x = rng.range(lo, hi);
            if kinks.iter().all(|k| (x as f64 - k).abs() >= 0.05) {
                break x;
            }
        })
        .collect()
}

fn grad_case(
    name: &str,
    x: Vec<f32>,
    gpu: impl Fn(&Tensor) -> Result<Tensor>,
    cpu: impl Fn(f64) -> f64,
) {
    let n = x.len();
    check_grad_ref(name, &[input(x, &[n])], |t| gpu(&t[0]), |a| a[0].map(&cpu));
}

#[test]
fn gradients_match_finite_differences() {
    grad_case(
        "leaky_relu",
        away("leaky_relu", 13, -3.0, 3.0, &[0.0]),
        |t| t.leaky_relu(0.2),
        |x| leaky_relu(x, 0.2),
    );
    grad_case(
        "hardtanh",
        away("hardtanh", 13, -3.0, 3.0, &[-1.5, 0.5]),
        |t| t.hardtanh(-1.5, 0.5),
        |x| x.clamp(-1.5, 0.5),
    );
    grad_case(
        "relu6",
        away("relu6", 13, -2.0, 8.0, &[0.0, 6.0]),
        |t| t.relu6(),
        |x| x.clamp(0.0, 6.0),
    );
    grad_case(
        "hardswish",
        away("hardswish", 13, -5.0, 5.0, &[-3.0, 3.0]),
        |t| t.hardswish(),
        hardswish,
    );
    grad_case(
        "hardsigmoid",
        away("hardsigmoid", 13, -5.0, 5.0, &[-3.0, 3.0]),
        |t| t.hardsigmoid(),
        hardsigmoid,
    );
    grad_case(
        "elu",
        away("elu", 13, -4.0, 3.0, &[0.0]),
        |t| t.elu(1.7),
        |x| elu(x, 1.7),
    );
    grad_case(
        "selu",
        away("selu", 13, -4.0, 3.0, &[0.0]),
        |t| t.selu(),
        selu,
    );
    grad_case("silu", away("silu", 13, -6.0, 6.0, &[]), |t| t.silu(), silu);
    grad_case("mish", away("mish", 13, -6.0, 6.0, &[]), |t| t.mish(), mish);
    grad_case(
        "gelu tanh",
        away("gelu tanh", 13, -4.0, 4.0, &[]),
        |t| t.gelu_tanh(),
        gelu_tanh,
    );
    // Both sides of the threshold (bx = 4 at x = 2).
    grad_case(
        "softplus",
        away("softplus", 13, -6.0, 6.0, &[2.0]),
        |t| t.softplus(2.0, 4.0),
        |x| softplus(x, 2.0, 4.0),
    );
    grad_case(
        "logsigmoid",
        away("logsigmoid", 13, -8.0, 8.0, &[]),
        |t| t.logsigmoid(),
        logsigmoid,
    );
    grad_case(
        "log1p",
        away("log1p", 13, -0.8, 4.0, &[]),
        |t| t.log1p(),
        f64::ln_1p,
    );
}

/// d(sum f(x))/dx at `x`, read back.
fn grad_at(name: &str, x: &[f32], f: impl Fn(&Tensor) -> Result<Tensor>) -> Vec<f32> {
    let t = tensor(x, &[x.len()]).requires_grad_();
    let g = ok(
        name,
        f(&t).and_then(|y| y.sum_all()).and_then(|l| l.backward()),
    );
    read_f32(name, g.get(&t).expect("a gradient"))
}

#[test]
fn gradients_at_kinks_follow_pytorch() {
    let e = |v: f64| v.exp();
    let cases: Vec<(
        &str,
        Vec<f32>,
        Box<dyn Fn(&Tensor) -> Result<Tensor>>,
        Vec<f64>,
    )> = vec![
        // leaky_relu_backward: x > 0 ? g : g * slope.
        (
            "leaky_relu(0.1)",
            vec![0.0, -0.0, 1.0, -1.0],
            Box::new(|t| t.leaky_relu(0.1)),
            vec![0.1, 0.1, 1.0, 0.1],
        ),
        // hardtanh_backward: x <= min || x >= max ? 0 : g.
        (
            "hardtanh(-1, 1)",
            vec![-1.0, 1.0, 0.0, -2.0, 2.0, 0.5],
            Box::new(|t| t.hardtanh(-1.0, 1.0)),
            vec![0.0, 0.0, 1.0, 0.0, 0.0, 1.0],
        ),
        (
            "relu6",
            vec![0.0, 6.0, 3.0, -1.0, 7.0],
            Box::new(|t| t.relu6()),
            vec![0.0, 0.0, 1.0, 0.0, 0.0],
        ),
        // hardswish_backward: x < -3 ? 0 : x <= 3 ? g (x / 3 + 0.5) : g.
        (
            "hardswish",
            vec![-3.0, 3.0, 0.0, -4.0, 4.0, 1.5],
            Box::new(|t| t.hardswish()),
            vec![-0.5, 1.5, 0.5, 0.0, 1.0, 1.0],
        ),
        // hardsigmoid_backward: -3 < x < 3 ? g / 6 : 0.
        (
            "hardsigmoid",
            vec![-3.0, 3.0, 0.0, -4.0, 4.0],
            Box::new(|t| t.hardsigmoid()),
            vec![0.0, 0.0, 1.0 / 6.0, 0.0, 0.0],
        ),
        // elu_backward: x <= 0 ? g alpha exp(x) : g; alpha at 0.
        (
            "elu(2)",
            vec![0.0, -0.0, 1.0, -1.0],
            Box::new(|t| t.elu(2.0)),
            vec![2.0, 2.0, 1.0, 2.0 * e(-1.0)],
        ),
        (
            "selu",
            vec![0.0, 1.0, -1.0],
            Box::new(|t| t.selu()),
            vec![
                SELU_ALPHA * SELU_SCALE,
                SELU_SCALE,
                SELU_ALPHA * SELU_SCALE * e(-1.0),
            ],
        ),
        // softplus_backward: bx > threshold ? g : g sigmoid(bx); equality
        // stays below.
        (
            "softplus(2, 3)",
            vec![1.5, 1.6, 0.0, 25.0],
            Box::new(|t| t.softplus(2.0, 3.0)),
            vec![sigmoid(3.0), 1.0, 0.5, 1.0],
        ),
        (
            "logsigmoid",
            vec![0.0, 1e4, -1e4],
            Box::new(|t| t.logsigmoid()),
            vec![0.5, 0.0, 1.0],
        ),
        (
            "log1p",
            vec![1e-10, 0.0, -0.5],
            Box::new(|t| t.log1p()),
            vec![1.0, 1.0, 2.0],
        ),
        (
            "silu",
            vec![0.0, -100.0, 100.0],
            Box::new(|t| t.silu()),
            vec![0.5, 0.0, 1.0],
        ),
    ];
    for (name, x, f, want) in cases {
        let got = grad_at(name, &x, f);
        assert_close_msg(&format!("{name}' at {x:?}"), &got, &want, 1e-6, 1e-6);
    }
}

#[test]
fn nan_gradients_pass_where_pytorch_passes_them() {
    // hardtanh's backward zeroes only x <= min or x >= max: a NaN input
    // passes the gradient, as in PyTorch; leaky_relu's NaN takes the slope.
    let got = grad_at("hardtanh", &[NAN], |t| t.hardtanh(-1.0, 1.0));
    assert_close_msg("hardtanh'(NaN)", &got, &[1.0], 0.0, 0.0);
    let got = grad_at("leaky_relu", &[NAN], |t| t.leaky_relu(0.25));
    assert_close_msg("leaky_relu'(NaN)", &got, &[0.25], 0.0, 0.0);
}
