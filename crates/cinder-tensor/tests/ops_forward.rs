//! Every forward op against an f64 CPU reference on awkward sizes, at the
//! architecture's tolerance `|a - b| <= 1e-5 + 1e-4 * |b|` (see common/mod.rs
//! for where and why a tolerance is scaled differently).

// Tables of test cases are written as `vec![...]` of shapes for readability.
#![allow(clippy::useless_vec, clippy::type_complexity)]

mod common;

use cinder_tensor::{DType, Error, Result, Tensor};
use common::*;

/// Awkward element counts: 1, primes, one past a power of two, and large ones
/// that cross the 256-thread workgroup many times.
const SIZES: [usize; 8] = [1, 7, 13, 33, 127, 1000, 4099, 65537];

// ---- unary ----------------------------------------------------------------------------

fn unary_case(
    name: &str,
    gen: impl Fn(&mut Rng, usize) -> Vec<f32>,
    specials: &[f32],
    gpu: impl Fn(&Tensor) -> Result<Tensor>,
    cpu: impl Fn(f64) -> f64,
    atol: f64,
    rtol: f64,
) {
    let mut rng = Rng::named(name);
    for &n in &SIZES {
        let x = gen(&mut rng, n);
        // Odd sizes as 1-D, the large ones also as 2-D and 3-D.
        let shapes: Vec<Vec<usize>> = match n {
            1000 => vec![vec![1000], vec![8, 125]],
            4099 => vec![vec![4099], vec![1, 4099, 1]],
            _ => vec![vec![n]],
        };
        for shape in shapes {
            let t = tensor(&x, &shape);
            let y = ok(name, gpu(&t));
            assert_eq!(y.dtype(), DType::F32, "{name}: dtype");
            let want = Arr::from_f32(&x, &shape).map(&cpu);
            check_tol(&format!("{name} {shape:?}"), &y, &want, atol, rtol);
        }
    }
    if !specials.is_empty() {
        let t = tensor(specials, &[specials.len()]);
        let y = ok(name, gpu(&t));
        let want = Arr::from_f32(specials, &[specials.len()]).map(&cpu);
        check_tol(&format!("{name} at {specials:?}"), &y, &want, atol, rtol);
    }
}

fn uniform(lo: f64, hi: f64) -> impl Fn(&mut Rng, usize) -> Vec<f32> {
    move |r, n| r.vec(n, lo, hi)
}

/// Log-uniform in [lo, hi] (lo > 0): every decade equally represented.
fn log_uniform(lo: f64, hi: f64) -> impl Fn(&mut Rng, usize) -> Vec<f32> {
    move |r, n| {
        (0..n)
            .map(|_| (lo.ln() + (hi.ln() - lo.ln()) * r.uniform()).exp() as f32)
            .collect()
    }
}

#[test]
fn neg() {
    unary_case(
        "neg",
        uniform(-100.0, 100.0),
        &[0.0, -0.0, 1e30, -1e-30],
        |t| t.neg(),
        |x| -x,
        ATOL,
        RTOL,
    );
}

#[test]
fn exp() {
    // GPU exp is exp2(x * log2 e): its relative error grows like |x| ulp (WGSL
    // allows 3 + 2|x| ulp), about 3e-6 at |x| = 20, well inside rtol 1e-4.
    unary_case(
        "exp",
        uniform(-20.0, 20.0),
        &[0.0, -0.0, 1.0, -1.0, -100.0, 80.0],
        |t| t.exp(),
        f64::exp,
        ATOL,
        RTOL,
    );
}

#[test]
fn log() {
    // WGSL allows log an absolute error of 2^-21 near x = 1, below atol.
    unary_case(
        "log",
        log_uniform(1e-6, 1e6),
        &[1.0, 2.0, 0.5, 1e-30, 3e38],
        |t| t.log(),
        f64::ln,
        ATOL,
        RTOL,
    );
}

#[test]
fn sqrt() {
    unary_case(
        "sqrt",
        uniform(0.0, 100.0),
        &[0.0, 1.0, 4.0, 1e-30, 1e30],
        |t| t.sqrt(),
        f64::sqrt,
        ATOL,
        RTOL,
    );
}

#[test]
fn rsqrt() {
    unary_case(
        "rsqrt",
        log_uniform(1e-4, 1e4),
        &[1.0, 4.0, 0.25, 1e-20, 1e20],
        |t| t.rsqrt(),
        |x| 1.0 / x.sqrt(),
        ATOL,
        RTOL,
    );
}

#[test]
fn abs() {
    unary_case(
        "abs",
        uniform(-50.0, 50.0),
        &[0.0, -0.0, -1e-30, -3e38],
        |t| t.abs(),
        f64::abs,
        ATOL,
        RTOL,
    );
}

#[test]
fn relu() {
    unary_case(
        "relu",
        uniform(-5.0, 5.0),
        &[0.0, -0.0, -1e-30, 1e-30],
        |t| t.relu(),
        |x| x.max(0.0),
        ATOL,
        RTOL,
    );
}

#[test]
fn sigmoid() {
    unary_case(
        "sigmoid",
        uniform(-30.0, 30.0),
        &[0.0, -100.0, 100.0, -1e4, 1e4, -88.0, 88.0],
        |t| t.sigmoid(),
        common::sigmoid,
        ATOL,
        RTOL,
    );
}

#[test]
fn tanh() {
    unary_case(
        "tanh",
        uniform(-10.0, 10.0),
        &[0.0, 1e-3, -1e-3, 1e-6, 50.0, -50.0, 1e4, -1e4],
        |t| t.tanh(),
        f64::tanh,
        ATOL,
        RTOL,
    );
}

#[test]
fn gelu() {
    // The GPU evaluates the exact (erf) GELU through Abramowitz-Stegun 7.1.26,
    // whose erf has an absolute error of 1.5e-7: at most 0.5*|x|*1.5e-7 = 6e-7 in
    // gelu for |x| <= 8, which the default tolerance already covers.
    unary_case(
        "gelu",
        uniform(-8.0, 8.0),
        &[0.0, 1.0, -1.0, 3.0, -3.0, 20.0, -20.0],
        |t| t.gelu(),
        common::gelu,
        ATOL,
        RTOL,
    );
}

#[test]
fn sign_recip_square() {
    unary_case(
        "sign",
        uniform(-3.0, 3.0),
        &[0.0, -2.0, 2.0],
        |t| t.sign(),
        f64::signum_or_zero,
        ATOL,
        RTOL,
    );
    unary_case(
        "recip",
        log_uniform(1e-3, 1e3),
        &[1.0, -4.0, 0.5],
        |t| t.recip(),
        |x| 1.0 / x,
        ATOL,
        RTOL,
    );
    unary_case(
        "square",
        uniform(-30.0, 30.0),
        &[0.0, -3.0],
        |t| t.square(),
        |x| x * x,
        ATOL,
        RTOL,
    );
}

#[test]
fn sin_cos() {
    unary_case(
        "sin",
        uniform(-10.0, 10.0),
        &[0.0, std::f32::consts::FRAC_PI_2],
        |t| t.sin(),
        f64::sin,
        ATOL,
        RTOL,
    );
    unary_case(
        "cos",
        uniform(-10.0, 10.0),
        &[0.0, std::f32::consts::PI],
        |t| t.cos(),
        f64::cos,
        ATOL,
        RTOL,
    );
}

trait SignumOrZero {
    fn signum_or_zero(self) -> f64;
}
impl SignumOrZero for f64 {
    /// PyTorch's sign: 0 at 0.
    fn signum_or_zero(self) -> f64 {
        if self == 0.0 {
            0.0
        } else {
            self.signum()
        }
    }
}

#[test]
fn fused_unary_chain() {
    // A chain of element-wise ops becomes one generated kernel.
    let mut rng = Rng::named("fused_unary_chain");
    for &n in &[7usize, 127, 4099] {
        let x = rng.vec(n, -3.0, 3.0);
        let t = tensor(&x, &[n]);
        let y = ok(
            "chain",
            t.tanh()
                .and_then(|a| a.mul(&t))
                .and_then(|a| a.exp())
                .and_then(|a| a.add(&t.abs()?))
                .and_then(|a| a.sqrt()),
        );
        let want = Arr::from_f32(&x, &[n]).map(|v| ((v.tanh() * v).exp() + v.abs()).sqrt());
        check(&format!("chain [{n}]"), &y, &want);
    }
}

#[test]
fn special_values_follow_pytorch() {
    // PyTorch: log(0) = -inf, log(-1) = NaN, sqrt(-1) = NaN, exp(inf) = inf,
    // exp(-inf) = 0, relu(-inf) = 0, sigmoid(±inf) = 1/0, tanh(±inf) = ±1.
    let inf = f32::INFINITY;
    let x = tensor(&[0.0, -1.0, inf, -inf], &[4]);
    let got = read_f32("log", &ok("log", x.log()));
    assert_close_msg(
        "log at [0, -1, inf, -inf]",
        &got,
        &[f64::NEG_INFINITY, f64::NAN, f64::INFINITY, f64::NAN],
        0.0,
        0.0,
    );
    let got = read_f32("sqrt", &ok("sqrt", x.sqrt()));
    assert_close_msg(
        "sqrt at [0, -1, inf, -inf]",
        &got,
        &[0.0, f64::NAN, f64::INFINITY, f64::NAN],
        0.0,
        0.0,
    );
    let got = read_f32("exp", &ok("exp", x.exp()));
    assert_close_msg(
        "exp at [0, -1, inf, -inf]",
        &got,
        &[1.0, (-1.0f64).exp(), f64::INFINITY, 0.0],
        ATOL,
        RTOL,
    );
    let got = read_f32("relu", &ok("relu", x.relu()));
    assert_close_msg(
        "relu at [0, -1, inf, -inf]",
        &got,
        &[0.0, 0.0, f64::INFINITY, 0.0],
        0.0,
        0.0,
    );
    let got = read_f32("sigmoid", &ok("sigmoid", x.sigmoid()));
    assert_close_msg(
        "sigmoid at [0, -1, inf, -inf]",
        &got,
        &[0.5, common::sigmoid(-1.0), 1.0, 0.0],
        ATOL,
        RTOL,
    );
    let got = read_f32("tanh", &ok("tanh", x.tanh()));
    assert_close_msg(
        "tanh at [0, -1, inf, -inf]",
        &got,
        &[0.0, (-1.0f64).tanh(), 1.0, -1.0],
        ATOL,
        RTOL,
    );
    // Constants that are not finite survive code generation.
    let got = read_f32("full inf", &Tensor::full(device(), &[3], -inf));
    assert_close_msg("full(-inf)", &got, &[f64::NEG_INFINITY; 3], 0.0, 0.0);
    let got = read_f32("full nan", &Tensor::full(device(), &[2], f32::NAN));
    assert!(got.iter().all(|v| v.is_nan()), "full(NaN) gave {got:?}");
    let masked = ok("masked", x.maximum_scalar(-inf));
    let got = read_f32("maximum(-inf)", &masked);
    assert_close_msg(
        "maximum(x, -inf)",
        &got,
        &[0.0, -1.0, f64::INFINITY, f64::NEG_INFINITY],
        0.0,
        0.0,
    );
}

// ---- binary with broadcasting ---------------------------------------------------------------

/// Shape pairs: equal, scalars, size-1 dims on either side, rank differences in
/// both directions, and large.
fn broadcast_pairs() -> Vec<(Vec<usize>, Vec<usize>)> {
    vec![
        (vec![7], vec![7]),
        (vec![1], vec![13]),
        (vec![13], vec![1]),
        (vec![], vec![33]),
        (vec![33], vec![]),
        (vec![], vec![]),
        (vec![13, 1], vec![1, 7]),
        (vec![3, 1], vec![3]),
        (vec![4], vec![2, 3, 4]),
        (vec![2, 3, 4], vec![4]),
        (vec![2, 3, 4], vec![3, 1]),
        (vec![5, 1, 3], vec![4, 1]),
        (vec![2, 1, 33], vec![13, 1]),
        (vec![1, 127], vec![33, 1]),
        (vec![4099], vec![4099]),
        (vec![8, 1, 129], vec![8, 129, 1]),
    ]
}

fn binary_case(
    name: &str,
    gen_a: impl Fn(&mut Rng, usize) -> Vec<f32>,
    gen_b: impl Fn(&mut Rng, usize) -> Vec<f32>,
    gpu: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    cpu: impl Fn(f64, f64) -> f64,
) {
    let mut rng = Rng::named(name);
    for (sa, sb) in broadcast_pairs() {
        let a = gen_a(&mut rng, numel(&sa));
        let b = gen_b(&mut rng, numel(&sb));
        let y = ok(name, gpu(&tensor(&a, &sa), &tensor(&b, &sb)));
        let want = Arr::from_f32(&a, &sa).zip(&Arr::from_f32(&b, &sb), &cpu);
        check(&format!("{name} {sa:?} with {sb:?}"), &y, &want);
    }
}

/// Values on a coarse grid, so that equal values (ties) are common.
fn grid(lo: i32, hi: i32, step: f32) -> impl Fn(&mut Rng, usize) -> Vec<f32> {
    move |r, n| {
        (0..n)
            .map(|_| (lo + r.index((hi - lo + 1) as usize) as i32) as f32 * step)
            .collect()
    }
}

#[test]
fn add() {
    binary_case(
        "add",
        uniform(-10.0, 10.0),
        uniform(-10.0, 10.0),
        |a, b| a.add(b),
        |a, b| a + b,
    );
}

#[test]
fn sub() {
    binary_case(
        "sub",
        uniform(-10.0, 10.0),
        uniform(-10.0, 10.0),
        |a, b| a.sub(b),
        |a, b| a - b,
    );
}

#[test]
fn mul() {
    binary_case(
        "mul",
        uniform(-10.0, 10.0),
        uniform(-10.0, 10.0),
        |a, b| a.mul(b),
        |a, b| a * b,
    );
}

#[test]
fn masked() {
    // Masks of -1, 0 and 1: any nonzero value keeps the element.
    binary_case(
        "masked",
        uniform(-10.0, 10.0),
        grid(-1, 1, 1.0),
        |a, m| a.masked(m),
        |a, m| if m != 0.0 { a } else { 0.0 },
    );
    // Where the mask is 0 the value is not read: NaN and infinities give 0,
    // where `a * mask` would give NaN (PyTorch's ReLU and max-pool gradients).
    let a = tensor(&[f32::NAN, f32::INFINITY, 2.0, -3.0, f32::NAN], &[5]);
    let m = tensor(&[0.0, 0.0, 1.0, 5.0, 1.0], &[5]);
    let got = read_f32("masked", &ok("masked", a.masked(&m)));
    assert_eq!(&got[..4], &[0.0, 0.0, 2.0, -3.0]);
    assert!(got[4].is_nan(), "a NaN where the mask holds stays NaN");
}

