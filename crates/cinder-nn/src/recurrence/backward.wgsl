// A whole sequence backward in one dispatch, visiting the steps in the
// reverse of the forward order. At each step every invocation turns its
// units' state gradient into the step's pre-activation gradients `d`
// (written for the weights' products that follow), and after a storage
// barrier adds `d W_hh` to the hidden state's gradient for the step
// before. The running state gradients (dh, dc) sit after `d` in the output,
// each invocation touching only its own units, and end as dh_0, dc_0.
// One workgroup per sequence; `backward_resident.wgsl` is the CPU
// adapters' kernel.

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let batch = dims[0];
    let steps = dims[1];
    let reverse = dims[2] == 1u;
    let b = wid.x;
    let carry = steps * batch * D * H + b * 2u * H;
    clear_carry(carry, lid);
    let length = lengths[b];
    for (var n = 0u; n < steps; n++) {
        let tb = visited(steps - 1u - n, steps, reverse);
        let here = (tb.x * batch + b) * R * H;
        let prev = (tb.y * batch + b) * R * H;
        let d = (tb.x * batch + b) * D * H;
        let g = (tb.x * batch + b) * S;
        let real = i32(tb.x) < length;
        step_units(here, prev, g, d, carry, lid, real);
        storageBarrier();
        if (real) {
            // Lanes read consecutive weights; d is the same for the whole
            // workgroup.
            for (var j = lid; j < H; j += WG) {
                var acc = 0.0;
                for (var q = 0u; q < G * H; q++) {
                    acc += out[d + q] * weight[q * H + j];
                }
                out[carry + j] += acc;
            }
        }
    }
}
