// Adam and AdamW, PyTorch's single-tensor update rule, fused into one pass over
// a parameter: weight decay, both moments, bias correction and the write.
// The host computes the scalars in f64, as PyTorch does in Python floats:
// s = [decay (AdamW: 1 - lr*wd, else 1), 1 - beta1, beta2, 1 - beta2, eps,
//      weight_decay (Adam: wd, AdamW: 0), step_size = lr / (1 - beta1^t),
//      sqrt(1 - beta2^t), n (bit pattern of a u32)]

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(3) var<storage, read_write> exp_avg_sq: array<f32>;
@group(0) @binding(4) var<storage, read> s: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= bitcast<u32>(s[8])) {
        return;
    }
    let p = param[i] * s[0];
    let g = grad[i] + s[5] * p;
    // torch: exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    let m = exp_avg[i] + s[1] * (g - exp_avg[i]);
    let v = exp_avg_sq[i] * s[2] + s[3] * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    // torch: denom = sqrt(v) / bias_correction2_sqrt + eps; param.addcdiv_(m, denom, value=-step_size)
    let denom = sqrt(v) / s[7] + s[4];
    param[i] = p - s[6] * m / denom;
}
