// Packs a row-major matrix into an rgba32float texture for the texture matmul
// (shaders/matmul_texture_*.wgsl): texel (q, r) holds columns 4q..4q+3 of row r.
// Columns past `cols` and rows past `rows` (up to the texture's height) are zero,
// so a product over the padding adds nothing.
//
// Binding 2 holds five u32: rows, cols, the row stride in elements, then the
// texture's width and height in texels. One invocation writes one texel:
// dispatch x = ceil(width / 8), y = ceil(height / 8) (no division by the
// width, which costs a scalar loop per lane on lavapipe).
//
// The source is read as u64 pairs of floats (needs SHADER_INT64, as the texture
// matmul's device does; bind a multiple of 8 bytes): on lavapipe every load is
// a loop over lanes, so two loads per texel (three where a row starts on an odd
// element) instead of four.

@group(0) @binding(0) var dst: texture_storage_2d<rgba32float, write>;
@group(0) @binding(1) var<storage, read> src: array<u64>;
@group(0) @binding(2) var<storage, read> dims: array<u32>;

fn lo(x: u64) -> f32 { return bitcast<f32>(u32(x)); }
fn hi(x: u64) -> f32 { return bitcast<f32>(u32(x >> 32u)); }

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let rows = dims[0];
    let cols = dims[1];
    let ld = dims[2];
    let width = dims[3];
    let height = dims[4];
    let q = gid.x;
    let r = gid.y;
    if (q >= width || r >= height) {
        return;
    }
    let c = q * 4u;
    var v = vec4<f32>(0.0);
    if (r < rows) {
        // Words past the row (or the buffer) are read, clamped, and masked.
        let e = r * ld + c;
        let last = arrayLength(&src) - 1u;
        let w = e >> 1u;
        let x0 = src[min(w, last)];
        let x1 = src[min(w + 1u, last)];
        if ((e & 1u) == 0u) {
            v = vec4<f32>(lo(x0), hi(x0), lo(x1), hi(x1));
        } else {
            let x2 = src[min(w + 2u, last)];
            v = vec4<f32>(hi(x0), lo(x1), hi(x1), lo(x2));
        }
        if (c + 4u > cols) {
            v = select(vec4<f32>(0.0), v, vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(cols - c));
        }
    }
    textureStore(dst, vec2<u32>(q, r), v);
}
