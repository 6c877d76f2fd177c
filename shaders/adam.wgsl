// Adam and AdamW, PyTorch's single-tensor update rule, fused into one pass over
// a parameter: weight decay, both moments, bias correction and the write.
// s = [lr, beta1, beta2, eps, weight_decay, bias_correction1,
//      sqrt(bias_correction2), n (bit pattern of a u32)]

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(3) var<storage, read_write> exp_avg_sq: array<f32>;
@group(0) @binding(4) var<storage, read> s: array<f32>;

// AdamW decays the parameter itself; Adam adds the decay to the gradient.
override DECOUPLED: bool = false;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= bitcast<u32>(s[7])) {
        return;
    }
    let lr = s[0];
    let beta1 = s[1];
    let beta2 = s[2];
    let eps = s[3];
    let wd = s[4];
    var p = param[i];
    var g = grad[i];
    if (DECOUPLED) {
        p = p * (1.0 - lr * wd);
    } else {
        g = g + wd * p;
    }
    // torch uses lerp for the first moment: m + (1 - beta1) (g - m).
    let m = exp_avg[i] + (1.0 - beta1) * (g - exp_avg[i]);
    let v = exp_avg_sq[i] * beta2 + (1.0 - beta2) * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    let denom = sqrt(v) / s[6] + eps;
    param[i] = p - (lr / s[5]) * (m / denom);
}
