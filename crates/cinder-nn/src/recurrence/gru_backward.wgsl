// One GRU step back through time. From the records' gradient at step t and
// what the step after it handed back (`rec_dh`: its recurrent
// pre-activation gradients times W_hh; `next`: the part of dh that skipped
// W_hh), writes [d_r, d_z, d_hn (the recurrent pre-activations), d_n (the
// input's), dh_{t-1} skipping W_hh].
@group(0) @binding(0) var<storage, read> grad: array<f32>;    // [T, B, H]: h
@group(0) @binding(1) var<storage, read> records: array<f32>; // [T, B, 5H]
@group(0) @binding(2) var<storage, read> initial: array<f32>; // [B, 5H]
@group(0) @binding(3) var<storage, read> rec_dh: array<f32>;  // [B, H]
@group(0) @binding(4) var<storage, read> next: array<f32>;    // [B, 5H]
@group(0) @binding(5) var<storage, read> lengths: array<i32>; // [B]
@group(0) @binding(6) var<storage, read_write> d: array<f32>; // [B, 5H]
@group(0) @binding(7) var<storage, read> dims: array<u32>;    // B, H, t, t_prev (NONE: initial)

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let batch = dims[0];
    let hidden = dims[1];
    let t = dims[2];
    let t_prev = dims[3];
    // A row of workgroups per batch row: the length test is the same for
    // the whole workgroup, and no invocation divides.
    let b = wid.y;
    let j = wid.x * 64u + lid;
    if (j >= hidden) { return; }
    let r = b * 5u * hidden + j;
    let s = t * batch * 5u * hidden + r;
    let dh = grad[(t * batch + b) * hidden + j] + rec_dh[b * hidden + j] + next[r + 4u * hidden];
    if (i32(t) >= lengths[b]) {
        d[r] = 0.0;
        d[r + hidden] = 0.0;
        d[r + 2u * hidden] = 0.0;
        d[r + 3u * hidden] = 0.0;
        d[r + 4u * hidden] = dh;
        return;
    }
    var h_prev: f32;
    if (t_prev == NONE) {
        h_prev = initial[r + 4u * hidden];
    } else {
        h_prev = records[t_prev * batch * 5u * hidden + r + 4u * hidden];
    }
    let rr = records[s];
    let z = records[s + hidden];
    let n = records[s + 2u * hidden];
    let hn = records[s + 3u * hidden];
    let d_an = dh * (1.0 - z) * (1.0 - n * n);
    d[r] = d_an * hn * rr * (1.0 - rr);
    d[r + hidden] = dh * (h_prev - n) * z * (1.0 - z);
    d[r + 2u * hidden] = d_an * rr;
    d[r + 3u * hidden] = d_an;
    d[r + 4u * hidden] = dh * z;
}
