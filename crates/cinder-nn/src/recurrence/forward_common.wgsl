// Shared by both forward kernels: their bindings and the records' slots.
@group(0) @binding(0) var<storage, read> projected: array<f32>; // [T, B, G*H]
@group(0) @binding(1) var<storage, read> weight_t: array<f32>;  // [H, G*H]: W_hh transposed
@group(0) @binding(2) var<storage, read> bias: array<f32>;      // [G*H] or unread
@group(0) @binding(3) var<storage, read> h0: array<f32>;        // [B, H]
@group(0) @binding(4) var<storage, read> c0: array<f32>;        // [B, H] (LSTM) or unread
@group(0) @binding(5) var<storage, read> lengths: array<i32>;   // [B]
@group(0) @binding(6) var<storage, read_write> rec: array<f32>; // [T + 1, B, R*H]
@group(0) @binding(7) var<storage, read> dims: array<u32>;      // B, T, reverse, has a bias

// The bias of gate block g, unit j: b_ih + b_hh (RNN, LSTM) or b_hh (GRU,
// whose b_hn sits inside the reset gate's product).
fn gate_bias(g: u32, j: u32) -> f32 {
    if (dims[3] == 1u) {
        return bias[g * H + j];
    }
    return 0.0;
}

// Unit j of sequence b's initial-state slot at `init`: zero gates, then
// the state blocks.
fn initial_slot(init: u32, b: u32, j: u32) {
    if (dims[0] == 0u) {
        // Never runs: every input must be read to be bound.
        rec[0] = bias[0] + c0[0];
    }
    for (var k = 0u; k < STATE_FROM; k++) {
        rec[init + k * H + j] = 0.0;
    }
    if (HB > STATE_FROM) {
        rec[init + STATE_FROM * H + j] = c0[b * H + j];
    }
    rec[init + HB * H + j] = h0[b * H + j];
}

// Unit j of a step past the sequence's end: no gates, the state kept.
fn carry_slot(here: u32, prev: u32, j: u32) {
    for (var q = 0u; q < R; q++) {
        rec[here + q * H + j] = select(0.0, rec[prev + q * H + j], q >= STATE_FROM);
    }
}
