// SGD with momentum (optionally Nesterov), PyTorch's rule: the first step
// copies the gradient into the buffer, later steps decay it with dampening.
// s = [lr, weight_decay, momentum, 1 - dampening, first_step (0 or 1), n (u32 bits)]

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> momentum_buffer: array<f32>;
@group(0) @binding(3) var<storage, read> s: array<f32>;

override NESTEROV: bool = false;

// Each invocation updates 4 consecutive elements (see adam.wgsl).
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let first = ((wid.y * nwg.x + wid.x) * 256u + lid) * 4u;
    let n = bitcast<u32>(s[5]);
    if (first >= n) {
        return;
    }
    let lr = s[0];
    let weight_decay = s[1];
    let momentum = s[2];
    let one_minus_dampening = s[3];
    let first_step = s[4] != 0.0;
    for (var i = first; i < min(first + 4u, n); i++) {
        let p = param[i];
        var g = grad[i] + weight_decay * p;
        var buf = g;
        if (!first_step) {
            buf = momentum_buffer[i] * momentum + one_minus_dampening * g;
        }
        momentum_buffer[i] = buf;
        if (NESTEROV) {
            g = g + momentum * buf;
        } else {
            g = buf;
        }
        param[i] = p - lr * g;
    }
}
