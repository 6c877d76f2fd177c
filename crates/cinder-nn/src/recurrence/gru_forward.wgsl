// One GRU step from `projected[t]` (x W_ih^T + b_ih) and `hh` (h W_hh^T +
// b_hh): r, z, n = tanh(x_n + r * hh_n) and h' = n + z (h - n), written as
// the step's record [r, z, n, hh_n, h']. Past a sequence's end the record
// keeps the previous state.
@group(0) @binding(0) var<storage, read> hh: array<f32>;        // [B, 3H]
@group(0) @binding(1) var<storage, read> projected: array<f32>; // [T, B, 3H]
@group(0) @binding(2) var<storage, read> prev: array<f32>;      // [B, 5H]
@group(0) @binding(3) var<storage, read> lengths: array<i32>;   // [B]
@group(0) @binding(4) var<storage, read_write> rec: array<f32>; // [B, 5H]
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
    let r = b * 5u * hidden + j;
    let h_prev = prev[r + 4u * hidden];
    if (i32(t) >= lengths[b]) {
        rec[r] = 0.0;
        rec[r + hidden] = 0.0;
        rec[r + 2u * hidden] = 0.0;
        rec[r + 3u * hidden] = 0.0;
        rec[r + 4u * hidden] = h_prev;
        return;
    }
    let q = b * 3u * hidden + j;
    let x = (t * batch + b) * 3u * hidden + j;
    let rr = sigmoid_r(projected[x] + hh[q]);
    let z = sigmoid_r(projected[x + hidden] + hh[q + hidden]);
    let hn = hh[q + 2u * hidden];
    let n = tanh_r(projected[x + 2u * hidden] + rr * hn);
    rec[r] = rr;
    rec[r + hidden] = z;
    rec[r + 2u * hidden] = n;
    rec[r + 3u * hidden] = hn;
    rec[r + 4u * hidden] = n + z * (h_prev - n);
}
