// adam.wgsl with every tensor read and written as u64 pairs of floats, for
// devices with SHADER_INT64: lavapipe loads and stores lane by lane, so two
// floats per access halve the update's memory operations. Same scalars s,
// same rule. Bind each tensor with its buffer's padded size (a multiple of 8
// bytes): when n is odd the last pair's second half is padding, read and left
// as it was.

@group(0) @binding(0) var<storage, read_write> param: array<u64>;
@group(0) @binding(1) var<storage, read> grad: array<u64>;
@group(0) @binding(2) var<storage, read_write> exp_avg: array<u64>;
@group(0) @binding(3) var<storage, read_write> exp_avg_sq: array<u64>;
@group(0) @binding(4) var<storage, read> s: array<f32>;

fn lo(x: u64) -> f32 { return bitcast<f32>(u32(x)); }
fn hi(x: u64) -> f32 { return bitcast<f32>(u32(x >> 32u)); }
fn pair(a: f32, b: f32) -> u64 { return u64(bitcast<u32>(a)) | (u64(bitcast<u32>(b)) << 32u); }

// Each invocation updates 4 consecutive elements (2 pairs), reading the
// scalars once.
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let first = ((wid.y * nwg.x + wid.x) * 256u + lid) * 2u;
    let n = bitcast<u32>(s[8]);
    let pairs = (n + 1u) / 2u;
    if (first >= pairs) {
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
    for (var w = first; w < min(first + 2u, pairs); w++) {
        let pw = param[w];
        let gw = grad[w];
        let mw = exp_avg[w];
        let vw = exp_avg_sq[w];
        var p = vec2<f32>(lo(pw), hi(pw)) * decay;
        let g = vec2<f32>(lo(gw), hi(gw)) + weight_decay * p;
        // torch: exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        let m0 = vec2<f32>(lo(mw), hi(mw));
        var m = m0 + one_minus_beta1 * (g - m0);
        var v = vec2<f32>(lo(vw), hi(vw)) * beta2 + one_minus_beta2 * g * g;
        // torch: denom = sqrt(v) / bias_correction2_sqrt + eps; param.addcdiv_(m, denom, value=-step_size)
        let denom = sqrt(v) / bias_correction2_sqrt + eps;
        p = p - step_size * m / denom;
        if (2u * w + 1u >= n) {
            // The second half is padding past the tensor: keep it.
            p.y = hi(pw);
            m.y = hi(mw);
            v.y = hi(vw);
        }
        param[w] = pair(p.x, p.y);
        exp_avg[w] = pair(m.x, m.y);
        exp_avg_sq[w] = pair(v.x, v.y);
    }
}
