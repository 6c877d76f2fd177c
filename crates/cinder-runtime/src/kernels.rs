//! Hand-written kernels from `shaders/`: matmul and the fused optimizer updates.

use crate::error::{Error, Result};
use crate::graph::OptimKind;

/// A hand-written shader, known by its name (its file in `shaders/`): the
/// name, not the text, is its identity in the pipeline cache.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shader {
    pub name: &'static str,
    pub text: &'static str,
}

impl PartialEq for Shader {
    fn eq(&self, other: &Shader) -> bool {
        self.name == other.name
    }
}

impl Eq for Shader {}

impl std::hash::Hash for Shader {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

/// A shader file of `shaders/`, by name.
macro_rules! shader {
    ($file:literal) => {
        Shader {
            name: $file,
            text: include_str!(concat!("../shaders/", $file)),
        }
    };
}

/// A kernel's WGSL: a hand-written shader, or generated text (fused
/// element-wise kernels, reductions, a matmul with an epilogue spliced in),
/// which is its own identity: two graphs that generate the same text share
/// a pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KernelSource {
    Shader(Shader),
    Generated(String),
    /// Generated text whose private arrays are written whole before they
    /// are read, so that their zeroing may be left out (see `spirv.rs`).
    WritesPrivateFirst(String),
}

impl KernelSource {
    pub(crate) fn text(&self) -> &str {
        match self {
            KernelSource::Shader(s) => s.text,
            KernelSource::Generated(text) | KernelSource::WritesPrivateFirst(text) => text,
        }
    }
}

const ADAM: Shader = shader!("adam.wgsl");
const SGD: Shader = shader!("sgd.wgsl");
const SGD_MOMENTUM: Shader = shader!("sgd_momentum.wgsl");

pub(crate) struct MatmulKernel {
    pub variant: MatmulVariant,
    pub constants: Vec<(String, f64)>,
    /// M, N, K, the A, B, C batch strides (0 = broadcast) and the row
    /// strides of A and B, read by the kernel from its last binding so one
    /// pipeline serves every shape (the texture kernels read M, N, K and the
    /// split-K strides; the implicit one also an image's geometry, words 9-20).
    pub dims: Vec<u32>,
    pub workgroups: (u32, u32, u32),
    /// For the texture kernels: how A and B are packed into their textures.
    pub packs: Option<[OperandPack; 2]>,
}

/// How one matmul operand (contiguous, row-major) is packed into an
/// rgba32float texture (shaders/pack_texture.wgsl).
#[derive(Clone, Copy, Debug)]
pub(crate) struct OperandPack {
    pub rows: usize,
    pub cols: usize,
    /// The texture's height: `rows` or more (B's rows are padded to a
    /// multiple of 4 with zeros).
    pub height: u32,
}

/// A texture side of at least `texels`, never a power of two. lavapipe
/// compiles a shader once per combination of its textures' "power of two or
/// not" in each dimension (part of its sampler state): the CNN step's six
/// texture products compiled the 64x64 block five times, 1.2 s each with
/// Mesa's cache empty. One more texel keeps them all on one variant.
fn texture_side(texels: usize) -> u32 {
    let mut side = texels.max(1);
    while side.is_power_of_two() {
        side += 1;
    }
    side as u32
}

impl OperandPack {
    fn new(rows: usize, cols: usize, padded_rows: usize) -> OperandPack {
        OperandPack {
            rows,
            cols,
            height: texture_side(padded_rows),
        }
    }

    /// The texture's width: `cols` rounded up to texels (and off a power
    /// of two, see [`texture_side`]).
    pub fn width(&self) -> u32 {
        texture_side(self.cols.div_ceil(4))
    }

    /// The five words the pack kernel reads (the row stride is `cols`).
    pub fn dims(&self) -> Vec<u32> {
        vec![
            self.rows as u32,
            self.cols as u32,
            self.cols as u32,
            self.width(),
            self.height,
        ]
    }
}

/// Copies an input into its region of a concatenation (`Op::Concat`).
pub(crate) const COPY_REGION: Shader = shader!("copy_region.wgsl");
/// The copy kernel's workgroup.
pub(crate) const COPY_REGION_WG: u32 = 256;

