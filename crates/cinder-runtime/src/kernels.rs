//! Hand-written kernels from `shaders/`: matmul and the fused optimizer updates.

use crate::graph::OptimKind;

const ADAM: &str = include_str!("../../../shaders/adam.wgsl");
const SGD: &str = include_str!("../../../shaders/sgd.wgsl");
const SGD_MOMENTUM: &str = include_str!("../../../shaders/sgd_momentum.wgsl");

pub(crate) struct MatmulKernel {
    pub source: String,
    pub constants: Vec<(String, f64)>,
    pub workgroups: (u32, u32, u32),
}

/// Register-tiled matmul: 8 invocations per workgroup, each computing a 32x32
/// block of C with vec4 accumulators (see the header of shaders/matmul.wgsl).
const MATMUL: &str = include_str!("../../../shaders/matmul.wgsl");
const MATMUL_BLOCK_ROWS: usize = 32;
const MATMUL_BLOCK_COLS: usize = 256;

/// Below this many multiply-adds the tuned kernel's compile time (one pipeline
/// per shape, a large unrolled body) costs more than it saves: small products
/// use a plain kernel with one output per invocation.
const SMALL_MATMUL: usize = 1 << 18;

const SMALL_MATMUL_SRC: &str = "
override M: u32;
override N: u32;
override K: u32;
override A_BATCH_STRIDE: u32;
override B_BATCH_STRIDE: u32;
override C_BATCH_STRIDE: u32;
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let row = gid.y;
    if (row >= M || col >= N) { return; }
    let ab = gid.z * A_BATCH_STRIDE + row * K;
    let bb = gid.z * B_BATCH_STRIDE + col;
    var acc = 0.0;
    for (var k = 0u; k < K; k = k + 1u) {
        acc = acc + a[ab + k] * b[bb + k * N];
    }
    c[gid.z * C_BATCH_STRIDE + row * N + col] = acc;
}
";

pub(crate) fn matmul(a: &[usize], b: &[usize], a_batched: bool, b_batched: bool) -> MatmulKernel {
    let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
    let n = b[b.len() - 1];
    let batch = if a_batched {
        a[0]
    } else if b_batched {
        b[0]
    } else {
        1
    };
    let constants = vec![
        ("M".to_string(), m as f64),
        ("N".to_string(), n as f64),
        ("K".to_string(), k as f64),
        (
            "A_BATCH_STRIDE".to_string(),
            if a_batched { (m * k) as f64 } else { 0.0 },
        ),
        (
            "B_BATCH_STRIDE".to_string(),
            if b_batched { (k * n) as f64 } else { 0.0 },
        ),
        ("C_BATCH_STRIDE".to_string(), (m * n) as f64),
    ];
    if m * n * k < SMALL_MATMUL {
        return MatmulKernel {
            source: SMALL_MATMUL_SRC.to_string(),
            constants,
            workgroups: (n.div_ceil(8) as u32, m.div_ceil(8) as u32, batch as u32),
        };
    }
    MatmulKernel {
        source: MATMUL.to_string(),
        constants,
        workgroups: (
            n.div_ceil(MATMUL_BLOCK_COLS) as u32,
            m.div_ceil(MATMUL_BLOCK_ROWS) as u32,
            batch as u32,
        ),
    }
}

/// The shader for an optimizer, its override constants, how many state
/// tensors it updates and how many hyper-parameters it reads.
pub(crate) fn optimizer(kind: OptimKind) -> (String, Vec<(String, f64)>, usize, usize) {
    match kind {
        OptimKind::Sgd => (SGD.to_string(), vec![], 0, 2),
        OptimKind::SgdMomentum { nesterov } => (
            SGD_MOMENTUM.to_string(),
            vec![("NESTEROV".to_string(), nesterov as u8 as f64)],
            1,
            5,
        ),
        OptimKind::Adam => (ADAM.to_string(), vec![], 2, 8),
    }
}

/// Every hand-written shader, for validation in tests.
pub fn shader_sources() -> Vec<(&'static str, &'static str)> {
    vec![
        ("adam.wgsl", ADAM),
        ("sgd.wgsl", SGD),
        ("sgd_momentum.wgsl", SGD_MOMENTUM),
        (
            "prelude.wgsl",
            include_str!("../../../shaders/prelude.wgsl"),
        ),
        ("matmul.wgsl", MATMUL),
        ("small matmul", SMALL_MATMUL_SRC),
    ]
}
