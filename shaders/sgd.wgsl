// Plain SGD with weight decay, PyTorch's rule. s = [lr, weight_decay, n (u32 bits)]

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read> s: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= bitcast<u32>(s[2])) {
        return;
    }
    let p = param[i];
    let g = grad[i] + s[1] * p;
    param[i] = p - s[0] * g;
}