/// Packs a matmul operand into its texture, one texel per invocation.
pub(crate) const PACK_TEXTURE: Shader = shader!("pack_texture.wgsl");
/// The pack kernel's workgroup: 8 x 8 texels.
pub(crate) const PACK_TEXTURE_WG: u32 = 8;

/// Register-tiled matmul needing no device features: 8 invocations per
/// workgroup, each computing a 32x32 block of C with vec4 accumulators (see
/// the header of shaders/matmul.wgsl).
const MATMUL: Shader = shader!("matmul.wgsl");
const MATMUL_BLOCK: (usize, usize) = (32, 256);

/// The fast matmuls where subgroups and 64-bit integers exist: one subgroup
/// of 8 lanes computes a block of C, A is loaded once and broadcast, loads
/// fetch two floats at once (see shaders/matmul_subgroup_*.wgsl). The same
/// generated kernel in three block sizes. 64x64 serves the products of
/// training steps; 32x32 keeps narrow ones (10 weight taps, 10 classes) from
/// computing mostly padding. 128x64 reuses loads best and measured faster
/// on big square products (2048: 15.1-16.1 GFLOP/s against 11.5-15.6 for
/// 64x64, alternating runs), but takes 5.8 s to compile with Mesa's shader
/// cache empty, against 1.4 s, and a first training step compiles every
/// block it uses: it is kept for products of at least 2^29 multiply-adds,
/// which a convolutional network's layers do not reach.
const MATMUL_SUBGROUP_128X64: Shader = shader!("matmul_subgroup_128x64.wgsl");
const MATMUL_SUBGROUP_64X64: Shader = shader!("matmul_subgroup_64x64.wgsl");
const MATMUL_SUBGROUP_32X32: Shader = shader!("matmul_subgroup_32x32.wgsl");
/// The same kernel reading A and B from textures (see
/// shaders/matmul_texture_*.wgsl and [`OperandPack`]): on a CPU adapter a
/// texel fetch serves all lanes at once. Only the big blocks have one: the
/// 32x32 block serves narrow products, whose few columns or rows would not
/// repay a pack. The products that would take the 64x64 block take a 64x32
/// texture block: it compiles in half the time (the CNN's cold first step
/// went from 4.25-4.63 s to 3.02-3.22 s, alternating runs) and ran as fast
/// or faster (conv2d's three products in `bench cnn` 12-14, 17-21 and 12-16
/// ms against 16-23, 20-32 and 15-24 ms, three alternating runs): with
/// either, the accumulators live on the stack, and the 64x32 block has
/// twice the workgroups to share between threads.
const MATMUL_TEXTURE_128X64: Shader = shader!("matmul_texture_128x64.wgsl");
const MATMUL_TEXTURE_64X32: Shader = shader!("matmul_texture_64x32.wgsl");
/// The 64x32 texture block fetching A as a convolution's windows (an
/// implicit GEMM, see [`ConvOperand`]). A kernel of its own: a runtime
/// switch in the plain block made its other products a quarter slower
/// (conv2d's forward product 12.0 -> 15.1 ms, its weight gradient 12.2 ->
/// 15.8 ms), for one more compile (about 0.7 s with Mesa's cache empty).
const MATMUL_TEXTURE_IMPLICIT_64X32: Shader = shader!("matmul_texture_implicit_64x32.wgsl");

/// Which hand-written matmul a product runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MatmulVariant {
    /// One output per invocation, for products of fewer than
    /// [`SMALL_MATMUL`] multiply-adds.
    Small,
    /// `shaders/matmul.wgsl`: no device features needed.
    Portable,
    Subgroup128x64,
    Subgroup64x64,
    Subgroup32x32,
    Texture128x64,
    Texture64x32,
    TextureImplicit64x32,
}

impl MatmulVariant {
    pub(crate) fn shader(self) -> Shader {
        match self {
            MatmulVariant::Small => SMALL_MATMUL_SHADER,
            MatmulVariant::Portable => MATMUL,
            MatmulVariant::Subgroup128x64 => MATMUL_SUBGROUP_128X64,
            MatmulVariant::Subgroup64x64 => MATMUL_SUBGROUP_64X64,
            MatmulVariant::Subgroup32x32 => MATMUL_SUBGROUP_32X32,
            MatmulVariant::Texture128x64 => MATMUL_TEXTURE_128X64,
            MatmulVariant::Texture64x32 => MATMUL_TEXTURE_64X32,
            MatmulVariant::TextureImplicit64x32 => MATMUL_TEXTURE_IMPLICIT_64X32,
        }
    }

