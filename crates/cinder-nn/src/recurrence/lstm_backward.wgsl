// One LSTM step back through time. From the records' gradient at step t,
// the gradient the step after it handed back (`next`: its pre-activation
// gradients, already multiplied by W_hh into `rec_dh`, its cell gradient
// and the part of dh that skipped W_hh), writes
// [d_i, d_f, d_g, d_o (pre-activation), dc_{t-1}, dh_{t-1} skipping W_hh].
@group(0) @binding(0) var<storage, read> grad: array<f32>;    // [T, B, 2H]: c, h
@group(0) @binding(1) var<storage, read> records: array<f32>; // [T, B, 6H]
@group(0) @binding(2) var<storage, read> initial: array<f32>; // [B, 6H]
@group(0) @binding(3) var<storage, read> rec_dh: array<f32>;  // [B, H]
@group(0) @binding(4) var<storage, read> next: array<f32>;    // [B, 6H]
@group(0) @binding(5) var<storage, read> lengths: array<i32>; // [B]
@group(0) @binding(6) var<storage, read_write> d: array<f32>; // [B, 6H]
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
    let r = b * 6u * hidden + j;
    let s = t * batch * 6u * hidden + r;
    let gs = (t * batch + b) * 2u * hidden + j;
    let dh = grad[gs + hidden] + rec_dh[b * hidden + j] + next[r + 5u * hidden];
    let dc = grad[gs] + next[r + 4u * hidden];
    if (i32(t) >= lengths[b]) {
        // The step copied the state: its gradient passes straight back.
        d[r] = 0.0;
        d[r + hidden] = 0.0;
        d[r + 2u * hidden] = 0.0;
        d[r + 3u * hidden] = 0.0;
        d[r + 4u * hidden] = dc;
        d[r + 5u * hidden] = dh;
        return;
    }
    var c_prev: f32;
    if (t_prev == NONE) {
        c_prev = initial[r + 4u * hidden];
    } else {
        c_prev = records[t_prev * batch * 6u * hidden + r + 4u * hidden];
    }
    let i = records[s];
    let f = records[s + hidden];
    let g = records[s + 2u * hidden];
    let o = records[s + 3u * hidden];
    let tc = tanh_r(records[s + 4u * hidden]);
    let dcs = dc + dh * o * (1.0 - tc * tc);
    d[r] = dcs * g * i * (1.0 - i);
    d[r + hidden] = dcs * c_prev * f * (1.0 - f);
    d[r + 2u * hidden] = dcs * i * (1.0 - g * g);
    d[r + 3u * hidden] = dh * tc * o * (1.0 - o);
    d[r + 4u * hidden] = dcs * f;
    d[r + 5u * hidden] = 0.0;
}
