// Shared by the recurrence kernels (one invocation per batch row and
// hidden unit, `k = b * H + j`).

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

fn unit(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

const NONE: u32 = 0xffffffffu;
