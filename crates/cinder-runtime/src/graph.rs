//! The lazy graph: every op appends a [`Node`]; nothing runs until a value is read
//! or [`Device::realize`] is called.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::device::{lock, Device};
use crate::error::{Error, Result};
use crate::pool::Storage;

static NEXT_NODE_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    I32,
    U32,
}

impl DType {
    pub fn size(self) -> usize {
        4
    }

    pub(crate) fn wgsl(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I32 => "i32",
            DType::U32 => "u32",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wgsl())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Abs,
    Relu,
    Sigmoid,
    Tanh,
    Gelu,
    Recip,
    Sign,
    Floor,
    Sin,
    Cos,
    /// 1 where x > 0, else 0: the derivative of relu.
    Step,
    /// d gelu / dx, the exact (erf) form.
    GeluGrad,
    /// Logical not of a 0/1 mask.
    Not,
    /// `log(1 + x)`, accurate for small `x` (no composition is).
    Log1p,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// The first operand where the second (a mask) is nonzero, else 0: a
    /// gradient routed by a mask, as PyTorch's ReLU and max-pool gradients
    /// are (a NaN where the mask is 0 gives 0, where `x * mask` gives NaN).
    /// Generated kernels read the first operand only where the mask holds.
    Masked,
    Div,
    Pow,
    Max,
    Min,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl BinaryOp {
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
    ArgMax,
    ArgMin,
}

/// How a node reads its input: output coordinate `c` maps to the input's
/// row-major index `offset + sum(c[d] * strides[d])`, or to zero where `c`
/// falls outside `mask`. Permute, expand, slice, pad and reshape of a
/// contiguous input are all one such map, and they cost nothing when fused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ViewSpec {
    pub strides: Vec<i64>,
    pub offset: i64,
    pub mask: Option<Vec<(usize, usize)>>,
}

/// The sliding windows of a 2-D convolution or pooling over an image of
/// `image` rows and columns: `out` window positions per axis, the first at
/// `-padding`, then every `stride`; a window reads `kernel` taps `dilation`
/// apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Window2d {
    pub image: [usize; 2],
    pub out: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
}

impl Window2d {
    /// The image row (or column, `axis` 1) that tap `k` of window `o` reads,
    /// if it is inside the image.
    pub fn source(&self, axis: usize, o: usize, k: usize) -> Option<usize> {
        let at =
            (o * self.stride[axis] + k * self.dilation[axis]) as i64 - self.padding[axis] as i64;
        (at >= 0 && at < self.image[axis] as i64).then_some(at as usize)
    }
}

/// What an unfold reads outside the image: zero for convolutions, minus
/// infinity for max pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fill {
    Zero,
    NegInfinity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptimKind {
    Sgd,
    SgdMomentum {
        nesterov: bool,
    },
    /// Adam and AdamW: the host folds the decay style into the scalars.
    Adam,
}

/// One operation, generic over how it names its inputs: a lazy graph's nodes
/// hold `Op<Node>`, the planner's canonical entries `Op<usize>` (indices of
/// earlier entries). An op is structure only: values that change from step
/// to step (uploaded bytes, constants, seeds) travel beside it as a
/// [`Payload`], so two ops compare and hash equal exactly when they compile
/// to the same kernels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Op<I> {
    /// A realized tensor's buffer. Only canonical entries have it: a realized
    /// node has no op.
    External,
    /// Host data (the payload's bytes) written into a fresh buffer.
    Upload,
    /// The payload's value everywhere.
    Const,
    Iota {
        axis: usize,
    },
    /// Uniform in [0, 1) or standard normal from the payload's seed.
    Rand {
        normal: bool,
    },
    Unary(UnaryOp, I),
    Binary(BinaryOp, I, I),
    Where(I, I, I),
    Cast(I),
    View(ViewSpec, I),
    Gather {
        axis: usize,
        src: I,
        index: I,
    },
    Reduce {
        op: ReduceOp,
        axes: Vec<usize>,
        input: I,
    },
    /// `[N, C, H, W] -> [N, C, KH, KW, OH, OW]`: every window's taps (im2col).
    Unfold(Window2d, Fill, I),
    /// The adjoint of a zero-filled unfold: `[N, C, KH, KW, OH, OW] ->
    /// [N, C, H, W]`, each pixel the sum of the taps that read it (col2im).
    Fold(Window2d, I),
    /// The unfold of an image stored channels-last, as a matrix:
    /// `[N * H * W, C] -> [N * OH * OW, KH * KW * C]`, row `(n, oy, ox)`
    /// holding the taps of that window, channels fastest, zero outside the
    /// image. A product with it as A is a convolution in channels-last
    /// layout; on a CPU adapter the texture kernel fetches it straight from
    /// the image (an implicit GEMM) instead of materializing it.
    ConvRows(Window2d, I),
    Matmul {
        a: I,
        b: I,
        a_batched: bool,
        b_batched: bool,
    },
    /// The inputs side by side along `axis`. Always given a buffer of its
    /// own, each input copied into its region by a copy kernel that every
    /// concatenation shares: what many-input joins use (`Tensor::concat` of
    /// a few tensors is a fused sum of padded views instead).
    Concat {
        axis: usize,
        inputs: Vec<I>,
    },
    /// A user's kernel (see [`crate::CustomKernel`]) over the inputs, in
    /// order; always given a buffer of its own.
    Custom(crate::custom::CustomCall, Vec<I>),
}

