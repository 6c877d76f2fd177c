// Shared by both backward kernels: their bindings and the step past a
// sequence's end.
@group(0) @binding(0) var<storage, read> grad: array<f32>;      // [T, B, S]: the op's state gradient
@group(0) @binding(1) var<storage, read> rec: array<f32>;       // [T + 1, B, R*H]
@group(0) @binding(2) var<storage, read> weight: array<f32>;    // [G*H, H]: W_hh
@group(0) @binding(3) var<storage, read> lengths: array<i32>;   // [B]
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [T, B, D*H], then [B, 2H]: dh, dc
@group(0) @binding(5) var<storage, read> dims: array<u32>;      // B, T, reverse

// Unit j of a step that copied the state: its gradient passes straight
// back.
fn pass_back(g: u32, d: u32, carry: u32, j: u32) {
    for (var q = 0u; q < D; q++) {
        out[d + q * H + j] = 0.0;
    }
    out[carry + j] += grad[g + S - H + j];
    if (S > H) {
        out[carry + H + j] += grad[g + j];
    }
}
