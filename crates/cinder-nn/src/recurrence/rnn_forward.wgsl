// Plain RNN (tanh, or relu where RELU is set): records [h]; the op's state
// [h]; d = the pre-activation gradient.

fn activate(v: f32) -> f32 {
    if (RELU) {
        return max(v, 0.0);
    }
    return tanh_r(v);
}

fn cell_forward(a: array<f32, G>, here: u32, prev: u32, x: u32, j: u32) {
    rec[here + j] = activate(projected[x + j] + a[0]);
}