impl<I: Clone> Op<I> {
    /// The inputs, in the order the op names them.
    pub(crate) fn inputs(&self) -> Vec<I> {
        match self {
            Op::External | Op::Upload | Op::Const | Op::Iota { .. } | Op::Rand { .. } => vec![],
            Op::Unary(_, a)
            | Op::Cast(a)
            | Op::View(_, a)
            | Op::Unfold(_, _, a)
            | Op::Fold(_, a)
            | Op::ConvRows(_, a) => vec![a.clone()],
            Op::Reduce { input, .. } => vec![input.clone()],
            Op::Binary(_, a, b) => vec![a.clone(), b.clone()],
            Op::Gather { src, index, .. } => vec![src.clone(), index.clone()],
            Op::Matmul { a, b, .. } => vec![a.clone(), b.clone()],
            Op::Where(c, a, b) => vec![c.clone(), a.clone(), b.clone()],
            Op::Concat { inputs, .. } | Op::Custom(_, inputs) => inputs.clone(),
        }
    }

    /// The same op over other names for its inputs.
    pub(crate) fn map<J>(&self, mut f: impl FnMut(&I) -> J) -> Op<J> {
        match self {
            Op::External => Op::External,
            Op::Upload => Op::Upload,
            Op::Const => Op::Const,
            Op::Iota { axis } => Op::Iota { axis: *axis },
            Op::Rand { normal } => Op::Rand { normal: *normal },
            Op::Unary(u, a) => Op::Unary(*u, f(a)),
            Op::Binary(b, x, y) => Op::Binary(*b, f(x), f(y)),
            Op::Where(c, a, b) => Op::Where(f(c), f(a), f(b)),
            Op::Cast(a) => Op::Cast(f(a)),
            Op::View(spec, a) => Op::View(spec.clone(), f(a)),
            Op::Gather { axis, src, index } => Op::Gather {
                axis: *axis,
                src: f(src),
                index: f(index),
            },
            Op::Reduce { op, axes, input } => Op::Reduce {
                op: *op,
                axes: axes.clone(),
                input: f(input),
            },
            Op::Unfold(win, fill, a) => Op::Unfold(win.clone(), *fill, f(a)),
            Op::Fold(win, a) => Op::Fold(win.clone(), f(a)),
            Op::ConvRows(win, a) => Op::ConvRows(win.clone(), f(a)),
            Op::Matmul {
                a,
                b,
                a_batched,
                b_batched,
            } => Op::Matmul {
                a: f(a),
                b: f(b),
                a_batched: *a_batched,
                b_batched: *b_batched,
            },
            Op::Concat { axis, inputs } => Op::Concat {
                axis: *axis,
                inputs: inputs.iter().map(f).collect(),
            },
            Op::Custom(call, inputs) => Op::Custom(call.clone(), inputs.iter().map(f).collect()),
        }
    }
}

/// The value a leaf op carries beside its structure (see [`Op`]).
#[derive(Clone, Debug)]
pub(crate) enum Payload {
    None,
    Bytes(Arc<Vec<u8>>),
    Scalar(f64),
    Seed(u64),
}

pub(crate) enum State {
    Pending {
        op: Op<Node>,
        payload: Payload,
        /// The version of each realized input when this node was recorded.
        versions: Vec<Option<(u64, u64)>>,
    },
    Realized(Storage),
}

pub(crate) struct NodeInner {
    pub id: u64,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub device: Device,
    pub state: Mutex<State>,
}

