// Plain SGD with weight decay, PyTorch's rule. s = [lr, weight_decay, n (u32 bits)]

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read> s: array<f32>;

// Each invocation updates 4 consecutive elements (see adam.wgsl).
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let first = ((wid.y * nwg.x + wid.x) * 256u + lid) * 4u;
    let n = bitcast<u32>(s[2]);
    if (first >= n) {
        return;
    }
    let lr = s[0];
    let weight_decay = s[1];
    for (var i = first; i < min(first + 4u, n); i++) {
        let p = param[i];
        let g = grad[i] + weight_decay * p;
        param[i] = p - lr * g;
    }
}
