// SGD with momentum (optionally Nesterov), PyTorch's rule: the first step
// copies the gradient into the buffer, later steps decay it with dampening.
// s = [lr, weight_decay, momentum, 1 - dampening, first_step (0 or 1), n (u32 bits)]

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> momentum_buffer: array<f32>;
@group(0) @binding(3) var<storage, read> s: array<f32>;

override NESTEROV: bool = false;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= bitcast<u32>(s[5])) {
        return;
    }
    let p = param[i];
    var g = grad[i] + s[1] * p;
    var buf = g;
    if (s[4] == 0.0) {
        buf = momentum_buffer[i] * s[2] + s[3] * g;
    }
    momentum_buffer[i] = buf;
    if (NESTEROV) {
        g = g + s[2] * buf;
    }
    else {
        g = buf;
    }
    param[i] = p - s[0] * g;
}