/// One value in the lazy graph: its shape, dtype and either the op that makes
/// it or, once realized, the buffer that holds it (row-major, contiguous).
#[derive(Clone)]
pub struct Node(pub(crate) Arc<NodeInner>);

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node#{}{:?}:{}", self.0.id, self.0.shape, self.0.dtype)
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

pub fn contiguous_strides(shape: &[usize]) -> Vec<i64> {
    let mut strides = vec![0i64; shape.len()];
    let mut acc = 1i64;
    for d in (0..shape.len()).rev() {
        strides[d] = acc;
        acc *= shape[d] as i64;
    }
    strides
}

/// The view `outer` (output `shape`) of a view `inner` (output
/// `inner_shape`), as one view of `inner`'s source, when the source index is
/// linear in the outer coordinates; `None` otherwise (masks, negative
/// strides, or an outer step that crosses between dimensions that are not
/// contiguous in the source).
pub(crate) fn compose_views(
    inner_shape: &[usize],
    inner: &ViewSpec,
    shape: &[usize],
    outer: &ViewSpec,
) -> Option<ViewSpec> {
    if inner.mask.is_some()
        || outer.mask.is_some()
        || outer.strides.iter().any(|&s| s < 0)
        || outer.offset < 0
        || numel(shape) == 0
    {
        return None;
    }
    // The inner view's dimensions, those of size 1 dropped and neighbours
    // that are contiguous in the source merged, innermost first: (size,
    // stride in the inner view's row-major order, stride in the source).
    let cs = contiguous_strides(inner_shape);
    let mut groups: Vec<(usize, i64, i64)> = Vec::new();
    for d in (0..inner_shape.len()).rev() {
        let n = inner_shape[d];
        if n == 1 {
            continue;
        }
        match groups.last_mut() {
            Some(g) if inner.strides[d] == g.2 * g.0 as i64 => g.0 *= n,
            _ => groups.push((n, cs[d], inner.strides[d])),
        }
    }
    // Each outer dimension must step within one group, and all of them
    // together (and the offset) must never carry from a group into the
    // next: then the source index is linear in the outer coordinates.
    let mut reach = vec![0usize; groups.len()];
    let mut offset = inner.offset;
    let mut rest = outer.offset;
    for (gi, &(n, step, src_stride)) in groups.iter().enumerate().rev() {
        let digit = (rest / step) % n as i64;
        rest -= digit * step;
        offset += digit * src_stride;
        reach[gi] += digit as usize;
    }
    if rest != 0 {
        return None;
    }
    let mut strides = vec![0i64; shape.len()];
    for (d, &n) in shape.iter().enumerate() {
        let s = outer.strides[d];
        if n == 1 || s == 0 {
            continue;
        }
        let gi = groups
            .iter()
            .position(|&(size, step, _)| s % step == 0 && s / step < size as i64)?;
        let (_, step, src_stride) = groups[gi];
        strides[d] = s / step * src_stride;
        reach[gi] += (s / step) as usize * (n - 1);
    }
    if reach.iter().zip(&groups).any(|(&r, &(n, _, _))| r >= n) {
        return None;
    }
    Some(ViewSpec {
        strides,
        offset,
        mask: None,
    })
}

impl Node {
    pub(crate) fn new(device: &Device, shape: Vec<usize>, dtype: DType, op: Op<Node>) -> Node {
        Node::with_payload(device, shape, dtype, op, Payload::None)
    }

    fn with_payload(
        device: &Device,
        shape: Vec<usize>,
        dtype: DType,
        op: Op<Node>,
        payload: Payload,
    ) -> Node {
        let versions = op
            .inputs()
            .iter()
            .map(|n| n.storage().map(|s| (s.id(), s.version())))
            .collect();
        Node(Arc::new(NodeInner {
            id: NEXT_NODE_ID.fetch_add(1, Ordering::Relaxed),
            shape,
            dtype,
            device: device.clone(),
            state: Mutex::new(State::Pending {
                op,
                payload,
                versions,
            }),
        }))
    }

    pub fn id(&self) -> u64 {
        self.0.id
    }

    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    pub fn numel(&self) -> usize {
        numel(&self.0.shape)
    }

    pub fn device(&self) -> &Device {
        &self.0.device
    }

    pub fn is_realized(&self) -> bool {
        matches!(&*lock(&self.0.state), State::Realized(_))
    }

