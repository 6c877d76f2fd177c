// Adam and AdamW, PyTorch's single-tensor update rule, fused into one pass over
// a parameter: weight decay, both moments, bias correction and the write.
// The host computes the scalars in f64, as PyTorch does in Python floats:
// s = [decay (AdamW: 1 - lr*wd, else 1), 1 - beta1, beta2, 1 - beta2, eps,
//      weight_decay (Adam: wd, AdamW: 0), step_size = lr / (1 - beta1^t),
//      sqrt(1 - beta2^t), n (bit pattern of a u32)]
//
// Each invocation updates 4 consecutive elements as one vec4 of each tensor:
// lavapipe loads and stores lane by lane, so a vec4 per access quarters the
// update's memory operations, and it loads a uniform at a fixed offset once
// for all lanes, where nine scalars from a storage buffer were most of the
// work. Bind each tensor with its buffer's padded size (a multiple of 16
// bytes): past n, the last vec4's padding is read and left as it was.

@group(0) @binding(0) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> s: array<vec4<f32>, 3>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let q = (wid.y * nwg.x + wid.x) * 256u + lid;
    let n = bitcast<u32>(s[2].x);
    if (4u * q >= n) {
        return;
    }
    let decay = s[0].x;
    let one_minus_beta1 = s[0].y;
    let beta2 = s[0].z;
    let one_minus_beta2 = s[0].w;
    let eps = s[1].x;
    let weight_decay = s[1].y;
    let step_size = s[1].z;
    let bias_correction2_sqrt = s[1].w;
    let p0 = param[q];
    let m0 = exp_avg[q];
    let v0 = exp_avg_sq[q];
    let p = p0 * decay;
    let g = grad[q] + weight_decay * p;
    // torch: exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    let m = m0 + one_minus_beta1 * (g - m0);
    let v = v0 * beta2 + one_minus_beta2 * g * g;
    // torch: denom = sqrt(v) / bias_correction2_sqrt + eps; param.addcdiv_(m, denom, value=-step_size)
    let denom = sqrt(v) / bias_correction2_sqrt + eps;
    let updated = p - step_size * m / denom;
    // The last vec4's elements past n are padding: they keep what they held.
    let inside = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(n);
    param[q] = select(p0, updated, inside);
    exp_avg[q] = select(m0, m, inside);
    exp_avg_sq[q] = select(v0, v, inside);
}
