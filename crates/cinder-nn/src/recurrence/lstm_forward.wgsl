// One LSTM step: the gates from `projected[t] + h W_hh^T`, the cell and the
// hidden state, written as the step's record [i, f, g, o, c, h]. Past a
// sequence's end the record keeps the previous state.
@group(0) @binding(0) var<storage, read> hh: array<f32>;        // [B, 4H]
@group(0) @binding(1) var<storage, read> projected: array<f32>; // [T, B, 4H]
@group(0) @binding(2) var<storage, read> prev: array<f32>;      // [B, 6H]
@group(0) @binding(3) var<storage, read> lengths: array<i32>;   // [B]
@group(0) @binding(4) var<storage, read_write> rec: array<f32>; // [B, 6H]
@group(0) @binding(5) var<storage, read> dims: array<u32>;      // B, H, t

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let batch = dims[0];
    let hidden = dims[1];
    let t = dims[2];
    // A row of workgroups per batch row: the length test is the same for
    // the whole workgroup, and no invocation divides.
    let b = wid.y;
    let j = wid.x * 64u + lid;
    if (j >= hidden) { return; }
    let r = b * 6u * hidden + j;
    let c_prev = prev[r + 4u * hidden];
    let h_prev = prev[r + 5u * hidden];
    if (i32(t) >= lengths[b]) {
        rec[r] = 0.0;
        rec[r + hidden] = 0.0;
        rec[r + 2u * hidden] = 0.0;
        rec[r + 3u * hidden] = 0.0;
        rec[r + 4u * hidden] = c_prev;
        rec[r + 5u * hidden] = h_prev;
        return;
    }
    let q = b * 4u * hidden + j;
    let x = (t * batch + b) * 4u * hidden + j;
    let i = sigmoid_r(projected[x] + hh[q]);
    let f = sigmoid_r(projected[x + hidden] + hh[q + hidden]);
    let g = tanh_r(projected[x + 2u * hidden] + hh[q + 2u * hidden]);
    let o = sigmoid_r(projected[x + 3u * hidden] + hh[q + 3u * hidden]);
    let c = f * c_prev + i * g;
    rec[r] = i;
    rec[r + hidden] = f;
    rec[r + 2u * hidden] = g;
    rec[r + 3u * hidden] = o;
    rec[r + 4u * hidden] = c;
    rec[r + 5u * hidden] = o * tanh_r(c);
}
