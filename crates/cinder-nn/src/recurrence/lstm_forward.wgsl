// LSTM: records [i, f, g, o, c, h]; the op's state [c, h]; d = the
// pre-activation gradients of i, f, g, o.

// The block of the record before that a step reads (its cell).
const PREV: u32 = 4u;

// A step's record from its recurrent products `a` (biases added), its
// input projections `p` and the cell before it.
fn cell_values(a: array<f32, G>, p: array<f32, G>, before: f32) -> array<f32, R> {
    let i = sigmoid_r(p[0] + a[0]);
    let f = sigmoid_r(p[1] + a[1]);
    let g = tanh_r(p[2] + a[2]);
    let o = sigmoid_r(p[3] + a[3]);
    let c = f * before + i * g;
    return array<f32, R>(i, f, g, o, c, o * tanh_r(c));
}
