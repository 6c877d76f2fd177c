// LSTM: records [i, f, g, o, c, h]; the op's state [c, h]; d = the
// pre-activation gradients of i, f, g, o.

// Record blocks the step's gradients read (i, f, g, o, c), and the block
// of the record before (its cell).
const RB: u32 = 5u;
const PREV: u32 = 4u;

// d for i, f, g, o, then the state gradients carried back (dh, dc), from
// the state's gradients, the step's record and the cell before it.
fn cell_grads(dh: f32, dc: f32, r: array<f32, RB>, before: f32) -> array<f32, DC> {
    let i = r[0];
    let f = r[1];
    let gg = r[2];
    let o = r[3];
    let tc = tanh_r(r[4]);
    let dcs = dc + dh * o * (1.0 - tc * tc);
    return array<f32, DC>(
        dcs * gg * i * (1.0 - i),
        dcs * before * f * (1.0 - f),
        dcs * i * (1.0 - gg * gg),
        dh * tc * o * (1.0 - o),
        0.0,
        dcs * f,
    );
}
