// Copies a tensor into its region of a concatenation. Seen as rows, the
// input has rows of `inner_in` elements and the output rows of `inner_out`;
// input row r goes to output row r, from column `offset`. Every element is
// moved as its 32 bits, so one pipeline serves every dtype and every
// concatenation: the shape is in `dims`, not in the source.
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
// count, inner_in, inner_out, offset
@group(0) @binding(2) var<storage, read> dims: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= dims[0]) { return; }
    let row = i / dims[1];
    dst[row * dims[2] + dims[3] + i % dims[1]] = src[i];
}