    /// Whether a product on this kernel may take a fused epilogue. Each
    /// fused site is a pipeline of its own whose shapes are baked into the
    /// epilogue, and the big unrolled bodies compile for seconds each when
    /// Mesa's shader cache is cold (and are generated without store hooks,
    /// `tools/gen_matmul.py`'s "direct"): only the kernels that compile in
    /// about a second take epilogues.
    pub(crate) fn fusable(self) -> bool {
        matches!(
            self,
            MatmulVariant::Small | MatmulVariant::Portable | MatmulVariant::Subgroup32x32
        )
    }
}
/// One block size of the subgroup kernel.
struct SubgroupVariant {
    buffer: MatmulVariant,
    /// The texture kernel that serves its products, where there is one, and
    /// that kernel's block.
    texture: Option<(MatmulVariant, (usize, usize))>,
    /// Rows and columns of C per workgroup.
    block: (usize, usize),
    /// The fewest multiply-adds (per batch) for which it is considered.
    min_work: usize,
}

/// Biggest (most loads saved per multiply-add) first.
const SUBGROUP_VARIANTS: [SubgroupVariant; 3] = [
    SubgroupVariant {
        buffer: MatmulVariant::Subgroup128x64,
        texture: Some((MatmulVariant::Texture128x64, (128, 64))),
        block: (128, 64),
        min_work: 1 << 29,
    },
    SubgroupVariant {
        buffer: MatmulVariant::Subgroup64x64,
        texture: Some((MatmulVariant::Texture64x32, (64, 32))),
        block: (64, 64),
        min_work: 0,
    },
    SubgroupVariant {
        buffer: MatmulVariant::Subgroup32x32,
        texture: None,
        block: (32, 32),
        min_work: 0,
    },
];

/// The variant an implicit A takes (the 64x64 class, whose texture block
/// is 64x32: see `matmul`).
const IMPLICIT_VARIANT: usize = 1;

/// The subgroup kernel for an `m x n x k` product, as its index in
/// [`SUBGROUP_VARIANTS`]: the biggest block (among those for its size) whose
/// padded work is within half again of the least padded choice.
fn subgroup_variant(m: usize, n: usize, k: usize) -> usize {
    let padded = |(rows, cols): (usize, usize)| m.div_ceil(rows) * rows * n.div_ceil(cols) * cols;
    let candidates: Vec<(usize, (usize, usize))> = SUBGROUP_VARIANTS
        .iter()
        .enumerate()
        .filter(|(_, variant)| m * n * k >= variant.min_work)
        .map(|(v, variant)| (v, variant.block))
        .collect();
    let least = candidates
        .iter()
        .map(|&(_, block)| padded(block))
        .min()
        .unwrap_or(usize::MAX);
    candidates
        .iter()
        .find(|&&(_, block)| padded(block) * 2 <= least * 3)
        .map_or(SUBGROUP_VARIANTS.len() - 1, |&(v, _)| v)
}

/// Below this many multiply-adds a tiled kernel's big blocks are mostly
/// padding: small products use a plain kernel with one output per invocation.
const SMALL_MATMUL: usize = 1 << 18;

const SMALL_MATMUL_SHADER: Shader = Shader {
    name: "small matmul",
    text: SMALL_MATMUL_SRC,
};

const SMALL_MATMUL_SRC: &str = "
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> dims: array<u32>;
// STORE BEGIN
fn store1(e: u32, v: f32) { c[e / 4u][e % 4u] = v; }
fn store4(e: u32, v: vec4<f32>) { c[e / 4u] = v; }
// STORE END
@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let m = dims[0];
    let n = dims[1];
    let k = dims[2];
    let col = gid.x;
    let row = gid.y;
    if (row >= m || col >= n) { return; }
    let ab = gid.z * dims[3] + row * dims[6];
    let bb = gid.z * dims[4] + col;
    var acc = 0.0;
    for (var i = 0u; i < k; i = i + 1u) {
        acc = acc + a[ab + i] * b[bb + i * dims[7]];
    }
    store1(gid.z * dims[5] + row * n + col, acc);
}
";

