// Shared by the backward kernels that address their buffers in pairs of
// floats (u64s, `pairs.wgsl`), each invocation taking two neighbouring
// units: on a CPU adapter, where a buffer is read and written lane by
// lane, this halves the loads and stores. Offsets are counted in floats
// and are even (the widths are). The same as `backward_common.wgsl`
// otherwise.
@group(0) @binding(0) var<storage, read> grad: array<u64>;      // [T, B, S]: the op's state gradient
@group(0) @binding(1) var<storage, read> rec: array<u64>;       // [T + 1, B, R*H]
@group(0) @binding(2) var<storage, read> weight: array<f32>;    // [G*H, H]: W_hh
@group(0) @binding(3) var<storage, read> lengths: array<i32>;   // [B]
@group(0) @binding(4) var<storage, read_write> out: array<u64>; // [T, B, D*H], then [B, 2H]: dh, dc
@group(0) @binding(5) var<storage, read> dims: array<u32>;      // B, T, reverse

// Units 2 jp and 2 jp + 1 of a real step (see `cell_backward`).
fn cell_backward_pair(here: u32, prev: u32, g: u32, d: u32, carry: u32, jp: u32) {
    let j = 2u * jp;
    let dh = unpack(grad[(g + S - H + j) / 2u]) + unpack(out[(carry + j) / 2u]);
    var dc = vec2<f32>(0.0);
    if (S > H) {
        dc = unpack(grad[(g + j) / 2u]) + unpack(out[(carry + H + j) / 2u]);
    }
    var r0: array<f32, RB>;
    var r1: array<f32, RB>;
    for (var q = 0u; q < RB; q++) {
        let v = unpack(rec[(here + q * H + j) / 2u]);
        r0[q] = v.x;
        r1[q] = v.y;
    }
    let before = unpack(rec[(prev + PREV * H + j) / 2u]);
    let o0 = cell_grads(dh.x, dc.x, r0, before.x);
    let o1 = cell_grads(dh.y, dc.y, r1, before.y);
    for (var q = 0u; q < D; q++) {
        out[(d + q * H + j) / 2u] = pack(vec2<f32>(o0[q], o1[q]));
    }
    out[(carry + j) / 2u] = pack(vec2<f32>(o0[D], o1[D]));
    if (S > H) {
        out[(carry + H + j) / 2u] = pack(vec2<f32>(o0[D + 1u], o1[D + 1u]));
    }
}

// Units 2 jp and 2 jp + 1 of a step that copied the state.
fn pass_back_pair(g: u32, d: u32, carry: u32, jp: u32) {
    let j = 2u * jp;
    for (var q = 0u; q < D; q++) {
        out[(d + q * H + j) / 2u] = u64(0u);
    }
    let h = (carry + j) / 2u;
    out[h] = pack(unpack(out[h]) + unpack(grad[(g + S - H + j) / 2u]));
    if (S > H) {
        let c = (carry + H + j) / 2u;
        out[c] = pack(unpack(out[c]) + unpack(grad[(g + j) / 2u]));
    }
}

fn clear_carry(carry: u32, lid: u32) {
    for (var jp = lid; jp < H / 2u; jp += WG) {
        out[carry / 2u + jp] = u64(0u);
        out[(carry + H) / 2u + jp] = u64(0u);
    }
}

fn step_units(here: u32, prev: u32, g: u32, d: u32, carry: u32, lid: u32, real: bool) {
    if (real) {
        for (var jp = lid; jp < H / 2u; jp += WG) {
            cell_backward_pair(here, prev, g, d, carry, jp);
        }
    } else {
        for (var jp = lid; jp < H / 2u; jp += WG) {
            pass_back_pair(g, d, carry, jp);
        }
    }
}
