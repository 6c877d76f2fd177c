// Plain RNN (tanh, or relu where RELU is set): records [h]; the op's state
// [h]; d = the pre-activation gradient.

// Record blocks the step's gradient reads (h); the record before is not
// needed (block 0 is read and ignored).
const RB: u32 = 1u;
const PREV: u32 = 0u;

// The activation's derivative from its output.
fn slope(h: f32) -> f32 {
    if (RELU) {
        return select(0.0, 1.0, h > 0.0);
    }
    return 1.0 - h * h;
}

// d, then the state gradient carried back (none: it all flows through d).
fn cell_grads(dh: f32, dc: f32, r: array<f32, RB>, before: f32) -> array<f32, DC> {
    return array<f32, DC>(dh * slope(r[0]), 0.0, 0.0);
}
