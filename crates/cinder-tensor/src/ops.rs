//! Every tensor op: its shape rule (checked when called), its forward node and
//! its backward rule, side by side.

use cinder_runtime::{
    contiguous_strides, numel, BinaryOp, DType, Error, Node, ReduceOp, Result, UnaryOp, ViewSpec,
};

use crate::shape::{broadcast_shapes, expand_spec, norm_axes, norm_axis};
use crate::tensor::Tensor;

/// Joins of up to this many tensors are a sum of padded views, which fuses
/// into its readers; more, and the sum's kernel would read too many buffers
/// (each a kernel of its own code once cut to the device's limit), so they
/// are one `Concat` op instead.
const CONCAT_FUSED_MAX: usize = 8;

/// Arg-reductions longer than this run as two splittable reductions.
const LONG_ARG_REDUCTION: usize = 1 << 16;

pub(crate) fn float_only(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::DType {
            op,
            expected: "f32".into(),
            got: t.dtype().to_string(),
        });
    }
    Ok(())
}

fn same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DType {
            op,
            expected: a.dtype().to_string(),
            got: b.dtype().to_string(),
        });
    }
    Ok(())
}

fn expand_node(op: &'static str, n: &Node, shape: &[usize]) -> Result<Node> {
    if n.shape() == shape {
        return Ok(n.clone());
    }
    n.view(shape, expand_spec(op, n.shape(), shape)?)
}

impl Tensor {
    // ---- element-wise, unary ----------------------------------------------------

    fn unary_op(
        &self,
        op: UnaryOp,
        name: &'static str,
        backward: crate::autograd::BackwardFn,
    ) -> Result<Tensor> {
        Ok(Tensor::from_op(
            self.node().unary(op),
            name,
            &[self],
            backward,
        ))
    }

    fn unary_float(
        &self,
        op: UnaryOp,
        name: &'static str,
        backward: crate::autograd::BackwardFn,
    ) -> Result<Tensor> {
        float_only(name, self)?;
        self.unary_op(op, name, backward)
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary_op(
            UnaryOp::Neg,
            "neg",
            Box::new(|g, _| Ok(vec![Some(g.neg()?)])),
        )
    }

    pub fn exp(&self) -> Result<Tensor> {
        self.unary_float(
            UnaryOp::Exp,
            "exp",
            Box::new(|g, out| Ok(vec![Some(g.mul(out)?)])),
        )
    }