/// A texture product runs `m * n * k` multiply-adds and packs the elements
/// of the operands that no producer wrote into a texture (`k * (m + n)` at
/// most): it takes the texture kernel when the multiply-adds are at least
/// this many times the packed elements. Measured on lavapipe, packing costs
/// about 4.4 ns per element and the texture kernel saves about 0.05 ns per
/// multiply-add, so the break-even is near 90. The bar is lower because a
/// product left on the 64x64 buffer block costs a second big compile
/// (1.4 s with Mesa's cache empty) wherever the plan's other products use
/// the texture block: in `cinder bench cnn` the first linear layer's input
/// gradient (64x3136x128, 63 multiply-adds per packed element) packs its
/// weight in 1.5 ms and runs in 1.9 ms, against 3.0 ms on the buffer block.
const TEXTURE_MIN_REUSE: usize = 48;

/// Into how many parts to split a product's K: a long-K product with few
/// output blocks (a weight gradient, say) would otherwise run on a handful
/// of workgroups while the other cores idle. Each part is one batch of the
/// same kernel, summed afterwards in a fixed order. Parts keep an even
/// length so the subgroup kernel's paired loads stay aligned.
pub(crate) fn split_k(m: usize, n: usize, k: usize, batch: usize, subgroups: bool) -> usize {
    if batch != 1 || m * n * k < SMALL_MATMUL {
        return 1;
    }
    let (rows, cols) = if subgroups {
        SUBGROUP_VARIANTS[subgroup_variant(m, n, k)].block
    } else {
        MATMUL_BLOCK
    };
    let blocks = m.div_ceil(rows) * n.div_ceil(cols);
    let mut parts = 1;
    while blocks * parts < SPLIT_K_TARGET_GROUPS
        && k.is_multiple_of(4 * parts)
        && k / (2 * parts) >= SPLIT_K_MIN_LEN
    {
        parts *= 2;
    }
    parts
}

/// Workgroups split-K aims for, and the shortest part worth a workgroup.
const SPLIT_K_TARGET_GROUPS: usize = 16;
const SPLIT_K_MIN_LEN: usize = 256;

/// One operand of a product: its shape (batch dims flattened to one),
/// whether it has a batch dimension, and whether its producer can write it
/// straight into a texture (no pack to pay for).
pub(crate) struct Operand<'a> {
    pub shape: &'a [usize],
    pub batched: bool,
    pub in_texture: bool,
    /// For A: a channels-last unfold (`Op::ConvRows`) that the texture
    /// kernel fetches from its image instead of reading it materialized.
    pub conv: Option<ConvOperand<'a>>,
}

/// An implicit A: the windows `window` over an image of `channels`
/// channels (a multiple of 4) stored as `[N * H * W, channels]`.
#[derive(Clone, Copy)]
pub(crate) struct ConvOperand<'a> {
    pub window: &'a crate::graph::Window2d,
    pub channels: usize,
    pub image_rows: usize,
}

/// Words 8 to 20 of the implicit texture kernel's shape (see
/// shaders/matmul_texture_implicit_64x32.wgsl): word 8 is unused (0), then
/// the image's geometry.
fn conv_words(conv: Option<ConvOperand<'_>>) -> Vec<usize> {
    match conv {
        None => Vec::new(),
        Some(c) => {
            let w = c.window;
            vec![
                0,
                c.channels / 4,
                w.kernel[1],
                w.padding[0],
                w.padding[1],
                w.out[0],
                w.out[1],
                w.image[0],
                w.image[1],
                w.stride[0],
                w.stride[1],
                w.dilation[0],
                w.dilation[1],
            ]
        }
    }
}

