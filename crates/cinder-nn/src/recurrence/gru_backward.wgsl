// GRU: records [r, z, n, hn, h] (hn = W_hn h + b_hn, which the reset gate
// scales); the op's state [h]; d = [d r, d z (pre-activation), d hn,
// d n (pre-activation)]: the recurrent side's three blocks, then the
// input side's n.

fn cell_backward(here: u32, prev: u32, g: u32, d: u32, carry: u32, j: u32) {
    let dh = grad[g + j] + out[carry + j];
    let r = rec[here + j];
    let z = rec[here + H + j];
    let n = rec[here + 2u * H + j];
    let hn = rec[here + 3u * H + j];
    let d_an = dh * (1.0 - z) * (1.0 - n * n);
    out[d + j] = d_an * hn * r * (1.0 - r);
    out[d + H + j] = dh * (rec[prev + 4u * H + j] - n) * z * (1.0 - z);
    out[d + 2u * H + j] = d_an * r;
    out[d + 3u * H + j] = d_an;
    out[carry + j] = dh * z;
}
