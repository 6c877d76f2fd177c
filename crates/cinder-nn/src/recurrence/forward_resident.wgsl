// A whole sequence forward in one dispatch for CPU adapters, where a load
// from a buffer costs some twenty multiply-adds (lane by lane) and private
// memory and subgroup broadcasts cost little. Each invocation keeps its
// units' rows of W_hh in private memory for the whole sequence; a
// workgroup runs `dims[4]` sequences, RR at a time so that each weight
// loaded serves RR of them, and its lanes load their previous hidden
// states eight values at a time (sixteen, as eight pairs, where the buffers
// are addressed in pairs: `forward_pairs.wgsl`) and broadcast them across
// the subgroup.
// The Rust side generates the weight arrays (pieces of at most 256 floats:
// see `PIECE` there), `fill_weights`, and `step_rows`, which does RR
// sequences' step with its loops over units, gates and sequences
// unrolled. U units per invocation: u * WG + lid, or 2 lid + u in pairs.

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let batch = dims[0];
    let steps = dims[1];
    let reverse = dims[2] == 1u;
    let rows = dims[4];
    fill_weights(lid);
    let first = wid.x * rows;
    let end = min(first + rows, batch);
    for (var b = first; b < end; b++) {
        let init = (steps * batch + b) * R * H;
        initial_units(init, b, lid);
    }
    storageBarrier();
    for (var k = 0u; k < steps; k++) {
        let tb = visited(k, steps, reverse);
        for (var b = first; b < end; b += RR) {
            step_rows(b, end, tb, lid, lane % 8u);
        }
        storageBarrier();
    }
}
