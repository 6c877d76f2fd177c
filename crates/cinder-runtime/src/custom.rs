//! Kernels of one's own: an op the runtime does not have, as a WGSL compute
//! shader the user writes, planned, bound and cached like a built-in op.
//! `cinder_tensor::CustomOp` adds its shape rule and backward pass.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::graph::{numel, DType, Node, Op};

/// Threads per workgroup of the default grid (see [`CustomKernel::workgroups`]).
pub const CUSTOM_WG: u32 = 256;

/// A compute shader for an op.
///
/// The shader's bindings, all in group 0:
///
/// | binding | what |
/// |---|---|
/// | `0 .. n` | the inputs, in order, `var<storage, read> array<f32>` (or `i32`, `u32`: their dtypes), row-major and contiguous |
/// | `n` | the output, `var<storage, read_write> array<T>` |
/// | `n + 1` | present when [`params`](CustomKernel::params) is not empty: `var<storage, read> array<u32>` |
///
/// Buffers are allocated in whole 16-byte blocks, so `arrayLength` may
/// exceed the element count: bound loops by the shapes (pass them in
/// `params`). Every element of the output must be written; its previous
/// contents are undefined. The same kernel over the same shapes replays the
/// same pipeline: the source and parameters are the kernel's identity, not
/// the Rust value, so creating the op anew each step costs nothing.
pub trait CustomKernel: Send + Sync {
    /// A name for errors, profiles and kernel dumps.
    fn name(&self) -> &str;

    /// The WGSL source (see the binding layout above).
    fn wgsl(&self) -> String;

    /// Workgroups to dispatch for an `output` of this shape. The default
    /// runs one invocation per output element in workgroups of
    /// [`CUSTOM_WG`], the grid folded into two dimensions past 65535
    /// workgroups; such a shader finds its element as
    /// `(wid.y * nwg.x + wid.x) * 256u + lid` (workgroup id, number of
    /// workgroups, local invocation index) and returns past the end.
    fn workgroups(&self, output: &[usize], inputs: &[&[usize]]) -> [u32; 3] {
        let _ = inputs;
        let groups = numel(output).div_ceil(CUSTOM_WG as usize).max(1);
        let y = groups.div_ceil(65535);
        [groups.div_ceil(y) as u32, y as u32, 1]
    }

    /// Words the shader reads at binding `n + 1` (shapes, sizes, fixed
    /// settings), given the shapes; none by default.
    fn params(&self, output: &[usize], inputs: &[&[usize]]) -> Vec<u32> {
        let _ = (output, inputs);
        Vec::new()
    }

    /// Whether the shader writes each of its `var<private>` arrays whole
    /// before reading any of it. WGSL zero-initialises private memory, and
    /// Mesa's llvmpipe compiles the zeroing of a large array slowly (about
    /// 17 s for 1024 floats); where the adapter takes SPIR-V directly (a
    /// Vulkan CPU adapter), a kernel that says so is compiled without it.
    /// Saying so wrongly leaves such a kernel reading garbage there. False
    /// by default.
    fn writes_private_arrays_first(&self) -> bool {
        false
    }
}

/// A user kernel applied to particular shapes: everything planning needs,
/// computed once when the node is made. Compared and hashed by source,
/// parameters and grid, so it is structure like any other op.
#[derive(Clone)]
pub(crate) struct CustomCall {
    pub name: Arc<str>,
    pub source: Arc<str>,
    pub params: Vec<u32>,
    pub workgroups: [u32; 3],
    pub writes_private_first: bool,
}

impl PartialEq for CustomCall {
    fn eq(&self, other: &CustomCall) -> bool {
        self.params == other.params
            && self.workgroups == other.workgroups
            && self.source == other.source
            && self.name == other.name
            && self.writes_private_first == other.writes_private_first
    }
}

impl Eq for CustomCall {}

impl std::hash::Hash for CustomCall {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.source.hash(state);
        self.params.hash(state);
        self.workgroups.hash(state);
        self.writes_private_first.hash(state);
    }
}

impl std::fmt::Debug for CustomCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustomCall({}, {:?})", self.name, self.workgroups)
    }
}

impl Node {
    /// `kernel` over `inputs`, making a tensor of `shape` and `dtype`.
    pub fn custom(
        kernel: &dyn CustomKernel,
        inputs: &[Node],
        shape: &[usize],
        dtype: DType,
    ) -> Result<Node> {
        let first = inputs
            .first()
            .ok_or_else(|| Error::invalid("custom op", "needs at least one input"))?;
        for n in inputs {
            if n.device() != first.device() {
                return Err(Error::invalid(
                    "custom op",
                    format!("{}: inputs live on different devices", kernel.name()),
                ));
            }
        }
        let shapes: Vec<&[usize]> = inputs.iter().map(|n| n.shape()).collect();
        let workgroups = kernel.workgroups(shape, &shapes);
        if workgroups.contains(&0) {
            return Err(Error::invalid(
                "custom op",
                format!("{}: a grid of {workgroups:?} workgroups", kernel.name()),
            ));
        }
        let call = CustomCall {
            name: kernel.name().into(),
            source: kernel.wgsl().into(),
            params: kernel.params(shape, &shapes),
            workgroups,
            writes_private_first: kernel.writes_private_arrays_first(),
        };
        Ok(Node::new(
            first.device(),
            shape.to_vec(),
            dtype,
            Op::Custom(call, inputs.to_vec()),
        ))
    }
}