/// Element-wise kernels of 2^18 elements and more store two per invocation
/// (an even count) or one (an odd count): views, integer outputs and random
/// numbers, whose values depend only on the seed and the element's index.
#[test]
fn big_elementwise_kernels() {
    let mut rng = Rng::named("big_elementwise");
    for (rows, cols) in [(514, 511), (513, 513)] {
        let n = rows * cols;
        assert!(n >= 1 << 18);
        let a = rng.vec(n, -2.0, 2.0);
        let b = rng.vec(n, -2.0, 2.0);
        let (ta, tb) = (tensor(&a, &[rows, cols]), tensor(&b, &[cols, rows]));
        // exp(a) * 2 + b^T: a transposed read in the same kernel.
        let y = ok(
            "exp, scale, add a transpose",
            ta.exp()
                .and_then(|e| e.mul_scalar(2.0))
                .and_then(|e| e.add(&tb.t()?)),
        );
        let want: Vec<f64> = (0..n)
            .map(|e| {
                let (r, c) = (e / cols, e % cols);
                (a[e] as f64).exp() * 2.0 + b[c * rows + r] as f64
            })
            .collect();
        check(
            &format!("big element-wise [{rows}, {cols}]"),
            &y,
            &Arr {
                shape: vec![rows, cols],
                data: want,
            },
        );
        // A u32 output.
        let gt = ok("gt", tb.t().and_then(|bt| ta.gt(&bt)));
        let got = gt.to_vec::<u32>().expect("u32 values");
        for e in 0..n {
            let (r, c) = (e / cols, e % cols);
            assert_eq!(got[e], u32::from(a[e] > b[c * rows + r]), "gt at {e}");
        }
        // The same seed gives the same numbers at the same indices whatever
        // the tensor's length (a shorter tensor stores one per invocation).
        let big = ok(
            "rand",
            Tensor::rand_seeded(device(), &[rows, cols], -1.0, 1.0, 5),
        );
        let small = ok("rand", Tensor::rand_seeded(device(), &[1000], -1.0, 1.0, 5));
        let big = big.to_vec::<f32>().expect("f32 values");
        assert_eq!(
            &big[..1000],
            &small.to_vec::<f32>().expect("f32 values")[..]
        );
    }
}

#[test]
fn div() {
    let away = |r: &mut Rng, n: usize| r.away_from_zero(n, -10.0, 10.0, 0.1);
    binary_case(
        "div",
        uniform(-10.0, 10.0),
        away,
        |a, b| a.div(b),
        |a, b| a / b,
    );
}

#[test]
fn pow() {
    // Positive bases with real exponents.
    binary_case(
        "pow",
        uniform(0.1, 4.0),
        uniform(-3.0, 3.0),
        |a, b| a.pow(b),
        f64::powf,
    );
    // Negative bases with integral exponents, as PyTorch defines them.
    binary_case(
        "pow int",
        uniform(-3.0, 3.0),
        grid(-3, 3, 1.0),
        |a, b| a.pow(b),
        f64::powf,
    );
}

#[test]
fn pow_special_cases() {
    // PyTorch: 0^0 = 1, x^0 = 1, (-2)^3 = -8, (-2)^2 = 4, (-2)^0.5 = NaN, 0^-1 = inf.
    let a = tensor(&[0.0, 5.0, -2.0, -2.0, -2.0, 0.0, 2.0, -8.0], &[8]);
    let b = tensor(&[0.0, 0.0, 3.0, 2.0, 0.5, 2.0, -2.0, 1.0 / 3.0], &[8]);
    let got = read_f32("pow", &ok("pow", a.pow(&b)));
    assert_close_msg(
        "pow special cases",
        &got,
        &[1.0, 1.0, -8.0, 4.0, f64::NAN, 0.0, 0.25, f64::NAN],
        ATOL,
        RTOL,
    );
    let got = read_f32("pow_scalar", &ok("pow_scalar", a.pow_scalar(2.0)));
    assert_close_msg(
        "pow_scalar(2)",
        &got,
        &[0.0, 25.0, 4.0, 4.0, 4.0, 0.0, 4.0, 64.0],
        ATOL,
        RTOL,
    );
}

