// Plain RNN (tanh, or relu where RELU is set): records [h]; the op's state
// [h]; d = the pre-activation gradient.

// The record before is not needed (block 0 is read and ignored).
const PREV: u32 = 0u;

fn activate(v: f32) -> f32 {
    if (RELU) {
        return max(v, 0.0);
    }
    return tanh_r(v);
}

// A step's record from its recurrent product `a` (bias added) and its
// input projection `p`.
fn cell_values(a: array<f32, G>, p: array<f32, G>, before: f32) -> array<f32, R> {
    return array<f32, R>(activate(p[0] + a[0]));
}
