//! Losses with PyTorch's formulas, options and reductions
//! (`torch.nn.functional.*_loss`), composed from tensor ops. Only
//! `binary_cross_entropy` carries its own backward rule: PyTorch's
//! gradient divides by `max(x (1 - x), 1e-12)` rather than differentiating
//! the clamped logarithms.

use cinder_runtime::{DType, Error, Result};

use crate::autograd::with_no_grad;
use crate::ops::float_only;
use crate::tensor::Tensor;

/// How a loss reduces its per-element values (PyTorch's `reduction`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// The mean (for class losses with weights or ignored targets, the sum
    /// divided by the total weight of the targets that count).
    #[default]
    Mean,
    Sum,
    /// No reduction: one value per element (per target for class losses).
    None,
}

/// Options of [`Tensor::cross_entropy_with`], PyTorch's defaults first.
#[derive(Clone, Debug)]
pub struct CrossEntropyOptions {
    /// One weight per class (`[C]`).
    pub weight: Option<Tensor>,
    /// Targets equal to this contribute nothing, to the sum or to the mean's
    /// divisor. Default -100.
    pub ignore_index: i32,
    pub reduction: Reduction,
    /// In [0, 1]: the target distribution is `(1 - s) one_hot + s / C`.
    pub label_smoothing: f32,
}

impl Default for CrossEntropyOptions {
    fn default() -> Self {
        CrossEntropyOptions {
            weight: None,
            ignore_index: -100,
            reduction: Reduction::Mean,
            label_smoothing: 0.0,
        }
    }
}

impl CrossEntropyOptions {
    pub fn weight(mut self, weight: Tensor) -> Self {
        self.weight = Some(weight);
        self
    }
    pub fn ignore_index(mut self, index: i32) -> Self {
        self.ignore_index = index;
        self
    }
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }
    pub fn label_smoothing(mut self, s: f32) -> Self {
        self.label_smoothing = s;
        self
    }
}

/// Options of [`Tensor::nll_loss_with`]: class weights, the ignored target
/// and the reduction, with PyTorch's defaults (none, -100, mean).
#[derive(Clone, Debug)]
pub struct NllLossOptions {
    pub weight: Option<Tensor>,
    pub ignore_index: i32,
    pub reduction: Reduction,
}

impl Default for NllLossOptions {
    fn default() -> Self {
        NllLossOptions {
            weight: None,
            ignore_index: -100,
            reduction: Reduction::Mean,
        }
    }
}

impl NllLossOptions {
    pub fn weight(mut self, weight: Tensor) -> Self {
        self.weight = Some(weight);
        self
    }
    pub fn ignore_index(mut self, index: i32) -> Self {
        self.ignore_index = index;
        self
    }
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }
}

/// Class scores `[N, C, d1, ...]` (or `[C]`) as rows `[M, C]` with the
/// class dim last, and the shape of one value per row (`[N, d1, ...]`, or
/// `[]`).
fn rows_of(op: &'static str, input: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let s = input.shape();
    let (c, lead): (usize, Vec<usize>) = match s.len() {
        0 => (0, Vec::new()),
        1 => (s[0], Vec::new()),
        _ => (
            s[1],
            std::iter::once(s[0])
                .chain(s[2..].iter().copied())
                .collect(),
        ),
    };
    if c == 0 {
        return Err(Error::shape(
            op,
            format!("input {s:?}: want [N, C, d1, ...] or [C] with C > 0"),
        ));
    }
    let rows = if s.len() <= 2 {
        input.reshape(&[numel(&lead), c])?
    } else {
        let mut perm: Vec<usize> = vec![0];
        perm.extend(2..s.len());
        perm.push(1);
        input.permute(&perm)?.reshape(&[numel(&lead), c])?
    };
    Ok((rows, lead))
}

