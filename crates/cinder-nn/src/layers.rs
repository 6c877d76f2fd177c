//! Layers with PyTorch's parameter names, shapes and default initialisation.

use cinder_tensor::{Device, Error, Result, Tensor};

use crate::init;
use crate::module::{prefixed, Module};

/// `y = x W^T + b` with `weight: [out, in]`, `bias: [out]` (`torch.nn.Linear`).
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// PyTorch's default init: weight and bias uniform in ±1/sqrt(in).
    pub fn new(
        device: &Device,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Linear> {
        if in_features == 0 || out_features == 0 {
            return Err(Error::invalid(
                "Linear",
                format!("features must be positive, got {in_features} -> {out_features}"),
            ));
        }
        let weight = init::kaiming_uniform(device, &[out_features, in_features], 5f32.sqrt())?
            .requires_grad_();
        let bound = 1.0 / (in_features as f32).sqrt();
        let bias = if bias {
            Some(init::uniform(device, &[out_features], -bound, bound)?.requires_grad_())
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }
}

impl Module for Linear {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let n = input.shape().last().copied().unwrap_or(0);
        if n != self.in_features() {
            return Err(Error::shape(
                "Linear",
                format!(
                    "input {:?} has {n} features, the layer takes {}",
                    input.shape(),
                    self.in_features()
                ),
            ));
        }
        let y = input.matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut p = vec![("weight".to_string(), self.weight.clone())];
        if let Some(b) = &self.bias {
            p.push(("bias".to_string(), b.clone()));
        }
        p
    }
}

/// Modules applied in order; children are named `0`, `1`, ... as in PyTorch.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    pub fn new() -> Sequential {
        Sequential::default()
    }

    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: impl Module + 'static) -> Sequential {
        self.layers.push(Box::new(layer));
        self
    }

    pub fn push(&mut self, layer: Box<dyn Module>) {
        self.layers.push(layer);
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The output of the first `layers` layers: the features a classifier
    /// computes before its head (a Fréchet distance's features, say).
    pub fn forward_through(&self, input: &Tensor, layers: usize) -> Result<Tensor> {
        if layers > self.layers.len() {
            return Err(Error::invalid(
                "Sequential",
                format!("{layers} layers asked of {}", self.layers.len()),
            ));
        }
        let mut x = input.clone();
        for layer in &self.layers[..layers] {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    /// Every layer's output in order, the last being the forward's. A
    /// training step that runs the backward in a later submit keeps them
    /// (`Step::keep`), so that submit reads them instead of computing the
    /// forward again.
    pub fn forward_each(&self, input: &Tensor) -> Result<Vec<Tensor>> {
        let mut outputs: Vec<Tensor> = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let x = outputs.last().unwrap_or(input);
            outputs.push(layer.forward(x)?);
        }
        Ok(outputs)
    }
}

impl Module for Sequential {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let mut x = input.clone();
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| prefixed(&i.to_string(), l.named_parameters()))
            .collect()
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| prefixed(&i.to_string(), l.named_buffers()))
            .collect()
    }

    fn set_training(&mut self, training: bool) {
        for l in &mut self.layers {
            l.set_training(training);
        }
    }
}

macro_rules! activation {
    ($(#[$doc:meta])* $name:ident, $method:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default)]
        pub struct $name;

        impl Module for $name {
            fn forward(&self, input: &Tensor) -> Result<Tensor> {
                input.$method()
            }
        }
    };
}

activation!(
    /// `max(x, 0)`
    ReLU, relu
);
activation!(Sigmoid, sigmoid);
activation!(Tanh, tanh);

/// Passes its input through unchanged.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity;

impl Module for Identity {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Ok(input.clone())
    }
}

/// Flattens all dimensions after the first (`torch.nn.Flatten()`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Flatten;

impl Module for Flatten {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        if input.dims() < 2 {
            return Ok(input.clone());
        }
        input.flatten(1, -1)
    }
}

/// `torch.nn.LeakyReLU(negative_slope)` (default 0.01); the gradient at 0
/// is the slope, as in PyTorch.
#[derive(Clone, Copy, Debug)]
pub struct LeakyReLU(pub f32);

impl Default for LeakyReLU {
    fn default() -> Self {
        LeakyReLU(0.01)
    }
}

impl Module for LeakyReLU {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.leaky_relu(self.0)
    }
}

/// Softmax over `dim` (`torch.nn.Softmax`).
#[derive(Clone, Copy, Debug)]
pub struct Softmax(pub isize);

impl Module for Softmax {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.softmax(self.0)
    }
}
