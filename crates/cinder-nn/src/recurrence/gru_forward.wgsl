// GRU: records [r, z, n, hn, h] (hn = W_hn h + b_hn, which the reset gate
// scales); the op's state [h]; d = [d r, d z (pre-activation), d hn,
// d n (pre-activation)]: the recurrent side's three blocks, then the
// input side's n.

fn cell_forward(a: array<f32, G>, here: u32, prev: u32, x: u32, j: u32) {
    let r = sigmoid_r(projected[x + j] + a[0]);
    let z = sigmoid_r(projected[x + H + j] + a[1]);
    let hn = a[2];
    let n = tanh_r(projected[x + 2u * H + j] + r * hn);
    rec[here + j] = r;
    rec[here + H + j] = z;
    rec[here + 2u * H + j] = n;
    rec[here + 3u * H + j] = hn;
    rec[here + 4u * H + j] = n + z * (rec[prev + 4u * H + j] - n);
}