// BUG: (cinder-runtime) `pow_f` in shaders/prelude.wgsl handles negative bases
// and b == 0 but not a zero base with a negative exponent, where WGSL's pow is
// undefined: on lavapipe 0^-1 and 0^-0.5 come out 0 (PyTorch: inf).
#[test]
fn pow_of_zero_to_negative_is_inf() {
    let a = tensor(&[0.0, 0.0, 0.0, -0.0], &[4]);
    let b = tensor(&[-1.0, -0.5, -2.0, -3.0], &[4]);
    let got = read_f32("pow", &ok("pow", a.pow(&b)));
    // PyTorch: (-0.0)^-3 = -inf (odd integral exponent keeps the sign).
    let want = [
        f64::INFINITY,
        f64::INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    assert_close_msg("[0, 0, 0, -0] ^ [-1, -0.5, -2, -3]", &got, &want, 0.0, 0.0);
}

#[test]
fn maximum() {
    binary_case(
        "maximum",
        grid(-4, 4, 0.5),
        grid(-4, 4, 0.5),
        |a, b| a.maximum(b),
        f64::max,
    );
    binary_case(
        "maximum",
        uniform(-10.0, 10.0),
        uniform(-10.0, 10.0),
        |a, b| a.maximum(b),
        f64::max,
    );
}

#[test]
fn minimum() {
    binary_case(
        "minimum",
        grid(-4, 4, 0.5),
        grid(-4, 4, 0.5),
        |a, b| a.minimum(b),
        f64::min,
    );
    binary_case(
        "minimum",
        uniform(-10.0, 10.0),
        uniform(-10.0, 10.0),
        |a, b| a.minimum(b),
        f64::min,
    );
}

// BUG: (cinder-runtime) see max_min_propagate_nan: `max_f`/`min_f` test for NaN
// with `a != a`, which is always false in the compiled shader.
#[test]
fn maximum_minimum_propagate_nan() {
    let a = tensor(&[f32::NAN, 1.0, 2.0], &[3]);
    let b = tensor(&[0.0, f32::NAN, 1.0], &[3]);
    let mx = read_f32("maximum", &ok("maximum", a.maximum(&b)));
    let mn = read_f32("minimum", &ok("minimum", a.minimum(&b)));
    assert_close_msg(
        "maximum with NaN",
        &mx,
        &[f64::NAN, f64::NAN, 2.0],
        0.0,
        0.0,
    );
    assert_close_msg(
        "minimum with NaN",
        &mn,
        &[f64::NAN, f64::NAN, 1.0],
        0.0,
        0.0,
    );
}

#[test]
fn scalar_ops_and_clamp() {
    let mut rng = Rng::named("scalar_ops");
    for &n in &[1usize, 33, 4099] {
        let x = rng.vec(n, -5.0, 5.0);
        let t = tensor(&x, &[n]);
        let a = Arr::from_f32(&x, &[n]);
        check(
            "add_scalar",
            &ok("add_scalar", t.add_scalar(2.5)),
            &a.map(|v| v + 2.5),
        );
        check(
            "sub_scalar",
            &ok("sub_scalar", t.sub_scalar(2.5)),
            &a.map(|v| v - 2.5),
        );
        check(
            "mul_scalar",
            &ok("mul_scalar", t.mul_scalar(-1.5)),
            &a.map(|v| v * -1.5),
        );
        check(
            "div_scalar",
            &ok("div_scalar", t.div_scalar(4.0)),
            &a.map(|v| v / 4.0),
        );
        check(
            "rsub_scalar",
            &ok("rsub_scalar", t.rsub_scalar(1.0)),
            &a.map(|v| 1.0 - v),
        );
        check(
            "maximum_scalar",
            &ok("maximum_scalar", t.maximum_scalar(0.5)),
            &a.map(|v| v.max(0.5)),
        );
        check(
            "minimum_scalar",
            &ok("minimum_scalar", t.minimum_scalar(0.5)),
            &a.map(|v| v.min(0.5)),
        );
        check(
            "clamp",
            &ok("clamp", t.clamp(-1.0, 2.0)),
            &a.map(|v| v.clamp(-1.0, 2.0)),
        );
    }
}

// ---- comparisons and where --------------------------------------------------------------

#[test]
fn comparisons() {
    type Cmp = fn(&Tensor, &Tensor) -> Result<Tensor>;
    let ops: [(&str, Cmp, fn(f64, f64) -> bool); 6] = [
        ("eq", |a, b| a.eq(b), |a, b| a == b),
        ("ne", |a, b| a.ne(b), |a, b| a != b),
        ("lt", |a, b| a.lt(b), |a, b| a < b),
        ("le", |a, b| a.le(b), |a, b| a <= b),
        ("gt", |a, b| a.gt(b), |a, b| a > b),
        ("ge", |a, b| a.ge(b), |a, b| a >= b),
    ];
    let mut rng = Rng::named("comparisons");
    let g = grid(-3, 3, 0.5);
    for (name, gpu, cpu) in ops {
        for (sa, sb) in broadcast_pairs() {
            let a = g(&mut rng, numel(&sa));
            let b = g(&mut rng, numel(&sb));
            let want =
                Arr::from_f32(&a, &sa).zip(&Arr::from_f32(&b, &sb), |x, y| cpu(x, y) as u8 as f64);
            let y = ok(name, gpu(&tensor(&a, &sa), &tensor(&b, &sb)));
            assert_eq!(y.dtype(), DType::U32, "{name}: comparisons give u32 masks");
            assert_eq!(y.shape(), &want.shape[..], "{name} {sa:?} {sb:?}: shape");
            let got: Vec<f64> = read_u32(name, &y).iter().map(|&v| v as f64).collect();
            assert_eq!(got, want.data, "{name} {sa:?} with {sb:?}");
            // The same on i32 data.
            let ai: Vec<i32> = a.iter().map(|&v| (v * 2.0) as i32).collect();
            let bi: Vec<i32> = b.iter().map(|&v| (v * 2.0) as i32).collect();
            let y = ok(name, gpu(&tensor_i32(&ai, &sa), &tensor_i32(&bi, &sb)));
            let got: Vec<f64> = read_u32(name, &y).iter().map(|&v| v as f64).collect();
            assert_eq!(got, want.data, "{name} i32 {sa:?} with {sb:?}");
        }
    }
}

#[test]
fn where_cond() {
    let mut rng = Rng::named("where_cond");
    let cases: Vec<(Vec<usize>, Vec<usize>, Vec<usize>)> = vec![
        (vec![7], vec![7], vec![7]),
        (vec![13, 1], vec![1, 33], vec![]),
        (vec![33], vec![13, 33], vec![13, 1]),
        (vec![2, 1, 4], vec![3, 1], vec![1]),
        (vec![4099], vec![4099], vec![1]),
    ];
    for (sc, sa, sb) in cases {
        let x = rng.vec(numel(&sc), -1.0, 1.0);
        let a = rng.vec(numel(&sa), -10.0, 10.0);
        let b = rng.vec(numel(&sb), -10.0, 10.0);
        let full = broadcast_shapes(&broadcast_shapes(&sc, &sa).unwrap(), &sb).unwrap();
        let (xc, xa, xb) = (
            Arr::from_f32(&x, &sc).broadcast_to(&full),
            Arr::from_f32(&a, &sa).broadcast_to(&full),
            Arr::from_f32(&b, &sb).broadcast_to(&full),
        );
        let want = Arr::from_fn(&full, |c| if xc.at(c) > 0.0 { xa.at(c) } else { xb.at(c) });
        // A u32 mask from a comparison.
        let cond = ok("gt", tensor(&x, &sc).gt(&Tensor::zeros(device(), &[])));
        let y = ok(
            "where",
            Tensor::where_cond(&cond, &tensor(&a, &sa), &tensor(&b, &sb)),
        );
        check(
            &format!("where u32 cond {sc:?} a {sa:?} b {sb:?}"),
            &y,
            &want,
        );
        // An f32 condition: non-zero is true.
        let cf: Vec<f32> = x.iter().map(|&v| if v > 0.0 { v } else { 0.0 }).collect();
        let y = ok(
            "where",
            Tensor::where_cond(&tensor(&cf, &sc), &tensor(&a, &sa), &tensor(&b, &sb)),
        );
        check(
            &format!("where f32 cond {sc:?} a {sa:?} b {sb:?}"),
            &y,
            &want,
        );
    }
    // i32 values.
    let cond = tensor_u32(&[1, 0, 1, 0], &[4]);
    let y = ok(
        "where",
        Tensor::where_cond(
            &cond,
            &tensor_i32(&[1, 2, 3, 4], &[4]),
            &tensor_i32(&[-1], &[1]),
        ),
    );
    assert_eq!(read_i32("where i32", &y), vec![1, -1, 3, -1]);
}

// ---- reductions ---------------------------------------------------------------------------

fn reduction_cases() -> Vec<(Vec<usize>, Vec<Vec<isize>>)> {
    vec![
        (vec![1], vec![vec![0], vec![]]),
        (vec![7], vec![vec![0], vec![-1], vec![]]),
        (vec![1, 1], vec![vec![0], vec![0, 1]]),
        (
            vec![13, 33],
            vec![vec![0], vec![1], vec![-1], vec![0, 1], vec![]],
        ),
        (
            vec![3, 5, 7],
            vec![
                vec![0],
                vec![1],
                vec![2],
                vec![0, 2],
                vec![1, 2],
                vec![-1, 0],
                vec![],
            ],
        ),
        (vec![127, 9], vec![vec![0], vec![1]]),
        (vec![2, 4099], vec![vec![1], vec![0]]),
        (vec![65537], vec![vec![0]]),
        // Rows of 300 over 1100 outputs: one thread a row on a CPU
        // adapter; down the columns, a workgroup a column.
        (vec![1100, 300], vec![vec![1], vec![0]]),
    ]
}

fn reduce_case(
    name: &str,
    gpu: impl Fn(&Tensor, &[isize], bool) -> Result<Tensor>,
    cpu: impl Fn(&Arr, &[isize], bool) -> Arr,
    scale: Option<&dyn Fn(&Arr, &[isize], bool) -> Arr>,
) {
    let mut rng = Rng::named(name);
    for (shape, axes_list) in reduction_cases() {
        let x = rng.vec(numel(&shape), -3.0, 3.0);
        let t = tensor(&x, &shape);
        let a = Arr::from_f32(&x, &shape);
        for axes in &axes_list {
            if name == "var unbiased" && a.count(axes) < 2 {
                // 0/0: see var_of_one_element_unbiased_is_nan.
                continue;
            }
            for keepdim in [false, true] {
                let y = ok(name, gpu(&t, axes, keepdim));
                let want = cpu(&a, axes, keepdim);
                let what = format!("{name} of {shape:?} over {axes:?} keepdim {keepdim}");
                match scale {
                    Some(s) => check_scaled(&what, &y, &want, &s(&a, axes, keepdim)),
                    None => check(&what, &y, &want),
                }
            }
        }
    }
}

#[test]
fn sum() {
    // f32 accumulation: the error scales with sum(|x|), not with |sum(x)|.
    reduce_case(
        "sum",
        |t, ax, k| t.sum(ax, k),
        |a, ax, k| a.sum(ax, k),
        Some(&|a: &Arr, ax: &[isize], k| a.abs().sum(ax, k)),
    );
}

#[test]
fn mean() {
    reduce_case(
        "mean",
        |t, ax, k| t.mean(ax, k),
        |a, ax, k| a.mean(ax, k),
        Some(&|a: &Arr, ax: &[isize], k| a.abs().mean(ax, k)),
    );
}

#[test]
fn max() {
    reduce_case(
        "max",
        |t, ax, k| t.max(ax, k),
        |a, ax, k| a.max(ax, k),
        None,
    );
}

#[test]
fn min() {
    reduce_case(
        "min",
        |t, ax, k| t.min(ax, k),
        |a, ax, k| a.min(ax, k),
        None,
    );
}

#[test]
fn var() {
    reduce_case(
        "var unbiased",
        |t, ax, k| t.var(ax, 1, k),
        |a, ax, k| a.var(ax, 1, k),
        None,
    );
    reduce_case(
        "var population",
        |t, ax, k| t.var(ax, 0, k),
        |a, ax, k| a.var(ax, 0, k),
        None,
    );
}

// BUG: (cinder-runtime) var divides by `count - correction` with div_scalar; for
// one element and correction 1 that is a division by a literal 0.0, whose kernel
// writes nothing on lavapipe (see division_by_zero_follows_ieee): var gives
// stale buffer contents (observed 0 and 79.44) where PyTorch gives NaN.
#[test]
fn var_of_one_element_unbiased_is_nan() {
    let t = tensor(&[3.0, -2.0], &[2, 1]);
    let got = read_f32("var", &ok("var", t.var(&[1], 1, false)));
    assert_close_msg(
        "var([[3], [-2]], dim 1, correction 1)",
        &got,
        &[f64::NAN, f64::NAN],
        0.0,
        0.0,
    );
}

#[test]
fn var_large_offset() {
    // Two-pass variance keeps its accuracy when the mean is large.
    let mut rng = Rng::named("var_large_offset");
    let x: Vec<f32> = rng.vec(1000, -1.0, 1.0).iter().map(|v| v + 100.0).collect();
    let a = Arr::from_f32(&x, &[4, 250]);
    let y = ok("var", tensor(&x, &[4, 250]).var(&[1], 1, false));
    check_tol(
        "var of values near 100",
        &y,
        &a.var(&[1], 1, false),
        ATOL,
        1e-3,
    );
}

#[test]
fn sum_many_outputs() {
    // More output elements than a dispatch dimension holds workgroups (65535):
    // the reduction grid must fold into two dimensions.
    let mut rng = Rng::named("sum_many_outputs");
    let shape = [70001, 3];
    let x = rng.vec(numel(&shape), -1.0, 1.0);
    let a = Arr::from_f32(&x, &shape);
    let t = tensor(&x, &shape);
    check_scaled(
        "sum [70001, 3] over 1",
        &ok("sum", t.sum(&[1], false)),
        &a.sum(&[1], false),
        &a.abs().sum(&[1], false),
    );
    check(
        "max [70001, 3] over 1",
        &ok("max", t.max(&[1], true)),
        &a.max(&[1], true),
    );
    let am = read_i32("argmin", &ok("argmin", t.argmin(1, false)));
    let want: Vec<i32> = a
        .arg(1, false, false)
        .data
        .iter()
        .map(|&v| v as i32)
        .collect();
    assert_eq!(am, want, "argmin [70001, 3] over 1");
}

#[test]
fn sum_of_all_equal_large() {
    // 65537 ones: exact in f32 when accumulated in a fixed tree.
    let t = Tensor::ones(device(), &[65537]);
    assert_eq!(ok("sum", t.sum_all().and_then(|s| s.item())), 65537.0);
    let m = ok("mean", t.mean_all().and_then(|s| s.item()));
    assert!((m - 1.0).abs() <= 1e-6, "mean of ones {m}");
}

#[test]
fn reductions_repeat_bit_for_bit() {
    let mut rng = Rng::named("repeat");
    let x = rng.vec(33 * 4099, -1.0, 1.0);
    let t = tensor(&x, &[33, 4099]);
    let first = read_f32("sum", &ok("sum", t.sum(&[1], false)));
    for _ in 0..3 {
        let again = read_f32("sum", &ok("sum", t.sum(&[1], false)));
        assert!(
            first
                .iter()
                .zip(&again)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "sum is not deterministic"
        );
    }
}

#[test]
fn max_min_with_infinities() {
    let inf = f32::INFINITY;
    let t = tensor(&[1.0, -inf, 3.0, 2.0, -1.0, 2.0, inf, 0.0], &[2, 4]);
    let mx = read_f32("max", &ok("max", t.max(&[1], false)));
    let mn = read_f32("min", &ok("min", t.min(&[1], false)));
    assert_close_msg("max with infinities", &mx, &[3.0, f64::INFINITY], 0.0, 0.0);
    assert_close_msg(
        "min with infinities",
        &mn,
        &[f64::NEG_INFINITY, -1.0],
        0.0,
        0.0,
    );
    let all = tensor(&[-inf; 5], &[5]);
    let got = read_f32("max", &ok("max", all.max(&[], false)));
    assert_close_msg("max of all -inf", &got, &[f64::NEG_INFINITY], 0.0, 0.0);
    let all = tensor(&[inf; 5], &[5]);
    let got = read_f32("min", &ok("min", all.min(&[], false)));
    assert_close_msg("min of all inf", &got, &[f64::INFINITY], 0.0, 0.0);
    let am = read_i32(
        "argmax",
        &ok("argmax", all.neg().and_then(|n| n.argmax(0, false))),
    );
    assert_eq!(am, vec![0], "argmax of all -inf");
}

// BUG: (cinder-runtime) NaN is never detected in generated kernels. The prelude
// (`max_f`, `min_f`) and the reduction template test for NaN with `x != x`, but
// naga's SPIR-V backend compiles float `!=` to OpFOrdNotEqual, which is false
// when an operand is NaN; so `x != x` is always false, NaN never propagates
// through maximum/minimum or max/min reductions, argmax/argmin skip NaN, and
// `ne` says NaN == NaN. A robust test is on the bits:
// `(bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u`, and `ne` as `!(x == y)`.
#[test]
fn max_min_propagate_nan() {
    let t = tensor(&[1.0, f32::NAN, 3.0, 0.0, -1.0, 2.0, 5.0, 0.0], &[2, 4]);
    let mx = read_f32("max", &ok("max", t.max(&[1], false)));
    let mn = read_f32("min", &ok("min", t.min(&[1], false)));
    assert_close_msg(
        "max over [1, NaN, 3, 0] and [-1, 2, 5, 0]",
        &mx,
        &[f64::NAN, 5.0],
        0.0,
        0.0,
    );
    assert_close_msg(
        "min over [1, NaN, 3, 0] and [-1, 2, 5, 0]",
        &mn,
        &[f64::NAN, -1.0],
        0.0,
        0.0,
    );
}

// BUG: (cinder-runtime) see max_min_propagate_nan: `x != x` never detects NaN.
#[test]
fn argmax_argmin_with_nan() {
    // PyTorch reports the first NaN as both the maximum and the minimum.
    let t = tensor(&[1.0, 5.0, f32::NAN, 7.0, f32::NAN], &[5]);
    assert_eq!(
        read_i32("argmax", &ok("argmax", t.argmax(0, false))),
        vec![2],
        "argmax of [1, 5, NaN, 7, NaN]"
    );
    assert_eq!(
        read_i32("argmin", &ok("argmin", t.argmin(0, false))),
        vec![2],
        "argmin of [1, 5, NaN, 7, NaN]"
    );
    // The long-axis path (more than 65536 elements: max, then first match).
    let mut v = vec![0.0f32; 65537];
    v[70] = 9.0;
    v[40000] = f32::NAN;
    let t = tensor(&v, &[65537]);
    assert_eq!(
        read_i32("argmax", &ok("argmax", t.argmax(0, false))),
        vec![40000],
        "argmax of 65537 with a NaN at 40000"
    );
    assert_eq!(
        read_i32("argmin", &ok("argmin", t.argmin(0, false))),
        vec![40000],
        "argmin of 65537 with a NaN at 40000"
    );
}

// BUG: (cinder-runtime) see max_min_propagate_nan: `ne` is compiled to an
// ordered comparison, so NaN != NaN is false.
#[test]
fn comparisons_with_nan() {
    // NaN compares unequal to everything, itself included.
    let n = tensor(&[f32::NAN, 1.0], &[2]);
    let one = tensor(&[1.0], &[1]);
    assert_eq!(
        read_u32("eq", &ok("eq", n.eq(&n))),
        vec![0, 1],
        "[NaN, 1] == [NaN, 1]"
    );
    assert_eq!(
        read_u32("lt", &ok("lt", n.lt(&one))),
        vec![0, 0],
        "[NaN, 1] < 1"
    );
    assert_eq!(
        read_u32("ge", &ok("ge", n.ge(&one))),
        vec![0, 1],
        "[NaN, 1] >= 1"
    );
    assert_eq!(
        read_u32("ne", &ok("ne", n.ne(&n))),
        vec![1, 0],
        "[NaN, 1] != [NaN, 1]"
    );
}

// BUG: (cinder-runtime) a scalar operand is emitted into the generated WGSL as a
// literal (`bitcast<f32>(0u)`), and on lavapipe a kernel that divides by a
// literal 0.0 does not write its output at all: `x.div_scalar(0.0)` reads back
// whatever the pooled output buffer held before (observed: 0 from a fresh
// buffer, 3.0 and 79.44 left over from earlier tensors, and the right answer
// when the previous tensor in that buffer happened to be the right answer).
// PyTorch gives inf, -inf, NaN. Dividing by an uploaded zero is IEEE-correct.
// Likewise `x.mul_scalar(0.0)` gives 0 for inf and NaN (PyTorch: NaN).
#[test]
fn division_by_zero_follows_ieee() {
    let x = tensor(&[1.0, -1.0, 0.0, 2.5, -7.0], &[5]);
    let want = [
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    // The scalar case first, so that no earlier correct result can be sitting
    // in the buffer it reads back.
    let got = read_f32("div_scalar", &ok("div_scalar", x.div_scalar(0.0)));
    assert_close_msg("[1, -1, 0, 2.5, -7].div_scalar(0)", &got, &want, 0.0, 0.0);
    let zero = tensor(&[0.0], &[1]);
    let got = read_f32("div", &ok("div", x.div(&zero)));
    assert_close_msg("[1, -1, 0, 2.5, -7] / uploaded [0]", &got, &want, 0.0, 0.0);
}

#[test]
fn argmax_argmin() {
    let mut rng = Rng::named("argmax");
    // Coarse values: many ties (the first index wins) and negative values.
    let g = grid(-4, 2, 1.0);
    let cases: Vec<(Vec<usize>, Vec<isize>)> = vec![
        (vec![1], vec![0]),
        (vec![7], vec![0, -1]),
        (vec![13, 33], vec![0, 1]),
        (vec![3, 5, 7], vec![0, 1, 2]),
        (vec![127, 9], vec![0, 1]),
        (vec![2, 4099], vec![1]),
        (vec![65537], vec![0]),
        (vec![1100, 300], vec![1]),
    ];
    for (shape, axes) in cases {
        for values in [
            g(&mut rng, numel(&shape)),
            rng.vec(numel(&shape), -5.0, -1.0),
        ] {
            let t = tensor(&values, &shape);
            let a = Arr::from_f32(&values, &shape);
            for &ax in &axes {
                for keepdim in [false, true] {
                    for is_max in [true, false] {
                        let y = ok(
                            "arg",
                            if is_max {
                                t.argmax(ax, keepdim)
                            } else {
                                t.argmin(ax, keepdim)
                            },
                        );
                        assert_eq!(y.dtype(), DType::I32, "argmax dtype");
                        let want = a.arg(ax, keepdim, is_max);
                        let what = format!(
                            "{} of {shape:?} along {ax} keepdim {keepdim}",
                            if is_max { "argmax" } else { "argmin" }
                        );
                        assert_eq!(y.shape(), &want.shape[..], "{what}: shape");
                        let got: Vec<f64> = read_i32(&what, &y).iter().map(|&v| v as f64).collect();
                        assert_eq!(got, want.data, "{what}");
                    }
                }
            }
        }
    }
    // All equal: index 0.
    let t = tensor(&[2.0; 200], &[200]);
    assert_eq!(
        read_i32("argmax", &ok("argmax", t.argmax(0, false))),
        vec![0]
    );
    assert_eq!(
        read_i32("argmin", &ok("argmin", t.argmin(0, false))),
        vec![0]
    );
    // The maximum at the very end of a long row (the last thread's last element).
    let mut v = vec![0.0f32; 4099];
    v[4098] = 1.0;
    assert_eq!(
        read_i32(
            "argmax",
            &ok("argmax", tensor(&v, &[4099]).argmax(0, false))
        ),
        vec![4098]
    );
}

#[test]
fn i32_reductions() {
    let mut rng = Rng::named("i32_reductions");
    for shape in [vec![7], vec![13, 33], vec![3, 5, 7], vec![2, 4099]] {
        let x: Vec<i32> = (0..numel(&shape))
            .map(|_| rng.index(2001) as i32 - 1000)
            .collect();
        let t = tensor_i32(&x, &shape);
        let a = Arr::from_i32(&x, &shape);
        let last = shape.len() as isize - 1;
        for (name, y, want) in [
            ("sum", t.sum(&[last], false), a.sum(&[last], false)),
            ("sum all", t.sum(&[], false), a.sum(&[], false)),
            ("max", t.max(&[0], true), a.max(&[0], true)),
            ("min", t.min(&[last], false), a.min(&[last], false)),
            ("argmax", t.argmax(last, false), a.arg(last, false, true)),
            ("argmin", t.argmin(0, true), a.arg(0, true, false)),
        ] {
            let y = ok(name, y);
            assert_eq!(y.dtype(), DType::I32, "{name} of i32");
            assert_eq!(y.shape(), &want.shape[..], "{name} i32 {shape:?}: shape");
            let got: Vec<f64> = read_i32(name, &y).iter().map(|&v| v as f64).collect();
            assert_eq!(got, want.data, "{name} of i32 {shape:?}");
        }
    }
}

// ---- element-wise on i32 ----------------------------------------------------------------

#[test]
fn i32_elementwise() {
    let mut rng = Rng::named("i32_elementwise");
    for (sa, sb) in broadcast_pairs() {
        let a: Vec<i32> = (0..numel(&sa))
            .map(|_| rng.index(201) as i32 - 100)
            .collect();
        let b: Vec<i32> = (0..numel(&sb))
            .map(|_| rng.index(201) as i32 - 100)
            .collect();
        let (ta, tb) = (tensor_i32(&a, &sa), tensor_i32(&b, &sb));
        let (aa, ab) = (Arr::from_i32(&a, &sa), Arr::from_i32(&b, &sb));
        for (name, y, want) in [
            ("add", ta.add(&tb), aa.add(&ab)),
            ("sub", ta.sub(&tb), aa.sub(&ab)),
            ("mul", ta.mul(&tb), aa.mul(&ab)),
            ("maximum", ta.maximum(&tb), aa.zip(&ab, f64::max)),
            ("minimum", ta.minimum(&tb), aa.zip(&ab, f64::min)),
        ] {
            let y = ok(name, y);
            assert_eq!(y.dtype(), DType::I32, "{name} keeps i32");
            assert_eq!(
                y.shape(),
                &want.shape[..],
                "{name} i32 {sa:?} {sb:?}: shape"
            );
            let got: Vec<f64> = read_i32(name, &y).iter().map(|&v| v as f64).collect();
            assert_eq!(got, want.data, "{name} i32 {sa:?} with {sb:?}");
        }
    }
    let x = tensor_i32(&[-3, 0, 5, -7], &[4]);
    assert_eq!(read_i32("neg", &ok("neg", x.neg())), vec![3, 0, -5, 7]);
    assert_eq!(read_i32("abs", &ok("abs", x.abs())), vec![3, 0, 5, 7]);
    assert_eq!(read_i32("relu", &ok("relu", x.relu())), vec![0, 0, 5, 0]);
    assert_eq!(read_i32("sign", &ok("sign", x.sign())), vec![-1, 0, 1, -1]);
    assert_eq!(
        read_i32("add_scalar", &ok("add_scalar", x.add_scalar(2.0))),
        vec![-1, 2, 7, -5]
    );
    assert_eq!(
        read_i32("mul_scalar", &ok("mul_scalar", x.mul_scalar(3.0))),
        vec![-9, 0, 15, -21]
    );
    // Float-only ops refuse integer tensors.
    for (name, r) in [
        ("exp", x.exp()),
        ("log", x.log()),
        ("sigmoid", x.sigmoid()),
        ("mean", x.mean(&[], false)),
    ] {
        match r {
            Err(Error::DType { .. }) => {}
            Err(e) => panic!("{name} of i32: wrong error {e}"),
            Ok(_) => panic!("{name} of i32 should be refused"),
        }
    }
}

#[test]
fn dtype_conversions() {
    let x = tensor(&[-2.7, -0.5, 0.0, 0.5, 2.7, 100.0], &[6]);
    // PyTorch's float -> int conversion truncates toward zero.
    assert_eq!(
        read_i32("to i32", &ok("to_dtype", x.to_dtype(DType::I32))),
        vec![-2, 0, 0, 0, 2, 100]
    );
    let i = tensor_i32(&[-5, 0, 7, 16777216], &[4]);
    let f = read_f32("to f32", &ok("to_dtype", i.to_dtype(DType::F32)));
    assert_eq!(f, vec![-5.0, 0.0, 7.0, 16777216.0]);
    let u = tensor_u32(&[0, 1, 4000000000], &[3]);
    let f = read_f32("u32 to f32", &ok("to_dtype", u.to_dtype(DType::F32)));
    assert_close_msg("u32 to f32", &f, &[0.0, 1.0, 4e9], ATOL, RTOL);
    assert_eq!(ok("item", tensor_i32(&[42], &[1]).item()), 42.0);
    assert_eq!(ok("item", tensor(&[-1.5], &[]).item()), -1.5);
}

// ---- movement ----------------------------------------------------------------------------

fn iota_f32(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}

#[test]
fn reshape_flatten_squeeze() {
    let x = iota_f32(24);
    let t = tensor(&x, &[2, 3, 4]);
    let a = Arr::from_f32(&x, &[2, 3, 4]);
    for shape in [
        vec![24],
        vec![4, 6],
        vec![2, 12],
        vec![1, 24, 1],
        vec![2, 3, 2, 2],
    ] {
        check(
            &format!("reshape to {shape:?}"),
            &ok("reshape", t.reshape(&shape)),
            &a.reshape(&shape),
        );
    }
    check(
        "flatten(0, -1)",
        &ok("flatten", t.flatten(0, -1)),
        &a.reshape(&[24]),
    );
    check(
        "flatten(1, 2)",
        &ok("flatten", t.flatten(1, 2)),
        &a.reshape(&[2, 12]),
    );
    check(
        "unsqueeze(1)",
        &ok("unsqueeze", t.unsqueeze(1)),
        &a.reshape(&[2, 1, 3, 4]),
    );
    check(
        "unsqueeze(-1)",
        &ok("unsqueeze", t.unsqueeze(-1)),
        &a.reshape(&[2, 3, 4, 1]),
    );
    let u = ok("unsqueeze", t.unsqueeze(0));
    check("squeeze(0)", &ok("squeeze", u.squeeze(0)), &a);
    check(
        "squeeze of a non-1 dim is a no-op",
        &ok("squeeze", t.squeeze(1)),
        &a,
    );
    let s = tensor(&[3.5], &[]);
    check(
        "reshape [] to [1, 1]",
        &ok("reshape", s.reshape(&[1, 1])),
        &Arr::new(&[1, 1], vec![3.5]),
    );
}

#[test]
fn permute_transpose() {
    let mut rng = Rng::named("permute");
    let shape = [3, 5, 7];
    let x = rng.vec(105, -1.0, 1.0);
    let t = tensor(&x, &shape);
    let a = Arr::from_f32(&x, &shape);
    for perm in [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ] {
        check(
            &format!("permute {perm:?}"),
            &ok("permute", t.permute(&perm)),
            &a.permute(&perm),
        );
    }
    check(
        "transpose(0, 2)",
        &ok("transpose", t.transpose(0, 2)),
        &a.transpose(0, 2),
    );
    check(
        "transpose(-1, -2)",
        &ok("transpose", t.transpose(-1, -2)),
        &a.transpose(-1, -2),
    );
    let m = tensor(&x[..35], &[5, 7]);
    check(
        "t()",
        &ok("t", m.t()),
        &Arr::from_f32(&x[..35], &[5, 7]).transpose(0, 1),
    );
    // A large transpose (4099 x 33).
    let big = rng.vec(4099 * 33, -1.0, 1.0);
    check(
        "transpose [4099, 33]",
        &ok("t", tensor(&big, &[4099, 33]).t()),
        &Arr::from_f32(&big, &[4099, 33]).transpose(0, 1),
    );
}

#[test]
fn broadcast_to() {
    let mut rng = Rng::named("broadcast_to");
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![], vec![7]),
        (vec![1], vec![13]),
        (vec![3, 1], vec![2, 3, 5]),
        (vec![1, 4], vec![3, 4]),
        (vec![2, 1, 3], vec![2, 33, 3]),
        (vec![127], vec![9, 127]),
    ];
    for (from, to) in cases {
        let x = rng.vec(numel(&from), -1.0, 1.0);
        let y = ok("broadcast_to", tensor(&x, &from).broadcast_to(&to));
        check(
            &format!("broadcast {from:?} to {to:?}"),
            &y,
            &Arr::from_f32(&x, &from).broadcast_to(&to),
        );
    }
}