/// [`rows_of`], checking that `target` has one class index per row.
fn class_rows(op: &'static str, input: &Tensor, target: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let (rows, lead) = rows_of(op, input)?;
    if target.shape() != lead.as_slice() {
        return Err(Error::shape(
            op,
            format!(
                "input {:?} with target {:?}: want target {lead:?} (the input's shape without the class dim 1)",
                input.shape(),
                target.shape()
            ),
        ));
    }
    Ok((rows, lead))
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn class_weight(op: &'static str, weight: Option<&Tensor>, classes: usize) -> Result<()> {
    if let Some(w) = weight {
        float_only(op, w)?;
        if w.shape() != [classes] {
            return Err(Error::shape(
                op,
                format!(
                    "weight must have one value per class, [{classes}], got {:?}",
                    w.shape()
                ),
            ));
        }
    }
    Ok(())
}

fn integer_targets(op: &'static str, target: &Tensor) -> Result<Tensor> {
    match target.dtype() {
        DType::I32 => Ok(target.clone()),
        DType::U32 => target.to_dtype(DType::I32),
        other => Err(Error::DType {
            op,
            expected: "i32 or u32 class indices".into(),
            got: other.to_string(),
        }),
    }
}

impl Tensor {
    /// Applies `reduction` to per-element losses.
    pub fn reduce_loss(&self, reduction: Reduction) -> Result<Tensor> {
        match reduction {
            Reduction::Mean => self.mean_all(),
            Reduction::Sum => self.sum_all(),
            Reduction::None => Ok(self.clone()),
        }
    }

    /// PyTorch's `nll_loss` with its defaults (mean, ignore_index -100).
    pub fn nll_loss(&self, target: &Tensor) -> Result<Tensor> {
        self.nll_loss_with(target, &NllLossOptions::default())
    }

    /// PyTorch's `nll_loss`: `self` holds log-probabilities `[N, C, d1, ...]`
    /// (or `[C]`), `target` class indices `[N, d1, ...]` (or `[]`), i32 or
    /// u32. Each target's loss is `-weight[t] * self[.., t, ..]`, 0 where
    /// `t == ignore_index`; the mean divides by the summed weights of the
    /// targets not ignored (NaN when all are). A target outside `[0, C)`
    /// other than `ignore_index` contributes 0 (PyTorch raises; checking
    /// needs a read back).
    pub fn nll_loss_with(&self, target: &Tensor, opts: &NllLossOptions) -> Result<Tensor> {
        self.class_loss(
            "nll_loss",
            target,
            opts.weight.as_ref(),
            opts.ignore_index,
            opts.reduction,
            0.0,
            false,
        )
    }

    /// PyTorch's `cross_entropy` of logits `[N, C, d1, ...]` (or `[C]`)
    /// against class indices `[N, d1, ...]` (i32 or u32) or, when `target`
    /// is f32 with the input's shape, class probabilities. Class weights,
    /// `ignore_index` and `label_smoothing` follow PyTorch's formulas: with
    /// smoothing `s` the loss is `(1 - s) * nll + s / C * smooth`, where
    /// `smooth = -sum_c weight[c] * log_softmax[c]` per target (0 where
    /// ignored), both reduced alike (the mean divides by the summed weights
    /// of the targets not ignored). With probabilities the mean divides by
    /// the number of targets, `N * d1 * ...`.
    pub fn cross_entropy_with(
        &self,
        target: &Tensor,
        opts: &CrossEntropyOptions,
    ) -> Result<Tensor> {
        const OP: &str = "cross_entropy";
        let s = opts.label_smoothing;
        if !(0.0..=1.0).contains(&s) {
            return Err(Error::invalid(
                OP,
                format!("label_smoothing must be in [0, 1], got {s}"),
            ));
        }
        if target.dtype() == DType::F32 && target.shape() == self.shape() {
            return self.cross_entropy_probabilities(target, opts);
        }
        self.class_loss(
            OP,
            target,
            opts.weight.as_ref(),
            opts.ignore_index,
            opts.reduction,
            s,
            true,
        )
    }

    fn cross_entropy_probabilities(
        &self,
        target: &Tensor,
        opts: &CrossEntropyOptions,
    ) -> Result<Tensor> {
        const OP: &str = "cross_entropy";
        float_only(OP, self)?;
        if opts.ignore_index >= 0 {
            return Err(Error::invalid(
                OP,
                "ignore_index is not supported with class-probability targets",
            ));
        }
        let (rows, target_shape) = rows_of(OP, self)?;
        let c = rows.shape()[1];
        class_weight(OP, opts.weight.as_ref(), c)?;
        let (t, _) = rows_of(OP, target)?;
        let s = opts.label_smoothing;
        let t = if s > 0.0 {
            t.mul_scalar(1.0 - s)?.add_scalar(s / c as f32)?
        } else {
            t
        };
        let mut terms = rows.log_softmax(-1)?.mul(&t)?;
        if let Some(w) = &opts.weight {
            terms = terms.mul(w)?;
        }
        let per = terms.sum(&[-1], false)?.neg()?;
        match opts.reduction {
            Reduction::None => per.reshape(&target_shape),
            r => per.reduce_loss(r),
        }
    }

    /// Mean cross-entropy of logits against class indices, with PyTorch's
    /// defaults (`torch.nn.functional.cross_entropy(input, target)`):
    /// targets equal to -100 are ignored.
    pub fn cross_entropy(&self, targets: &Tensor) -> Result<Tensor> {
        self.cross_entropy_with(targets, &CrossEntropyOptions::default())
    }

    #[allow(clippy::too_many_arguments)]
    fn class_loss(
        &self,
        op: &'static str,
        target: &Tensor,
        weight: Option<&Tensor>,
        ignore_index: i32,
        reduction: Reduction,
        smoothing: f32,
        from_logits: bool,
    ) -> Result<Tensor> {
        float_only(op, self)?;
        let t = integer_targets(op, target)?;
        let (rows, target_shape) = class_rows(op, self, &t)?;
        let c = rows.shape()[1];
        class_weight(op, weight, c)?;
        let m = rows.shape()[0];
        let t = t.reshape(&[m])?;
        let logp = if from_logits {
            rows.log_softmax(-1)?
        } else {
            rows
        };
        // Which targets count, and each one's class as a one-hot row (a
        // target outside [0, C) has an empty row).
        let device = self.device();
        let ignore = Tensor::full_dtype(device, &[], DType::I32, ignore_index as f64);
        let counted = t.ne(&ignore)?.to_dtype(DType::F32)?;
        let one_hot = t.one_hot(c)?;
        // `masked`, not a product: a -inf log-probability of another class
        // must not turn the pick into NaN.
        let picked = logp.masked(&one_hot)?;
        let (picked, target_weight) = match weight {
            Some(w) => (
                picked.mul(w)?,
                one_hot.mul(w)?.sum(&[-1], false)?.mul(&counted)?,
            ),
            None => (picked, counted.clone()),
        };
        let mut per = picked.sum(&[-1], false)?.neg()?;
        if smoothing > 0.0 {
            let spread = match weight {
                Some(w) => logp.mul(w)?,
                None => logp.clone(),
            };
            let smooth = spread.sum(&[-1], false)?.neg()?;
            per = per
                .mul_scalar(1.0 - smoothing)?
                .add(&smooth.mul_scalar(smoothing / c as f32)?)?;
        }
        let per = per.masked(&counted)?;
        match reduction {
            Reduction::None => per.reshape(&target_shape),
            Reduction::Sum => per.sum_all(),
            Reduction::Mean => per.sum_all()?.div(&target_weight.sum_all()?),
        }
    }

    /// PyTorch's `binary_cross_entropy` of probabilities `self` against
    /// `target` (same shape): `-w (y log x + (1 - y) log(1 - x))` with each
    /// log clamped at -100. The input gradient is PyTorch's
    /// `g (x - y) / max(x (1 - x), 1e-12)`, the target's `g (log(1 - x) - log x)`.
    /// Inputs outside [0, 1] give NaN (PyTorch raises; checking needs a
    /// read back). `weight` broadcasts to the input.
    pub fn binary_cross_entropy(
        &self,
        target: &Tensor,
        weight: Option<&Tensor>,
        reduction: Reduction,
    ) -> Result<Tensor> {
        const OP: &str = "binary_cross_entropy";
        float_only(OP, self)?;
        float_only(OP, target)?;
        same_shape(OP, self, target)?;
        let (x, y) = (self.detach(), target.detach());
        let value = with_no_grad(|| {
            let log_x = x.log()?.maximum_scalar(-100.0)?;
            let log_1mx = x.neg()?.log1p()?.maximum_scalar(-100.0)?;
            y.add_scalar(-1.0)?.mul(&log_1mx)?.sub(&y.mul(&log_x)?)
        })?;
        let (rx, ry) = (self.requires_grad(), target.requires_grad());
        let per = Tensor::from_op(
            value.node().clone(),
            OP,
            &[self, target],
            Box::new(move |g, _| {
                let dx = if rx {
                    let denom = x.rsub_scalar(1.0)?.mul(&x)?.maximum_scalar(1e-12)?;
                    Some(g.mul(&x.sub(&y)?)?.div(&denom)?)
                } else {
                    None
                };
                let dy = if ry {
                    Some(g.mul(&x.neg()?.log1p()?.sub(&x.log()?)?)?)
                } else {
                    None
                };
                Ok(vec![dx, dy])
            }),
        );
        let per = match weight {
            Some(w) => per.mul(w)?,
            None => per,
        };
        per.reduce_loss(reduction)
    }

    /// PyTorch's `binary_cross_entropy_with_logits`:
    /// `w ((1 - y) x - (1 + (p - 1) y) logsigmoid(x))`, exact for logits of
    /// any size (logsigmoid is `min(x, 0) - log1p(exp(-|x|))`). `pos_weight`
    /// (`p`, one per class) and `weight` broadcast to the input.
    pub fn binary_cross_entropy_with_logits(
        &self,
        target: &Tensor,
        weight: Option<&Tensor>,
        pos_weight: Option<&Tensor>,
        reduction: Reduction,
    ) -> Result<Tensor> {
        const OP: &str = "binary_cross_entropy_with_logits";
        float_only(OP, self)?;
        float_only(OP, target)?;
        same_shape(OP, self, target)?;
        let log_sigmoid = self.logsigmoid()?;
        let log_sigmoid = match pos_weight {
            Some(p) => log_sigmoid.mul(&p.add_scalar(-1.0)?.mul(target)?.add_scalar(1.0)?)?,
            None => log_sigmoid,
        };
        let per = target.rsub_scalar(1.0)?.mul(self)?.sub(&log_sigmoid)?;
        let per = match weight {
            Some(w) => per.mul(w)?,
            None => per,
        };
        per.reduce_loss(reduction)
    }

    /// PyTorch's `l1_loss`: `|x - y|` (broadcasting), reduced.
    pub fn l1_loss(&self, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
        float_only("l1_loss", self)?;
        self.sub(target)?.abs()?.reduce_loss(reduction)
    }

    /// Mean squared error (`torch.nn.functional.mse_loss`).
    pub fn mse_loss(&self, target: &Tensor) -> Result<Tensor> {
        self.mse_loss_with(target, Reduction::Mean)
    }

    /// PyTorch's `mse_loss` with a reduction: `(x - y)^2` (broadcasting).
    pub fn mse_loss_with(&self, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
        float_only("mse_loss", self)?;
        let d = self.sub(target)?;
        d.mul(&d)?.reduce_loss(reduction)
    }

    /// PyTorch's `smooth_l1_loss`: with `z = |x - y|`,
    /// `z < beta ? 0.5 z^2 / beta : z - 0.5 beta`; `beta = 0` is `l1_loss`.
    pub fn smooth_l1_loss(
        &self,
        target: &Tensor,
        reduction: Reduction,
        beta: f32,
    ) -> Result<Tensor> {
        const OP: &str = "smooth_l1_loss";
        float_only(OP, self)?;
        if beta.is_nan() || beta < 0.0 {
            return Err(Error::invalid(
                OP,
                format!("beta must not be negative, got {beta}"),
            ));
        }
        if beta == 0.0 {
            return self.l1_loss(target, reduction);
        }
        let z = self.sub(target)?.abs()?;
        let quadratic = z.mul(&z)?.mul_scalar(0.5)?.div_scalar(beta)?;
        let linear = z.add_scalar(-0.5 * beta)?;
        Tensor::where_cond(&z.lt(&z.scalar_like(beta))?, &quadratic, &linear)?
            .reduce_loss(reduction)
    }

    /// PyTorch's `huber_loss`: with `z = |x - y|`,
    /// `z < delta ? 0.5 z^2 : delta (z - 0.5 delta)`; `delta` must be
    /// positive.
    pub fn huber_loss(&self, target: &Tensor, reduction: Reduction, delta: f32) -> Result<Tensor> {
        const OP: &str = "huber_loss";
        float_only(OP, self)?;
        if delta.is_nan() || delta <= 0.0 {
            return Err(Error::invalid(
                OP,
                format!("delta must be positive, got {delta}"),
            ));
        }
        let z = self.sub(target)?.abs()?;
        let quadratic = z.mul(&z)?.mul_scalar(0.5)?;
        let linear = z.add_scalar(-0.5 * delta)?.mul_scalar(delta)?;
        Tensor::where_cond(&z.lt(&z.scalar_like(delta))?, &quadratic, &linear)?
            .reduce_loss(reduction)
    }
}

fn same_shape(op: &'static str, input: &Tensor, target: &Tensor) -> Result<()> {
    if input.shape() != target.shape() {
        return Err(Error::shape(
            op,
            format!(
                "target {:?} must have the input's shape {:?}",
                target.shape(),
                input.shape()
            ),
        ));
    }
    Ok(())
}
