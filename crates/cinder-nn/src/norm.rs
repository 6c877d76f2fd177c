//! Normalisation, dropout and resampling layers with PyTorch's names,
//! defaults and train/eval behaviour.

use cinder_tensor::{DType, Device, Error, Result, Tensor};

use crate::init;
use crate::module::Module;

/// Batch normalisation's parameters, running statistics and their update,
/// shared by `BatchNorm1d` and `BatchNorm2d`.
fn batch_norm_state(device: &Device, op: &'static str, channels: usize) -> Result<BatchNormState> {
    if channels == 0 {
        return Err(Error::invalid(op, "channels must be positive"));
    }
    let tracked = Tensor::full_dtype(device, &[], DType::I32, 0.0);
    tracked.realize()?;
    Ok(BatchNormState {
        weight: Some(init::ones(device, &[channels])?.requires_grad_()),
        bias: Some(init::zeros(device, &[channels])?.requires_grad_()),
        running_mean: init::zeros(device, &[channels])?,
        running_var: init::ones(device, &[channels])?,
        num_batches_tracked: tracked.detach(),
    })
}

struct BatchNormState {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
}

/// The forward pass of batch norm over `input` (`[N, C, ...]`): in
/// training, the batch's statistics normalise and the running ones are
/// updated (unbiased variance, `momentum` or the cumulative average when
/// `None`) in the same submit as the next realization.
#[allow(clippy::too_many_arguments)]
fn batch_norm_forward(
    op: &'static str,
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    num_batches_tracked: &Tensor,
    eps: f32,
    momentum: Option<f32>,
    training: bool,
) -> Result<Tensor> {
    let c = running_mean.numel();
    if input.dims() < 2 || input.shape()[1] != c {
        return Err(Error::shape(
            op,
            format!("input {:?} must have {c} channels in dim 1", input.shape()),
        ));
    }
    if !training {
        return input.batch_norm_eval(running_mean, running_var, weight, bias, eps);
    }
    let (y, mean, var) = input.batch_norm_train(weight, bias, eps)?;
    let device = input.device();
    // A forward since the last realization has an update pending: this one
    // follows it, as in PyTorch (a GAN's discriminator runs twice a step).
    let (running_mean_now, running_var_now, tracked_now) = (
        running_mean.after_deferred_writes(),
        running_var.after_deferred_writes(),
        num_batches_tracked.after_deferred_writes(),
    );
    let tracked = tracked_now.add(&Tensor::full_dtype(device, &[], DType::I32, 1.0))?;
    let factor = match momentum {
        Some(m) => Tensor::full(device, &[], m),
        None => tracked.to_dtype(DType::F32)?.recip()?,
    };
    let keep = factor.rsub_scalar(1.0)?;
    let new_mean = running_mean_now.mul(&keep)?.add(&mean.mul(&factor)?)?;
    let new_var = running_var_now.mul(&keep)?.add(&var.mul(&factor)?)?;
    device.defer_assign(running_mean.node(), new_mean.node().clone());
    device.defer_assign(running_var.node(), new_var.node().clone());
    device.defer_assign(num_batches_tracked.node(), tracked.node().clone());
    Ok(y)
}

fn affine_parameters(weight: &Option<Tensor>, bias: &Option<Tensor>) -> Vec<(String, Tensor)> {
    let mut p = Vec::new();
    if let Some(w) = weight {
        p.push(("weight".to_string(), w.clone()));
    }
    if let Some(b) = bias {
        p.push(("bias".to_string(), b.clone()));
    }
    p
}

fn running_buffers(mean: &Tensor, var: &Tensor, tracked: &Tensor) -> Vec<(String, Tensor)> {
    vec![
        ("running_mean".to_string(), mean.clone()),
        ("running_var".to_string(), var.clone()),
        ("num_batches_tracked".to_string(), tracked.clone()),
    ]
}

