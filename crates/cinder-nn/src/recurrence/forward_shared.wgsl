// Shared by the forward kernels: the bindings whose element type does not
// change with the addressing (see `forward_common.wgsl` and
// `forward_pairs.wgsl` for the others), and the gate biases.
@group(0) @binding(1) var<storage, read> weight_t: array<f32>;  // [H, G*H]: W_hh transposed
@group(0) @binding(2) var<storage, read> bias: array<f32>;      // [G*H] or unread
@group(0) @binding(3) var<storage, read> h0: array<f32>;        // [B, H]
@group(0) @binding(4) var<storage, read> c0: array<f32>;        // [B, H] (LSTM) or unread
@group(0) @binding(5) var<storage, read> lengths: array<i32>;   // [B]
@group(0) @binding(7) var<storage, read> dims: array<u32>;      // B, T, reverse, has a bias

// The bias of gate block g, unit j: b_ih + b_hh (RNN, LSTM) or b_hh (GRU,
// whose b_hn sits inside the reset gate's product).
fn gate_bias(g: u32, j: u32) -> f32 {
    if (dims[3] == 1u) {
        return bias[g * H + j];
    }
    return 0.0;
}