    pub fn log(&self) -> Result<Tensor> {
        let x = self.detach();
        self.unary_float(
            UnaryOp::Log,
            "log",
            Box::new(move |g, _| Ok(vec![Some(g.div(&x)?)])),
        )
    }

    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary_float(
            UnaryOp::Sqrt,
            "sqrt",
            Box::new(|g, out| Ok(vec![Some(g.div(out)?.mul_scalar(0.5)?)])),
        )
    }

    pub fn rsqrt(&self) -> Result<Tensor> {
        self.unary_float(
            UnaryOp::Rsqrt,
            "rsqrt",
            Box::new(|g, out| {
                Ok(vec![Some(
                    g.mul(&out.mul(out)?.mul(out)?)?.mul_scalar(-0.5)?,
                )])
            }),
        )
    }

    pub fn abs(&self) -> Result<Tensor> {
        let x = self.detach();
        self.unary_op(
            UnaryOp::Abs,
            "abs",
            Box::new(move |g, _| Ok(vec![Some(g.mul(&x.sign()?)?)])),
        )
    }

    pub fn sign(&self) -> Result<Tensor> {
        self.unary_op(
            UnaryOp::Sign,
            "sign",
            Box::new(|g, _| Ok(vec![Some(g.zeros_like())])),
        )
    }

    pub fn relu(&self) -> Result<Tensor> {
        // The mask comes from the output (positive exactly where the input
        // is, NaN included), as in PyTorch: then the input need not be kept,
        // and a producer's epilogue can apply the ReLU.
        self.unary_op(
            UnaryOp::Relu,
            "relu",
            Box::new(move |g, out| {
                Ok(vec![Some(g.masked(&Tensor::from_node(
                    out.node().unary(UnaryOp::Step),
                ))?)])
            }),
        )
    }

    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary_float(
            UnaryOp::Sigmoid,
            "sigmoid",
            Box::new(|g, out| Ok(vec![Some(g.mul(&out.mul(&out.rsub_scalar(1.0)?)?)?)])),
        )
    }

    pub fn tanh(&self) -> Result<Tensor> {
        self.unary_float(
            UnaryOp::Tanh,
            "tanh",
            Box::new(|g, out| Ok(vec![Some(g.mul(&out.mul(out)?.rsub_scalar(1.0)?)?)])),
        )
    }

    /// The exact (erf) GELU, PyTorch's default.
    pub fn gelu(&self) -> Result<Tensor> {
        let x = self.detach();
        self.unary_float(
            UnaryOp::Gelu,
            "gelu",
            Box::new(move |g, _| {
                Ok(vec![Some(g.mul(&Tensor::from_node(
                    x.node().unary(UnaryOp::GeluGrad),
                ))?)])
            }),
        )
    }

    pub fn recip(&self) -> Result<Tensor> {
        self.unary_float(
            UnaryOp::Recip,
            "reciprocal",
            Box::new(|g, out| Ok(vec![Some(g.mul(&out.mul(out)?)?.neg()?)])),
        )
    }

    pub fn sin(&self) -> Result<Tensor> {
        let x = self.detach();
        self.unary_float(
            UnaryOp::Sin,
            "sin",
            Box::new(move |g, _| Ok(vec![Some(g.mul(&x.cos()?)?)])),
        )
    }

    pub fn cos(&self) -> Result<Tensor> {
        let x = self.detach();
        self.unary_float(
            UnaryOp::Cos,
            "cos",
            Box::new(move |g, _| Ok(vec![Some(g.mul(&x.sin()?)?.neg()?)])),
        )
    }

    pub fn square(&self) -> Result<Tensor> {
        self.mul(self)
    }

    /// Converts element type; gradients flow only between f32 tensors.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        Ok(Tensor::from_node(self.node().cast(dtype)))
    }

    // ---- element-wise, binary (broadcasting) ------------------------------------

    fn broadcast_pair(&self, other: &Tensor, name: &'static str) -> Result<(Node, Node)> {
        same_dtype(name, self, other)?;
        if self.device() != other.device() {
            return Err(Error::invalid(name, "tensors live on different devices"));
        }
        let shape = broadcast_shapes(name, self.shape(), other.shape())?;
        Ok((
            expand_node(name, self.node(), &shape)?,
            expand_node(name, other.node(), &shape)?,
        ))
    }

    fn binary_op(
        &self,
        other: &Tensor,
        op: BinaryOp,
        name: &'static str,
        backward: crate::autograd::BackwardFn,
    ) -> Result<Tensor> {
        let (a, b) = self.broadcast_pair(other, name)?;
        Ok(Tensor::from_op(
            a.binary(op, &b)?,
            name,
            &[self, other],
            backward,
        ))
    }

    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        let (sa, sb) = (self.shape().to_vec(), other.shape().to_vec());
        self.binary_op(
            other,
            BinaryOp::Add,
            "add",
            Box::new(move |g, _| Ok(vec![Some(g.sum_to(&sa)?), Some(g.sum_to(&sb)?)])),
        )
    }

    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        let (sa, sb) = (self.shape().to_vec(), other.shape().to_vec());
        self.binary_op(
            other,
            BinaryOp::Sub,
            "sub",
            Box::new(move |g, _| Ok(vec![Some(g.sum_to(&sa)?), Some(g.neg()?.sum_to(&sb)?)])),
        )
    }

    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        let (a, b) = (self.detach(), other.detach());
        let (ra, rb) = (self.requires_grad(), other.requires_grad());
        self.binary_op(
            other,
            BinaryOp::Mul,
            "mul",
            Box::new(move |g, _| {
                Ok(vec![
                    if ra {
                        Some(g.mul(&b)?.sum_to(a.shape())?)
                    } else {
                        None
                    },
                    if rb {
                        Some(g.mul(&a)?.sum_to(b.shape())?)
                    } else {
                        None
                    },
                ])
            }),
        )
    }

    /// `self` where `mask` is nonzero, else 0 (broadcasting like `mul`): how
    /// a gradient is routed by a mask. Unlike `self * mask`, a NaN or an
    /// infinity where the mask is 0 gives 0, as PyTorch's ReLU and max-pool
    /// gradients do. The mask gets no gradient.
    pub fn masked(&self, mask: &Tensor) -> Result<Tensor> {
        let m = mask.detach();
        let shape = self.shape().to_vec();
        self.binary_op(
            mask,
            BinaryOp::Masked,
            "masked",
            Box::new(move |g, _| Ok(vec![Some(g.masked(&m)?.sum_to(&shape)?), None])),
        )
    }

    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        let (a, b) = (self.detach(), other.detach());
        let (ra, rb) = (self.requires_grad(), other.requires_grad());
        self.binary_op(
            other,
            BinaryOp::Div,
            "div",
            Box::new(move |g, out| {
                Ok(vec![
                    if ra {
                        Some(g.div(&b)?.sum_to(a.shape())?)
                    } else {
                        None
                    },
                    if rb {
                        Some(g.mul(out)?.div(&b)?.neg()?.sum_to(b.shape())?)
                    } else {
                        None
                    },
                ])
            }),
        )
    }

    pub fn pow(&self, exponent: &Tensor) -> Result<Tensor> {
        float_only("pow", self)?;
        let (a, b) = (self.detach(), exponent.detach());
        let (ra, rb) = (self.requires_grad(), exponent.requires_grad());
        self.binary_op(
            exponent,
            BinaryOp::Pow,
            "pow",
            Box::new(move |g, out| {
                // PyTorch's masks: d/da is 0 where b == 0 (at a == 0 the product
                // b * a^(b-1) would be 0 * inf), d/db is 0 where a == 0 and
                // b >= 0 (out * log(a) would be 0 * -inf).
                let zero = Tensor::full(g.device(), &[], 0.0);
                Ok(vec![
                    if ra {
                        let d = g.mul(&b)?.mul(&a.pow(&b.add_scalar(-1.0)?)?)?;
                        let d = Tensor::where_cond(&b.eq(&zero)?, &zero, &d)?;
                        Some(d.sum_to(a.shape())?)
                    } else {
                        None
                    },
                    if rb {
                        let d = g.mul(out)?.mul(&a.log()?)?;
                        let base_zero = a.eq(&zero)?.mul(&b.ge(&zero)?)?;
                        let d = Tensor::where_cond(&base_zero, &zero, &d)?;
                        Some(d.sum_to(b.shape())?)
                    } else {
                        None
                    },
                ])
            }),
        )
    }

    pub fn pow_scalar(&self, exponent: f32) -> Result<Tensor> {
        let e = Tensor::full(self.device(), &[], exponent);
        self.pow(&e)
    }

    /// Element-wise maximum; at ties the gradient is split evenly, as in PyTorch.
    pub fn maximum(&self, other: &Tensor) -> Result<Tensor> {
        self.extremum(other, BinaryOp::Max, BinaryOp::Gt, "maximum")
    }

    pub fn minimum(&self, other: &Tensor) -> Result<Tensor> {
        self.extremum(other, BinaryOp::Min, BinaryOp::Lt, "minimum")
    }

    fn extremum(
        &self,
        other: &Tensor,
        op: BinaryOp,
        wins: BinaryOp,
        name: &'static str,
    ) -> Result<Tensor> {
        let (a, b) = (self.detach(), other.detach());
        self.binary_op(
            other,
            op,
            name,
            Box::new(move |g, _| {
                let (an, bn) = a.broadcast_pair(&b, name)?;
                let win = Tensor::from_node(an.binary(wins, &bn)?.cast(DType::F32));
                let tie = Tensor::from_node(an.binary(BinaryOp::Eq, &bn)?.cast(DType::F32))
                    .mul_scalar(0.5)?;
                let wa = win.add(&tie)?;
                let wb = wa.rsub_scalar(1.0)?;
                Ok(vec![
                    Some(g.mul(&wa)?.sum_to(a.shape())?),
                    Some(g.mul(&wb)?.sum_to(b.shape())?),
                ])
            }),
        )
    }

    fn compare(&self, other: &Tensor, op: BinaryOp, name: &'static str) -> Result<Tensor> {
        let (a, b) = self.broadcast_pair(other, name)?;
        Ok(Tensor::from_node(a.binary(op, &b)?))
    }

    /// Comparisons give u32 masks: 1 where true, 0 where false.
    pub fn eq(&self, other: &Tensor) -> Result<Tensor> {
        self.compare(other, BinaryOp::Eq, "eq")
    }
    pub fn ne(&self, other: &Tensor) -> Result<Tensor> {
        self.compare(other, BinaryOp::Ne, "ne")
    }
    pub fn lt(&self, other: &Tensor) -> Result<Tensor> {
        self.compare(other, BinaryOp::Lt, "lt")
    }
    pub fn le(&self, other: &Tensor) -> Result<Tensor> {
        self.compare(other, BinaryOp::Le, "le")
    }
    pub fn gt(&self, other: &Tensor) -> Result<Tensor> {
        self.compare(other, BinaryOp::Gt, "gt")
    }
    pub fn ge(&self, other: &Tensor) -> Result<Tensor> {
        self.compare(other, BinaryOp::Ge, "ge")
    }

    /// `cond ? a : b`, all three broadcast together (`torch.where`).
    pub fn where_cond(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let name = "where";
        same_dtype(name, a, b)?;
        let shape = broadcast_shapes(
            name,
            &broadcast_shapes(name, cond.shape(), a.shape())?,
            b.shape(),
        )?;
        let (cn, an, bn) = (
            expand_node(name, cond.node(), &shape)?,
            expand_node(name, a.node(), &shape)?,
            expand_node(name, b.node(), &shape)?,
        );
        let c = cond.detach();
        let (sa, sb) = (a.shape().to_vec(), b.shape().to_vec());
        Ok(Tensor::from_op(
            Node::select(&cn, &an, &bn)?,
            name,
            &[a, b],
            Box::new(move |g, _| {
                let zero = g.zeros_like();
                Ok(vec![
                    Some(Tensor::where_cond(&c, g, &zero)?.sum_to(&sa)?),
                    Some(Tensor::where_cond(&c, &zero, g)?.sum_to(&sb)?),
                ])
            }),
        ))
    }

    pub(crate) fn scalar_like(&self, v: f32) -> Tensor {
        Tensor::full_dtype(self.device(), &[], self.dtype(), v as f64)
    }

    pub fn add_scalar(&self, v: f32) -> Result<Tensor> {
        self.add(&self.scalar_like(v))
    }
    pub fn sub_scalar(&self, v: f32) -> Result<Tensor> {
        self.sub(&self.scalar_like(v))
    }
    pub fn mul_scalar(&self, v: f32) -> Result<Tensor> {
        self.mul(&self.scalar_like(v))
    }
    pub fn div_scalar(&self, v: f32) -> Result<Tensor> {
        self.div(&self.scalar_like(v))
    }
    /// `v - self`
    pub fn rsub_scalar(&self, v: f32) -> Result<Tensor> {
        self.scalar_like(v).sub(self)
    }
    pub fn maximum_scalar(&self, v: f32) -> Result<Tensor> {
        self.maximum(&self.scalar_like(v))
    }
    pub fn minimum_scalar(&self, v: f32) -> Result<Tensor> {
        self.minimum(&self.scalar_like(v))
    }
    /// `min(max(x, lo), hi)`. The gradient passes where `lo <= x <= hi`, bounds
    /// included, as in PyTorch (maximum/minimum would halve it at the bounds).
    pub fn clamp(&self, lo: f32, hi: f32) -> Result<Tensor> {
        let value = crate::autograd::with_no_grad(|| self.maximum_scalar(lo)?.minimum_scalar(hi))?;
        let x = self.detach();
        Ok(Tensor::from_op(
            value.node().clone(),
            "clamp",
            &[self],
            Box::new(move |g, _| {
                let inside = x.ge(&x.scalar_like(lo))?.mul(&x.le(&x.scalar_like(hi))?)?;
                Ok(vec![Some(g.mul(&inside.to_dtype(DType::F32)?)?)])
            }),
        ))
    }

    // ---- reductions -----------------------------------------------------------

    fn reduce_axes(&self, axes: &[isize], name: &'static str) -> Result<Vec<usize>> {
        if axes.is_empty() {
            return Ok((0..self.dims()).collect());
        }
        norm_axes(name, axes, self.dims())
    }

    fn squeeze_axes(shape: &[usize], axes: &[usize]) -> Vec<usize> {
        shape
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect()
    }

    /// Sum over `axes` (all when empty). Reductions never use float atomics:
    /// the order is fixed, so results repeat bit for bit.
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        let ax = self.reduce_axes(axes, "sum")?;
        let kept = self.node().reduce(ReduceOp::Sum, &ax)?;
        let keep_shape = kept.shape().to_vec();
        let out = if keepdim {
            kept
        } else {
            kept.reshape(&Self::squeeze_axes(self.shape(), &ax))?
        };
        let in_shape = self.shape().to_vec();
        Ok(Tensor::from_op(
            out,
            "sum",
            &[self],
            Box::new(move |g, _| Ok(vec![Some(g.reshape(&keep_shape)?.broadcast_to(&in_shape)?)])),
        ))
    }

    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum(&[], false)
    }

    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        float_only("mean", self)?;
        let ax = self.reduce_axes(axes, "mean")?;
        let count: usize = ax.iter().map(|&a| self.shape()[a]).product();
        self.sum(axes, keepdim)?
            .mul_scalar(1.0 / count.max(1) as f32)
    }

    pub fn mean_all(&self) -> Result<Tensor> {
        self.mean(&[], false)
    }

    /// Variance with `correction` (1: unbiased, PyTorch's default; 0: population).
    pub fn var(&self, axes: &[isize], correction: usize, keepdim: bool) -> Result<Tensor> {
        float_only("var", self)?;
        let ax = self.reduce_axes(axes, "var")?;
        let count: usize = ax.iter().map(|&a| self.shape()[a]).product();
        let mean = self.mean(axes, true)?;
        let diff = self.sub(&mean)?;
        let denom = count.saturating_sub(correction);
        diff.mul(&diff)?
            .sum(axes, keepdim)?
            .div_scalar(denom as f32)
    }

    fn extreme(
        &self,
        axes: &[isize],
        keepdim: bool,
        op: ReduceOp,
        name: &'static str,
    ) -> Result<Tensor> {
        let ax = self.reduce_axes(axes, name)?;
        let kept = self.node().reduce(op, &ax)?;
        let keep_shape = kept.shape().to_vec();
        let out = if keepdim {
            kept.clone()
        } else {
            kept.reshape(&Self::squeeze_axes(self.shape(), &ax))?
        };
        let x = self.detach();
        let ext = Tensor::from_node(kept);
        let axes: Vec<isize> = ax.iter().map(|&a| a as isize).collect();
        Ok(Tensor::from_op(
            out,
            name,
            &[self],
            Box::new(move |g, _| {
                // The gradient is shared evenly among the positions that attain
                // the extreme (PyTorch's amax/amin rule).
                let mask = x.eq(&ext)?.to_dtype(DType::F32)?;
                let count = mask.sum(&axes, true)?;
                let share = g.reshape(&keep_shape)?.div(&count)?;
                Ok(vec![Some(mask.mul(&share)?)])
            }),
        ))
    }

    pub fn max(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        self.extreme(axes, keepdim, ReduceOp::Max, "max")
    }

    pub fn min(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        self.extreme(axes, keepdim, ReduceOp::Min, "min")
    }

    /// Index (i32) of the first maximum along `axis`.
    pub fn argmax(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.arg(axis, keepdim, ReduceOp::ArgMax, "argmax")
    }

    pub fn argmin(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.arg(axis, keepdim, ReduceOp::ArgMin, "argmin")
    }

    /// The `k` largest values along `axis` and their indices (i32), largest
    /// first, equal values in index order (`torch.topk` with `largest` and
    /// `sorted`). Computed on the device as `k` arg-max rounds, each masking
    /// its pick out of the next: meant for small `k` (a detector's
    /// candidates), so only `k` values per row need to be read back. The
    /// values' gradient reaches the picked positions.
    pub fn topk(&self, k: usize, axis: isize) -> Result<(Tensor, Tensor)> {
        const OP: &str = "topk";
        float_only(OP, self)?;
        let a = norm_axis(OP, axis, self.dims())?;
        let n = self.shape()[a];
        if k == 0 || k > n {
            return Err(Error::invalid(
                OP,
                format!("k = {k} must be between 1 and the axis' size {n}"),
            ));
        }
        let mut position_shape = vec![1; self.dims()];
        position_shape[a] = n;
        let positions = Tensor::arange_i32(self.device(), n)?.reshape(&position_shape)?;
        let x = self.detach();
        let (lowest, zero) = (x.scalar_like(f32::NEG_INFINITY), x.scalar_like(0.0));
        let axis = [a as isize];
        // Picked positions are masked out of the next rounds by a mask of
        // their own, not by their value: where everything left is -inf, a
        // value mask would let the first (picked) -inf win again.
        let mut open = x.ones_like();
        let mut picks = Vec::with_capacity(k);
        for round in 0..k {
            let left = Tensor::where_cond(&open.gt(&zero)?, &x, &lowest)?;
            let best = left.max(&axis, true)?;
            // NaN is the largest, as in torch.topk: where one is left, the
            // first of them; else the first open position holding the max.
            let nan = left
                .eq(&left)?
                .to_dtype(DType::F32)?
                .rsub_scalar(1.0)?
                .mul(&open)?;
            let any_nan = nan.max(&axis, true)?;
            let at_best = left.ge(&best)?.to_dtype(DType::F32)?.mul(&open)?;
            let wanted = Tensor::where_cond(&any_nan.gt(&zero)?, &nan, &at_best)?;
            let pick = wanted.argmax(a as isize, true)?;
            if round + 1 < k {
                let taken = positions.eq(&pick)?.to_dtype(DType::F32)?;
                open = open.mul(&taken.rsub_scalar(1.0)?)?;
            }
            picks.push(pick);
        }
        let picked: Vec<&Tensor> = picks.iter().collect();
        let indices = Tensor::concat(&picked, a as isize)?;
        Ok((self.gather(a as isize, &indices)?, indices))
    }

    fn arg(&self, axis: isize, keepdim: bool, op: ReduceOp, name: &'static str) -> Result<Tensor> {
        let a = norm_axis(name, axis, self.dims())?;
        if self.shape()[a] > LONG_ARG_REDUCTION {
            return self.long_arg(a, keepdim, op);
        }
        let kept = self.node().reduce(op, &[a])?;
        let out = if keepdim {
            kept
        } else {
            kept.reshape(&Self::squeeze_axes(self.shape(), &[a]))?
        };
        Ok(Tensor::from_node(out))
    }

    /// An arg-reduction over a long axis as two plain reductions, which the
    /// runtime splits over many workgroups: the extreme value, then the first
    /// index holding it (or holding a NaN, which PyTorch reports).
    fn long_arg(&self, a: usize, keepdim: bool, op: ReduceOp) -> Result<Tensor> {
        let x = self.detach();
        let extreme = match op {
            ReduceOp::ArgMax => x.max(&[a as isize], true)?,
            _ => x.min(&[a as isize], true)?,
        };
        let hit = x.eq(&extreme)?;
        let hit = if x.dtype() == DType::F32 {
            Tensor::from_node(hit.node().binary(BinaryOp::Max, x.ne(&x)?.node())?)
        } else {
            hit
        };
        let positions = Tensor::from_node(Node::iota(self.device(), self.shape(), DType::I32, a)?);
        let never = Tensor::full_dtype(self.device(), &[], DType::I32, i32::MAX as f64);
        Tensor::where_cond(&hit, &positions, &never)?.min(&[a as isize], keepdim)
    }

    /// Sums broadcast dimensions away so that a gradient matches `shape`.
    pub fn sum_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let lead = self.dims().checked_sub(shape.len()).ok_or_else(|| {
            Error::shape(
                "sum_to",
                format!("cannot reduce {:?} to {shape:?}", self.shape()),
            )
        })?;
        let mut axes = Vec::new();
        for i in 0..self.dims() {
            if i < lead || (shape[i - lead] == 1 && self.shape()[i] != 1) {
                axes.push(i as isize);
            } else if shape[i - lead] != self.shape()[i] {
                return Err(Error::shape(
                    "sum_to",
                    format!("cannot reduce {:?} to {shape:?}", self.shape()),
                ));
            }
        }
        if axes.is_empty() {
            return self.reshape(shape);
        }
        self.sum(&axes, true)?.reshape(shape)
    }

    // ---- movement -------------------------------------------------------------

    fn view_op(
        &self,
        shape: &[usize],
        spec: ViewSpec,
        name: &'static str,
        backward: crate::autograd::BackwardFn,
    ) -> Result<Tensor> {
        Ok(Tensor::from_op(
            self.node().view(shape, spec)?,
            name,
            &[self],
            backward,
        ))
    }

    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot reshape {:?} ({} elements) to {shape:?}",
                    self.shape(),
                    self.numel()
                ),
            ));
        }
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let from = self.shape().to_vec();
        Ok(Tensor::from_op(
            self.node().reshape(shape)?,
            "reshape",
            &[self],
            Box::new(move |g, _| Ok(vec![Some(g.reshape(&from)?)])),
        ))
    }

    /// Flattens dimensions `start..=end` into one.
    pub fn flatten(&self, start: isize, end: isize) -> Result<Tensor> {
        if self.dims() == 0 {
            return self.reshape(&[1]);
        }
        let s = norm_axis("flatten", start, self.dims())?;
        let e = norm_axis("flatten", end, self.dims())?;
        if s > e {
            return Err(Error::invalid(
                "flatten",
                format!("start {start} after end {end}"),
            ));
        }
        let mut shape: Vec<usize> = self.shape()[..s].to_vec();
        shape.push(self.shape()[s..=e].iter().product());
        shape.extend_from_slice(&self.shape()[e + 1..]);
        self.reshape(&shape)
    }

    pub fn unsqueeze(&self, dim: isize) -> Result<Tensor> {
        let d = norm_axis("unsqueeze", dim, self.dims() + 1)?;
        let mut shape = self.shape().to_vec();
        shape.insert(d, 1);
        self.reshape(&shape)
    }

    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        let d = norm_axis("squeeze", dim, self.dims())?;
        if self.shape()[d] != 1 {
            return Ok(self.clone());
        }
        let mut shape = self.shape().to_vec();
        shape.remove(d);
        self.reshape(&shape)
    }

    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let rank = self.dims();
        let mut seen = vec![false; rank];
        if perm.len() != rank
            || perm
                .iter()
                .any(|&p| p >= rank || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::shape(
                "permute",
                format!(
                    "{perm:?} is not a permutation of the {rank} dims of {:?}",
                    self.shape()
                ),
            ));
        }
        let cs = contiguous_strides(self.shape());
        let shape: Vec<usize> = perm.iter().map(|&p| self.shape()[p]).collect();
        let strides: Vec<i64> = perm.iter().map(|&p| cs[p]).collect();
        let mut inverse = vec![0; rank];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        self.view_op(
            &shape,
            ViewSpec {
                strides,
                offset: 0,
                mask: None,
            },
            "permute",
            Box::new(move |g, _| Ok(vec![Some(g.permute(&inverse)?)])),
        )
    }

    pub fn transpose(&self, d0: isize, d1: isize) -> Result<Tensor> {
        let a = norm_axis("transpose", d0, self.dims())?;
        let b = norm_axis("transpose", d1, self.dims())?;
        let mut perm: Vec<usize> = (0..self.dims()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Transpose of a 2-D tensor.
    pub fn t(&self) -> Result<Tensor> {
        if self.dims() != 2 {
            return Err(Error::shape(
                "t",
                format!("needs a 2-D tensor, got {:?}", self.shape()),
            ));
        }
        self.transpose(0, 1)
    }

    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let spec = expand_spec("broadcast_to", self.shape(), shape)?;
        let from = self.shape().to_vec();
        self.view_op(
            shape,
            spec,
            "broadcast_to",
            Box::new(move |g, _| Ok(vec![Some(g.sum_to(&from)?)])),
        )
    }

    /// `len` elements of `dim` from `start` (`torch.narrow`).
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        let d = norm_axis("narrow", dim, self.dims())?;
        let size = self.shape()[d];
        if start + len > size {
            return Err(Error::shape(
                "narrow",
                format!(
                    "[{start}, {}) of dim {d} with size {size} in {:?}",
                    start + len,
                    self.shape()
                ),
            ));
        }
        if start == 0 && len == size {
            return Ok(self.clone());
        }
        let cs = contiguous_strides(self.shape());
        let mut shape = self.shape().to_vec();
        shape[d] = len;
        let after = size - start - len;
        self.view_op(
            &shape,
            ViewSpec {
                strides: cs.clone(),
                offset: start as i64 * cs[d],
                mask: None,
            },
            "narrow",
            Box::new(move |g, _| Ok(vec![Some(g.pad_dim(d, start, after)?)])),
        )
    }

    /// Elements `start..end` of `dim`.
    pub fn slice(&self, dim: isize, start: usize, end: usize) -> Result<Tensor> {
        if end < start {
            return Err(Error::shape(
                "slice",
                format!("end {end} before start {start}"),
            ));
        }
        self.narrow(dim, start, end - start)
    }

    /// Zero padding of one dimension: `before` zeros, the values, `after` zeros.
    pub fn pad_dim(&self, dim: usize, before: usize, after: usize) -> Result<Tensor> {
        if dim >= self.dims() {
            return Err(Error::invalid(
                "pad",
                format!("dim {dim} out of range for {:?}", self.shape()),
            ));
        }
        if before == 0 && after == 0 {
            return Ok(self.clone());
        }
        let cs = contiguous_strides(self.shape());
        let mut shape = self.shape().to_vec();
        let size = shape[dim];
        shape[dim] = before + size + after;
        let mut mask: Vec<(usize, usize)> = shape.iter().map(|&s| (0, s)).collect();
        mask[dim] = (before, before + size);
        self.view_op(
            &shape,
            ViewSpec {
                strides: cs.clone(),
                offset: -(before as i64) * cs[dim],
                mask: Some(mask),
            },
            "pad",
            Box::new(move |g, _| Ok(vec![Some(g.narrow(dim as isize, before, size)?)])),
        )
    }

    /// Joins tensors along an existing dimension.
    pub fn concat(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        let first = tensors
            .first()
            .ok_or_else(|| Error::invalid("concat", "needs at least one tensor"))?;
        let d = norm_axis("concat", dim, first.dims())?;
        let mut total = 0;
        for t in tensors {
            let ok = t.dims() == first.dims()
                && t.dtype() == first.dtype()
                && (0..t.dims()).all(|i| i == d || t.shape()[i] == first.shape()[i]);
            if !ok {
                let shapes: Vec<_> = tensors.iter().map(|t| t.shape().to_vec()).collect();
                return Err(Error::shape(
                    "concat",
                    format!("shapes {shapes:?} along dim {d}"),
                ));
            }
            total += t.shape()[d];
        }
        if tensors.len() > CONCAT_FUSED_MAX {
            // One concatenation op: its inputs are copied into their regions
            // by one shared kernel, whatever their number.
            let nodes: Vec<Node> = tensors.iter().map(|t| t.node().clone()).collect();
            let lengths: Vec<usize> = tensors.iter().map(|t| t.shape()[d]).collect();
            return Ok(Tensor::from_op(
                Node::concat(&nodes, d)?,
                "concat",
                tensors,
                Box::new(move |g, _| {
                    let mut before = 0;
                    lengths
                        .iter()
                        .map(|&len| {
                            let part = g.narrow(d as isize, before, len)?;
                            before += len;
                            Ok(Some(part))
                        })
                        .collect()
                }),
            ));
        }
        // Each input padded to the full length; the sum places them side by
        // side, a sum that fuses into whatever reads it.
        let mut acc: Option<Tensor> = None;
        let mut before = 0;
        for t in tensors {
            let len = t.shape()[d];
            let padded = t.pad_dim(d, before, total - before - len)?;
            before += len;
            acc = Some(match acc {
                None => padded,
                Some(a) => a.add(&padded)?,
            });
        }
        acc.ok_or_else(|| Error::invalid("concat", "needs at least one tensor"))
    }

    /// Joins tensors along a new dimension.
    pub fn stack(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        let first = tensors
            .first()
            .ok_or_else(|| Error::invalid("stack", "needs at least one tensor"))?;
        let d = norm_axis("stack", dim, first.dims() + 1)?;
        for t in tensors {
            if t.shape() != first.shape() {
                return Err(Error::shape(
                    "stack",
                    format!("{:?} vs {:?}", first.shape(), t.shape()),
                ));
            }
        }
        let expanded: Vec<Tensor> = tensors
            .iter()
            .map(|t| t.unsqueeze(d as isize))
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = expanded.iter().collect();
        Tensor::concat(&refs, d as isize)
    }

    /// `out[i][j] = self[i][index[i][j]]` along `dim` (`torch.gather`); index is
    /// i32 or u32 with the same rank, its other dims no larger than self's.
    pub fn gather(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        let d = norm_axis("gather", dim, self.dims())?;
        if index.dims() != self.dims()
            || (0..self.dims()).any(|i| i != d && index.shape()[i] > self.shape()[i])
        {
            return Err(Error::shape(
                "gather",
                format!(
                    "input {:?}, index {:?}, dim {d}",
                    self.shape(),
                    index.shape()
                ),
            ));
        }
        let src = self.detach();
        let idx = index.detach();
        let src_shape = self.shape().to_vec();
        Ok(Tensor::from_op(
            Node::gather(self.node(), d, index.node())?,
            "gather",
            &[self],
            Box::new(move |g, _| Ok(vec![Some(scatter_add(&src, &src_shape, d, &idx, g)?)])),
        ))
    }

    /// Rows (or slices along `dim`) picked by a 1-D index tensor.
    pub fn index_select(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        let d = norm_axis("index_select", dim, self.dims())?;
        if index.dims() != 1 {
            return Err(Error::shape(
                "index_select",
                format!("index must be 1-D, got {:?}", index.shape()),
            ));
        }
        let rows = index.shape()[0];
        let mut idx_shape = vec![1; self.dims()];
        idx_shape[d] = rows;
        let mut out_shape = self.shape().to_vec();
        out_shape[d] = rows;
        let idx = index.reshape(&idx_shape)?.broadcast_to(&out_shape)?;
        let picked = self.shape()[d];
        if d != 0 || rows == 0 || rows * picked > ONE_HOT_GRAD_LIMIT || self.dtype() != DType::F32 {
            return self.gather(d as isize, &idx);
        }
        // Rows picked along the first axis (an embedding's lookup): their
        // gradient is the index's one-hot, transposed, times the output's
        // gradient, a product. Left to `gather`'s rule, a sum over the
        // one-hot broadcast to [rows, picked, rest] took 51 ms of a
        // character model's training step on lavapipe.
        let gathered = self.detach().gather(0, &idx)?;
        let index = index.detach();
        let src_shape = self.shape().to_vec();
        Ok(Tensor::from_op(
            gathered.node().clone(),
            "index_select",
            &[self],
            Box::new(move |g, _| {
                let rest = src_shape[1..].iter().product::<usize>();
                let hot = index.one_hot(src_shape[0])?;
                let grad = hot.t()?.matmul(&g.reshape(&[rows, rest])?)?;
                Ok(vec![Some(grad.reshape(&src_shape)?)])
            }),
        ))
    }

    /// One-hot f32 encoding of an integer tensor: shape `[..., num_classes]`.
    pub fn one_hot(&self, num_classes: usize) -> Result<Tensor> {
        if self.dtype() == DType::F32 {
            return Err(Error::DType {
                op: "one_hot",
                expected: "i32 or u32".into(),
                got: "f32".into(),
            });
        }
        let mut shape = self.shape().to_vec();
        shape.push(num_classes);
        let labels = self.unsqueeze(-1)?.broadcast_to(&shape)?;
        let classes = Tensor::from_node(Node::iota(
            self.device(),
            &shape,
            self.dtype(),
            shape.len() - 1,
        )?);
        labels.eq(&classes)?.to_dtype(DType::F32)
    }

    // ---- linear algebra -------------------------------------------------------

    /// Matrix product with PyTorch's rules: 1-D operands are vectors, leading
    /// dimensions broadcast as batch dimensions.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        float_only("matmul", self)?;
        float_only("matmul", other)?;
        let bad = || {
            Error::shape(
                "matmul",
                format!("{:?} @ {:?}", self.shape(), other.shape()),
            )
        };
        if self.dims() == 0 || other.dims() == 0 {
            return Err(bad());
        }
        // Check the inner dimension here, so that the error names the shapes the
        // caller passed rather than those of the vector cases' reshapes.
        let k_self = self.shape()[self.dims() - 1];
        let k_other = if other.dims() == 1 {
            other.shape()[0]
        } else {
            other.shape()[other.dims() - 2]
        };
        if k_self != k_other {
            return Err(bad());
        }
        if self.dims() == 1 && other.dims() == 1 {
            // Vector . vector: the 0-d dot product.
            return self
                .unsqueeze(0)?
                .matmul(&other.unsqueeze(1)?)?
                .reshape(&[]);
        }
        if self.dims() == 1 {
            return self.unsqueeze(0)?.matmul(other)?.squeeze(-2);
        }
        if other.dims() == 1 {
            return self.matmul(&other.unsqueeze(1)?)?.squeeze(-1);
        }
        let (sa, sb) = (self.shape(), other.shape());
        let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
        let (k2, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
        if k != k2 {
            return Err(bad());
        }
        let batch = broadcast_shapes("matmul", &sa[..sa.len() - 2], &sb[..sb.len() - 2])
            .map_err(|_| bad())?;
        let nb: usize = batch.iter().product();
        let a_shared = sa[..sa.len() - 2].iter().product::<usize>() == 1;
        let b_shared = sb[..sb.len() - 2].iter().product::<usize>() == 1;
        let operand = |t: &Tensor, rows: usize, cols: usize, shared: bool| -> Result<Node> {
            if batch.is_empty() || shared {
                t.node().reshape(&[rows, cols])
            } else {
                let mut full = batch.clone();
                full.extend([rows, cols]);
                expand_node("matmul", t.node(), &full)?.reshape(&[nb, rows, cols])
            }
        };
        let an = operand(self, m, k, a_shared)?;
        let bn = operand(other, k, n, b_shared)?;
        let prod = Node::matmul(&an, &bn)?;
        let prod = if an.shape().len() == 2 && bn.shape().len() == 2 && !batch.is_empty() {
            // Both operands shared: the product is the same for every batch index.
            let mut full = batch.clone();
            full.extend([m, n]);
            expand_node("matmul", &prod, &full)?
        } else {
            let mut full = batch.clone();
            full.extend([m, n]);
            prod.reshape(&full)?
        };
        let (a, b) = (self.detach(), other.detach());
        let (ra, rb) = (self.requires_grad(), other.requires_grad());
        Ok(Tensor::from_op(
            prod,
            "matmul",
            &[self, other],
            Box::new(move |g, _| {
                Ok(vec![
                    if ra {
                        Some(g.matmul(&b.transpose(-1, -2)?)?.sum_to(a.shape())?)
                    } else {
                        None
                    },
                    if rb {
                        let a_t = a.transpose(-1, -2)?;
                        let b_t = b.transpose(-1, -2)?;
                        // With b a transposed view (Linear's weight.t()),
                        // (g^T @ a)^T comes back to the weight's own layout
                        // through that view's gradient, where a^T @ g would
                        // copy a^T and then the transposed product.
                        let grad = if a.dims() == 2
                            && b.dims() == 2
                            && b_t.node().is_contiguous()
                            && !a_t.node().is_contiguous()
                        {
                            g.transpose(-1, -2)?.matmul(&a)?.transpose(-1, -2)?
                        } else {
                            a_t.matmul(g)?.sum_to(b.shape())?
                        };
                        Some(grad)
                    } else {
                        None
                    },
                ])
            }),
        ))
    }

    // ---- normalised exponentials and losses ---------------------------------------

    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        let shifted = self.sub(&self.max(&[dim], true)?.detach())?;
        let e = shifted.exp()?;
        e.div(&e.sum(&[dim], true)?)
    }

    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        let shifted = self.sub(&self.max(&[dim], true)?.detach())?;
        shifted.sub(&shifted.exp()?.sum(&[dim], true)?.log()?)
    }
}

