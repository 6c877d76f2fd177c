// Plain RNN (tanh, or relu where RELU is set): records [h]; the op's state
// [h]; d = the pre-activation gradient.

// The activation's derivative from its output.
fn slope(h: f32) -> f32 {
    if (RELU) {
        return select(0.0, 1.0, h > 0.0);
    }
    return 1.0 - h * h;
}

fn cell_backward(here: u32, prev: u32, g: u32, d: u32, carry: u32, j: u32) {
    let dh = grad[g + j] + out[carry + j];
    out[d + j] = dh * slope(rec[here + j]);
    out[carry + j] = 0.0;
}
