// Shared by the backward kernels that address their buffers as single
// floats: their bindings, a step's cell code and the step past a
// sequence's end. (`backward_pairs.wgsl` is the same in pairs of floats.)
@group(0) @binding(0) var<storage, read> grad: array<f32>;      // [T, B, S]: the op's state gradient
@group(0) @binding(1) var<storage, read> rec: array<f32>;       // [T + 1, B, R*H]
@group(0) @binding(2) var<storage, read> weight: array<f32>;    // [G*H, H]: W_hh
@group(0) @binding(3) var<storage, read> lengths: array<i32>;   // [B]
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [T, B, D*H], then [B, 2H]: dh, dc
@group(0) @binding(5) var<storage, read> dims: array<u32>;      // B, T, reverse

// Unit j of a real step: its gradients (`cell_grads`, by kind) from the
// state's and the records, into d and the state gradients carried back.
fn cell_backward(here: u32, prev: u32, g: u32, d: u32, carry: u32, j: u32) {
    let dh = grad[g + S - H + j] + out[carry + j];
    var dc = 0.0;
    if (S > H) {
        dc = grad[g + j] + out[carry + H + j];
    }
    var r: array<f32, RB>;
    for (var q = 0u; q < RB; q++) {
        r[q] = rec[here + q * H + j];
    }
    let o = cell_grads(dh, dc, r, rec[prev + PREV * H + j]);
    for (var q = 0u; q < D; q++) {
        out[d + q * H + j] = o[q];
    }
    out[carry + j] = o[D];
    if (S > H) {
        out[carry + H + j] = o[D + 1u];
    }
}

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

// Invocation lid's units of a sequence's state gradients, zeroed before
// the last step.
fn clear_carry(carry: u32, lid: u32) {
    for (var j = lid; j < H; j += WG) {
        out[carry + j] = 0.0;
        out[carry + H + j] = 0.0;
    }
}

// Invocation lid's units of one step of one sequence.
fn step_units(here: u32, prev: u32, g: u32, d: u32, carry: u32, lid: u32, real: bool) {
    if (real) {
        for (var j = lid; j < H; j += WG) {
            cell_backward(here, prev, g, d, carry, j);
        }
    } else {
        for (var j = lid; j < H; j += WG) {
            pass_back(g, d, carry, j);
        }
    }
}
