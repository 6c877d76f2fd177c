// Pairs of floats as u64s: on a CPU adapter a buffer is read and written
// lane by lane, so moving two floats at a time halves the cost.
fn unpack(x: u64) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(u32(x)), bitcast<f32>(u32(x >> 32u)));
}

fn pack(v: vec2<f32>) -> u64 {
    return u64(bitcast<u32>(v.x)) | (u64(bitcast<u32>(v.y)) << 32u);
}
