//! Normalisation, dropout, resampling and padding of images, composed from
//! element-wise ops, reductions, matmuls and views, so their gradients come
//! from those ops' rules.

use cinder_runtime::{Error, Result};

use crate::autograd::with_no_grad;
use crate::tensor::Tensor;

/// How `pad2d` fills the border.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    Zeros,
    /// Mirror without repeating the edge (`[a b c]` -> `c b [a b c] b a`).
    Reflect,
    /// Repeat the edge (`[a b c]` -> `a a [a b c] c c`).
    Replicate,
    /// Wrap around (`[a b c]` -> `b c [a b c] a b`).
    Circular,
}

/// Source rows (and weights) of each output row of a resize, as a dense
/// `[out, in]` matrix.
fn resize_matrix(input: usize, output: usize, bilinear: bool, align_corners: bool) -> Vec<f32> {
    let mut m = vec![0.0f32; output * input];
    for o in 0..output {
        if !bilinear {
            // PyTorch's "nearest": floor(o * in / out), never past the edge.
            let src = ((o as f64 * input as f64 / output as f64).floor() as usize).min(input - 1);
            m[o * input + src] = 1.0;
            continue;
        }
        let src = if align_corners {
            if output > 1 {
                o as f64 * (input - 1) as f64 / (output - 1) as f64
            } else {
                0.0
            }
        } else {
            ((o as f64 + 0.5) * input as f64 / output as f64 - 0.5).max(0.0)
        };
        let i0 = (src.floor() as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        let frac = (src - i0 as f64) as f32;
        m[o * input + i0] += 1.0 - frac;
        m[o * input + i1] += frac;
    }
    m
}

impl Tensor {
    /// `rows @ self @ cols^T` over the last two dims, with `rows: [OH, H]` and
    /// `cols: [OW, W]` given on the host: resizing and pooling that treat rows
    /// and columns independently.
    pub(crate) fn separable(
        &self,
        rows: &[f32],
        oh: usize,
        cols: &[f32],
        ow: usize,
    ) -> Result<Tensor> {
        let [h, w] = match self.shape() {
            [.., h, w] => [*h, *w],
            _ => return Err(Error::shape("resize", "needs at least two dims")),
        };
        let r = Tensor::from_slice(self.device(), rows, &[oh, h])?;
        let c = Tensor::from_slice(self.device(), cols, &[ow, w])?;
        r.matmul(&self.matmul(&c.t()?)?)
    }

    /// PyTorch's `interpolate(mode="nearest")` of an `[N, C, H, W]` image to `size`.
    pub fn upsample_nearest2d(&self, size: [usize; 2]) -> Result<Tensor> {
        self.resize2d("upsample_nearest2d", size, false, false)
    }

    /// PyTorch's `interpolate(mode="bilinear", align_corners=...)`.
    pub fn upsample_bilinear2d(&self, size: [usize; 2], align_corners: bool) -> Result<Tensor> {
        self.resize2d("upsample_bilinear2d", size, true, align_corners)
    }

    fn resize2d(
        &self,
        op: &'static str,
        size: [usize; 2],
        bilinear: bool,
        align: bool,
    ) -> Result<Tensor> {
        let [h, w] = match *self.shape() {
            [_, _, h, w] if h > 0 && w > 0 => [h, w],
            _ => {
                return Err(Error::shape(
                    op,
                    format!(
                        "expected a non-empty [N, C, H, W] input, got {:?}",
                        self.shape()
                    ),
                ))
            }
        };
        if size.contains(&0) {
            return Err(Error::invalid(
                op,
                format!("output size must be positive, got {size:?}"),
            ));
        }
        let rows = resize_matrix(h, size[0], bilinear, align);
        let cols = resize_matrix(w, size[1], bilinear, align);
        self.separable(&rows, size[0], &cols, size[1])
    }

    /// Pads the last two dims by `[left, right, top, bottom]`
    /// (`torch.nn.functional.pad` with four pads).
    pub fn pad2d(&self, pad: [usize; 4], mode: PadMode) -> Result<Tensor> {
        const OP: &str = "pad2d";
        let d = self.dims();
        if d < 2 {
            return Err(Error::shape(
                OP,
                format!("needs at least two dims, got {:?}", self.shape()),
            ));
        }
        let [left, right, top, bottom] = pad;
        self.pad_one(OP, d - 1, left, right, mode)?
            .pad_one(OP, d - 2, top, bottom, mode)
    }

    /// Pads the last dim by `[left, right]` (`torch.nn.functional.pad`
    /// with two pads).
    pub fn pad1d(&self, pad: [usize; 2], mode: PadMode) -> Result<Tensor> {
        const OP: &str = "pad1d";
        let d = self.dims();
        if d < 1 {
            return Err(Error::shape(OP, "needs at least one dim, got a scalar"));
        }
        self.pad_one(OP, d - 1, pad[0], pad[1], mode)
    }

    /// Pads `dim` by `before` and `after` in `mode`, with PyTorch's limits:
    /// reflect pads must be smaller than the dim, circular ones at most its
    /// size, and replicate needs a non-empty dim.
    fn pad_one(
        &self,
        op: &'static str,
        dim: usize,
        before: usize,
        after: usize,
        mode: PadMode,
    ) -> Result<Tensor> {
        let n = self.shape()[dim];
        let bad = |what: &str| {
            Err(Error::invalid(
                op,
                format!(
                    "{mode:?} padding ({before}, {after}) of dim {dim} of {:?}: {what}",
                    self.shape()
                ),
            ))
        };
        match mode {
            PadMode::Zeros => self.pad_dim(dim, before, after),
            PadMode::Reflect => {
                if before >= n || after >= n {
                    return bad("each pad must be smaller than the dim");
                }
                self.reflect_dim(dim, before, after)
            }
            PadMode::Replicate => {
                if n == 0 && before + after > 0 {
                    return bad("the dim is empty");
                }
                self.replicate_dim(dim, before, after)
            }
            PadMode::Circular => {
                if before > n || after > n {
                    return bad("each pad must be at most the dim (it would wrap more than once)");
                }
                self.circular_dim(dim, before, after)
            }
        }
    }

    /// The edge repeated `before` and `after` times: broadcast views of the
    /// edge slices, whose gradient sums back onto the edge.
    fn replicate_dim(&self, dim: usize, before: usize, after: usize) -> Result<Tensor> {
        let n = self.shape()[dim];
        let edge = |start: usize, len: usize| -> Result<Option<Tensor>> {
            if len == 0 {
                return Ok(None);
            }
            let mut shape = self.shape().to_vec();
            shape[dim] = len;
            Ok(Some(
                self.narrow(dim as isize, start, 1)?.broadcast_to(&shape)?,
            ))
        };
        let head = edge(0, before)?;
        let tail = edge(n.saturating_sub(1), after)?;
        self.join(dim, head, tail)
    }

    /// The last `before` elements in front, the first `after` behind.
    fn circular_dim(&self, dim: usize, before: usize, after: usize) -> Result<Tensor> {
        let n = self.shape()[dim];
        let head = match before {
            0 => None,
            b => Some(self.narrow(dim as isize, n - b, b)?),
        };
        let tail = match after {
            0 => None,
            a => Some(self.narrow(dim as isize, 0, a)?),
        };
        self.join(dim, head, tail)
    }

    fn join(&self, dim: usize, head: Option<Tensor>, tail: Option<Tensor>) -> Result<Tensor> {
        let parts: Vec<&Tensor> = head
            .iter()
            .chain(std::iter::once(self))
            .chain(tail.iter())
            .collect();
        if parts.len() == 1 {
            return Ok(self.clone());
        }
        Tensor::concat(&parts, dim as isize)
    }

    /// Mirrors `before` and `after` elements onto `dim`: the two borders are
    /// reversed narrow slices, so the backward pass stays as small as they are.
    fn reflect_dim(&self, dim: usize, before: usize, after: usize) -> Result<Tensor> {
        let n = self.shape()[dim];
        let reversed = |start: usize, len: usize| -> Result<Option<Tensor>> {
            if len == 0 {
                return Ok(None);
            }
            let idx: Vec<i32> = (0..len).rev().map(|i| i as i32).collect();
            let index = Tensor::from_slice(self.device(), &idx, &[len])?;
            Ok(Some(
                self.narrow(dim as isize, start, len)?
                    .index_select(dim as isize, &index)?,
            ))
        };
        let head = reversed(1, before)?;
        let tail = reversed(n - 1 - after, after)?;
        self.join(dim, head, tail)
    }

    /// Mean and biased variance over every dim but 1 (the channels), kept
    /// as `[1, C, 1, ...]`, and the number of values each was taken over.
    fn channel_stats(&self) -> Result<(Tensor, Tensor, usize)> {
        let axes: Vec<isize> = (0..self.dims() as isize).filter(|&a| a != 1).collect();
        let count = self.numel() / self.shape()[1].max(1);
        let mean = self.mean(&axes, true)?;
        let var = self.sub(&mean)?.square()?.mean(&axes, true)?;
        Ok((mean, var, count))
    }

    fn per_channel(&self, t: &Tensor) -> Result<Tensor> {
        let mut shape = vec![1; self.dims()];
        shape[1] = self.shape()[1];
        t.reshape(&shape)
    }

    /// Batch normalisation with the batch's own statistics (training mode):
    /// returns the output, and the batch mean and unbiased variance per
    /// channel (`[C]`) for updating running statistics.
    pub fn batch_norm_train(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "batch_norm";
        self.check_norm_input(OP, weight, bias)?;
        let (mean, var, count) = with_no_grad(|| self.channel_stats())?;
        if count < 2 {
            return Err(Error::invalid(
                OP,
                format!(
                    "expected more than one value per channel in training, got input {:?}",
                    self.shape()
                ),
            ));
        }
        let c = self.shape()[1];
        let unbiased = var.mul_scalar(count as f32 / (count - 1) as f32)?;
        let y = self.normalize_channels(&mean, &var, weight, bias, eps, count)?;
        Ok((
            y,
            mean.detach().reshape(&[c])?,
            unbiased.detach().reshape(&[c])?,
        ))
    }

    /// `(x - mean) * rsqrt(var + eps) * weight + bias` with the batch's own
    /// statistics, as one op with the closed-form gradient. Composed, the
    /// autodiff of the mean, the variance and the affine map made about ten
    /// passes over the image in the backward (a third of a U-Net step at
    /// 96x96); the rule below reads it in two reductions and one
    /// element-wise pass, and the forward value is one per-channel
    /// multiply-add of the input that fuses into its readers.
    fn normalize_channels(
        &self,
        mean: &Tensor,
        var: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
        count: usize,
    ) -> Result<Tensor> {
        let (x, mean) = (self.detach(), mean.detach());
        let rstd = var.detach().add_scalar(eps)?.rsqrt()?;
        let w = match weight {
            Some(w) => Some(self.per_channel(&w.detach())?),
            None => None,
        };
        let scale = match &w {
            Some(w) => rstd.mul(w)?,
            None => rstd.clone(),
        };
        let mut shift = mean.mul(&scale)?.neg()?;
        if let Some(b) = bias {
            shift = shift.add(&self.per_channel(&b.detach())?)?;
        }
        // (every operand is detached, so this records nothing)
        let y = x.mul(&scale)?.add(&shift)?;
        let mut inputs = vec![self];
        inputs.extend(weight);
        inputs.extend(bias);
        let (has_weight, has_bias) = (weight.is_some(), bias.is_some());
        let axes: Vec<isize> = (0..self.dims() as isize).filter(|&a| a != 1).collect();
        let c = self.shape()[1];
        Ok(Tensor::from_op(
            y.node().clone(),
            "batch_norm",
            &inputs,
            Box::new(move |g, _| {
                // With xhat = (x - mean) * rstd and n values per channel:
                // dbias = sum(g), dweight = sum(g * xhat) and
                // dx = scale * (g - dbias / n - xhat * dweight / n),
                // which is g * scale + x * k + k0 per channel.
                let sum_g = g.sum(&axes, true)?;
                // g * x - g * mean rather than g * (x - mean): the forward
                // pass's x - mean (its variance) would otherwise be the same
                // value, which the planner then keeps in a buffer for both.
                let sum_g_xhat = g
                    .mul(&x)?
                    .sub(&g.mul(&mean)?)?
                    .sum(&axes, true)?
                    .mul(&rstd)?;
                let inv_n = 1.0 / count as f32;
                let k = scale.mul(&rstd)?.mul(&sum_g_xhat)?.mul_scalar(-inv_n)?;
                let k0 = scale.mul(&sum_g)?.mul_scalar(-inv_n)?.sub(&k.mul(&mean)?)?;
                let dx = g.mul(&scale)?.add(&x.mul(&k)?)?.add(&k0)?;
                let mut grads = vec![Some(dx)];
                if has_weight {
                    grads.push(Some(sum_g_xhat.reshape(&[c])?));
                }
                if has_bias {
                    grads.push(Some(sum_g.reshape(&[c])?));
                }
                Ok(grads)
            }),
        ))
    }

    /// Batch normalisation with given statistics (evaluation mode).
    pub fn batch_norm_eval(
        &self,
        running_mean: &Tensor,
        running_var: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        const OP: &str = "batch_norm";
        self.check_norm_input(OP, weight, bias)?;
        let c = self.shape()[1];
        for (name, t) in [("running_mean", running_mean), ("running_var", running_var)] {
            if t.shape() != [c] {
                return Err(Error::shape(
                    OP,
                    format!("{name} must be [{c}], got {:?}", t.shape()),
                ));
            }
        }
        // One scale and shift per channel, folded before touching the image.
        let scale = running_var.add_scalar(eps)?.rsqrt()?;
        let scale = match weight {
            Some(w) => scale.mul(w)?,
            None => scale,
        };
        let shift = running_mean.mul(&scale)?.neg()?;
        let shift = match bias {
            Some(b) => shift.add(b)?,
            None => shift,
        };
        self.mul(&self.per_channel(&scale)?)?
            .add(&self.per_channel(&shift)?)
    }

    fn check_norm_input(
        &self,
        op: &'static str,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
    ) -> Result<()> {
        if self.dims() < 2 || self.shape()[1] == 0 {
            return Err(Error::shape(
                op,
                format!("expected [N, C, ...], got {:?}", self.shape()),
            ));
        }
        let c = self.shape()[1];
        for t in [weight, bias].into_iter().flatten() {
            if t.shape() != [c] {
                return Err(Error::shape(
                    op,
                    format!("weight and bias must be [{c}], got {:?}", t.shape()),
                ));
            }
        }
        Ok(())
    }

    fn affine(&self, y: Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>) -> Result<Tensor> {
        let y = match weight {
            Some(w) => y.mul(&self.per_channel(w)?)?,
            None => y,
        };
        match bias {
            Some(b) => y.add(&self.per_channel(b)?),
            None => Ok(y),
        }
    }

    /// PyTorch's `layer_norm` over the trailing `normalized_shape` dims.
    pub fn layer_norm(
        &self,
        normalized_shape: &[usize],
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        const OP: &str = "layer_norm";
        let k = normalized_shape.len();
        if k == 0 || k > self.dims() || self.shape()[self.dims() - k..] != *normalized_shape {
            return Err(Error::shape(
                OP,
                format!(
                    "normalized_shape {normalized_shape:?} must be the trailing dims of {:?}",
                    self.shape()
                ),
            ));
        }
        for t in [weight, bias].into_iter().flatten() {
            if t.shape() != normalized_shape {
                return Err(Error::shape(
                    OP,
                    format!(
                        "weight and bias must be {normalized_shape:?}, got {:?}",
                        t.shape()
                    ),
                ));
            }
        }
        let axes: Vec<isize> = (self.dims() - k..self.dims()).map(|a| a as isize).collect();
        let mean = self.mean(&axes, true)?;
        let centred = self.sub(&mean)?;
        let var = centred.square()?.mean(&axes, true)?;
        let y = centred.mul(&var.add_scalar(eps)?.rsqrt()?)?;
        let y = match weight {
            Some(w) => y.mul(w)?,
            None => y,
        };
        match bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }

    /// PyTorch's `group_norm`: the `C` channels of `[N, C, ...]` split into
    /// `num_groups` groups, each normalised over its channels and every
    /// position (biased variance), then scaled and shifted per channel.
    pub fn group_norm(
        &self,
        num_groups: usize,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        const OP: &str = "group_norm";
        self.check_norm_input(OP, weight, bias)?;
        let (n, c) = (self.shape()[0], self.shape()[1]);
        if num_groups == 0 || !c.is_multiple_of(num_groups) {
            return Err(Error::invalid(
                OP,
                format!(
                    "{c} channels of input {:?} do not split into {num_groups} groups",
                    self.shape()
                ),
            ));
        }
        let per_group = self.numel() / (n * num_groups).max(1);
        let grouped = self.reshape(&[n, num_groups, per_group])?;
        let mean = grouped.mean(&[2], true)?;
        let centred = grouped.sub(&mean)?;
        let var = centred.square()?.mean(&[2], true)?;
        let y = centred
            .mul(&var.add_scalar(eps)?.rsqrt()?)?
            .reshape(self.shape())?;
        self.affine(y, weight, bias)
    }

    /// PyTorch's `instance_norm` with the input's own statistics (no
    /// running statistics): each channel of each sample of `[N, C, ...]`
    /// normalised over its positions, then the optional per-channel affine.
    pub fn instance_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        const OP: &str = "instance_norm";
        self.check_norm_input(OP, weight, bias)?;
        let spatial: usize = self.shape()[2..].iter().product();
        if self.dims() < 3 || spatial <= 1 {
            return Err(Error::invalid(
                OP,
                format!(
                    "expected more than 1 spatial element per channel, got input {:?}",
                    self.shape()
                ),
            ));
        }
        self.group_norm(self.shape()[1], weight, bias, eps)
    }

    /// Zeroes each element with probability `p` and scales the rest by
    /// `1 / (1 - p)`; the mask comes from the device's seeded random stream
    /// (`Device::manual_seed`), generated on the GPU.
    pub fn dropout(&self, p: f32, training: bool) -> Result<Tensor> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid(
                "dropout",
                format!("p must be in [0, 1], got {p}"),
            ));
        }
        if !training || p == 0.0 {
            return Ok(self.clone());
        }
        if p == 1.0 {
            return self.mul_scalar(0.0);
        }
        let keep =
            Tensor::rand(self.device(), self.shape())?.ge(&Tensor::full(self.device(), &[], p))?;
        let scaled = self.mul_scalar(1.0 / (1.0 - p))?;
        Tensor::where_cond(&keep, &scaled, &self.zeros_like())
    }
}
