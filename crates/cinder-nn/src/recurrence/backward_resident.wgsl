// A whole sequence backward in one dispatch for CPU adapters (see
// `forward_resident.wgsl`): each invocation keeps its units' columns of
// W_hh in private memory, a workgroup runs `dims[3]` sequences, and
// `carry_rows` (made by the Rust side) adds `d W_hh` for its units to RR of
// them at a time, `d` loaded eight values at a time and broadcast across
// the subgroup.

var<private> wc: array<f32, U * GH8>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let batch = dims[0];
    let steps = dims[1];
    let reverse = dims[2] == 1u;
    let rows = dims[3];
    // One flat loop (see forward_resident.wgsl).
    for (var m = 0u; m < U * GH8; m++) {
        let q = m % GH8;
        let j = (m / GH8) * WG + lid;
        var v = 0.0;
        if (j < H && q < G * H) {
            v = weight[q * H + j];
        }
        wc[m] = v;
    }
    let first = wid.x * rows;
    let end = min(first + rows, batch);
    for (var b = first; b < end; b++) {
        let carry = steps * batch * D * H + b * 2u * H;
        for (var j = lid; j < H; j += WG) {
            out[carry + j] = 0.0;
            out[carry + H + j] = 0.0;
        }
    }
    for (var n = 0u; n < steps; n++) {
        let tb = visited(steps - 1u - n, steps, reverse);
        for (var b = first; b < end; b++) {
            let here = (tb.x * batch + b) * R * H;
            let prev = (tb.y * batch + b) * R * H;
            let d = (tb.x * batch + b) * D * H;
            let g = (tb.x * batch + b) * S;
            let carry = steps * batch * D * H + b * 2u * H;
            if (i32(tb.x) < lengths[b]) {
                for (var j = lid; j < H; j += WG) {
                    cell_backward(here, prev, g, d, carry, j);
                }
            } else {
                for (var j = lid; j < H; j += WG) {
                    pass_back(g, d, carry, j);
                }
            }
        }
        storageBarrier();
        for (var b = first; b < end; b += RR) {
            carry_rows(b, end, tb.x, lid, lane % 8u);
        }
    }
}