macro_rules! batch_norm_module {
    ($(#[$doc:meta])* $name:ident, $dims:expr, $expected:expr) => {
        $(#[$doc])*
        pub struct $name {
            pub weight: Option<Tensor>,
            pub bias: Option<Tensor>,
            pub running_mean: Tensor,
            pub running_var: Tensor,
            pub num_batches_tracked: Tensor,
            pub eps: f32,
            /// `None` is PyTorch's cumulative moving average.
            pub momentum: Option<f32>,
            training: bool,
        }

        impl $name {
            /// PyTorch's defaults: eps 1e-5, momentum 0.1, affine, running
            /// statistics tracked.
            pub fn new(device: &Device, channels: usize) -> Result<$name> {
                let s = batch_norm_state(device, stringify!($name), channels)?;
                Ok($name {
                    weight: s.weight,
                    bias: s.bias,
                    running_mean: s.running_mean,
                    running_var: s.running_var,
                    num_batches_tracked: s.num_batches_tracked,
                    eps: 1e-5,
                    momentum: Some(0.1),
                    training: true,
                })
            }

            pub fn is_training(&self) -> bool {
                self.training
            }
        }

        impl Module for $name {
            fn forward(&self, input: &Tensor) -> Result<Tensor> {
                if !$dims.contains(&input.dims()) {
                    return Err(Error::shape(
                        stringify!($name),
                        format!("expected {}, got {:?}", $expected, input.shape()),
                    ));
                }
                batch_norm_forward(
                    stringify!($name),
                    input,
                    self.weight.as_ref(),
                    self.bias.as_ref(),
                    &self.running_mean,
                    &self.running_var,
                    &self.num_batches_tracked,
                    self.eps,
                    self.momentum,
                    self.training,
                )
            }

            fn named_parameters(&self) -> Vec<(String, Tensor)> {
                affine_parameters(&self.weight, &self.bias)
            }

            fn named_buffers(&self) -> Vec<(String, Tensor)> {
                running_buffers(
                    &self.running_mean,
                    &self.running_var,
                    &self.num_batches_tracked,
                )
            }

            fn set_training(&mut self, training: bool) {
                self.training = training;
            }
        }
    };
}

batch_norm_module!(
    /// `torch.nn.BatchNorm2d`: parameters `weight`, `bias`; buffers
    /// `running_mean`, `running_var`, `num_batches_tracked`. In training the
    /// batch's statistics normalise and the running ones are updated (with the
    /// unbiased variance) in the same submit as the next realization.
    BatchNorm2d,
    [4usize],
    "[N, C, H, W]"
);

batch_norm_module!(
    /// `torch.nn.BatchNorm1d` over `[N, C]` or `[N, C, L]`: statistics per
    /// channel over the batch (and length), with `BatchNorm2d`'s names,
    /// defaults and running statistics.
    BatchNorm1d,
    [2usize, 3],
    "[N, C] or [N, C, L]"
);

/// `torch.nn.LayerNorm` over the trailing `normalized_shape` dims, with
/// `weight` and `bias` when `elementwise_affine` (and `bias`) is set.
pub struct LayerNorm {
    pub normalized_shape: Vec<usize>,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub eps: f32,
}

impl LayerNorm {
    /// PyTorch's defaults: eps 1e-5, elementwise affine with a bias.
    pub fn new(device: &Device, normalized_shape: &[usize]) -> Result<LayerNorm> {
        LayerNorm::with_options(device, normalized_shape, 1e-5, true, true)
    }

    /// `LayerNorm(normalized_shape, eps, elementwise_affine, bias)`.
    pub fn with_options(
        device: &Device,
        normalized_shape: &[usize],
        eps: f32,
        elementwise_affine: bool,
        bias: bool,
    ) -> Result<LayerNorm> {
        if normalized_shape.is_empty() || normalized_shape.contains(&0) {
            return Err(Error::invalid(
                "LayerNorm",
                format!(
                    "normalized_shape must be non-empty and positive, got {normalized_shape:?}"
                ),
            ));
        }
        let (weight, bias) = if elementwise_affine {
            (
                Some(init::ones(device, normalized_shape)?.requires_grad_()),
                if bias {
                    Some(init::zeros(device, normalized_shape)?.requires_grad_())
                } else {
                    None
                },
            )
        } else {
            (None, None)
        };
        Ok(LayerNorm {
            normalized_shape: normalized_shape.to_vec(),
            weight,
            bias,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.layer_norm(
            &self.normalized_shape,
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.eps,
        )
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        affine_parameters(&self.weight, &self.bias)
    }
}

/// `torch.nn.GroupNorm(num_groups, num_channels, eps, affine)`: `weight`
/// and `bias` are `[num_channels]`; the channels must split evenly.
pub struct GroupNorm {
    pub num_groups: usize,
    pub num_channels: usize,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub eps: f32,
}

impl GroupNorm {
    /// PyTorch's defaults: eps 1e-5, affine.
    pub fn new(device: &Device, num_groups: usize, num_channels: usize) -> Result<GroupNorm> {
        GroupNorm::with_options(device, num_groups, num_channels, 1e-5, true)
    }

    pub fn with_options(
        device: &Device,
        num_groups: usize,
        num_channels: usize,
        eps: f32,
        affine: bool,
    ) -> Result<GroupNorm> {
        if num_groups == 0 || num_channels == 0 || !num_channels.is_multiple_of(num_groups) {
            return Err(Error::invalid(
                "GroupNorm",
                format!("num_channels ({num_channels}) must be divisible by num_groups ({num_groups}), both positive"),
            ));
        }
        let (weight, bias) = channel_affine(device, num_channels, affine)?;
        Ok(GroupNorm {
            num_groups,
            num_channels,
            weight,
            bias,
            eps,
        })
    }
}

fn channel_affine(
    device: &Device,
    channels: usize,
    affine: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    if !affine {
        return Ok((None, None));
    }
    Ok((
        Some(init::ones(device, &[channels])?.requires_grad_()),
        Some(init::zeros(device, &[channels])?.requires_grad_()),
    ))
}

impl Module for GroupNorm {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        if input.dims() < 2 || input.shape()[1] != self.num_channels {
            return Err(Error::shape(
                "GroupNorm",
                format!(
                    "expected [N, {}, ...], got {:?}",
                    self.num_channels,
                    input.shape()
                ),
            ));
        }
        input.group_norm(
            self.num_groups,
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.eps,
        )
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        affine_parameters(&self.weight, &self.bias)
    }
}

/// `torch.nn.InstanceNorm2d(num_features, eps, affine)` over `[N, C, H, W]`
/// or unbatched `[C, H, W]`, with PyTorch's defaults (no affine, no
/// running statistics: each image is normalised by its own statistics in
/// training and evaluation alike). `track_running_stats` is not offered.
pub struct InstanceNorm2d {
    pub num_features: usize,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub eps: f32,
}

impl InstanceNorm2d {
    /// PyTorch's defaults: eps 1e-5, no affine parameters.
    pub fn new(device: &Device, num_features: usize) -> Result<InstanceNorm2d> {
        InstanceNorm2d::with_options(device, num_features, 1e-5, false)
    }

    pub fn with_options(
        device: &Device,
        num_features: usize,
        eps: f32,
        affine: bool,
    ) -> Result<InstanceNorm2d> {
        if num_features == 0 {
            return Err(Error::invalid(
                "InstanceNorm2d",
                "num_features must be positive",
            ));
        }
        let (weight, bias) = channel_affine(device, num_features, affine)?;
        Ok(InstanceNorm2d {
            num_features,
            weight,
            bias,
            eps,
        })
    }
}

impl Module for InstanceNorm2d {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let unbatched = input.dims() == 3;
        if !(unbatched || input.dims() == 4) {
            return Err(Error::shape(
                "InstanceNorm2d",
                format!(
                    "expected [N, C, H, W] or [C, H, W], got {:?}",
                    input.shape()
                ),
            ));
        }
        let x = if unbatched {
            input.unsqueeze(0)?
        } else {
            input.clone()
        };
        // As PyTorch, a channel count other than num_features is an error
        // only where affine parameters need it.
        if self.weight.is_some() && x.shape()[1] != self.num_features {
            return Err(Error::shape(
                "InstanceNorm2d",
                format!(
                    "expected {} channels, got input {:?}",
                    self.num_features,
                    input.shape()
                ),
            ));
        }
        let y = x.instance_norm(self.weight.as_ref(), self.bias.as_ref(), self.eps)?;
        if unbatched {
            y.squeeze(0)
        } else {
            Ok(y)
        }
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        affine_parameters(&self.weight, &self.bias)
    }
}

/// `torch.nn.Dropout(p)`: active in training mode only.
pub struct Dropout {
    pub p: f32,
    training: bool,
}

impl Dropout {
    pub fn new(p: f32) -> Result<Dropout> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid(
                "Dropout",
                format!("p must be in [0, 1], got {p}"),
            ));
        }
        Ok(Dropout { p, training: true })
    }
}