#[test]
fn narrow_slice_pad() {
    let mut rng = Rng::named("narrow");
    let shape = [7, 13, 5];
    let x = rng.vec(numel(&shape), -1.0, 1.0);
    let t = tensor(&x, &shape);
    let a = Arr::from_f32(&x, &shape);
    for (dim, start, len) in [
        (0, 0, 1),
        (0, 3, 4),
        (0, 6, 1),
        (1, 5, 8),
        (1, 0, 13),
        (2, 2, 3),
        (-1, 4, 1),
        (1, 12, 0),
    ] {
        check(
            &format!("narrow({dim}, {start}, {len})"),
            &ok("narrow", t.narrow(dim, start, len)),
            &a.narrow(dim, start, len),
        );
    }
    check(
        "slice(1, 2, 9)",
        &ok("slice", t.slice(1, 2, 9)),
        &a.narrow(1, 2, 7),
    );
    for (dim, before, after) in [(0, 1, 2), (1, 0, 3), (2, 4, 0), (2, 1, 1)] {
        check(
            &format!("pad_dim({dim}, {before}, {after})"),
            &ok("pad", t.pad_dim(dim, before, after)),
            &a.pad_dim(dim, before, after),
        );
    }
}

#[test]
fn concat_stack() {
    let mut rng = Rng::named("concat");
    let parts: Vec<(Vec<f32>, Vec<usize>)> = [vec![2, 3, 4], vec![2, 1, 4], vec![2, 7, 4]]
        .into_iter()
        .map(|s| (rng.vec(numel(&s), -1.0, 1.0), s))
        .collect();
    let ts: Vec<Tensor> = parts.iter().map(|(d, s)| tensor(d, s)).collect();
    let arrs: Vec<Arr> = parts.iter().map(|(d, s)| Arr::from_f32(d, s)).collect();
    let refs: Vec<&Tensor> = ts.iter().collect();
    let arefs: Vec<&Arr> = arrs.iter().collect();
    check(
        "concat along 1",
        &ok("concat", Tensor::concat(&refs, 1)),
        &Arr::concat(&arefs, 1),
    );
    check(
        "concat along -2",
        &ok("concat", Tensor::concat(&refs, -2)),
        &Arr::concat(&arefs, 1),
    );
    check(
        "concat of one",
        &ok("concat", Tensor::concat(&refs[..1], 1)),
        &arrs[0],
    );
    // Along the first and last dims, with awkward sizes.
    for dim in [0isize, 1] {
        let sizes = [1usize, 7, 13, 33];
        let ps: Vec<(Vec<f32>, Vec<usize>)> = sizes
            .iter()
            .map(|&n| {
                let s = if dim == 0 { vec![n, 5] } else { vec![5, n] };
                (rng.vec(numel(&s), -1.0, 1.0), s)
            })
            .collect();
        let ts: Vec<Tensor> = ps.iter().map(|(d, s)| tensor(d, s)).collect();
        let arrs: Vec<Arr> = ps.iter().map(|(d, s)| Arr::from_f32(d, s)).collect();
        let y = ok(
            "concat",
            Tensor::concat(&ts.iter().collect::<Vec<_>>(), dim),
        );
        check(
            &format!("concat sizes {sizes:?} along {dim}"),
            &y,
            &Arr::concat(&arrs.iter().collect::<Vec<_>>(), dim),
        );
    }
    // Values that adding zeros must not change: -0.0, inf, -inf.
    let special = tensor(&[-0.0, f32::INFINITY, -f32::INFINITY], &[3]);
    let y = read_f32(
        "concat",
        &ok("concat", Tensor::concat(&[&special, &special], 0)),
    );
    assert_close_msg(
        "concat of infinities",
        &y,
        &[
            0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ],
        0.0,
        0.0,
    );
    // i32.
    let a = tensor_i32(&[1, 2], &[2]);
    let b = tensor_i32(&[3], &[1]);
    assert_eq!(
        read_i32(
            "concat i32",
            &ok("concat", Tensor::concat(&[&a, &b, &a], 0))
        ),
        vec![1, 2, 3, 1, 2]
    );

    // Many inputs: one `Concat` op, copied region by region. Awkward sizes
    // along each axis, a transposed (strided) input, a prefix of a bigger
    // tensor, the same tensor twice.
    for dim in [0isize, 1, 2] {
        let d = axis(dim, 3);
        let mut ts = Vec::new();
        let mut arrs = Vec::new();
        for (k, n) in [1usize, 7, 13, 2, 33, 1, 5, 9, 3, 4, 11]
            .into_iter()
            .enumerate()
        {
            let mut s = vec![3, 4, 5];
            s[d] = n;
            let data = rng.vec(numel(&s), -1.0, 1.0);
            let t = match k {
                // Stored transposed: the op reads a strided view.
                2 => {
                    let mut ts_shape = s.clone();
                    ts_shape.swap(0, 2);
                    let a = Arr::from_f32(&data, &ts_shape);
                    arrs.push(a.transpose(0, 2));
                    ok("transpose", tensor(&data, &ts_shape).transpose(0, 2))
                }
                _ => {
                    arrs.push(Arr::from_f32(&data, &s));
                    tensor(&data, &s)
                }
            };
            ts.push(t);
        }
        ts.push(ts[1].clone());
        arrs.push(arrs[1].clone());
        let y = ok(
            "concat",
            Tensor::concat(&ts.iter().collect::<Vec<_>>(), dim),
        );
        check(
            &format!("concat of {} along {dim}", ts.len()),
            &y,
            &Arr::concat(&arrs.iter().collect::<Vec<_>>(), dim),
        );
    }
    // A prefix of a bigger buffer, and values copied bit for bit.
    let long = tensor(&[-0.0, f32::INFINITY, f32::NAN, 1.5, 2.5, 3.5], &[6]);
    let prefix = ok("narrow", long.narrow(0, 0, 3));
    let parts: Vec<&Tensor> = std::iter::repeat_n(&prefix, 10).collect();
    let y = read_f32("concat", &ok("concat", Tensor::concat(&parts, 0)));
    assert_eq!(y.len(), 30);
    for chunk in y.chunks(3) {
        assert_eq!(chunk[0].to_bits(), (-0.0f32).to_bits());
        assert_eq!(chunk[1], f32::INFINITY);
        assert!(chunk[2].is_nan());
    }
    let ints: Vec<Tensor> = (0..12).map(|k| tensor_i32(&[k, -k], &[2])).collect();
    let joined = read_i32(
        "concat i32",
        &ok(
            "concat",
            Tensor::concat(&ints.iter().collect::<Vec<_>>(), 0),
        ),
    );
    assert_eq!(joined, (0..12).flat_map(|k| [k, -k]).collect::<Vec<i32>>());

    // stack
    let xs: Vec<Vec<f32>> = (0..3).map(|_| rng.vec(20, -1.0, 1.0)).collect();
    let ts: Vec<Tensor> = xs.iter().map(|d| tensor(d, &[4, 5])).collect();
    let arrs: Vec<Arr> = xs.iter().map(|d| Arr::from_f32(d, &[4, 5])).collect();
    for dim in [0isize, 1, 2, -1] {
        let y = ok("stack", Tensor::stack(&ts.iter().collect::<Vec<_>>(), dim));
        check(
            &format!("stack along {dim}"),
            &y,
            &Arr::stack(&arrs.iter().collect::<Vec<_>>(), dim),
        );
    }
}

#[test]
fn gather_index_select() {
    let mut rng = Rng::named("gather");
    let shape = [7, 13];
    let x = rng.vec(numel(&shape), -1.0, 1.0);
    let t = tensor(&x, &shape);
    let a = Arr::from_f32(&x, &shape);
    // Along 1 with index [7, 5] (repeats), along 0 with index [3, 13], and an
    // index smaller than the source in the other dimension.
    for (dim, ishape) in [
        (1isize, vec![7usize, 5]),
        (0, vec![3, 13]),
        (1, vec![4, 20]),
        (0, vec![9, 2]),
        (-1, vec![7, 1]),
    ] {
        let d = axis(dim, 2);
        let idx = rng.indices_i32(numel(&ishape), shape[d]);
        let want = a.gather(dim, &Arr::from_i32(&idx, &ishape));
        check(
            &format!("gather dim {dim} index {ishape:?} (i32)"),
            &ok("gather", t.gather(dim, &tensor_i32(&idx, &ishape))),
            &want,
        );
        let idx_u: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        check(
            &format!("gather dim {dim} index {ishape:?} (u32)"),
            &ok("gather", t.gather(dim, &tensor_u32(&idx_u, &ishape))),
            &want,
        );
    }
    // 3-D gather along the middle.
    let x3 = rng.vec(3 * 5 * 4, -1.0, 1.0);
    let idx = rng.indices_i32(3 * 6 * 4, 5);
    let y = ok(
        "gather",
        tensor(&x3, &[3, 5, 4]).gather(1, &tensor_i32(&idx, &[3, 6, 4])),
    );
    check(
        "gather 3-D along 1",
        &y,
        &Arr::from_f32(&x3, &[3, 5, 4]).gather(1, &Arr::from_i32(&idx, &[3, 6, 4])),
    );
    // index_select with repeats, along both dims.
    for dim in [0isize, 1] {
        let n = shape[dim as usize];
        let idx: Vec<usize> = (0..9).map(|_| rng.index(n)).collect();
        let it: Vec<i32> = idx.iter().map(|&i| i as i32).collect();
        let y = ok("index_select", t.index_select(dim, &tensor_i32(&it, &[9])));
        check(
            &format!("index_select dim {dim} {idx:?}"),
            &y,
            &a.index_select(dim, &idx),
        );
    }
    // Large embedding-style lookup.
    let table = rng.vec(1000 * 16, -1.0, 1.0);
    let idx: Vec<usize> = (0..127).map(|_| rng.index(1000)).collect();
    let it: Vec<i32> = idx.iter().map(|&i| i as i32).collect();
    let y = ok(
        "index_select",
        tensor(&table, &[1000, 16]).index_select(0, &tensor_i32(&it, &[127])),
    );
    check(
        "index_select [1000, 16] rows",
        &y,
        &Arr::from_f32(&table, &[1000, 16]).index_select(0, &idx),
    );
}

