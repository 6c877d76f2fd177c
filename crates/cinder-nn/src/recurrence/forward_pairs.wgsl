// Shared by the forward kernels that address the projection and the
// records in pairs of floats (u64s: see `backward_pairs.wgsl`), each
// invocation taking two neighbouring units. Offsets are counted in floats
// and are even. The same as `forward_common.wgsl` otherwise.
@group(0) @binding(0) var<storage, read> projected: array<u64>; // [T, B, G*H]
@group(0) @binding(6) var<storage, read_write> rec: array<u64>; // [T + 1, B, R*H]

// Units 2 jp and 2 jp + 1 of sequence b's initial-state slot.
fn initial_pair(init: u32, b: u32, jp: u32) {
    let j = 2u * jp;
    if (dims[0] == 0u) {
        // Never runs: every input must be read to be bound.
        rec[0] = pack(vec2<f32>(bias[0] + c0[0], 0.0));
    }
    for (var k = 0u; k < STATE_FROM; k++) {
        rec[(init + k * H + j) / 2u] = u64(0u);
    }
    if (HB > STATE_FROM) {
        rec[(init + STATE_FROM * H + j) / 2u] = pack(vec2<f32>(c0[b * H + j], c0[b * H + j + 1u]));
    }
    rec[(init + HB * H + j) / 2u] = pack(vec2<f32>(h0[b * H + j], h0[b * H + j + 1u]));
}

// Units 2 jp and 2 jp + 1 of a step past the sequence's end.
fn carry_pair(here: u32, prev: u32, jp: u32) {
    let j = 2u * jp;
    for (var q = 0u; q < R; q++) {
        rec[(here + q * H + j) / 2u] = select(u64(0u), rec[(prev + q * H + j) / 2u], q >= STATE_FROM);
    }
}

// Units 2 jp and 2 jp + 1 of a real step, from their recurrent products
// `a0` and `a1` (biases added).
fn cell_forward_pair(a0: array<f32, G>, a1: array<f32, G>, here: u32, prev: u32, x: u32, jp: u32) {
    let j = 2u * jp;
    var p0: array<f32, G>;
    var p1: array<f32, G>;
    for (var q = 0u; q < G; q++) {
        let v = unpack(projected[(x + q * H + j) / 2u]);
        p0[q] = v.x;
        p1[q] = v.y;
    }
    let before = unpack(rec[(prev + PREV * H + j) / 2u]);
    let v0 = cell_values(a0, p0, before.x);
    let v1 = cell_values(a1, p1, before.y);
    for (var q = 0u; q < R; q++) {
        rec[(here + q * H + j) / 2u] = pack(vec2<f32>(v0[q], v1[q]));
    }
}

fn initial_units(init: u32, b: u32, lid: u32) {
    for (var jp = lid; jp < H / 2u; jp += WG) {
        initial_pair(init, b, jp);
    }
}