impl Module for Dropout {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.dropout(self.p, self.training)
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
}

/// How `Upsample` computes new pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpsampleMode {
    Nearest,
    Bilinear { align_corners: bool },
}

/// `torch.nn.Upsample` with either an output size or an integer scale.
#[derive(Clone, Copy, Debug)]
pub struct Upsample {
    pub size: Option<[usize; 2]>,
    pub scale: usize,
    pub mode: UpsampleMode,
}

impl Upsample {
    pub fn scale(scale: usize, mode: UpsampleMode) -> Upsample {
        Upsample {
            size: None,
            scale,
            mode,
        }
    }

    pub fn size(size: [usize; 2], mode: UpsampleMode) -> Upsample {
        Upsample {
            size: Some(size),
            scale: 1,
            mode,
        }
    }
}

impl Module for Upsample {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let size = match (self.size, input.shape()) {
            (Some(s), _) => s,
            (None, [_, _, h, w]) => [h * self.scale, w * self.scale],
            (None, other) => {
                return Err(Error::shape(
                    "Upsample",
                    format!("expected [N, C, H, W], got {other:?}"),
                ))
            }
        };
        match self.mode {
            UpsampleMode::Nearest => input.upsample_nearest2d(size),
            UpsampleMode::Bilinear { align_corners } => {
                input.upsample_bilinear2d(size, align_corners)
            }
        }
    }
}