/// The largest one-hot (rows picked times rows to pick from) whose product
/// `index_select` uses for its gradient along the first axis; past it the
/// gradient is `gather`'s, which never materializes the one-hot.
const ONE_HOT_GRAD_LIMIT: usize = 1 << 24;

/// The gradient of `gather`: each source position receives the sum of the
/// output gradients whose index picked it. Built as compare-and-reduce, with
/// no atomics, so it is deterministic.
fn scatter_add(
    src: &Tensor,
    src_shape: &[usize],
    d: usize,
    index: &Tensor,
    g: &Tensor,
) -> Result<Tensor> {
    let out_shape = g.shape().to_vec();
    let j = src_shape[d];
    // Work in [..., K, J, ...]: the gathered axis K, then the source axis J.
    let mut wide = out_shape.clone();
    wide.insert(d + 1, j);
    let idx = index.unsqueeze(d as isize + 1)?.broadcast_to(&wide)?;
    let positions = Tensor::from_node(Node::iota(src.device(), &wide, index.dtype(), d + 1)?);
    let hit = idx.eq(&positions)?.to_dtype(DType::F32)?;
    let grads = g.unsqueeze(d as isize + 1)?.broadcast_to(&wide)?;
    let summed = hit.mul(&grads)?.sum(&[d as isize], false)?;
    // Index dims other than `d` may be smaller than the source's.
    let mut out = summed;
    for (axis, &size) in src_shape.iter().enumerate() {
        if axis != d && out.shape()[axis] < size {
            let extra = size - out.shape()[axis];
            out = out.pad_dim(axis, 0, extra)?;
        }
    }
    Ok(out)
}
