// A whole sequence forward in one dispatch, one workgroup per sequence: at
// each step every invocation computes its units' gates from the projected
// input and the previous hidden state (read from the previous step's
// record), writes the step's record, and the workgroup waits at a storage
// barrier before the next step reads it. Past a sequence's end the record
// keeps the state. Lanes read consecutive weights, which suits a GPU's
// caches; `forward_resident.wgsl` is the CPU adapters' kernel.

// `h W_hh^T` for unit j of each gate block, h from the record at `prev`.
fn recurrent(prev: u32, j: u32) -> array<f32, G> {
    var acc: array<f32, G>;
    let h = prev + HB * H;
    for (var i = 0u; i < H; i++) {
        let hv = rec[h + i];
        let w = i * G * H + j;
        for (var g = 0u; g < G; g++) {
            acc[g] += hv * weight_t[w + g * H];
        }
    }
    for (var g = 0u; g < G; g++) {
        acc[g] += gate_bias(g, j);
    }
    return acc;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let batch = dims[0];
    let steps = dims[1];
    let reverse = dims[2] == 1u;
    let b = wid.x;
    let init = (steps * batch + b) * R * H;
    initial_units(init, b, lid);
    storageBarrier();
    let length = lengths[b];
    for (var k = 0u; k < steps; k++) {
        let tb = visited(k, steps, reverse);
        let here = (tb.x * batch + b) * R * H;
        let prev = (tb.y * batch + b) * R * H;
        if (i32(tb.x) < length) {
            let x = (tb.x * batch + b) * G * H;
            for (var j = lid; j < H; j += WG) {
                cell_forward(recurrent(prev, j), here, prev, x, j);
            }
        } else {
            for (var j = lid; j < H; j += WG) {
                carry_slot(here, prev, j);
            }
        }
        storageBarrier();
    }
}
