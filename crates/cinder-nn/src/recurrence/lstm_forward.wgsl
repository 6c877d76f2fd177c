// LSTM: records [i, f, g, o, c, h]; the op's state [c, h]; d = the
// pre-activation gradients of i, f, g, o.

fn cell_forward(a: array<f32, G>, here: u32, prev: u32, x: u32, j: u32) {
    let i = sigmoid_r(projected[x + j] + a[0]);
    let f = sigmoid_r(projected[x + H + j] + a[1]);
    let g = tanh_r(projected[x + 2u * H + j] + a[2]);
    let o = sigmoid_r(projected[x + 3u * H + j] + a[3]);
    let c = f * rec[prev + 4u * H + j] + i * g;
    rec[here + j] = i;
    rec[here + H + j] = f;
    rec[here + 2u * H + j] = g;
    rec[here + 3u * H + j] = o;
    rec[here + 4u * H + j] = c;
    rec[here + 5u * H + j] = o * tanh_r(c);
}