#[test]
fn one_hot() {
    let labels = [0i32, 3, 1, 3, 2, 0];
    let want = Arr::one_hot(&labels.map(|v| v as i64), &[6], 4);
    check(
        "one_hot i32 [6]",
        &ok("one_hot", tensor_i32(&labels, &[6]).one_hot(4)),
        &want,
    );
    let lu: Vec<u32> = labels.iter().map(|&v| v as u32).collect();
    check(
        "one_hot u32 [6]",
        &ok("one_hot", tensor_u32(&lu, &[6]).one_hot(4)),
        &want,
    );
    let want = Arr::one_hot(&labels.map(|v| v as i64), &[2, 3], 5);
    check(
        "one_hot i32 [2, 3]",
        &ok("one_hot", tensor_i32(&labels, &[2, 3]).one_hot(5)),
        &want,
    );
    let mut rng = Rng::named("one_hot");
    let many = rng.indices_i32(1000, 127);
    let want = Arr::one_hot(
        &many.iter().map(|&v| v as i64).collect::<Vec<_>>(),
        &[1000],
        127,
    );
    check(
        "one_hot [1000] x 127",
        &ok("one_hot", tensor_i32(&many, &[1000]).one_hot(127)),
        &want,
    );
    assert!(
        tensor(&[1.0], &[1]).one_hot(2).is_err(),
        "one_hot of f32 must be refused"
    );
}

#[test]
fn chains_of_views() {
    let mut rng = Rng::named("chains");
    let x = rng.vec(4 * 6 * 5, -2.0, 2.0);
    let t = tensor(&x, &[4, 6, 5]);
    let a = Arr::from_f32(&x, &[4, 6, 5]);
    // permute -> narrow -> broadcast: [4,6,5] -> [5,4,6] -> [5,4,1] -> [3,5,4,7]
    let v = ok(
        "chain",
        t.permute(&[2, 0, 1])
            .and_then(|p| p.narrow(2, 3, 1))
            .and_then(|n| n.broadcast_to(&[3, 5, 4, 7])),
    );
    let va = a
        .permute(&[2, 0, 1])
        .narrow(2, 3, 1)
        .broadcast_to(&[3, 5, 4, 7]);
    check("permute-narrow-broadcast read directly", &v, &va);
    check(
        "... consumed element-wise",
        &ok("add", v.add_scalar(1.0).and_then(|y| y.mul(&v))),
        &va.map(|q| (q + 1.0) * q),
    );
    check_scaled(
        "... reduced",
        &ok("sum", v.sum(&[0, 3], false)),
        &va.sum(&[0, 3], false),
        &va.abs().sum(&[0, 3], false),
    );
    // narrow of a transpose, then reshape (a reshape of a non-contiguous view).
    let w = ok(
        "chain",
        t.transpose(0, 2)
            .and_then(|p| p.narrow(1, 1, 4))
            .and_then(|n| n.reshape(&[20, 4])),
    );
    let wa = a.transpose(0, 2).narrow(1, 1, 4).reshape(&[20, 4]);
    check("transpose-narrow-reshape", &w, &wa);
    // The same view feeding a matmul (which needs a contiguous buffer).
    let m = rng.vec(4 * 3, -1.0, 1.0);
    let y = ok("matmul", w.matmul(&tensor(&m, &[4, 3])));
    let ma = Arr::from_f32(&m, &[4, 3]);
    check_scaled(
        "view @ matrix",
        &y,
        &wa.matmul(&ma),
        &wa.abs().matmul(&ma.abs()),
    );
    // pad of a slice of a broadcast, then unary.
    let b = ok(
        "chain",
        tensor(&x[..5], &[5])
            .broadcast_to(&[3, 5])
            .and_then(|b| b.slice(1, 1, 4))
            .and_then(|s| s.pad_dim(0, 1, 2))
            .and_then(|p| p.exp()),
    );
    let ba = Arr::from_f32(&x[..5], &[5])
        .broadcast_to(&[3, 5])
        .narrow(1, 1, 3)
        .pad_dim(0, 1, 2)
        .map(f64::exp);
    check("broadcast-slice-pad-exp", &b, &ba);
    // A unary op on a permuted view of a large tensor.
    let big = rng.vec(33 * 127, -2.0, 2.0);
    let y = ok("chain", tensor(&big, &[33, 127]).t().and_then(|p| p.tanh()));
    check(
        "tanh of transposed [33, 127]",
        &y,
        &Arr::from_f32(&big, &[33, 127])
            .transpose(0, 1)
            .map(f64::tanh),
    );
}

// ---- matmul ---------------------------------------------------------------------------------

fn matmul_check(what: &str, rng: &mut Rng, sa: &[usize], sb: &[usize]) {
    let a = rng.vec(numel(sa), -1.0, 1.0);
    let b = rng.vec(numel(sb), -1.0, 1.0);
    let (aa, ab) = (Arr::from_f32(&a, sa), Arr::from_f32(&b, sb));
    let y = ok(what, tensor(&a, sa).matmul(&tensor(&b, sb)));
    // f32 accumulation over k: the error scales with |a| @ |b|.
    check_scaled(
        &format!("{what}: {sa:?} @ {sb:?}"),
        &y,
        &aa.matmul(&ab),
        &aa.abs().matmul(&ab.abs()),
    );
}

#[test]
fn matmul_2d() {
    let mut rng = Rng::named("matmul_2d");
    let sizes = [1usize, 7, 13, 33, 127, 129];
    for (i, &m) in sizes.iter().enumerate() {
        for (j, &k) in sizes.iter().enumerate() {
            // n cycles through the sizes so that every size appears in every slot.
            let n = sizes[(i + 2 * j) % sizes.len()];
            matmul_check("matmul 2-D", &mut rng, &[m, k], &[k, n]);
        }
    }
}

/// The kernel that needs no device features, forced on a second device: on
/// adapters with subgroups the default device never runs it.
#[test]
fn matmul_portable_kernel() {
    let portable = ok(
        "portable device",
        cinder_tensor::Device::with_options(&cinder_tensor::runtime::DeviceOptions {
            portable_kernels: true,
            ..cinder_tensor::runtime::DeviceOptions::from_env()
        }),
    );
    let mut rng = Rng::named("matmul_portable");
    // Past the small-product threshold; odd and vec4-friendly widths, partial
    // tiles in both directions, a broadcast batch.
    for (sa, sb) in [
        (vec![129, 127], vec![127, 33]),
        (vec![67, 256], vec![256, 260]),
        (vec![3, 33, 129], vec![129, 65]),
        (vec![9, 4096], vec![4096, 33]),
    ] {
        let a = rng.vec(numel(&sa), -1.0, 1.0);
        let b = rng.vec(numel(&sb), -1.0, 1.0);
        let (aa, ab) = (Arr::from_f32(&a, &sa), Arr::from_f32(&b, &sb));
        let ta = ok("a", Tensor::from_slice(&portable, &a, &sa));
        let tb = ok("b", Tensor::from_slice(&portable, &b, &sb));
        check_scaled(
            &format!("portable matmul {sa:?} @ {sb:?}"),
            &ok("matmul", ta.matmul(&tb)),
            &aa.matmul(&ab),
            &aa.abs().matmul(&ab.abs()),
        );
    }
}

/// Long K with few output blocks runs as split-K: partial products over parts
/// of K, summed afterwards (parts of uneven count, odd M and N).
/// Products of at least 2^29 multiply-adds take the biggest block (128x64
/// on adapters with subgroups): ragged edges, odd K (unpaired loads) and
/// even K (paired loads).
#[test]
fn matmul_big_products() {
    let mut rng = Rng::named("matmul_big");
    for (m, k, n) in [(1030, 1003, 520), (1029, 1002, 521)] {
        assert!(m * k * n >= 1 << 29);
        matmul_check("big matmul", &mut rng, &[m, k], &[k, n]);
    }
}

/// Products big enough to pack their operands into textures (on a CPU
/// adapter) with tails: K not a multiple of 4, M and N off the 64-wide
/// blocks, rows of C on and off a vec4. (`matmul_big_products` covers the
/// 128x64 block.)
#[test]
fn matmul_texture_operands() {
    let mut rng = Rng::named("matmul_texture");
    let before = device().stats().textures_created;
    for (m, k, n) in [(641, 1001, 517), (1030, 70, 3900)] {
        assert!(m * k * n >= 1 << 28 && m * k * n < 1 << 29);
        matmul_check("texture matmul", &mut rng, &[m, k], &[k, n]);
    }
    let created = device().stats().textures_created - before;
    assert_eq!(
        created > 0,
        device().texture_matmul(),
        "{created} operand textures created"
    );

    // Two products of one size in one realization share the operand
    // textures: the second packs over the first's only after it has run.
    let (m, k, n) = (641, 1001, 517);
    let [a, b, c, d] = [[m, k], [k, n], [m, k], [k, n]].map(|s| rng.vec(s[0] * s[1], -1.0, 1.0));
    let gpu = ok(
        "sum of two products",
        tensor(&a, &[m, k])
            .matmul(&tensor(&b, &[k, n]))
            .and_then(|ab| ab.add(&tensor(&c, &[m, k]).matmul(&tensor(&d, &[k, n]))?)),
    );
    let arr = |v: &[f32], s: &[usize]| Arr::from_f32(v, s);
    let (aa, ab, ac, ad) = (
        arr(&a, &[m, k]),
        arr(&b, &[k, n]),
        arr(&c, &[m, k]),
        arr(&d, &[k, n]),
    );
    let (p, q) = (aa.matmul(&ab), ac.matmul(&ad));
    let (pa, qa) = (aa.abs().matmul(&ab.abs()), ac.abs().matmul(&ad.abs()));
    let want = Arr {
        shape: vec![m, n],
        data: p.data.iter().zip(&q.data).map(|(x, y)| x + y).collect(),
    };
    let scale = Arr {
        shape: vec![m, n],
        data: pa.data.iter().zip(&qa.data).map(|(x, y)| x + y).collect(),
    };
    check_scaled("two texture products in one plan", &gpu, &want, &scale);
}

/// An operand that only a texture product reads is computed straight into
/// its texture (no pack). Its padding (K rounded up to whole texels) must be
/// zero, not a copy of some element: an infinity in B's last row, copied
/// into the padding rows, would meet A's zero padding and make every output
/// NaN. Here it makes exactly the last column infinite.
#[test]
fn matmul_operand_computed_into_texture() {
    // A device of its own: the counters below must see this product only,
    // not the other tests' running in parallel.
    let dev = ok(
        "second device",
        cinder_tensor::Device::with_options(&cinder_tensor::runtime::DeviceOptions::from_env()),
    );
    let mut rng = Rng::named("matmul into texture");
    let (m, k, n) = (100, 70, 90);
    let a = rng.vec(m * k, 0.5, 1.0);
    let mut b = rng.vec(k * n, -1.0, 1.0);
    b[k * n - 1] = f32::INFINITY;
    let before = dev.stats();
    let ta = ok("a", Tensor::from_slice(&dev, &a, &[m, k]));
    let b2 = ok(
        "b * 2",
        Tensor::from_slice(&dev, &b, &[k, n]).and_then(|t| t.mul_scalar(2.0)),
    );
    let y = read_f32("product", &ok("a @ (b * 2)", ta.matmul(&b2)));
    let stats = dev.stats();
    for i in 0..m {
        for j in 0..n {
            let got = y[i * n + j];
            if j == n - 1 {
                assert_eq!(got, f32::INFINITY, "row {i}, last column");
                continue;
            }
            let want: f64 = (0..k)
                .map(|t| a[i * k + t] as f64 * 2.0 * b[t * n + j] as f64)
                .sum();
            assert!(
                (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "[{i}, {j}]: {got} against {want}"
            );
        }
    }
    let (products, packs) = (
        stats.texture_products - before.texture_products,
        stats.operand_packs - before.operand_packs,
    );
    let expected = if dev.texture_matmul() { (1, 1) } else { (0, 0) };
    assert_eq!((products, packs), expected, "texture products and packs");
}

/// A product's fused epilogue writes its result through buffer stores, so
/// that result is never computed into a texture, even when a texture
/// product is its only reader (here an inference pass: relu(x @ w1 + b) is
/// the first, small product's epilogue, and the second product reads it).
#[test]
fn epilogue_output_read_by_a_texture_product() {
    let mut rng = Rng::named("epilogue into texture product");
    let (m, k, h, n) = (128, 4, 256, 256);
    let [x, w1, b, w2] = [m * k, k * h, h, h * n].map(|len| rng.vec(len, -1.0, 1.0));
    let y = {
        let _guard = cinder_tensor::no_grad();
        let hidden = ok(
            "hidden",
            tensor(&x, &[m, k])
                .matmul(&tensor(&w1, &[k, h]))
                .and_then(|p| p.add(&tensor(&b, &[h])))
                .and_then(|p| p.relu()),
        );
        read_f32(
            "output",
            &ok("output", hidden.matmul(&tensor(&w2, &[h, n]))),
        )
    };
    let hidden: Vec<f64> = (0..m * h)
        .map(|e| {
            let (i, j) = (e / h, e % h);
            let v: f64 = (0..k)
                .map(|t| x[i * k + t] as f64 * w1[t * h + j] as f64)
                .sum();
            (v + b[j] as f64).max(0.0)
        })
        .collect();
    let want: Vec<f64> = (0..m * n)
        .map(|e| {
            let (i, j) = (e / n, e % n);
            (0..h)
                .map(|t| hidden[i * h + t] * w2[t * n + j] as f64)
                .sum()
        })
        .collect();
    assert_close_msg("relu(x @ w1 + b) @ w2", &y, &want, 1e-4, 1e-4);
}

/// Split-K products whose parts are not a whole number of texels of K (K
/// per part 258 here) stay on the buffer kernels: a texture part starts at
/// a whole texel, and its first k would be read by two parts.
#[test]
fn matmul_split_k_parts_off_texels() {
    let mut rng = Rng::named("matmul split-K off texels");
    for (m, k, n) in [(128, 516, 128), (290, 9800, 64)] {
        matmul_check("split-K matmul", &mut rng, &[m, k], &[k, n]);
    }
}

/// The kernels that read operands from buffers, forced on a second device:
/// on a CPU adapter the default device packs big products into textures.
#[test]
fn matmul_buffer_kernels() {
    let buffers = ok(
        "buffer-matmul device",
        cinder_tensor::Device::with_options(&cinder_tensor::runtime::DeviceOptions {
            buffer_matmul: true,
            ..cinder_tensor::runtime::DeviceOptions::from_env()
        }),
    );
    assert!(!buffers.texture_matmul());
    let mut rng = Rng::named("matmul_buffer");
    for (m, k, n) in [(1030, 1003, 520), (641, 1001, 517), (1030, 70, 3900)] {
        let a = rng.vec(m * k, -1.0, 1.0);
        let b = rng.vec(k * n, -1.0, 1.0);
        let (aa, ab) = (Arr::from_f32(&a, &[m, k]), Arr::from_f32(&b, &[k, n]));
        let ta = ok("a", Tensor::from_slice(&buffers, &a, &[m, k]));
        let tb = ok("b", Tensor::from_slice(&buffers, &b, &[k, n]));
        check_scaled(
            &format!("buffer matmul [{m}, {k}] @ [{k}, {n}]"),
            &ok("matmul", ta.matmul(&tb)),
            &aa.matmul(&ab),
            &aa.abs().matmul(&ab.abs()),
        );
    }
    assert_eq!(buffers.stats().textures_created, 0);
}

#[test]
fn matmul_split_k() {
    let mut rng = Rng::named("matmul_split_k");
    for (m, k, n) in [(9, 4096, 33), (17, 3000, 10), (3, 2052, 5), (64, 1500, 64)] {
        matmul_check("split-K matmul", &mut rng, &[m, k], &[k, n]);
    }
}

#[test]
fn matmul_batched_and_broadcast() {
    let mut rng = Rng::named("matmul_batched");
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![4, 7, 13], vec![4, 13, 33]),
        (vec![3, 33, 1], vec![3, 1, 7]),
        (vec![2, 1, 7, 13], vec![3, 13, 5]),
        (vec![2, 1, 13, 7], vec![1, 3, 7, 33]),
        (vec![5, 7, 13], vec![13, 9]),
        (vec![7, 13], vec![5, 13, 9]),
        (vec![1, 7, 13], vec![13, 9]),
        (vec![1, 1, 7, 13], vec![1, 13, 9]),
        (vec![2, 3, 33, 129], vec![2, 3, 129, 13]),
        (vec![6, 1, 127], vec![127, 1]),
    ];
    for (sa, sb) in cases {
        matmul_check("batched matmul", &mut rng, &sa, &sb);
    }
}

