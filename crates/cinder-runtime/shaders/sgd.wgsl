// Plain SGD with weight decay, PyTorch's rule. s = [lr, weight_decay, n (u32 bits)]

@group(0) @binding(0) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> s: array<vec4<f32>, 1>;

// Each invocation updates 4 consecutive elements as one vec4, the scalars a
// uniform buffer (see adam.wgsl); past n the padding is left as it was.
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let q = (wid.y * nwg.x + wid.x) * 256u + lid;
    let n = bitcast<u32>(s[0].z);
    if (4u * q >= n) {
        return;
    }
    let lr = s[0].x;
    let weight_decay = s[0].y;
    let p = param[q];
    let g = grad[q] + weight_decay * p;
    let inside = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(n);
    param[q] = select(p, p - lr * g, inside);
}
