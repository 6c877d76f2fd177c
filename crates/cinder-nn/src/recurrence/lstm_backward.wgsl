// LSTM: records [i, f, g, o, c, h]; the op's state [c, h]; d = the
// pre-activation gradients of i, f, g, o.

fn cell_backward(here: u32, prev: u32, g: u32, d: u32, carry: u32, j: u32) {
    let dh = grad[g + H + j] + out[carry + j];
    let dc = grad[g + j] + out[carry + H + j];
    let i = rec[here + j];
    let f = rec[here + H + j];
    let gg = rec[here + 2u * H + j];
    let o = rec[here + 3u * H + j];
    let tc = tanh_r(rec[here + 4u * H + j]);
    let dcs = dc + dh * o * (1.0 - tc * tc);
    out[d + j] = dcs * gg * i * (1.0 - i);
    out[d + H + j] = dcs * rec[prev + 4u * H + j] * f * (1.0 - f);
    out[d + 2u * H + j] = dcs * i * (1.0 - gg * gg);
    out[d + 3u * H + j] = dh * tc * o * (1.0 - o);
    out[carry + j] = 0.0;
    out[carry + H + j] = dcs * f;
}