/// K = 1: outer products, which the runtime computes as a broadcast
/// multiply: batched on either side or both, broadcast batches, operands
/// that are transposed views, and a discriminator's one-output layer's
/// input gradient (64 x 6272).
#[test]
fn matmul_outer_products() {
    let mut rng = Rng::named("matmul_outer");
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![33, 1], vec![1, 7]),
        (vec![3, 33, 1], vec![3, 1, 7]),
        (vec![3, 33, 1], vec![1, 7]),
        (vec![33, 1], vec![4, 1, 7]),
        (vec![2, 1, 5, 1], vec![3, 1, 9]),
        (vec![64, 1], vec![1, 6272]),
    ];
    for (sa, sb) in cases {
        matmul_check("outer product", &mut rng, &sa, &sb);
    }
    let (a, b) = (rng.vec(13, -1.0, 1.0), rng.vec(2 * 9, -1.0, 1.0));
    let y = ok(
        "transposed outer product",
        tensor(&a, &[1, 13])
            .transpose(0, 1)
            .and_then(|at| at.matmul(&tensor(&b, &[2, 9, 1]).transpose(1, 2)?)),
    );
    let (aa, ab) = (Arr::from_f32(&a, &[13, 1]), Arr::from_f32(&b, &[2, 1, 9]));
    check_scaled(
        "transposed outer product",
        &y,
        &aa.matmul(&ab),
        &aa.abs().matmul(&ab.abs()),
    );
}

/// M = 1 or N = 1: matrix-vector products, which the runtime computes as a
/// sum over K of a broadcast product: a one-output layer ([64, 6272] @
/// [6272, 1]) and its weight gradient ([1, 64] @ [64, 6272]), batched and
/// broadcast batches, a K long enough to be split over workgroups, and
/// operands that are transposed views.
#[test]
fn matmul_matrix_vector_products() {
    let mut rng = Rng::named("matmul_matvec");
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![64, 6272], vec![6272, 1]),
        (vec![1, 64], vec![64, 6272]),
        (vec![1, 3], vec![3, 1]),
        (vec![3, 1, 129], vec![3, 129, 17]),
        (vec![3, 17, 129], vec![129, 1]),
        (vec![2, 1, 1, 70], vec![3, 70, 5]),
        (vec![5, 70001], vec![70001, 1]),
    ];
    for (sa, sb) in cases {
        matmul_check("matrix-vector product", &mut rng, &sa, &sb);
    }
    let (a, b) = (rng.vec(37 * 5, -1.0, 1.0), rng.vec(2 * 37, -1.0, 1.0));
    let y = ok(
        "transposed matrix-vector product",
        tensor(&a, &[37, 5])
            .transpose(0, 1)
            .and_then(|at| at.matmul(&tensor(&b, &[2, 1, 37]).transpose(1, 2)?)),
    );
    let (aa, ab) = (Arr::from_f32(&a, &[37, 5]), Arr::from_f32(&b, &[2, 1, 37]));
    let (aa, ab) = (aa.transpose(0, 1), ab.transpose(1, 2));
    check_scaled(
        "transposed matrix-vector product",
        &y,
        &aa.matmul(&ab),
        &aa.abs().matmul(&ab.abs()),
    );
}

#[test]
fn matmul_vectors() {
    let mut rng = Rng::named("matmul_vectors");
    for (sa, sb) in [
        (vec![13], vec![13, 7]),
        (vec![7, 13], vec![13]),
        (vec![127], vec![4, 127, 3]),
        (vec![4, 3, 127], vec![127]),
        (vec![1], vec![1, 1]),
    ] {
        matmul_check("matmul with a vector", &mut rng, &sa, &sb);
    }
}

#[test]
fn matmul_vector_dot_vector() {
    // PyTorch: [k] @ [k] is the dot product, a 0-d tensor.
    let mut rng = Rng::named("matmul_dot");
    for k in [1usize, 13, 129] {
        matmul_check("matmul dot", &mut rng, &[k], &[k]);
    }
}

#[test]
fn matmul_of_views_and_constants() {
    let mut rng = Rng::named("matmul_views");
    let a = rng.vec(13 * 7, -1.0, 1.0);
    let b = rng.vec(13 * 33, -1.0, 1.0);
    let (aa, ab) = (Arr::from_f32(&a, &[13, 7]), Arr::from_f32(&b, &[13, 33]));
    let (ta, tb) = (tensor(&a, &[13, 7]), tensor(&b, &[13, 33]));
    // a^T @ b with a transposed view.
    let y = ok("matmul", ta.t().and_then(|at| at.matmul(&tb)));
    let want = aa.transpose(0, 1).matmul(&ab);
    check_scaled(
        "a^T @ b",
        &y,
        &want,
        &aa.abs().transpose(0, 1).matmul(&ab.abs()),
    );
    // x @ x (the same buffer twice).
    let s = rng.vec(33 * 33, -1.0, 1.0);
    let sa = Arr::from_f32(&s, &[33, 33]);
    let ts = tensor(&s, &[33, 33]);
    check_scaled(
        "x @ x",
        &ok("matmul", ts.matmul(&ts)),
        &sa.matmul(&sa),
        &sa.abs().matmul(&sa.abs()),
    );
    // A constant operand and a fused element-wise producer.
    let ones = Tensor::ones(device(), &[7, 5]);
    let y = ok("matmul", ta.exp().and_then(|e| e.matmul(&ones)));
    let ea = aa.map(f64::exp);
    check_scaled(
        "exp(a) @ ones",
        &y,
        &ea.matmul(&Arr::full(&[7, 5], 1.0)),
        &ea.matmul(&Arr::full(&[7, 5], 1.0)),
    );
    // An element-wise consumer of a matmul.
    let y = ok(
        "matmul",
        ta.t().and_then(|at| at.matmul(&tb)).and_then(|p| p.relu()),
    );
    check_tol("relu(a^T @ b)", &y, &want.map(|v| v.max(0.0)), 1e-5, 1e-4);
}

// ---- normalised exponentials and losses ---------------------------------------------------

#[test]
fn softmax_log_softmax() {
    let mut rng = Rng::named("softmax");
    let cases: Vec<(Vec<usize>, Vec<isize>)> = vec![
        (vec![1, 1], vec![0, 1]),
        (vec![127], vec![0]),
        (vec![7, 13], vec![0, 1, -1]),
        (vec![3, 33, 5], vec![0, 1, 2]),
        (vec![2, 1000], vec![-1]),
    ];
    for (shape, dims) in cases {
        let x = rng.vec(numel(&shape), -10.0, 10.0);
        let t = tensor(&x, &shape);
        let a = Arr::from_f32(&x, &shape);
        for &d in &dims {
            check(
                &format!("softmax {shape:?} dim {d}"),
                &ok("softmax", t.softmax(d)),
                &a.softmax(d),
            );
            check(
                &format!("log_softmax {shape:?} dim {d}"),
                &ok("log_softmax", t.log_softmax(d)),
                &a.log_softmax(d),
            );
        }
    }
    // Large logits: no overflow to inf/inf, no log(0).
    let big: [f32; 12] = [
        1000.0, 0.0, -1000.0, 1000.0, 1000.0, 999.0, -1000.0, -1000.0, -1000.0, 88.0, 89.0, 90.0,
    ];
    let t = tensor(&big, &[4, 3]);
    let a = Arr::from_f32(&big, &[4, 3]);
    check(
        "softmax of large logits",
        &ok("softmax", t.softmax(-1)),
        &a.softmax(-1),
    );
    check(
        "log_softmax of large logits",
        &ok("log_softmax", t.log_softmax(-1)),
        &a.log_softmax(-1),
    );
    check(
        "softmax of large logits along 0",
        &ok("softmax", t.softmax(0)),
        &a.softmax(0),
    );
    // Rows sum to one.
    let s = ok(
        "softmax",
        tensor(&rng.vec(33 * 127, -5.0, 5.0), &[33, 127])
            .softmax(1)
            .and_then(|p| p.sum(&[1], false)),
    );
    check("softmax rows sum to 1", &s, &Arr::full(&[33], 1.0));
}

#[test]
fn cross_entropy() {
    let mut rng = Rng::named("cross_entropy");
    for (n, c) in [(1usize, 1usize), (1, 7), (7, 13), (33, 127), (127, 3)] {
        let x = rng.vec(n * c, -5.0, 5.0);
        let targets: Vec<usize> = (0..n).map(|_| rng.index(c)).collect();
        let want = Arr::from_f32(&x, &[n, c]).cross_entropy(&targets);
        let ti: Vec<i32> = targets.iter().map(|&v| v as i32).collect();
        let tu: Vec<u32> = targets.iter().map(|&v| v as u32).collect();
        let t = tensor(&x, &[n, c]);
        check(
            &format!("cross_entropy [{n}, {c}] i32"),
            &ok("cross_entropy", t.cross_entropy(&tensor_i32(&ti, &[n]))),
            &want,
        );
        check(
            &format!("cross_entropy [{n}, {c}] u32"),
            &ok("cross_entropy", t.cross_entropy(&tensor_u32(&tu, &[n]))),
            &want,
        );
    }
    // Large logits: finite and exact.
    let big = [1000.0f32, 0.0, -1000.0, -1000.0, 1000.0, 1000.0];
    let targets = [2usize, 1];
    let want = Arr::from_f32(&big, &[2, 3]).cross_entropy(&targets);
    let y = ok(
        "cross_entropy",
        tensor(&big, &[2, 3]).cross_entropy(&tensor_i32(&[2, 1], &[2])),
    );
    check("cross_entropy of large logits", &y, &want);
    assert!((want.data[0] - (2000.0 + 2f64.ln()) / 2.0).abs() < 1e-9);
}

#[test]
fn mse_loss() {
    let mut rng = Rng::named("mse");
    for shape in [vec![1], vec![7, 13], vec![4099]] {
        let a = rng.vec(numel(&shape), -3.0, 3.0);
        let b = rng.vec(numel(&shape), -3.0, 3.0);
        let y = ok("mse", tensor(&a, &shape).mse_loss(&tensor(&b, &shape)));
        check(
            &format!("mse_loss {shape:?}"),
            &y,
            &Arr::from_f32(&a, &shape).mse_loss(&Arr::from_f32(&b, &shape)),
        );
    }
}

// ---- creation ----------------------------------------------------------------------------

#[test]
fn arange_full_zeros_ones() {
    let dev = device();
    let cases: [(f32, f32, f32); 6] = [
        (0.0, 7.0, 1.0),
        (0.0, 1.0, 0.1),
        (-1.0, 1.0, 0.3),
        (5.0, -5.0, -1.5),
        (0.0, 4099.0, 1.0),
        (3.0, 3.0, 1.0),
    ];
    for (start, end, step) in cases {
        let n = ((end as f64 - start as f64) / step as f64).ceil().max(0.0) as usize;
        let want = Arr::new(
            &[n],
            (0..n)
                .map(|i| start as f64 + i as f64 * step as f64)
                .collect(),
        );
        check(
            &format!("arange({start}, {end}, {step})"),
            &ok("arange", Tensor::arange(dev, start, end, step)),
            &want,
        );
    }
    assert!(
        Tensor::arange(dev, 0.0, 1.0, 0.0).is_err(),
        "arange with step 0 must be refused"
    );
    assert_eq!(
        read_i32("arange_i32", &ok("arange_i32", Tensor::arange_i32(dev, 13))),
        (0..13).collect::<Vec<i32>>()
    );
    check(
        "full",
        &Tensor::full(dev, &[7, 13], -2.5),
        &Arr::full(&[7, 13], -2.5),
    );
    check(
        "full scalar",
        &Tensor::scalar(dev, 3.25),
        &Arr::full(&[], 3.25),
    );
    check("zeros", &Tensor::zeros(dev, &[33]), &Arr::full(&[33], 0.0));
    check(
        "ones",
        &Tensor::ones(dev, &[4099]),
        &Arr::full(&[4099], 1.0),
    );
    let i = tensor_i32(&[1, 2, 3], &[3]);
    assert_eq!(read_i32("zeros_like", &i.zeros_like()), vec![0, 0, 0]);
    assert_eq!(read_i32("ones_like", &i.ones_like()), vec![1, 1, 1]);
    assert_eq!(
        read_i32(
            "full_dtype",
            &Tensor::full_dtype(dev, &[2], DType::I32, -7.0)
        ),
        vec![-7, -7]
    );
    assert_eq!(
        read_u32(
            "full_dtype",
            &Tensor::full_dtype(dev, &[2], DType::U32, 9.0)
        ),
        vec![9, 9]
    );
}

