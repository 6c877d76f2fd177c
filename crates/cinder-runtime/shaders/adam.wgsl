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

// Each invocation updates 4 consecutive elements, reading the scalars once:
// on lavapipe every load costs about the same, uniform or not, so the nine
// scalar loads per element were most of the work.
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let first = ((wid.y * nwg.x + wid.x) * 256u + lid) * 4u;
    let n = bitcast<u32>(s[8]);
    if (first >= n) {
        return;
    }
    let decay = s[0];
    let one_minus_beta1 = s[1];
    let beta2 = s[2];
    let one_minus_beta2 = s[3];
    let eps = s[4];
    let weight_decay = s[5];
    let step_size = s[6];
    let bias_correction2_sqrt = s[7];
    for (var i = first; i < min(first + 4u, n); i++) {
        let p = param[i] * decay;
        let g = grad[i] + weight_decay * p;
        // torch: exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        let m0 = exp_avg[i];
        let m = m0 + one_minus_beta1 * (g - m0);
        let v = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        // torch: denom = sqrt(v) / bias_correction2_sqrt + eps; param.addcdiv_(m, denom, value=-step_size)
        let denom = sqrt(v) / bias_correction2_sqrt + eps;
        param[i] = p - step_size * m / denom;
    }
}