/// The kernel for `a @ b` (row-major), in `split` parts along K (see
/// [`split_k`]; the parts land in consecutive `m x n` blocks of the
/// output). `subgroups` says whether the device offers the subgroup kernel;
/// `textures`, the biggest texture side where the device packs operands
/// into textures.
pub(crate) fn matmul(
    a: Operand<'_>,
    b: Operand<'_>,
    subgroups: bool,
    textures: Option<u32>,
    split: usize,
) -> MatmulKernel {
    let (a_batched, b_batched) = (a.batched, b.batched);
    let in_texture = [a.in_texture, b.in_texture];
    let conv = a.conv;
    let (a, b) = (a.shape, b.shape);
    let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
    let n = b[b.len() - 1];
    let mut batch = if a_batched {
        a[0]
    } else if b_batched {
        b[0]
    } else {
        1
    };
    let (mut loop_k, mut stride_a, mut stride_b) = (
        k,
        if a_batched { m * k } else { 0 },
        if b_batched { k * n } else { 0 },
    );
    if split > 1 {
        loop_k = k / split;
        stride_a = loop_k;
        stride_b = loop_k * n;
        batch = split;
    }
    let stride_c = m * n;
    let dims = [m, n, loop_k, stride_a, stride_b, stride_c, k, n]
        .iter()
        .map(|&d| d as u32)
        .collect();
    let grid = |(rows, cols): (usize, usize)| {
        (
            n.div_ceil(cols) as u32,
            m.div_ceil(rows) as u32,
            batch as u32,
        )
    };
    if m * n * k * batch / split < SMALL_MATMUL && conv.is_none() {
        return MatmulKernel {
            variant: MatmulVariant::Small,
            constants: vec![],
            dims,
            workgroups: grid((8, 8)),
            packs: None,
        };
    }
    let c_vec4 = n.is_multiple_of(4) && stride_c.is_multiple_of(4);
    let mut constants = vec![("C_VEC4".to_string(), c_vec4 as u8 as f64)];
    if subgroups {
        let aligned = [loop_k, n, k, stride_a, stride_b]
            .iter()
            .all(|d| d.is_multiple_of(2));
        // An implicit A needs a texture block, whatever block the padding
        // rule would pick for a narrow product (a convolution's input
        // gradient over few input channels): a materialized unfold on the
        // 32x32 block would cost far more than the padded columns.
        let variant = match conv {
            Some(_) => &SUBGROUP_VARIANTS[IMPLICIT_VARIANT],
            None => &SUBGROUP_VARIANTS[subgroup_variant(m, n, k)],
        };
        let block = variant.block;
        // How A and B would lie in their textures (an implicit A: its image).
        let k_padded = k.next_multiple_of(4);
        let a_pack = match conv {
            Some(c) => OperandPack::new(c.image_rows, c.channels, c.image_rows),
            None => OperandPack::new(m, k, m),
        };
        let packs = [a_pack, OperandPack::new(k, n, k_padded)];
        // Textures have no batch dimension here (split-K's parts are ranges
        // of the same texture), and each side must fit the adapter's texture
        // size.
        let fits = |max: u32| packs.iter().all(|p| p.width() <= max && p.height <= max);
        // Packing costs per element of A and B, the texture kernel saves per
        // multiply-add: it pays when each packed element takes part in enough
        // of them. An operand its producer writes into a texture costs nothing.
        let packed = [a_pack.rows * a_pack.cols, k_padded * n]
            .iter()
            .zip(in_texture)
            .filter(|(_, free)| !free)
            .map(|(&elements, _)| elements)
            .sum::<usize>();
        // An implicit A always takes textures: the alternative materializes
        // the unfold, KH * KW times what a pack of its image copies.
        let pays = conv.is_some() || m * n * k >= TEXTURE_MIN_REUSE * packed;
        // A split-K part starts at a whole texel of A (split_k keeps parts
        // only even), and an implicit A's texels are whole groups of 4
        // channels of one tap.
        let on_texels = (split == 1 || loop_k.is_multiple_of(4))
            && conv.is_none_or(|c| c.channels.is_multiple_of(4));
        let texture = variant.texture.filter(|_| {
            textures.is_some_and(|max| !a_batched && !b_batched && pays && on_texels && fits(max))
        });
        if let Some((plain, texture_block)) = texture {
            let variant = match conv {
                Some(_) => MatmulVariant::TextureImplicit64x32,
                None => plain,
            };
            let mut dims: Vec<u32> = dims;
            dims.extend(conv_words(conv).iter().map(|&w| w as u32));
            return MatmulKernel {
                variant,
                constants,
                dims,
                workgroups: grid(texture_block),
                packs: Some(packs),
            };
        }
        constants.push(("ALIGNED".to_string(), aligned as u8 as f64));
        return MatmulKernel {
            variant: variant.buffer,
            constants,
            dims,
            workgroups: grid(block),
            packs: None,
        };
    }
    MatmulKernel {
        variant: MatmulVariant::Portable,
        constants,
        dims,
        workgroups: grid(MATMUL_BLOCK),
        packs: None,
    }
}

