// Shared by the forward kernels that address the projection and the
// records as single floats: those bindings, a step's cell code and the
// records' slots. (`forward_pairs.wgsl` is the same in pairs of floats.)
@group(0) @binding(0) var<storage, read> projected: array<f32>; // [T, B, G*H]
@group(0) @binding(6) var<storage, read_write> rec: array<f32>; // [T + 1, B, R*H]

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

// Unit j of a real step (`cell_values`, by kind), from its recurrent
// products `a` (biases added).
fn cell_forward(a: array<f32, G>, here: u32, prev: u32, x: u32, j: u32) {
    var p: array<f32, G>;
    for (var q = 0u; q < G; q++) {
        p[q] = projected[x + q * H + j];
    }
    let v = cell_values(a, p, rec[prev + PREV * H + j]);
    for (var q = 0u; q < R; q++) {
        rec[here + q * H + j] = v[q];
    }
}

// Invocation lid's units of sequence b's initial-state slot.
fn initial_units(init: u32, b: u32, lid: u32) {
    for (var j = lid; j < H; j += WG) {
        initial_slot(init, b, j);
    }
}