    pub(crate) fn storage(&self) -> Option<Storage> {
        match &*lock(&self.0.state) {
            State::Realized(s) => Some(s.clone()),
            State::Pending { .. } => None,
        }
    }

    pub(crate) fn set_realized(&self, storage: Storage) {
        // Dropping the op releases the inputs, so a realized value does not keep
        // its whole history alive.
        *lock(&self.0.state) = State::Realized(storage);
    }

    fn check_same_device(&self, op: &'static str, other: &Node) -> Result<()> {
        if self.0.device != other.0.device {
            return Err(Error::invalid(op, "tensors live on different devices"));
        }
        Ok(())
    }

    // ---- leaves -------------------------------------------------------------

    pub fn from_bytes(
        device: &Device,
        shape: &[usize],
        dtype: DType,
        bytes: Vec<u8>,
    ) -> Result<Node> {
        let want = numel(shape) * dtype.size();
        if bytes.len() != want {
            return Err(Error::shape(
                "from_slice",
                format!(
                    "{} bytes of data for shape {shape:?} of {dtype} (needs {want})",
                    bytes.len()
                ),
            ));
        }
        Ok(Node::with_payload(
            device,
            shape.to_vec(),
            dtype,
            Op::Upload,
            Payload::Bytes(Arc::new(bytes)),
        ))
    }

    pub fn constant(device: &Device, shape: &[usize], dtype: DType, value: f64) -> Node {
        Node::with_payload(
            device,
            shape.to_vec(),
            dtype,
            Op::Const,
            Payload::Scalar(value),
        )
    }

    /// The coordinate along `axis`, as `dtype`.
    pub fn iota(device: &Device, shape: &[usize], dtype: DType, axis: usize) -> Result<Node> {
        if axis >= shape.len() {
            return Err(Error::invalid(
                "iota",
                format!("axis {axis} out of range for shape {shape:?}"),
            ));
        }
        Ok(Node::new(device, shape.to_vec(), dtype, Op::Iota { axis }))
    }

    /// Uniform in [0, 1) or standard normal, a pure function of (seed, index):
    /// the same seed gives the same numbers on every run and adapter.
    pub fn rand(device: &Device, shape: &[usize], seed: u64, normal: bool) -> Node {
        Node::with_payload(
            device,
            shape.to_vec(),
            DType::F32,
            Op::Rand { normal },
            Payload::Seed(seed),
        )
    }

    // ---- element-wise -------------------------------------------------------

    pub fn unary(&self, op: UnaryOp) -> Node {
        Node::new(
            &self.0.device,
            self.0.shape.clone(),
            self.0.dtype,
            Op::Unary(op, self.clone()),
        )
    }

    /// Both operands must already have the same shape (broadcast with `view`).
    pub fn binary(&self, op: BinaryOp, other: &Node) -> Result<Node> {
        let name = "binary op";
        self.check_same_device(name, other)?;
        if self.shape() != other.shape() {
            return Err(Error::shape(
                name,
                format!("{:?} vs {:?}", self.shape(), other.shape()),
            ));
        }
        if self.dtype() != other.dtype() {
            return Err(Error::DType {
                op: name,
                expected: self.dtype().to_string(),
                got: other.dtype().to_string(),
            });
        }
        let dtype = if op.is_comparison() {
            DType::U32
        } else {
            self.dtype()
        };
        Ok(Node::new(
            &self.0.device,
            self.0.shape.clone(),
            dtype,
            Op::Binary(op, self.clone(), other.clone()),
        ))
    }

    pub fn select(cond: &Node, a: &Node, b: &Node) -> Result<Node> {
        cond.check_same_device("where", a)?;
        a.check_same_device("where", b)?;
        if cond.shape() != a.shape() || a.shape() != b.shape() {
            return Err(Error::shape(
                "where",
                format!(
                    "condition {:?}, a {:?}, b {:?}",
                    cond.shape(),
                    a.shape(),
                    b.shape()
                ),
            ));
        }
        if a.dtype() != b.dtype() {
            return Err(Error::DType {
                op: "where",
                expected: a.dtype().to_string(),
                got: b.dtype().to_string(),
            });
        }
        Ok(Node::new(
            &a.0.device,
            a.0.shape.clone(),
            a.0.dtype,
            Op::Where(cond.clone(), a.clone(), b.clone()),
        ))
    }

    pub fn cast(&self, dtype: DType) -> Node {
        if dtype == self.dtype() {
            return self.clone();
        }
        Node::new(
            &self.0.device,
            self.0.shape.clone(),
            dtype,
            Op::Cast(self.clone()),
        )
    }

