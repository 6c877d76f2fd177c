// Shared by the recurrence kernels (one invocation per batch row `b`
// (workgroup row) and hidden unit `j`).

fn sigmoid_r(x: f32) -> f32 {
    // Split by sign so that exp never overflows to inf/inf.
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

fn tanh_r(x: f32) -> f32 {
    // sign(x) (1 - e) / (1 + e) with e = exp(-2|x|): exact at large |x|.
    let e = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - e) / (1.0 + e);
}

const NONE: u32 = 0xffffffffu;
