#!/usr/bin/env python3
"""Generates cinder's matmul kernels (register tiles must be unrolled by hand, so the WGSL is
generated; edit this script, not the .wgsl files).

  gen_matmul.py portable OUT.wgsl [TM TN]     -> shaders/matmul.wgsl          (no features)
  gen_matmul.py subgroup OUT.wgsl [TM TN]     -> shaders/matmul_subgroup*.wgsl (SUBGROUP+SHADER_INT64)
  gen_matmul.py texture OUT.wgsl [TM TN]      -> shaders/matmul_texture*.wgsl  (SUBGROUP; operands in textures)
  gen_matmul.py texture_implicit OUT.wgsl [TM TN] -> the same, A fetched as a convolution's windows

The files in shaders/ come from (tools/check-generated.sh runs these in CI and fails on any difference):
  python3 tools/gen_matmul.py portable shaders/matmul.wgsl 32 32
  python3 tools/gen_matmul.py subgroup shaders/matmul_subgroup_128x64.wgsl 128 8 direct
  python3 tools/gen_matmul.py subgroup shaders/matmul_subgroup_64x64.wgsl 64 8 direct
  python3 tools/gen_matmul.py subgroup shaders/matmul_subgroup_32x32.wgsl 32 4
  python3 tools/gen_matmul.py texture shaders/matmul_texture_128x64.wgsl 128 8 direct
  python3 tools/gen_matmul.py texture shaders/matmul_texture_64x32.wgsl 64 4 direct
  python3 tools/gen_matmul.py texture_implicit shaders/matmul_texture_implicit_64x32.wgsl 64 4 direct

Cost model behind the design (Mesa 22.3 lavapipe, 8 lanes per SIMD group): every load from a
storage *or* workgroup buffer becomes a per-lane scalar loop costing ~18-30 cycles per lane and
per component (vec4 loads are not cheaper per float), while an 8-wide FMA costs ~1.4 cycles.
So: no shared memory (it only adds loads), huge per-thread register tiles, and in the subgroup
variant A is loaded once per subgroup and handed out with subgroupBroadcast, and all loads fetch
two floats at once as u64. Per-shape compile time (LLVM) grows quickly with the tile; the C
epilogue uses vec4 stores when N % 4 == 0 to keep it down.

The texture variant reads A and B from rgba32float textures instead (the runtime packs them
first, shaders/pack_texture.wgsl): lavapipe fetches a texel for all 8 lanes in SIMD code, while
a storage-buffer load is a per-lane loop with a branch and a bounds check. Measured on a
load-only kernel: 16 floats per lane cost 18 ms as four texels against 70 ms as eight u64
loads; the 1024 product went from 134-147 ms to 84-96 ms (alternating runs).
"""
import sys

mode = sys.argv[1]
OUT = sys.argv[2]
if mode == "portable":
    TM = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    TN = int(sys.argv[4]) if len(sys.argv) > 4 else 16
else:
    TM = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    TN = int(sys.argv[4]) if len(sys.argv) > 4 else 8
# "direct": plain stores of C, no store hooks. The big blocks are built this
# way: they never take fused epilogues (too slow to compile per site), and the
# hooked stores measured about 10% slower in them.
DIRECT = len(sys.argv) > 5 and sys.argv[5] == "direct"
assert TN % 4 == 0
TN4 = TN // 4
L = []
w = L.append

COMMON_OVERRIDES = """// Shapes are runtime values (binding 3) so that one pipeline serves every shape: the body is
// large and LLVM takes seconds to compile it. Only the two layout flags specialise it.
override C_VEC4: bool;   // N % 4 == 0 and C_BATCH_STRIDE % 4 == 0: rows of C start on a vec4"""

