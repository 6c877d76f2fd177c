// GRU: records [r, z, n, hn, h] (hn = W_hn h + b_hn, which the reset gate
// scales); the op's state [h]; d = [d r, d z (pre-activation), d hn,
// d n (pre-activation)]: the recurrent side's three blocks, then the
// input side's n.

// The block of the record before that a step reads (its hidden state).
const PREV: u32 = 4u;

// A step's record from its recurrent products `a` (biases added), its
// input projections `p` and the hidden state before it.
fn cell_values(a: array<f32, G>, p: array<f32, G>, before: f32) -> array<f32, R> {
    let r = sigmoid_r(p[0] + a[0]);
    let z = sigmoid_r(p[1] + a[1]);
    let hn = a[2];
    let n = tanh_r(p[2] + r * hn);
    return array<f32, R>(r, z, n, hn, n + z * (before - n));
}
