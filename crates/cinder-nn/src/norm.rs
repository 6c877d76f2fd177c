//! Normalisation, dropout and resampling layers with PyTorch's names,
//! defaults and train/eval behaviour.

use cinder_tensor::{DType, Device, Error, Result, Tensor};

use crate::init;
use crate::module::Module;

/// `torch.nn.BatchNorm2d`: parameters `weight`, `bias`; buffers
/// `running_mean`, `running_var`, `num_batches_tracked`. In training the
/// batch's statistics normalise and the running ones are updated (with the
/// unbiased variance) in the same submit as the next realization.
pub struct BatchNorm2d {
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

impl BatchNorm2d {
    /// PyTorch's defaults: eps 1e-5, momentum 0.1, affine.
    pub fn new(device: &Device, channels: usize) -> Result<BatchNorm2d> {
        if channels == 0 {
            return Err(Error::invalid("BatchNorm2d", "channels must be positive"));
        }
        let weight = init::ones(device, &[channels])?.requires_grad_();
        let bias = init::zeros(device, &[channels])?.requires_grad_();
        let tracked = Tensor::full_dtype(device, &[], DType::I32, 0.0);
        tracked.realize()?;
        Ok(BatchNorm2d {
            weight: Some(weight),
            bias: Some(bias),
            running_mean: init::zeros(device, &[channels])?,
            running_var: init::ones(device, &[channels])?,
            num_batches_tracked: tracked.detach(),
            eps: 1e-5,
            momentum: Some(0.1),
            training: true,
        })
    }

    pub fn is_training(&self) -> bool {
        self.training
    }
}

impl Module for BatchNorm2d {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        if input.dims() != 4 {
            return Err(Error::shape(
                "BatchNorm2d",
                format!("expected [N, C, H, W], got {:?}", input.shape()),
            ));
        }
        let (w, b) = (self.weight.as_ref(), self.bias.as_ref());
        if !self.training {
            return input.batch_norm_eval(&self.running_mean, &self.running_var, w, b, self.eps);
        }
        let (y, mean, var) = input.batch_norm_train(w, b, self.eps)?;
        let device = input.device();
        let tracked =
            self.num_batches_tracked
                .add(&Tensor::full_dtype(device, &[], DType::I32, 1.0))?;
        let factor = match self.momentum {
            Some(m) => Tensor::full(device, &[], m),
            None => tracked.to_dtype(DType::F32)?.recip()?,
        };
        let keep = factor.rsub_scalar(1.0)?;
        let new_mean = self.running_mean.mul(&keep)?.add(&mean.mul(&factor)?)?;
        let new_var = self.running_var.mul(&keep)?.add(&var.mul(&factor)?)?;
        device.defer_assign(self.running_mean.node(), new_mean.node().clone());
        device.defer_assign(self.running_var.node(), new_var.node().clone());
        device.defer_assign(self.num_batches_tracked.node(), tracked.node().clone());
        Ok(y)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut p = Vec::new();
        if let Some(w) = &self.weight {
            p.push(("weight".to_string(), w.clone()));
        }
        if let Some(b) = &self.bias {
            p.push(("bias".to_string(), b.clone()));
        }
        p
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        vec![
            ("running_mean".to_string(), self.running_mean.clone()),
            ("running_var".to_string(), self.running_var.clone()),
            (
                "num_batches_tracked".to_string(),
                self.num_batches_tracked.clone(),
            ),
        ]
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
}

/// `torch.nn.LayerNorm` over the trailing `normalized_shape` dims.
pub struct LayerNorm {
    pub normalized_shape: Vec<usize>,
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    pub fn new(device: &Device, normalized_shape: &[usize]) -> Result<LayerNorm> {
        if normalized_shape.is_empty() || normalized_shape.contains(&0) {
            return Err(Error::invalid(
                "LayerNorm",
                format!(
                    "normalized_shape must be non-empty and positive, got {normalized_shape:?}"
                ),
            ));
        }
        Ok(LayerNorm {
            normalized_shape: normalized_shape.to_vec(),
            weight: init::ones(device, normalized_shape)?.requires_grad_(),
            bias: init::zeros(device, normalized_shape)?.requires_grad_(),
            eps: 1e-5,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.layer_norm(
            &self.normalized_shape,
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
        )
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![
            ("weight".to_string(), self.weight.clone()),
            ("bias".to_string(), self.bias.clone()),
        ]
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
