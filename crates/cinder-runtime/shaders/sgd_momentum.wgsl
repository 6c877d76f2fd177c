// SGD with momentum (optionally Nesterov), PyTorch's rule: the first step
// copies the gradient into the buffer, later steps decay it with dampening.
// s = [lr, weight_decay, momentum, 1 - dampening, first_step (0 or 1), n (u32 bits)]

@group(0) @binding(0) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> momentum_buffer: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> s: array<vec4<f32>, 2>;

override NESTEROV: bool = false;

// Each invocation updates 4 consecutive elements as one vec4, the scalars a
// uniform buffer (see adam.wgsl); past n the padding is left as it was.
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let q = (wid.y * nwg.x + wid.x) * 256u + lid;
    let n = bitcast<u32>(s[1].y);
    if (4u * q >= n) {
        return;
    }
    let lr = s[0].x;
    let weight_decay = s[0].y;
    let momentum = s[0].z;
    let one_minus_dampening = s[0].w;
    let first_step = s[1].x != 0.0;
    let p = param[q];
    var g = grad[q] + weight_decay * p;
    let buf0 = momentum_buffer[q];
    var buf = g;
    if (!first_step) {
        buf = buf0 * momentum + one_minus_dampening * g;
    }
    if (NESTEROV) {
        g = g + momentum * buf;
    } else {
        g = buf;
    }
    let inside = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(n);
    momentum_buffer[q] = select(buf0, buf, inside);
    param[q] = select(p, p - lr * g, inside);
}