    /// A strided view with output `shape`; see [`ViewSpec`]. Checked against the
    /// input's size so that a view can never read out of bounds.
    pub fn view(&self, shape: &[usize], spec: ViewSpec) -> Result<Node> {
        if spec.strides.len() != shape.len() {
            return Err(Error::shape(
                "view",
                format!("{} strides for shape {shape:?}", spec.strides.len()),
            ));
        }
        if numel(shape) > 0 {
            let (mut lo, mut hi) = (spec.offset, spec.offset);
            for (d, &n) in shape.iter().enumerate() {
                let (first, last) = match &spec.mask {
                    Some(m) => (m[d].0, m[d].1.min(n)),
                    None => (0, n),
                };
                if first >= last {
                    continue;
                }
                let s = spec.strides[d];
                let a = s * first as i64;
                let b = s * (last as i64 - 1);
                lo += a.min(b);
                hi += a.max(b);
            }
            if lo < 0 || hi >= self.numel() as i64 {
                return Err(Error::shape(
                    "view",
                    format!(
                        "view {shape:?} {spec:?} reads outside input {:?}",
                        self.shape()
                    ),
                ));
            }
        }
        // A view of a pending view is one view of the source where the
        // strides allow it (a reshape of a permute, mostly), so kernels
        // compute one index expression instead of a chain of them.
        if let Some((merged, src)) = self.compose_view(shape, &spec) {
            return src.view(shape, merged);
        }
        Ok(Node::new(
            &self.0.device,
            shape.to_vec(),
            self.0.dtype,
            Op::View(spec, self.clone()),
        ))
    }

    /// `spec` (a view of `self`, which is itself an unmasked view of some
    /// source) as a single view of that source, when one exists. Only while
    /// the source has not been written since `self` was recorded: the merged
    /// view must read the same values.
    fn compose_view(&self, shape: &[usize], spec: &ViewSpec) -> Option<(ViewSpec, Node)> {
        let state = lock(&self.0.state);
        let State::Pending {
            op: Op::View(inner, src),
            versions,
            ..
        } = &*state
        else {
            return None;
        };
        if versions.first().copied().flatten() != src.storage().map(|s| (s.id(), s.version())) {
            return None;
        }
        let merged = compose_views(&self.0.shape, inner, shape, spec)?;
        Some((merged, src.clone()))
    }

    /// Whether reading this value in row-major order reads what it is made
    /// of in order: anything but a pending strided view (a transpose, say)
    /// that a kernel reading a plain buffer would first have to copy.
    pub fn is_contiguous(&self) -> bool {
        match &*lock(&self.0.state) {
            State::Pending {
                op: Op::View(spec, _),
                ..
            } => crate::codegen::is_reshape(spec, &self.0.shape),
            _ => true,
        }
    }