/// Elements each invocation of an optimizer kernel updates.
pub(crate) const OPTIM_ELEMENTS_PER_THREAD: usize = 4;

/// The shader for an optimizer, its override constants, how many state
/// tensors it updates and how many hyper-parameters it reads. Adam reads
/// and writes its tensors a vec4 at a time, its tensors bound with their
/// padded sizes, and its scalars as a uniform buffer (see adam.wgsl).
pub(crate) fn optimizer(kind: OptimKind) -> (Shader, Vec<(String, f64)>, usize, usize) {
    match kind {
        OptimKind::Sgd => (SGD, vec![], 0, 2),
        OptimKind::SgdMomentum { nesterov } => (
            SGD_MOMENTUM,
            vec![("NESTEROV".to_string(), nesterov as u8 as f64)],
            1,
            5,
        ),
        OptimKind::Adam => (ADAM, vec![], 2, 8),
    }
}

/// `shader` (a matmul kernel) with its C-store functions, the block between
/// its `// STORE BEGIN` and `// STORE END` markers, replaced by `store`,
/// which may declare further bindings (4 and up). A shader without the
/// markers is an error: silently keeping its own stores would drop the
/// epilogue's work.
pub(crate) fn with_store(shader: Shader, store: &str) -> Result<String> {
    const BEGIN: &str = "// STORE BEGIN";
    const END: &str = "// STORE END";
    let source = shader.text;
    match (source.find(BEGIN), source.find(END)) {
        (Some(b), Some(e)) if b < e => Ok(format!(
            "{}{store}\n{}",
            &source[..b],
            &source[e + END.len()..]
        )),
        _ => Err(Error::Gpu(format!(
            "internal: matmul kernel {} has no `{BEGIN}` ... `{END}` block to splice an epilogue into",
            shader.name
        ))),
    }
}

/// Every hand-written shader, for validation in tests.
pub fn shader_sources() -> Vec<(&'static str, &'static str)> {
    let prelude = ("prelude.wgsl", include_str!("../shaders/prelude.wgsl"));
    let matmuls = [
        MatmulVariant::Small,
        MatmulVariant::Portable,
        MatmulVariant::Subgroup128x64,
        MatmulVariant::Subgroup64x64,
        MatmulVariant::Subgroup32x32,
        MatmulVariant::Texture128x64,
        MatmulVariant::Texture64x32,
        MatmulVariant::TextureImplicit64x32,
    ]
    .map(MatmulVariant::shader);
    [ADAM, SGD, SGD_MOMENTUM, PACK_TEXTURE, COPY_REGION]
        .into_iter()
        .chain(matmuls)
        .map(|s| (s.name, s.text))
        .chain(std::iter::once(prelude))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{with_store, MatmulVariant, Shader};

    #[test]
    fn every_fusable_kernel_has_store_hooks_and_a_missing_hook_is_an_error() {
        for variant in [
            MatmulVariant::Small,
            MatmulVariant::Portable,
            MatmulVariant::Subgroup32x32,
        ] {
            assert!(variant.fusable());
            let spliced = with_store(variant.shader(), "// EPILOGUE");
            assert!(spliced.is_ok_and(|s| s.contains("// EPILOGUE")));
        }
        let bare = Shader {
            name: "bare",
            text: "fn store1(e: u32, v: f32) {}",
        };
        let err = with_store(bare, "// EPILOGUE").unwrap_err().to_string();
        assert!(err.contains("bare") && err.contains("STORE BEGIN"), "{err}");
    }
}