# Every write of C goes through these two functions. The runtime replaces the
# block between the markers to fuse an epilogue (bias, batch norm, activation,
# even a permuted layout) into the write; bindings 4 and up are the epilogue's.
STORE_HOOKS = """// STORE BEGIN
fn store1(e: u32, v: f32) { c[e / 4u][e % 4u] = v; }
fn store4(e: u32, v: vec4<f32>) { c[e / 4u] = v; }
// STORE END"""
STORE = "" if DIRECT else STORE_HOOKS

DIMS = """    let M = dims[0];
    let N = dims[1];
    let K = dims[2];
    let A_BATCH_STRIDE = dims[3];
    let B_BATCH_STRIDE = dims[4];
    let C_BATCH_STRIDE = dims[5];
    let LDA = dims[6];   // elements between rows of A (K when A is contiguous)
    let LDB = dims[7];   // elements between rows of B (N when B is contiguous)"""


def acc_decls():
    for i in range(TM):
        w("    " + " ".join("var acc%d_%d = vec4<f32>(0.0);" % (i, j) for j in range(TN4)))


def store_epilogue():
    # c is array<vec4<f32>>; vec4 stores when rows are 16-byte aligned, else per component.
    w("    if (C_VEC4) {")
    for i in range(TM):
        w("        if (row0 + %du < M) {" % i)
        w("            let cb = (c_off + (row0 + %du) * N + col0) / 4u;" % i)
        if DIRECT:
            w("            " + " ".join("if (col0 + %du < N) { c[cb + %du] = acc%d_%d; }" % (4 * j, j, i, j) for j in range(TN4)))
        else:
            w("            " + " ".join("if (col0 + %du < N) { store4((cb + %du) * 4u, acc%d_%d); }" % (4 * j, j, i, j) for j in range(TN4)))
        w("        }")
    w("    } else {")
    for i in range(TM):
        w("        if (row0 + %du < M) {" % i)
        w("            let cb = c_off + (row0 + %du) * N + col0;" % i)
        for j in range(TN4):
            w("            " + " ".join(
                ("if (col0 + %du < N) { let e = cb + %du; c[e / 4u][e %% 4u] = acc%d_%d.%s; }" if DIRECT else
                 "if (col0 + %du < N) { store1(cb + %du, acc%d_%d.%s); }")
                % (4 * j + q, 4 * j + q, i, j, "xyzw"[q]) for q in range(4)))
        w("        }")
    w("    }")