fn moments(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn rand_seeded() {
    let dev = device();
    let n = 100_000;
    let (lo, hi) = (-3.0f32, 5.0f32);
    let v = read_f32(
        "rand",
        &ok("rand", Tensor::rand_seeded(dev, &[n], lo, hi, 42)),
    );
    assert!(
        v.iter().all(|x| (lo..hi).contains(x)),
        "rand_seeded outside [{lo}, {hi})"
    );
    let (mean, std) = moments(&v);
    // Uniform on [-3, 5): mean 1, std 8/sqrt(12) = 2.309; the standard error of
    // the mean over 1e5 samples is 0.0073, the tolerance is 5 of them.
    assert!((mean - 1.0).abs() < 0.037, "rand mean {mean}");
    assert!((std - 8.0 / 12f64.sqrt()).abs() < 0.02, "rand std {std}");
    // Unit uniform: mean ~0.5 and every tenth of [0, 1) about equally full.
    let u = read_f32(
        "rand",
        &ok("rand", Tensor::rand_seeded(dev, &[n], 0.0, 1.0, 7)),
    );
    let (m, _) = moments(&u);
    assert!((m - 0.5).abs() < 0.005, "rand mean {m}");
    let mut bins = [0usize; 10];
    for &x in &u {
        bins[((x * 10.0) as usize).min(9)] += 1;
    }
    assert!(
        bins.iter().all(|&b| (b as f64 - 10_000.0).abs() < 500.0),
        "rand histogram {bins:?}"
    );
    // Neighbouring elements are uncorrelated.
    let c: f64 = u
        .windows(2)
        .map(|w| (w[0] as f64 - 0.5) * (w[1] as f64 - 0.5))
        .sum::<f64>()
        / (n as f64 - 1.0)
        * 12.0;
    assert!(c.abs() < 0.02, "lag-1 correlation {c}");
    // The same seed gives identical values; different seeds differ.
    let again = read_f32(
        "rand",
        &ok("rand", Tensor::rand_seeded(dev, &[n], 0.0, 1.0, 7)),
    );
    assert!(
        u.iter()
            .zip(&again)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "same seed, different values"
    );
    let other = read_f32(
        "rand",
        &ok("rand", Tensor::rand_seeded(dev, &[n], 0.0, 1.0, 8)),
    );
    let same = u.iter().zip(&other).filter(|(a, b)| a == b).count();
    assert!(same < 100, "seeds 7 and 8 agree on {same} of {n} values");
    // Seeds that differ only in the high 32 bits differ too.
    let hi_seed = read_f32(
        "rand",
        &ok(
            "rand",
            Tensor::rand_seeded(dev, &[1000], 0.0, 1.0, 7 | (1 << 40)),
        ),
    );
    assert!(
        hi_seed.iter().zip(&u).filter(|(a, b)| a == b).count() < 10,
        "the seed's high bits are ignored"
    );
}

#[test]
fn randn_seeded() {
    let dev = device();
    let n = 100_000;
    let v = read_f32(
        "randn",
        &ok("randn", Tensor::randn_seeded(dev, &[n], 0.0, 1.0, 1234)),
    );
    assert!(
        v.iter().all(|x| x.is_finite()),
        "randn produced a non-finite value"
    );
    let (mean, std) = moments(&v);
    // Standard errors over 1e5 samples: 0.0032 for the mean, 0.0022 for the std.
    assert!(mean.abs() < 0.016, "randn mean {mean}");
    assert!((std - 1.0).abs() < 0.011, "randn std {std}");
    let within1 = v.iter().filter(|x| x.abs() < 1.0).count() as f64 / n as f64;
    assert!(
        (within1 - 0.6827).abs() < 0.008,
        "randn: {within1} of samples within one std"
    );
    let again = read_f32(
        "randn",
        &ok("randn", Tensor::randn_seeded(dev, &[n], 0.0, 1.0, 1234)),
    );
    assert!(
        v.iter()
            .zip(&again)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "same seed, different values"
    );
    let other = read_f32(
        "randn",
        &ok("randn", Tensor::randn_seeded(dev, &[n], 0.0, 1.0, 1235)),
    );
    assert!(
        v.iter().zip(&other).filter(|(a, b)| a == b).count() < 100,
        "different seeds agree"
    );
    // Mean and std parameters.
    let w = read_f32(
        "randn",
        &ok("randn", Tensor::randn_seeded(dev, &[n], 3.0, 0.5, 99)),
    );
    let (m, s) = moments(&w);
    assert!(
        (m - 3.0).abs() < 0.008 && (s - 0.5).abs() < 0.006,
        "randn(3, 0.5): mean {m} std {s}"
    );
    // The device stream: manual_seed makes rand reproducible.
    dev.manual_seed(5);
    let a = read_f32("rand", &ok("rand", Tensor::rand(dev, &[64])));
    let b = read_f32("rand", &ok("rand", Tensor::rand(dev, &[64])));
    dev.manual_seed(5);
    let a2 = read_f32("rand", &ok("rand", Tensor::rand(dev, &[64])));
    assert_eq!(a, a2, "manual_seed does not restart the stream");
    assert_ne!(a, b, "two draws from the stream are equal");
}

// ---- errors ------------------------------------------------------------------------------

fn err_message<T>(what: &str, r: Result<T>) -> String {
    match r {
        Ok(_) => panic!("{what}: expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(
            msg.contains(p),
            "error message {msg:?} does not mention {p:?}"
        );
    }
}

#[test]
fn shape_mismatch_errors_name_op_and_shapes() {
    let a = Tensor::zeros(device(), &[2, 3]);
    let b = Tensor::zeros(device(), &[4]);
    type Bin = fn(&Tensor, &Tensor) -> Result<Tensor>;
    let ops: [(&str, Bin); 9] = [
        ("add", |a, b| a.add(b)),
        ("sub", |a, b| a.sub(b)),
        ("mul", |a, b| a.mul(b)),
        ("div", |a, b| a.div(b)),
        ("pow", |a, b| a.pow(b)),
        ("maximum", |a, b| a.maximum(b)),
        ("minimum", |a, b| a.minimum(b)),
        ("lt", |a, b| a.lt(b)),
        ("eq", |a, b| a.eq(b)),
    ];
    for (name, f) in ops {
        let r = f(&a, &b);
        assert!(
            matches!(r, Err(Error::Shape { .. })),
            "{name} of [2, 3] and [4]: want a shape error"
        );
        let msg = err_message(name, r);
        assert_mentions(&msg, &[name, "[2, 3]", "[4]"]);
    }
    let msg = err_message(
        "where",
        Tensor::where_cond(&Tensor::zeros(device(), &[5]), &a, &a),
    );
    assert_mentions(&msg, &["where", "[5]", "[2, 3]"]);
}

#[test]
fn matmul_inner_dim_error() {
    let a = Tensor::zeros(device(), &[2, 3]);
    let b = Tensor::zeros(device(), &[4, 5]);
    let r = a.matmul(&b);
    assert!(
        matches!(r, Err(Error::Shape { .. })),
        "matmul [2,3] @ [4,5]: want a shape error"
    );
    assert_mentions(&err_message("matmul", r), &["matmul", "[2, 3]", "[4, 5]"]);
    let msg = err_message(
        "matmul",
        Tensor::zeros(device(), &[2, 2, 3]).matmul(&Tensor::zeros(device(), &[3, 3, 4])),
    );
    assert_mentions(&msg, &["matmul", "[2, 2, 3]", "[3, 3, 4]"]);
    let msg = err_message(
        "matmul",
        Tensor::zeros(device(), &[3]).matmul(&Tensor::zeros(device(), &[4])),
    );
    assert_mentions(&msg, &["matmul", "[3]", "[4]"]);
}

#[test]
fn reshape_count_error() {
    let a = Tensor::zeros(device(), &[2, 3]);
    let r = a.reshape(&[4]);
    assert!(
        matches!(r, Err(Error::Shape { .. })),
        "reshape [2,3] to [4]: want a shape error"
    );
    assert_mentions(&err_message("reshape", r), &["reshape", "[2, 3]", "[4]"]);
}

#[test]
fn to_vec_wrong_dtype_error() {
    let a = Tensor::zeros(device(), &[2, 3]);
    let r = a.to_vec::<i32>();
    assert!(
        matches!(r, Err(Error::DType { .. })),
        "to_vec::<i32> of f32: want a dtype error"
    );
    assert_mentions(&err_message("to_vec", r), &["to_vec", "f32", "i32"]);
    let i = tensor_i32(&[1], &[1]);
    assert_mentions(
        &err_message("to_vec", i.to_vec::<f32>()),
        &["to_vec", "i32", "f32"],
    );
}

#[test]
fn other_argument_errors() {
    let dev = device();
    let a = Tensor::zeros(dev, &[2, 3]);
    let i = tensor_i32(&[0, 1], &[2]);
    assert!(a.add(&i).is_err(), "add of f32 and i32");
    assert!(
        a.sum(&[2], false).is_err(),
        "sum over axis 2 of a 2-D tensor"
    );
    assert!(a.sum(&[1, -1], false).is_err(), "the same axis twice");
    assert!(a.permute(&[0, 0]).is_err(), "permute with a repeated dim");
    assert!(a.narrow(1, 2, 2).is_err(), "narrow past the end");
    assert!(a.broadcast_to(&[3, 3]).is_err(), "broadcast [2,3] to [3,3]");
    let msg = err_message(
        "concat",
        Tensor::concat(&[&a, &Tensor::zeros(dev, &[3, 3])], 1),
    );
    assert_mentions(&msg, &["concat", "[2, 3]", "[3, 3]"]);
    assert!(
        Tensor::stack(&[&a, &Tensor::zeros(dev, &[3, 2])], 0).is_err(),
        "stack of different shapes"
    );
    let msg = err_message(
        "cross_entropy",
        a.cross_entropy(&tensor_i32(&[0, 1, 2], &[3])),
    );
    assert_mentions(&msg, &["cross_entropy", "[2, 3]", "[3]"]);
    assert!(
        a.cross_entropy(&tensor(&[0.0, 1.0], &[2])).is_err(),
        "float targets"
    );
    assert!(
        a.gather(1, &tensor_i32(&[0; 9], &[3, 3])).is_err(),
        "gather index larger than the source"
    );
    assert!(
        a.index_select(0, &tensor_i32(&[0; 4], &[2, 2])).is_err(),
        "index_select with a 2-D index"
    );
    assert!(
        Tensor::from_slice(dev, &[1.0f32, 2.0], &[3]).is_err(),
        "3 elements from 2 values"
    );
    assert!(a.item().is_err(), "item of 6 elements");
}

/// `topk` against a stable sort on the CPU: coarse values (ties keep index
/// order), awkward sizes, every axis, k from 1 to the axis' size; and the
/// values' gradient lands on the picked positions only.
#[test]
fn topk_matches_a_stable_sort() -> cinder_tensor::Result<()> {
    let mut rng = Rng::named("topk");
    let g = grid(-4, 3, 0.5);
    for (shape, axis, k) in [
        (vec![7usize], 0usize, 3usize),
        (vec![7], 0, 7),
        (vec![3, 13], 1, 5),
        (vec![5, 4, 3], 0, 2),
        (vec![2, 3, 577], 2, 9),
    ] {
        let values = g(&mut rng, numel(&shape));
        let t = tensor(&values, &shape).requires_grad_();
        let (top, idx) = t.topk(k, axis as isize)?;
        let mut out_shape = shape.clone();
        out_shape[axis] = k;
        assert_eq!(top.shape(), out_shape.as_slice());
        let (top_v, idx_v) = (top.to_vec::<f32>()?, idx.to_vec::<i32>()?);
        for o in 0..numel(&out_shape) {
            let c = unravel(o, &out_shape);
            let rank = c[axis];
            let mut line: Vec<(usize, f32)> = (0..shape[axis])
                .map(|j| {
                    let mut cc = c.clone();
                    cc[axis] = j;
                    (j, values[ravel(&cc, &shape)])
                })
                .collect();
            line.sort_by(|a, b| b.1.total_cmp(&a.1)); // stable: ties in index order
            assert_eq!(
                (idx_v[o] as usize, top_v[o]),
                line[rank],
                "topk {shape:?} axis {axis} k {k} at {c:?}"
            );
        }
        let grads = top.sum_all()?.backward()?;
        let grad = grads.get(&t).map(|g| g.to_vec::<f32>()).transpose()?;
        let grad = grad.ok_or_else(|| cinder_tensor::Error::invalid("topk", "no gradient"))?;
        let picked: usize = grad.iter().filter(|&&v| v == 1.0).count();
        assert_eq!(picked, numel(&out_shape), "topk gradient {shape:?}");
        assert!(grad.iter().all(|&v| v == 0.0 || v == 1.0));
    }
    // Fewer finite values than k: the -inf ones follow in index order,
    // never a position twice; NaN ranks first, as in torch.topk.
    let inf = f32::NEG_INFINITY;
    let (_, idx) = tensor(&[inf, inf, 1.0, inf], &[4]).topk(4, 0)?;
    assert_eq!(idx.to_vec::<i32>()?, vec![2, 0, 1, 3]);
    let (_, idx) = tensor(&[1.0, f32::NAN, 3.0], &[3]).topk(2, 0)?;
    assert_eq!(idx.to_vec::<i32>()?, vec![1, 2]);
    assert!(tensor(&[1.0, 2.0], &[2]).topk(3, 0).is_err());
    assert!(tensor(&[1.0, 2.0], &[2]).topk(0, 0).is_err());
    Ok(())
}

// ---- reductions' counted digits and uniform inputs -----------------------------------

/// `t.sum(axes)` against `ta`'s, at a tolerance scaled by the summed
/// magnitudes.
fn check_sum(what: &str, t: &Tensor, ta: &Arr, axes: &[isize], keepdim: bool) {
    check_scaled(
        what,
        &ok("sum", t.sum(axes, keepdim)),
        &ta.sum(axes, keepdim),
        &ta.abs().sum(axes, keepdim),
    );
}

#[test]
fn reductions_over_awkward_axes_count_their_digits_and_read_small_inputs_as_uniforms() {
    // The reduced axes' digits are counted along with the reduction's
    // counter: a step of 64 (a workgroup's stride) carries across digits of
    // 11 and 7, a step of 1 (one thread per output) across every digit, and
    // a split reduction starts each part mid-digit. The per-channel scale and
    // shift (9 and 7 elements, not whole vec4s) are small enough to be read
    // as uniform buffers, through broadcasts and a permutation.
    let mut rng = Rng::named("reduce-digits");
    let shape = [5, 9, 7, 11];
    let x = rng.vec(numel(&shape), -2.0, 2.0);
    let s = rng.vec(9, 0.5, 1.5);
    let b = rng.vec(7, -1.0, 1.0);
    let t = tensor(&x, &shape);
    let a = Arr::from_f32(&x, &shape);
    let scale = tensor(&s, &[1, 9, 1, 1]);
    let shift = tensor(&b, &[7, 1]);
    let sa = Arr::from_f32(&s, &[1, 9, 1, 1]);
    let ba = Arr::from_f32(&b, &[7, 1]);
    let y = ok("affine", t.mul(&scale).and_then(|v| v.add(&shift)));
    let ya = a.mul(&sa).add(&ba);
    check("x * scale + shift", &y, &ya);
    for axes in [
        vec![0, 2, 3],
        vec![0, 2],
        vec![1, 3],
        vec![3],
        vec![0],
        vec![0, 1, 2, 3],
    ] {
        check_sum(&format!("sum over {axes:?}"), &y, &ya, &axes, true);
        check(
            &format!("max over {axes:?}"),
            &ok("max", y.max(&axes, false)),
            &ya.max(&axes, false),
        );
    }
    // Reduced through a permutation whose digits the body's view reuses.
    let p = ok("permute", y.permute(&[2, 0, 3, 1]));
    let pa = ya.permute(&[2, 0, 3, 1]);
    check_sum("permuted sum over [0, 1, 2]", &p, &pa, &[0, 1, 2], false);
    let am = read_i32("argmax", &ok("argmax", y.argmax(2, false)));
    let want: Vec<i32> = ya
        .arg(2, false, true)
        .data
        .iter()
        .map(|&v| v as i32)
        .collect();
    assert_eq!(am, want, "argmax over axis 2");
    // Long enough to be split over several workgroups per output.
    let long = [3, 7, 10001];
    let z = rng.vec(numel(&long), -1.0, 1.0);
    let za = Arr::from_f32(&z, &long);
    check_sum(
        "split sum over [1, 2]",
        &tensor(&z, &long),
        &za,
        &[1, 2],
        false,
    );
}

// ---- element-wise kernels that compute four elements per invocation --------------------

#[test]
fn large_elementwise_kernels_read_and_store_quads_through_views() {
    // Outputs of 2^18 elements or more, their counts multiples of 4, are
    // computed four consecutive elements per invocation on a CPU adapter,
    // and each input whose view keeps an aligned quad together is read a
    // vec4 at a time. Each case here keeps the quads together or breaks
    // them in another way; all must agree with the reference.
    let mut rng = Rng::named("quads");
    let shape = [64, 24, 14, 14];
    let n = numel(&shape);
    // A product's rows read back as NCHW: contiguous runs of 196, which
    // quads do not straddle.
    let m = rng.vec(n, -2.0, 2.0);
    let ma = Arr::from_f32(&m, &[24, 64, 14, 14]).permute(&[1, 0, 2, 3]);
    let v = ok(
        "nchw",
        tensor(&m, &[24, 64 * 196])
            .reshape(&[24, 64, 14, 14])
            .and_then(|t| t.permute(&[1, 0, 2, 3])),
    );
    let y = ok(
        "leaky * 2 + 1",
        v.leaky_relu(0.2)
            .and_then(|t| t.mul_scalar(2.0))
            .and_then(|t| t.add_scalar(1.0)),
    );
    let want = ma.map(|x| if x > 0.0 { x } else { 0.2 * x } * 2.0 + 1.0);
    check("runs of 196 in quads", &y, &want);
    // Runs of 49: a quad straddles two of them, so reads stay scalar.
    let m2 = rng.vec(128 * 64 * 49, -2.0, 2.0);
    let m2a = Arr::from_f32(&m2, &[128, 64, 7, 7]).permute(&[1, 0, 2, 3]);
    let v2 = ok(
        "runs of 49",
        tensor(&m2, &[128, 64 * 49])
            .reshape(&[128, 64, 7, 7])
            .and_then(|t| t.permute(&[1, 0, 2, 3]))
            .and_then(|t| t.mul_scalar(3.0)),
    );
    check("runs of 49", &v2, &m2a.map(|x| 3.0 * x));
    // A transpose: every element of a quad from another row.
    let t3 = ok(
        "transpose",
        tensor(&m, &[64, 4704])
            .transpose(0, 1)
            .and_then(|t| t.add_scalar(1.0)),
    );
    let t3a = Arr::from_f32(&m, &[64, 4704])
        .transpose(0, 1)
        .map(|x| x + 1.0);
    check("transposed", &t3, &t3a);
    // A mask over quads: NaN where the mask is 0 still gives 0.
    let x = rng.vec(n, -1.0, 1.0);
    let mut mask = rng.vec(n, -1.0, 1.0);
    let mut g = rng.vec(n, -3.0, 3.0);
    for i in (0..n).step_by(5) {
        mask[i] = 0.0;
        g[i] = f32::NAN;
    }
    let masked = ok("masked", tensor(&g, &shape).masked(&tensor(&mask, &shape)));
    let masked_want: Vec<f64> = g
        .iter()
        .zip(&mask)
        .map(|(&g, &m)| if m != 0.0 { g as f64 } else { 0.0 })
        .collect();
    check("masked quads", &masked, &Arr::new(&shape, masked_want));
    // Broadcasts: an image per sample over the channels (stride 0, which
    // keeps quads) and a per-channel scale (a uniform input).
    let b = rng.vec(64 * 196, -1.0, 1.0);
    let s = rng.vec(24, 0.5, 1.5);
    let y5 = ok(
        "broadcasts",
        tensor(&b, &[64, 1, 14, 14])
            .mul(&tensor(&s, &[1, 24, 1, 1]))
            .and_then(|t| t.add(&tensor(&x, &shape))),
    );
    let y5a = Arr::from_f32(&b, &[64, 1, 14, 14])
        .mul(&Arr::from_f32(&s, &[1, 24, 1, 1]))
        .add(&Arr::from_f32(&x, &shape));
    check("broadcasts", &y5, &y5a);
    // Narrowed views: channels from 4 keep quads (the offset is a multiple
    // of 4 elements); columns from 1 do not, nor a flat run from element 2
    // (contiguous, but each quad misaligned).
    let wide = [64, 32, 14, 14];
    let w = rng.vec(numel(&wide), -1.0, 1.0);
    let flat = [w.len()];
    for (what, shape, dim, start, len) in [
        ("channels 4..28", &wide[..], 1, 4, 24),
        ("columns 1..13", &wide[..], 3, 1, 12),
        ("elements 2..", &flat[..], 0, 2, w.len() - 4),
    ] {
        let doubled = ok(
            what,
            tensor(&w, shape)
                .narrow(dim, start, len)
                .and_then(|t| t.mul_scalar(2.0)),
        );
        let want = Arr::from_f32(&w, shape).narrow(dim, start, len);
        check(what, &doubled, &want.map(|x| 2.0 * x));
    }
    // Concatenations: along rows, each part's mask covers whole quads; along
    // columns of 6, the masks cut through quads.
    let parts: Vec<Vec<f32>> = (0..4).map(|_| rng.vec(784 * 96, -1.0, 1.0)).collect();
    let tensors: Vec<Tensor> = parts.iter().map(|p| tensor(p, &[784, 96])).collect();
    let refs: Vec<&Tensor> = tensors.iter().collect();
    let arrs: Vec<Arr> = parts.iter().map(|p| Arr::from_f32(p, &[784, 96])).collect();
    let arr_refs: Vec<&Arr> = arrs.iter().collect();
    let rows = ok(
        "concat rows",
        Tensor::concat(&refs, 0).and_then(|t| t.mul_scalar(2.0)),
    );
    check(
        "concat rows",
        &rows,
        &Arr::concat(&arr_refs, 0).map(|x| 2.0 * x),
    );
    let narrow_parts: Vec<Vec<f32>> = (0..2).map(|_| rng.vec(25000 * 6, -1.0, 1.0)).collect();
    let narrow_t: Vec<Tensor> = narrow_parts
        .iter()
        .map(|p| tensor(p, &[25000, 6]))
        .collect();
    let narrow_a: Vec<Arr> = narrow_parts
        .iter()
        .map(|p| Arr::from_f32(p, &[25000, 6]))
        .collect();
    let cols = ok(
        "concat columns",
        Tensor::concat(&[&narrow_t[0], &narrow_t[1]], 1).and_then(|t| t.mul_scalar(2.0)),
    );
    check(
        "concat columns",
        &cols,
        &Arr::concat(&[&narrow_a[0], &narrow_a[1]], 1).map(|x| 2.0 * x),
    );
    // Integers in quads.
    let ints = ok(
        "to i32",
        tensor(&x, &shape)
            .mul_scalar(10.0)
            .and_then(|t| t.to_dtype(DType::I32)),
    );
    let want: Vec<i32> = x.iter().map(|&v| (v * 10.0) as i32).collect();
    assert_eq!(read_i32("to i32", &ints), want, "to i32");
}

#[test]
fn large_elementwise_kernels_read_transposed_inputs_a_tile_column_at_a_time() {
    // Where an input lies transposed to the output, a CPU adapter may
    // compute 4x4 tiles (four quads in four consecutive rows) and read each
    // tile column of that input as one vec4: a transpose next to a
    // contiguous input does. A strided convolution's input gradient as its
    // four phases write it (row blocks of a channels-last [N * A * B, C]
    // concatenation) stays in quads, read into NCHW (the parts read under
    // guards) and into channels-last under an NCHW mask (where a quad's
    // parts are read inside the mask's guard, and each index computed
    // there must stay there).
    let mut rng = Rng::named("tiles");
    let (n, c, a, b) = (64, 32, 7, 7);
    let parts: Vec<Vec<f32>> = (0..4).map(|_| rng.vec(n * a * b * c, -1.0, 1.0)).collect();
    let tensors: Vec<Tensor> = parts.iter().map(|p| tensor(p, &[n * a * b, c])).collect();
    let refs: Vec<&Tensor> = tensors.iter().collect();
    let arrs: Vec<Arr> = parts
        .iter()
        .map(|p| Arr::from_f32(p, &[n * a * b, c]))
        .collect();
    let arr_refs: Vec<&Arr> = arrs.iter().collect();
    let interleave = [2, 5, 3, 0, 4, 1];
    let nchw = [n, c, 2 * a, 2 * b];
    let phases = ok(
        "phases",
        Tensor::concat(&refs, 0)
            .and_then(|t| t.reshape(&[2, 2, n, a, b, c]))
            .and_then(|t| t.permute(&interleave))
            .and_then(|t| t.reshape(&nchw)),
    );
    let phases_a = Arr::concat(&arr_refs, 0)
        .reshape(&[2, 2, n, a, b, c])
        .permute(&interleave)
        .reshape(&nchw);
    check(
        "phases into NCHW",
        &ok("x3", phases.mul_scalar(3.0)),
        &phases_a.map(|x| 3.0 * x),
    );
    let mask: Vec<f32> = rng
        .vec(numel(&nchw), -1.0, 1.0)
        .iter()
        .map(|&m| m.max(0.0))
        .collect();
    let masked = ok(
        "phases into channels-last, masked",
        phases
            .masked(&tensor(&mask, &nchw))
            .and_then(|t| t.permute(&[0, 2, 3, 1])),
    );
    let masked_a = phases_a
        .zip(
            &Arr::from_f32(&mask, &nchw),
            |x, m| if m != 0.0 { x } else { 0.0 },
        )
        .permute(&[0, 2, 3, 1]);
    check("phases into channels-last, masked", &masked, &masked_a);
    let x = rng.vec(numel(&nchw), -1.0, 1.0);
    let y = rng.vec(numel(&nchw), -1.0, 1.0);
    let last = [n, 2 * a, 2 * b, c];
    let sum = ok(
        "transposed plus contiguous",
        tensor(&x, &nchw)
            .permute(&[0, 2, 3, 1])
            .and_then(|t| t.add(&tensor(&y, &last))),
    );
    let sum_a = Arr::from_f32(&x, &nchw)
        .permute(&[0, 2, 3, 1])
        .add(&Arr::from_f32(&y, &last));
    check("transposed plus contiguous", &sum, &sum_a);
}

#[test]
fn sums_over_innermost_runs_of_four_read_them_a_vec4_at_a_time() {
    // On a CPU adapter a sum whose innermost reduced axes are the input's
    // innermost, over a multiple of 4 elements, reads four consecutive
    // elements per step: in one thread per output, a subgroup per output,
    // and split over several workgroups per output (each part starting on
    // a quad). An affine per-channel input and a permuted one ride along.
    let mut rng = Rng::named("reduce-quads");
    let shape = [6, 5, 14, 12];
    let x = rng.vec(numel(&shape), -2.0, 2.0);
    let s = rng.vec(5, 0.5, 1.5);
    let a = Arr::from_f32(&x, &shape);
    let sa = Arr::from_f32(&s, &[1, 5, 1, 1]);
    let y = ok("affine", tensor(&x, &shape).mul(&tensor(&s, &[1, 5, 1, 1])));
    let ya = a.mul(&sa);
    for axes in [
        vec![3],
        vec![2, 3],
        vec![0, 2, 3],
        vec![1, 2, 3],
        vec![0, 1, 2, 3],
    ] {
        check_sum(&format!("sum over {axes:?}"), &y, &ya, &axes, true);
    }
    let p = ok("permute", y.permute(&[0, 3, 2, 1]));
    let pa = ya.permute(&[0, 3, 2, 1]);
    check_sum("permuted sum over [2, 3]", &p, &pa, &[2, 3], false);
    // Batch-norm statistics of a product's rows read as NCHW: the reduced
    // (h, w) run over 49 elements, which a quad would straddle, so these
    // read element by element.
    let rows_nchw = rng.vec(5 * 8 * 49, -2.0, 2.0);
    let prod = Arr::from_f32(&rows_nchw, &[5, 8, 7, 7]).permute(&[1, 0, 2, 3]);
    let v = ok(
        "nchw view",
        tensor(&rows_nchw, &[5, 8 * 49])
            .reshape(&[5, 8, 7, 7])
            .and_then(|t| t.permute(&[1, 0, 2, 3])),
    );
    let mean = ok("mean", v.mean(&[0, 2, 3], true));
    let centred = ok("centred", v.sub(&mean).and_then(|d| d.mul(&d)));
    let mean_a = prod.mean(&[0, 2, 3], true);
    let centred_a = prod.sub(&mean_a).map(|d| d * d);
    check_sum("sum over [0, 2, 3] of a view", &v, &prod, &[0, 2, 3], true);
    check_sum("squared deviations", &centred, &centred_a, &[0, 2, 3], true);
    // Rows of 4 that are not quads of their input: a narrowed row (an odd
    // row stride, or an odd offset) and a transposed one. Small integers
    // sum exactly, so a misread element shows.
    let ints: Vec<f32> = (0..3000 * 5).map(|_| rng.index(9) as f32 - 4.0).collect();
    let ia = Arr::from_f32(&ints, &[3000, 5]);
    for start in [0, 1] {
        check_tol(
            &format!("narrowed rows from {start}"),
            &ok(
                "sum",
                tensor(&ints, &[3000, 5])
                    .narrow(1, start, 4)
                    .and_then(|t| t.sum(&[1], false)),
            ),
            &ia.narrow(1, start, 4).sum(&[1], false),
            0.0,
            0.0,
        );
    }
    let ta = Arr::from_f32(&ints[..12000], &[4, 3000]).transpose(0, 1);
    check_tol(
        "transposed rows",
        &ok(
            "sum",
            tensor(&ints[..12000], &[4, 3000])
                .transpose(0, 1)
                .and_then(|t| t.sum(&[1], false)),
        ),
        &ta.sum(&[1], false),
        0.0,
        0.0,
    );
    // A row read 4 elements apart, from an aligned start: not a quad.
    let strided = ok(
        "sum",
        tensor(&ints[..12000], &[750, 4, 4])
            .narrow(2, 0, 1)
            .and_then(|t| t.reshape(&[750, 4]))
            .and_then(|t| t.sum(&[1], false)),
    );
    let strided_a = Arr::from_f32(&ints[..12000], &[750, 4, 4])
        .narrow(2, 0, 1)
        .reshape(&[750, 4]);
    check_tol(
        "rows 4 apart",
        &strided,
        &strided_a.sum(&[1], false),
        0.0,
        0.0,
    );
    // Many short rows: one thread per output.
    let rows = rng.vec(3000 * 8, -1.0, 1.0);
    let ra = Arr::from_f32(&rows, &[3000, 8]);
    check_sum("rows of 8", &tensor(&rows, &[3000, 8]), &ra, &[1], false);
    // Long enough to split, in parts of a length that is not a multiple
    // of 4 before rounding. Small integers sum exactly in f32, so an
    // element read twice or missed at a part's edge cannot hide in the
    // rounding.
    let long = [3, 4, 40006];
    let z: Vec<f32> = (0..numel(&long))
        .map(|_| rng.index(5) as f32 - 2.0)
        .collect();
    let za = Arr::from_f32(&z, &long);
    check_tol(
        "split sum over [1, 2]",
        &ok("sum", tensor(&z, &long).sum(&[1, 2], false)),
        &za.sum(&[1, 2], false),
        0.0,
        0.0,
    );
}
