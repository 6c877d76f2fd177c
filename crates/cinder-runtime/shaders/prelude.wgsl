// Helpers shared by every generated kernel (element-wise, reduce). Unused ones
// cost nothing: the shader compiler drops them.

fn sigmoid_f(x: f32) -> f32 {
    // Split by sign so that exp never overflows to inf/inf.
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

fn tanh_f(x: f32) -> f32 {
    // tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|): exact at large |x|,
    // where the textbook formula gives inf/inf.
    let e = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - e) / (1.0 + e);
}

fn log1p_f(x: f32) -> f32 {
    // log(1 + x) without losing x to the rounding of 1 + x.
    if (abs(x) < 0.25) {
        // 2 atanh(s) with s = x / (2 + x), |s| < 1/7: the odd series to s^11
        // (truncation 5e-11 relative). Near 1 GPU logs may have absolute,
        // not relative, error bounds (Vulkan allows 2^-21), and a compiler
        // may fold (1 + x) - 1 to x, either of which would spoil the
        // log(u) * x / (u - 1) correction below for small x.
        let s = x / (2.0 + x);
        let s2 = s * s;
        let p = 1.0 + s2 * (0.33333333333 + s2 * (0.2 + s2 * (0.14285714286 + s2 * (0.11111111111 + s2 * 0.09090909091))));
        return 2.0 * s * p;
    }
    // Goldberg's correction: log(u) * x / (u - 1) undoes the rounding of
    // u = 1 + x (inf stays inf rather than inf / inf).
    let u = 1.0 + x;
    if (u > 3.4028234663852886e38) {
        return u;
    }
    return log(u) * x / (u - 1.0);
}

fn erf_f(x: f32) -> f32 {
    // Abramowitz & Stegun 7.1.26 has 1.5e-7 absolute error, below f32 resolution
    // of the result's typical magnitude; evaluated on |x| and mirrored.
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a);
    return sign(x) * y;
}

fn gelu_f(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_f(x * 0.70710678118654752));
}

fn gelu_grad_f(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf_f(x * 0.70710678118654752));
    let pdf = 0.39894228040143268 * exp(-0.5 * x * x);
    return cdf + x * pdf;
}

fn pow_f(a: f32, b: f32) -> f32 {
    // WGSL's pow is undefined for a < 0 and gives NaN for 0^0; PyTorch defines both.
    if (b == 0.0) {
        return 1.0;
    }
    let odd_integer = floor(b) == b && abs(b) < 16777216.0 && (i32(b) & 1) == 1;
    if (a == 0.0 && b < 0.0) {
        // 0^-n is inf, carrying the zero's sign for odd integer n.
        let negative_zero = (bitcast<u32>(a) & 0x80000000u) != 0u;
        if (negative_zero && odd_integer) {
            return bitcast<f32>(0xff800000u);
        }
        return bitcast<f32>(0x7f800000u);
    }
    let r = pow(abs(a), b);
    if (a < 0.0) {
        if (floor(b) != b) {
            return bitcast<f32>(0x7fc00000u);
        }
        if (abs(b) < 16777216.0 && (i32(b) & 1) == 1) {
            return -r;
        }
    }
    return r;
}

fn is_nan_f(x: f32) -> bool {
    // On the bits: float comparisons compile to ordered ones, so `x != x` is
    // false even for NaN.
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn max_f(a: f32, b: f32) -> f32 {
    // PyTorch's maximum propagates NaN.
    if (is_nan_f(a) || is_nan_f(b)) {
        return a + b;
    }
    return max(a, b);
}

fn min_f(a: f32, b: f32) -> f32 {
    if (is_nan_f(a) || is_nan_f(b)) {
        return a + b;
    }
    return min(a, b);
}

fn hash_u32(x: u32) -> u32 {
    // "lowbias32" integer hash (Chris Wellons): full avalanche in two multiplies.
    var h = x;
    h = h ^ (h >> 16u);
    h = h * 0x7feb352du;
    h = h ^ (h >> 15u);
    h = h * 0x846ca68bu;
    h = h ^ (h >> 16u);
    return h;
}

fn rand_bits(i: u32, seed_lo: u32, seed_hi: u32, stream: u32) -> u32 {
    let k = hash_u32(seed_lo ^ hash_u32(seed_hi ^ (stream * 0x9e3779b9u)));
    return hash_u32(hash_u32(i ^ k) + k);
}

fn rand_uniform(i: u32, seed_lo: u32, seed_hi: u32) -> f32 {
    // 24 random bits give every float in [0, 1) on a 2^-24 grid.
    return f32(rand_bits(i, seed_lo, seed_hi, 0u) >> 8u) * 5.9604644775390625e-8;
}

fn rand_normal(i: u32, seed_lo: u32, seed_hi: u32) -> f32 {
    // Box-Muller; u1 is in (0, 1] so the log is finite.
    let u1 = (f32(rand_bits(i, seed_lo, seed_hi, 1u) >> 8u) + 1.0) * 5.9604644775390625e-8;
    let u2 = f32(rand_bits(i, seed_lo, seed_hi, 2u) >> 8u) * 5.9604644775390625e-8;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