def texture_kernel(implicit):
    assert TM % 8 == 0 and TN % 4 == 0
    S = TM // 8
    if implicit:
        a_doc = """A: the channels-last unfold of an image held in texture ta as rows of pixels
// (n, y, x), C/4 texels of channels each. Row (n, oy, ox) of A, texel k4 = (ky, kx, channel
// texel), is fetched from the image, zero outside it (an implicit GEMM)"""
        dims_doc = """Binding 3 holds 21 u32: M, N, K, then the start of part z's range of k is z times word 3 (a
// multiple of 4; split-K), part z writes C at z times word 5; words 4 and 6-8 are unused; then
// the image's geometry: channel texels per pixel, kernel width, padding (y, x), window positions
// (oh, ow), image (h, w), stride (y, x), dilation (y, x)."""
    else:
        a_doc = "A: M rows of ceil(K/4) texels, 4 consecutive k each"
        dims_doc = """Binding 3 holds eight u32 (the buffer kernels' layout): M, N, K, then the start of part z's
// range of k is z times word 3 (a multiple of 4; split-K), part z writes C at z times word 5;
// the other words are unused."""
    w(f"""// Row-major matmul C = A @ B with A and B read from rgba32float textures.
// {a_doc}.
// B: K rows, rounded up to a multiple of 4 and zero-padded, of ceil(N/4) texels, 4 consecutive
// columns each; the last texel of a row is zero-padded. Any M, N, K >= 1.
// GENERATED by gen_matmul.py ({mode}, TM={TM}, TN={TN}; tools/gen_matmul.py) --
// edit the generator, not this file.
//
// Requirements: device feature SUBGROUP, subgroup size >= 8 (lavapipe: 8). Workgroup = 8
// invocations. One workgroup computes a {TM}x{8 * TN} block: the 8 lanes share the {TM} rows (each
// A texel is fetched by one lane and broadcast), lane l owns {TN} columns.
// Texels outside a texture read as zero or as an edge texel: either only reaches rows >= M or
// columns >= N, which are never stored.
//
// Buffer sizes: C is addressed as vec4s, so bind C with a size rounded up to a multiple of 16
// bytes (allocate the padding). Elements past M*N (or past the last part) are never written.
// {dims_doc} A split product's K per part is a multiple of 4.
// Dispatch: x = ceil(N / {8 * TN}), y = ceil(M / {TM}), z = parts of K.   (BN = 8*TN = {8 * TN}, BM = TM = {TM})

{COMMON_OVERRIDES}

const TM: u32 = {TM}u;  // rows per workgroup (shared by its 8 lanes)
const TN: u32 = {TN}u;    // columns per lane
const BN: u32 = 8u * TN;

@group(0) @binding(0) var ta: texture_2d<f32>;
@group(0) @binding(1) var tb: texture_2d<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<vec4<f32>>;   // C as vec4s (any N: see epilogue)
@group(0) @binding(3) var<storage, read> dims: array<u32>;

{STORE}

@compute @workgroup_size(8, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {{
    let M = dims[0];
    let N = dims[1];
    let K = dims[2];
    // Split-K: part z covers K values of k from z * dims[3] and writes its own M x N block.
    let k4_first = wg.z * dims[3] / 4u;
    let c_off = wg.z * dims[5];
    let row0 = wg.y * TM;
    let col0 = wg.x * BN + lane * TN;
    let cq = col0 / 4u;   // this lane's first texel column of B""")
    if implicit:
        w("""    let c4n = dims[9];    // channel texels per pixel
    let kwn = dims[10];   // kernel width
    let ohn = dims[13];   // window positions (rows of A) per image: oh x ow
    let own = dims[14];
    let ih = i32(dims[15]);   // image height and width
    let iw = i32(dims[16]);
    // This lane's rows of A: their windows' origins and their images' first pixels.""")
        for s_ in range(S):
            w("    let ir%d = row0 + %du + lane;" % (s_, 8 * s_))
            w("    let iy%d = i32(((ir%d / own) %% ohn) * dims[17]) - i32(dims[11]);" % (s_, s_))
            w("    let ix%d = i32((ir%d %% own) * dims[18]) - i32(dims[12]);" % (s_, s_))
            w("    let ib%d = i32(ir%d / (ohn * own)) * ih * iw;" % (s_, s_))
    acc_decls()
    if implicit:
        w("""    // Texel k4 of a row is channel texel c4 of tap (tky, tkx), counted
    // along with k4: a division per step would cost more than it.
    var c4 = k4_first % c4n;
    let tap0 = k4_first / c4n;
    var tky = tap0 / kwn;
    var tkx = tap0 % kwn;""")
    w("    for (var k4 = k4_first; k4 < k4_first + (K + 3u) / 4u; k4++) {")
    w("        let kr = k4 * 4u;")
    for kk in range(4):
        w("        " + " ".join("let g%d_%d = textureLoad(tb, vec2<u32>(cq + %du, kr + %du), 0);" % (kk, j, j, kk) for j in range(TN4)))
    if implicit:
        w("        let dy = i32(tky * dims[19]);   // the tap's offset: dilation")
        w("        let dx = i32(tkx * dims[20]);")
        for s_ in range(S):
            w("        let sy%d = iy%d + dy; let sx%d = ix%d + dx;" % (s_, s_, s_, s_))
            w("        let t%d = select(vec4<f32>(0.0), textureLoad(ta, vec2<u32>(c4, u32(ib%d + sy%d * iw + sx%d)), 0), sy%d >= 0 && sy%d < ih && sx%d >= 0 && sx%d < iw);" % ((s_,) * 8))
    else:
        for s_ in range(S):
            w("        let t%d = textureLoad(ta, vec2<u32>(k4, row0 + %du + lane), 0);" % (s_, 8 * s_))
    for i in range(TM):
        for kk in range(4):
            w("        let a%d_%d = vec4<f32>(subgroupBroadcast(t%d.%s, %du)); " % (i, kk, i // 8, "xyzw"[kk], i % 8)
              + " ".join("acc%d_%d = fma(g%d_%d, a%d_%d, acc%d_%d);" % (i, j, kk, j, i, kk, i, j) for j in range(TN4)))
    if implicit:
        w("""        c4 += 1u;
        let next_tap = c4 == c4n;
        c4 = select(c4, 0u, next_tap);
        tkx += select(0u, 1u, next_tap);
        let next_row = tkx == kwn;
        tkx = select(tkx, 0u, next_row);
        tky += select(0u, 1u, next_row);""")
    w("    }")
    store_epilogue()
    w("}")


if mode in ("texture", "texture_implicit"):
    texture_kernel(mode == "texture_implicit")
elif mode == "portable":
    w(f"""// Batched row-major matmul C[b] = A[b] @ B[b]  (A: MxK, B: KxN, C: MxN; f32, contiguous,
// offset 0 in their buffers). Portable: no device features needed; any M, N, K >= 1.
// GENERATED by gen_matmul.py (portable, TM={TM}, TN={TN}; tools/gen_matmul.py) --
// edit the generator, not this file.
// Tuned for lavapipe: one workgroup = 8 invocations (one SIMD group); each invocation computes a
// {TM}x{TN} tile straight from the storage buffers (no shared memory, no barriers).
//
// Buffer sizes: C is addressed as vec4s, so bind C with a size rounded up to a multiple of 16
// bytes (allocate the padding). Elements past M*N (or past the last batch) are never written.
// Binding 3 holds eight u32: M, N, K, then A_BATCH_STRIDE, B_BATCH_STRIDE, C_BATCH_STRIDE
// (elements between batches, 0 = broadcast), then LDA and LDB, the row strides of A and B.
// Rows longer than K let one dispatch split a long K into batches (split-K).
// Dispatch: x = ceil(N / {8 * TN}), y = ceil(M / {TM}), z = batch.   (BN = 8*TN = {8 * TN}, BM = TM = {TM})

{COMMON_OVERRIDES}

const TM: u32 = {TM}u;   // rows per invocation
const TN: u32 = {TN}u;   // columns per invocation
const BN: u32 = 8u * TN;

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<vec4<f32>>;   // C as vec4s (any N: see epilogue)
@group(0) @binding(3) var<storage, read> dims: array<u32>;

{STORE}

@compute @workgroup_size(8, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {{
{DIMS}
    let row0 = wg.y * TM;
    let col0 = wg.x * BN + lane * TN;
    let a_off = wg.z * A_BATCH_STRIDE;
    let b_off = wg.z * B_BATCH_STRIDE;
    let c_off = wg.z * C_BATCH_STRIDE;""")
    acc_decls()
    w("    // rows >= M / columns >= N are clamped: they compute junk that is never stored")
    for i in range(TM):
        w("    let ar%d = a_off + min(row0 + %du, M - 1u) * LDA;" % (i, i))
    for j in range(TN):
        w("    let bc%d = b_off + min(col0 + %du, N - 1u);" % (j, j))
    w("    var kb = 0u;")
    w("    for (var k = 0u; k < K; k++) {")
    for j in range(TN4):
        w("        let g%d = vec4<f32>(b[bc%d + kb], b[bc%d + kb], b[bc%d + kb], b[bc%d + kb]);" % (j, 4 * j, 4 * j + 1, 4 * j + 2, 4 * j + 3))
    for i in range(TM):
        w("        let a%d = vec4<f32>(a[ar%d + k]);" % (i, i))
        w("        " + " ".join("acc%d_%d = fma(g%d, a%d, acc%d_%d);" % (i, j, j, i, i, j) for j in range(TN4)))
    w("        kb += LDB;")
    w("    }")
    store_epilogue()
    w("}")

else:
    assert TM % 8 == 0 and TN % 2 == 0
    S = TM // 8
    TW = TN // 2
    w(f"""// Batched row-major matmul C[b] = A[b] @ B[b]  (A: MxK, B: KxN, C: MxN; f32, contiguous,
// offset 0 in their buffers). Fast variant for CPU adapters (lavapipe); any M, N, K >= 1.
// GENERATED by gen_matmul.py (subgroup, TM={TM}, TN={TN}; tools/gen_matmul.py) --
// edit the generator, not this file.
//
// Requirements:
//   * device features SUBGROUP and SHADER_INT64;
//   * subgroup size >= 8 (adapter info subgroup_min_size >= 8; lavapipe: 8). Workgroup = 8
//     invocations; lanes are identified by subgroup_invocation_id;
//   * A and B are read as u64 pairs: their buffer bindings must be a multiple of 8 bytes long
//     (pad odd-length tensors with one f32).
// One workgroup computes a {TM}x{8 * TN} block: the 8 lanes share the {TM} rows (A values are loaded
// once per subgroup and broadcast), lane l owns {TN} columns. Fast loop when K, N and the A/B
// batch strides are even; a realigning loop (same speed class) otherwise.
//
// Buffer sizes: C is addressed as vec4s, so bind C with a size rounded up to a multiple of 16
// bytes (allocate the padding). Elements past M*N (or past the last batch) are never written.
// Binding 3 holds eight u32: M, N, K, then A_BATCH_STRIDE, B_BATCH_STRIDE, C_BATCH_STRIDE
// (elements between batches, 0 = broadcast), then LDA and LDB, the row strides of A and B.
// Rows longer than K let one dispatch split a long K into batches (split-K).
// Dispatch: x = ceil(N / {8 * TN}), y = ceil(M / {TM}), z = batch.   (BN = 8*TN = {8 * TN}, BM = TM = {TM})

{COMMON_OVERRIDES}
override ALIGNED: bool;  // K, N, LDA, LDB and the A/B batch strides are even: every row starts on a u64

const TM: u32 = {TM}u;  // rows per workgroup (shared by its 8 lanes)
const TN: u32 = {TN}u;    // columns per lane
const BN: u32 = 8u * TN;

@group(0) @binding(0) var<storage, read> a: array<u64>;          // f32 pairs
@group(0) @binding(1) var<storage, read> b: array<u64>;          // f32 pairs
@group(0) @binding(2) var<storage, read_write> c: array<vec4<f32>>;   // C as vec4s (any N: see epilogue)
@group(0) @binding(3) var<storage, read> dims: array<u32>;

{STORE}

fn lo(x: u64) -> f32 {{ return bitcast<f32>(u32(x)); }}
fn hi(x: u64) -> f32 {{ return bitcast<f32>(u32(x >> 32u)); }}

@compute @workgroup_size(8, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {{
{DIMS}
    let row0 = wg.y * TM;
    let col0 = wg.x * BN + lane * TN;
    let a_off = wg.z * A_BATCH_STRIDE;
    let b_off = wg.z * B_BATCH_STRIDE;
    let c_off = wg.z * C_BATCH_STRIDE;""")
    acc_decls()
    w("    // Lane l loads A rows row0 + 8s + l (s < TM/8); rows >= M are clamped (junk, never stored).")
    for s in range(S):
        w("    let ea%d = a_off + min(row0 + %du + lane, M - 1u) * LDA;   // element index of the row start" % (s, 8 * s))

    def fmas(p):
        for i in range(TM):
            w(p + " ".join("let a%d_%d = vec4<f32>(subgroupBroadcast(f%d_%d, %du));" % (i, u, i // 8, u, i % 8) for u in range(2)))
            w(p + " ".join("acc%d_%d = fma(g%d_%d, a%d_%d, acc%d_%d);" % (i, j, u, j, i, u, i, j) for j in range(TN4) for u in range(2)))

    # ---------- aligned: every row starts at an even element -> u64 words hold (k, k+1) pairs
    w("    if (ALIGNED) {")
    w("        let ne = LDB / 2u;")
    w("        // word offset of this lane's column pair j in row 0 (clamped: junk columns stay in bounds)")
    for j in range(TW):
        w("        let cw%d = (b_off + min(col0 + %du, N - 2u)) / 2u;" % (j, 2 * j))
    for s in range(S):
        w("        let wa%d = ea%d / 2u;" % (s, s))
    w("        for (var k = 0u; k < K; k += 2u) {")
    w("            let r0 = (k / 2u) * LDB;   // = k * ne")
    w("            let r1 = r0 + ne;")
    for u in range(2):
        w("            " + " ".join("let y%d_%d = b[cw%d + r%d];" % (u, j, j, u) for j in range(TW)))
        for j in range(TN4):
            w("            let g%d_%d = vec4<f32>(lo(y%d_%d), hi(y%d_%d), lo(y%d_%d), hi(y%d_%d));" % (u, j, u, 2 * j, u, 2 * j, u, 2 * j + 1, u, 2 * j + 1))
    for s in range(S):
        w("            let x%d = a[wa%d + k / 2u]; let f%d_0 = lo(x%d); let f%d_1 = hi(x%d);" % (s, s, s, s, s, s))
    fmas("            ")
    w("        }")
    w("    }")
    # ---------- general: odd row starts. A: sliding pair of words carried across iterations;
    # B: one extra word per row, halves picked by the (uniform) row parity. Step k+1 >= K is zeroed.
    w("    if (!ALIGNED) {")
    w("        let aw_last = arrayLength(&a) - 1u;")
    w("        let bw_last = arrayLength(&b) - 1u;")
    for s in range(S):
        w("        let pa%d = (ea%d & 1u) == 1u;" % (s, s))
        w("        var cur%d = a[min(ea%d >> 1u, aw_last)];" % (s, s))
    w("        for (var k = 0u; k < K; k += 2u) {")
    w("            let ok1 = k + 1u < K;")
    for u in range(2):
        kr = "k" if u == 0 else "min(k + 1u, K - 1u)"
        w("            let eb%d = b_off + %s * LDB + col0;" % (u, kr))
        w("            let pb%d = (eb%d & 1u) == 1u;" % (u, u))
        w("            let wb%d = eb%d >> 1u;" % (u, u))
        w("            " + " ".join("let y%d_%d = b[min(wb%d + %du, bw_last)];" % (u, j, u, j) for j in range(TW + 1)))
        halves = ["%s(y%d_%d)" % ("lo" if t % 2 == 0 else "hi", u, t // 2) for t in range(TN + 1)]
        for j in range(TN4):
            comps = ", ".join("select(%s, %s, pb%d)" % (halves[4 * j + q], halves[4 * j + q + 1], u) for q in range(4))
            if u == 0:
                w("            let g0_%d = vec4<f32>(%s);" % (j, comps))
            else:
                w("            let g1_%d = select(vec4<f32>(0.0), vec4<f32>(%s), ok1);" % (j, comps))
    for s in range(S):
        w("            let nxt%d = a[min((ea%d >> 1u) + k / 2u + 1u, aw_last)];" % (s, s))
        w("            let f%d_0 = select(lo(cur%d), hi(cur%d), pa%d);" % (s, s, s, s))
        w("            let f%d_1 = select(0.0, select(hi(cur%d), lo(nxt%d), pa%d), ok1);" % (s, s, s, s))
        w("            cur%d = nxt%d;" % (s, s))
    fmas("            ")
    w("        }")
    w("    }")
    store_epilogue()
    w("}")

open(OUT, "w").write("\n".join(L) + "\n")
