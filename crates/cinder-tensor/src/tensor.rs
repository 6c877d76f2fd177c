//! The `Tensor` handle: a node of the lazy graph plus what autodiff needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cinder_runtime::{DType, Device, Error, Node, Result};

use crate::autograd::{grad_enabled, GradFn};

static NEXT_TENSOR_ID: AtomicU64 = AtomicU64::new(1);

/// Host element types a tensor can be created from and read into.
pub trait Element: Copy + bytemuck::Pod + Send + Sync + 'static {
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for i32 {
    const DTYPE: DType = DType::I32;
}
impl Element for u32 {
    const DTYPE: DType = DType::U32;
}

pub(crate) struct TensorInner {
    pub id: u64,
    pub node: Node,
    pub requires_grad: bool,
    pub grad_fn: Option<GradFn>,
}

/// An n-dimensional array on a [`Device`]. Cloning is cheap (an `Arc`). Ops are
/// recorded lazily and run when a value is read or realized.
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<TensorInner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor(shape={:?}, dtype={}", self.shape(), self.dtype())?;
        if self.requires_grad() {
            write!(f, ", requires_grad")?;
        }
        write!(f, ")")
    }
}

impl Tensor {
    pub(crate) fn from_node(node: Node) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: NEXT_TENSOR_ID.fetch_add(1, Ordering::Relaxed),
            node,
            requires_grad: false,
            grad_fn: None,
        }))
    }

    /// Records an op's result; keeps its backward rule when autodiff is on and
    /// an input needs a gradient.
    pub(crate) fn from_op(
        node: Node,
        name: &'static str,
        inputs: &[&Tensor],
        backward: crate::autograd::BackwardFn,
    ) -> Tensor {
        let needs = grad_enabled() && inputs.iter().any(|t| t.requires_grad());
        Tensor(Arc::new(TensorInner {
            id: NEXT_TENSOR_ID.fetch_add(1, Ordering::Relaxed),
            node,
            requires_grad: needs,
            grad_fn: if needs {
                Some(GradFn {
                    name,
                    // A frozen input stays a constant to this op's backward
                    // after its guard is gone.
                    inputs: inputs
                        .iter()
                        .map(|t| match crate::autograd::frozen(t.id()) {
                            true => t.detach(),
                            false => (*t).clone(),
                        })
                        .collect(),
                    backward,
                })
            } else {
                None
            },
        }))
    }

    pub fn id(&self) -> u64 {
        self.0.id
    }

    pub fn node(&self) -> &Node {
        &self.0.node
    }

    /// What this (realized) tensor will hold once the device's pending
    /// deferred write to it runs ([`Device::defer_assign`]), or itself when
    /// none is pending: the value a second in-place update must start from.
    pub fn after_deferred_writes(&self) -> Tensor {
        match self.device().deferred_value(self.node()) {
            Some(node) => Tensor::from_node(node),
            None => self.detach(),
        }
    }

    pub fn shape(&self) -> &[usize] {
        self.0.node.shape()
    }

    pub fn dims(&self) -> usize {
        self.shape().len()
    }

    pub fn dtype(&self) -> DType {
        self.0.node.dtype()
    }

    pub fn numel(&self) -> usize {
        self.0.node.numel()
    }

    pub fn device(&self) -> &Device {
        self.0.node.device()
    }

    /// Whether ops on this tensor record gradients for it: a leaf made
    /// with [`Tensor::requires_grad_`] or a value computed from one, and
    /// not frozen (see [`crate::freeze`]).
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad && !crate::autograd::frozen(self.0.id)
    }

    /// Whether the recorded graph routes gradients to this tensor: what
    /// [`Tensor::requires_grad`] says without a live freeze. A backward
    /// pass goes by it, so freezing a tensor after the ops that read it were
    /// recorded leaves their gradients to it, as in PyTorch (the ops record
    /// a frozen input as a constant, see `from_op`).
    pub(crate) fn recorded_requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// The same values as a leaf that autodiff tracks (`requires_grad_(True)`).
    pub fn requires_grad_(self) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: NEXT_TENSOR_ID.fetch_add(1, Ordering::Relaxed),
            node: self.0.node.clone(),
            requires_grad: true,
            grad_fn: None,
        }))
    }

    /// The same values, cut from the autodiff graph.
    pub fn detach(&self) -> Tensor {
        Tensor::from_node(self.0.node.clone())
    }

    pub fn is_leaf(&self) -> bool {
        self.0.grad_fn.is_none()
    }

    // ---- creation -------------------------------------------------------------

    pub fn from_slice<T: Element>(device: &Device, data: &[T], shape: &[usize]) -> Result<Tensor> {
        let bytes = bytemuck::cast_slice(data).to_vec();
        Ok(Tensor::from_node(Node::from_bytes(
            device,
            shape,
            T::DTYPE,
            bytes,
        )?))
    }

    pub fn from_vec<T: Element>(device: &Device, data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_slice(device, &data, shape)
    }

    pub fn scalar(device: &Device, value: f32) -> Tensor {
        Tensor::full(device, &[], value)
    }

    pub fn full(device: &Device, shape: &[usize], value: f32) -> Tensor {
        Tensor::from_node(Node::constant(device, shape, DType::F32, value as f64))
    }

    pub fn full_dtype(device: &Device, shape: &[usize], dtype: DType, value: f64) -> Tensor {
        Tensor::from_node(Node::constant(device, shape, dtype, value))
    }

    pub fn zeros(device: &Device, shape: &[usize]) -> Tensor {
        Tensor::full(device, shape, 0.0)
    }

    pub fn ones(device: &Device, shape: &[usize]) -> Tensor {
        Tensor::full(device, shape, 1.0)
    }

    pub fn zeros_like(&self) -> Tensor {
        Tensor::full_dtype(self.device(), self.shape(), self.dtype(), 0.0)
    }

    pub fn ones_like(&self) -> Tensor {
        Tensor::full_dtype(self.device(), self.shape(), self.dtype(), 1.0)
    }

    /// `start, start + step, ...` below `end`, as f32 (PyTorch's `arange`).
    pub fn arange(device: &Device, start: f32, end: f32, step: f32) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
            return Err(Error::invalid(
                "arange",
                format!("start {start}, end {end}, step {step}"),
            ));
        }
        // The length is computed in f64, as PyTorch does: f32 miscounts past 2^24.
        let n = ((end as f64 - start as f64) / step as f64).ceil().max(0.0) as usize;
        let iota = Node::iota(device, &[n], DType::F32, 0)?;
        let t = Tensor::from_node(iota);
        t.mul_scalar(step)?.add_scalar(start)
    }

    /// `0, 1, ..., n-1` as i32.
    pub fn arange_i32(device: &Device, n: usize) -> Result<Tensor> {
        Ok(Tensor::from_node(Node::iota(device, &[n], DType::I32, 0)?))
    }

    /// Uniform in [low, high), generated on the GPU from `seed`.
    pub fn rand_seeded(
        device: &Device,
        shape: &[usize],
        low: f32,
        high: f32,
        seed: u64,
    ) -> Result<Tensor> {
        Tensor::from_node(Node::rand(device, shape, seed, false))
            .mul_scalar(high - low)?
            .add_scalar(low)
    }

    /// Normal with this mean and standard deviation, generated on the GPU from `seed`.
    pub fn randn_seeded(
        device: &Device,
        shape: &[usize],
        mean: f32,
        std: f32,
        seed: u64,
    ) -> Result<Tensor> {
        Tensor::from_node(Node::rand(device, shape, seed, true))
            .mul_scalar(std)?
            .add_scalar(mean)
    }

    /// Uniform in [0, 1), seeded from the device's stream (see `Device::manual_seed`).
    pub fn rand(device: &Device, shape: &[usize]) -> Result<Tensor> {
        Tensor::rand_seeded(device, shape, 0.0, 1.0, device.next_seed())
    }

    /// Standard normal, seeded from the device's stream.
    pub fn randn(device: &Device, shape: &[usize]) -> Result<Tensor> {
        Tensor::randn_seeded(device, shape, 0.0, 1.0, device.next_seed())
    }

    // ---- reading --------------------------------------------------------------

    /// Computes what this tensor needs (one submit) without reading it back.
    pub fn realize(&self) -> Result<()> {
        self.0.node.realize()
    }

    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype() {
            return Err(Error::DType {
                op: "to_vec",
                expected: self.dtype().to_string(),
                got: T::DTYPE.to_string(),
            });
        }
        let bytes = self.0.node.to_bytes()?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// The value of a one-element f32 tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!("needs one element, tensor has shape {:?}", self.shape()),
            ));
        }
        let v = self.to_dtype(DType::F32)?.to_vec::<f32>()?;
        Ok(v[0])
    }
}

/// Reads several tensors with a single realization and submit.
pub fn read_all(tensors: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
    let Some(first) = tensors.first() else {
        return Ok(Vec::new());
    };
    let nodes: Vec<Node> = tensors
        .iter()
        .map(|t| t.to_dtype(DType::F32).map(|t| t.0.node.clone()))
        .collect::<Result<_>>()?;
    let read: Vec<usize> = (0..nodes.len()).collect();
    let bytes = first.device().run(&nodes, &[], &read)?;
    Ok(bytes
        .iter()
        .map(|b| bytemuck::pod_collect_to_vec(b))
        .collect())
}
