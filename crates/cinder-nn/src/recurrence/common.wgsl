// Shared by the recurrence kernels. A workgroup runs one sequence (batch
// row `b`, its workgroup id) through every time step; invocation `lid`
// computes hidden units lid, lid + WG, ... (the resident kernels: several
// sequences per workgroup, and in pairs units 2 lid and 2 lid + 1). The
// constants before this file
// (H, G, R, STATE_FROM, HB, S, D, WG) come from the kernel's Rust side.

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

// The time step visited `k`-th and the record slot of the state before it
// (slot `steps` holds the initial state).
fn visited(k: u32, steps: u32, reverse: bool) -> vec2<u32> {
    let t = select(k, steps - 1u - k, reverse);
    let before = select(select(t - 1u, t + 1u, reverse), steps, k == 0u);
    return vec2<u32>(t, before);
}
