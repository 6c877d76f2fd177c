// GRU: records [r, z, n, hn, h] (hn = W_hn h + b_hn, which the reset gate
// scales); the op's state [h]; d = [d r, d z (pre-activation), d hn,
// d n (pre-activation)]: the recurrent side's three blocks, then the
// input side's n.

// Record blocks the step's gradients read (r, z, n, hn), and the block of
// the record before (its hidden state).
const RB: u32 = 4u;
const PREV: u32 = 4u;

// d, then the state gradient carried back (dh; no cell), from the state's
// gradient, the step's record and the hidden state before it.
fn cell_grads(dh: f32, dc: f32, r: array<f32, RB>, before: f32) -> array<f32, DC> {
    let rr = r[0];
    let z = r[1];
    let n = r[2];
    let hn = r[3];
    let d_an = dh * (1.0 - z) * (1.0 - n * n);
    return array<f32, DC>(
        d_an * hn * rr * (1.0 - rr),
        dh * (before - n) * z * (1.0 - z),
        d_an * rr,
        d_an,
        dh * z,
        0.0,
    );
}