    /// A reshape is a view with contiguous strides.
    pub fn reshape(&self, shape: &[usize]) -> Result<Node> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("{:?} to {shape:?}", self.shape()),
            ));
        }
        if shape == self.shape() {
            return Ok(self.clone());
        }
        self.view(
            shape,
            ViewSpec {
                strides: contiguous_strides(shape),
                offset: 0,
                mask: None,
            },
        )
    }

    /// `out[c] = src[c with c[axis] replaced by index[c]]`; `index` has the output's shape.
    pub fn gather(src: &Node, axis: usize, index: &Node) -> Result<Node> {
        src.check_same_device("gather", index)?;
        if index.dtype() == DType::F32 {
            return Err(Error::DType {
                op: "gather",
                expected: "i32 or u32".into(),
                got: index.dtype().to_string(),
            });
        }
        if axis >= src.shape().len() || index.shape().len() != src.shape().len() {
            return Err(Error::shape(
                "gather",
                format!(
                    "src {:?}, index {:?}, axis {axis}",
                    src.shape(),
                    index.shape()
                ),
            ));
        }
        Ok(Node::new(
            &src.0.device,
            index.0.shape.clone(),
            src.0.dtype,
            Op::Gather {
                axis,
                src: src.clone(),
                index: index.clone(),
            },
        ))
    }

    /// Reduces `axes`, keeping them as size-1 dimensions.
    fn check_window(&self, op: &'static str, win: &Window2d, image_shape: &[usize]) -> Result<()> {
        let bad = win.kernel.contains(&0)
            || win.stride.contains(&0)
            || win.dilation.contains(&0)
            || win.out.contains(&0)
            || image_shape.len() != 4
            || image_shape[2..] != win.image;
        if bad {
            return Err(Error::shape(
                op,
                format!("windows {win:?} over an input of shape {:?}", self.shape()),
            ));
        }
        Ok(())
    }

    /// Every window's taps: `[N, C, H, W] -> [N, C, KH, KW, OH, OW]`, with
    /// `fill` where a tap falls outside the image.
    pub fn unfold(&self, win: &Window2d, fill: Fill) -> Result<Node> {
        self.check_window("unfold", win, self.shape())?;
        let s = self.shape();
        let shape = vec![
            s[0],
            s[1],
            win.kernel[0],
            win.kernel[1],
            win.out[0],
            win.out[1],
        ];
        Ok(Node::new(
            &self.0.device,
            shape,
            self.dtype(),
            Op::Unfold(win.clone(), fill, self.clone()),
        ))
    }

    /// The windows of a channels-last image `[N * H * W, C]` as rows:
    /// `[N * OH * OW, KH * KW * C]` (see `Op::ConvRows`).
    pub fn conv_rows(&self, win: &Window2d) -> Result<Node> {
        let s = self.shape();
        let pixels = win.image[0] * win.image[1];
        if s.len() != 2 || pixels == 0 || !s[0].is_multiple_of(pixels) {
            return Err(Error::shape(
                "conv_rows",
                format!(
                    "a [N * H * W, C] image with H, W = {:?}, got {s:?}",
                    win.image
                ),
            ));
        }
        let batch = s[0] / pixels;
        self.check_window("conv_rows", win, &[batch, s[1], win.image[0], win.image[1]])?;
        Ok(Node::new(
            &self.0.device,
            vec![
                batch * win.out[0] * win.out[1],
                win.kernel[0] * win.kernel[1] * s[1],
            ],
            self.dtype(),
            Op::ConvRows(win.clone(), self.clone()),
        ))
    }

    /// Sums taps back onto the image: `[N, C, KH, KW, OH, OW] -> [N, C, H, W]`.
    pub fn fold(&self, win: &Window2d) -> Result<Node> {
        let s = self.shape();
        let expected = [win.kernel[0], win.kernel[1], win.out[0], win.out[1]];
        if s.len() != 6 || s[2..] != expected {
            return Err(Error::shape(
                "fold",
                format!("windows {win:?} over taps of shape {s:?}"),
            ));
        }
        let image = [s[0], s[1], win.image[0], win.image[1]];
        self.check_window("fold", win, &image)?;
        Ok(Node::new(
            &self.0.device,
            image.to_vec(),
            self.dtype(),
            Op::Fold(win.clone(), self.clone()),
        ))
    }

    pub fn reduce(&self, op: ReduceOp, axes: &[usize]) -> Result<Node> {
        let mut shape = self.shape().to_vec();
        for &a in axes {
            if a >= shape.len() {
                return Err(Error::invalid(
                    "reduce",
                    format!("axis {a} out of range for {:?}", self.shape()),
                ));
            }
            shape[a] = 1;
        }
        let dtype = match op {
            ReduceOp::ArgMax | ReduceOp::ArgMin => DType::I32,
            _ => self.dtype(),
        };
        let mut axes = axes.to_vec();
        axes.sort_unstable();
        axes.dedup();
        Ok(Node::new(
            &self.0.device,
            shape,
            dtype,
            Op::Reduce {
                op,
                axes,
                input: self.clone(),
            },
        ))
    }

    /// `nodes` side by side along `axis` (see `Op::Concat`): equal ranks,
    /// dtypes and sizes except along `axis`.
    pub fn concat(nodes: &[Node], axis: usize) -> Result<Node> {
        let first = nodes
            .first()
            .ok_or_else(|| Error::invalid("concat", "needs at least one tensor"))?;
        let mut shape = first.shape().to_vec();
        if axis >= shape.len() {
            return Err(Error::invalid(
                "concat",
                format!("axis {axis} out of range for {shape:?}"),
            ));
        }
        shape[axis] = 0;
        for n in nodes {
            first.check_same_device("concat", n)?;
            let fits = n.shape().len() == first.shape().len()
                && n.dtype() == first.dtype()
                && (0..shape.len()).all(|d| d == axis || n.shape()[d] == first.shape()[d]);
            if !fits {
                return Err(Error::shape(
                    "concat",
                    format!(
                        "{:?} next to {:?} along axis {axis}",
                        n.shape(),
                        first.shape()
                    ),
                ));
            }
            shape[axis] += n.shape()[axis];
        }
        Ok(Node::new(
            &first.0.device,
            shape,
            first.dtype(),
            Op::Concat {
                axis,
                inputs: nodes.to_vec(),
            },
        ))
    }

    /// `a: [batch?, m, k] @ b: [batch?, k, n]`, f32. Each operand is rank 3 with
    /// a leading batch dimension, or rank 2 and shared across the batch.
    pub fn matmul(a: &Node, b: &Node) -> Result<Node> {
        a.check_same_device("matmul", b)?;
        let (sa, sb) = (a.shape(), b.shape());
        let bad = || Error::shape("matmul", format!("{sa:?} @ {sb:?}"));
        if a.dtype() != DType::F32 || b.dtype() != DType::F32 {
            return Err(Error::DType {
                op: "matmul",
                expected: "f32".into(),
                got: format!("{} and {}", a.dtype(), b.dtype()),
            });
        }
        if !(2..=3).contains(&sa.len()) || !(2..=3).contains(&sb.len()) {
            return Err(bad());
        }
        let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
        let (k2, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
        if k != k2 {
            return Err(bad());
        }
        let batch_a = if sa.len() == 3 { Some(sa[0]) } else { None };
        let batch_b = if sb.len() == 3 { Some(sb[0]) } else { None };
        let batch = match (batch_a, batch_b) {
            (Some(x), Some(y)) if x != y => return Err(bad()),
            (Some(x), _) | (None, Some(x)) => Some(x),
            (None, None) => None,
        };
        let shape = match batch {
            Some(bt) => vec![bt, m, n],
            None => vec![m, n],
        };
        // An operand read over `over` (the product's elements, with the
        // batch axis first where there is one) with strides `along`; a
        // batch stride in front where the product is batched.
        let spread = |node: &Node, batched: bool, over: &[usize], along: &[i64]| -> Result<Node> {
            let mut strides = along.to_vec();
            if batch.is_some() {
                let per_batch = (node.numel() / node.shape()[0].max(1)) as i64;
                strides.insert(0, if batched { per_batch } else { 0 });
            }
            node.view(
                over,
                ViewSpec {
                    strides,
                    offset: 0,
                    mask: None,
                },
            )
        };
        if k == 1 {
            // An outer product (a one-output layer's input gradient, say):
            // one multiply per element, fused with its neighbours, where a
            // tiled kernel would pad K to its block and could cost a
            // compile of its own (1.5 s for the 64x64 block, Mesa's cache
            // empty). The values are the same: a single product per output.
            let a_rows = spread(a, batch_a.is_some(), &shape, &[1, 0])?;
            let b_cols = spread(b, batch_b.is_some(), &shape, &[0, 1])?;
            return a_rows.binary(BinaryOp::Mul, &b_cols);
        }
        let windows = matches!(
            &*lock(&a.0.state),
            State::Pending {
                op: Op::ConvRows(..),
                ..
            }
        );
        if (m == 1 || n == 1) && !windows {
            // A matrix-vector product (a one-output layer, or its weight
            // gradient): a tiled kernel would pad the vector side to its
            // block, computing 64 times the work, and compiles a kernel of
            // its own (0.1 to 0.3 s on lavapipe with Mesa's cache empty).
            // As a sum over K of a broadcast product it is one fused
            // reduction. Not for a convolution's windows: the texture
            // kernel fetches them from their image (an implicit GEMM),
            // where a reduction would compute each window's index anew.
            let mut product = shape.clone();
            product.push(k);
            let a_rows = spread(a, batch_a.is_some(), &product, &[k as i64, 0, 1])?;
            let b_cols = spread(b, batch_b.is_some(), &product, &[0, 1, n as i64])?;
            let summed = a_rows
                .binary(BinaryOp::Mul, &b_cols)?
                .reduce(ReduceOp::Sum, &[product.len() - 1])?;
            return summed.reshape(&shape);
        }
        Ok(Node::new(
            &a.0.device,
            shape,
            DType::F32,
            Op::Matmul {
                a: a.clone(),
                b: b.clone(),
                a_batched: batch_a.is_some(),
                b_batched: batch_b.is_some(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{compose_views, contiguous_strides, numel, ViewSpec};

    fn coords(mut i: usize, shape: &[usize]) -> Vec<usize> {
        let mut c = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            c[d] = i % shape[d];
            i /= shape[d];
        }
        c
    }

    fn apply(spec: &ViewSpec, c: &[usize]) -> i64 {
        spec.offset
            + c.iter()
                .zip(&spec.strides)
                .map(|(&x, &s)| x as i64 * s)
                .sum::<i64>()
    }

    /// Source index of every outer element read through both views, one
    /// after the other.
    fn two_step(
        inner_shape: &[usize],
        inner: &ViewSpec,
        shape: &[usize],
        outer: &ViewSpec,
    ) -> Vec<i64> {
        (0..numel(shape))
            .map(|i| {
                let linear = apply(outer, &coords(i, shape)) as usize;
                apply(inner, &coords(linear, inner_shape))
            })
            .collect()
    }

    fn permuted(shape: &[usize], order: &[usize]) -> (Vec<usize>, ViewSpec) {
        let cs = contiguous_strides(shape);
        (
            order.iter().map(|&d| shape[d]).collect(),
            ViewSpec {
                strides: order.iter().map(|&d| cs[d]).collect(),
                offset: 0,
                mask: None,
            },
        )
    }

    fn reshape(shape: &[usize]) -> ViewSpec {
        ViewSpec {
            strides: contiguous_strides(shape),
            offset: 0,
            mask: None,
        }
    }

    #[test]
    fn composed_views_read_what_the_chain_reads() {
        let source = [2usize, 3, 4, 1, 5];
        let orders: [&[usize]; 4] = [
            &[0, 1, 2, 3, 4],
            &[4, 0, 1, 3, 2],
            &[1, 0, 3, 2, 4],
            &[2, 3, 4, 0, 1],
        ];
        let mut merged = 0;
        let mut refused = 0;
        for order in orders {
            let (inner_shape, inner) = permuted(&source, order);
            let n = numel(&inner_shape);
            // Reshapes to every split into two and three factors, then a
            // permute and a slice of a reshape.
            let mut outers: Vec<(Vec<usize>, ViewSpec)> = Vec::new();
            for a in 1..=n {
                if !n.is_multiple_of(a) {
                    continue;
                }
                outers.push((vec![a, n / a], reshape(&[a, n / a])));
                for b in 1..=n / a {
                    if (n / a).is_multiple_of(b) {
                        let shape = vec![a, b, n / a / b];
                        outers.push((shape.clone(), reshape(&shape)));
                        let (ps, pv) = permuted(&shape, &[2, 0, 1]);
                        outers.push((ps, pv));
                    }
                }
            }
            outers.push((
                vec![2, 5],
                ViewSpec {
                    strides: vec![n as i64 / 2, 1],
                    offset: 7,
                    mask: None,
                },
            ));
            outers.push((
                vec![3, 4],
                ViewSpec {
                    strides: vec![0, 5],
                    offset: 0,
                    mask: None,
                },
            ));
            for (shape, outer) in &outers {
                match compose_views(&inner_shape, &inner, shape, outer) {
                    Some(one) => {
                        merged += 1;
                        let direct: Vec<i64> = (0..numel(shape))
                            .map(|i| apply(&one, &coords(i, shape)))
                            .collect();
                        assert_eq!(
                            direct,
                            two_step(&inner_shape, &inner, shape, outer),
                            "{inner_shape:?} {inner:?} then {shape:?} {outer:?} as {one:?}"
                        );
                    }
                    None => refused += 1,
                }
            }
        }
        // Both outcomes occur: the check above is not vacuous.
        assert!(
            merged > 50 && refused > 50,
            "merged {merged}, refused {refused}"
        );
    }

    #[test]
    fn conv_input_gradient_layout_is_one_view() {
        // conv2d's input gradient reads the GEMM product [C*KH*KW, N*L]
        // as [G=1, C, KH, KW, N, OH, OW], permuted to put N first, reshaped
        // to [N, C, KH, KW, OH, OW]: one strided view of the product.
        let product = [1usize, 32, 3, 3, 64, 14, 14];
        let (inner_shape, inner) = permuted(&product, &[4, 0, 1, 2, 3, 5, 6]);
        let shape = [64usize, 32, 3, 3, 14, 14];
        let one = compose_views(&inner_shape, &inner, &shape, &reshape(&shape));
        assert_eq!(
            one.map(|v| v.strides),
            Some(vec![196, 112896, 37632, 12544, 14, 1])
        );
    }
}
