//! The `Module` trait: a forward function plus named parameters and buffers
//! under PyTorch's state_dict names.

use cinder_tensor::{Result, Tensor};

pub trait Module: Send + Sync {
    fn forward(&self, input: &Tensor) -> Result<Tensor>;

    /// Trainable tensors with their state_dict names (`weight`, `0.bias`, ...),
    /// in registration order.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Non-trainable state saved with the model (running statistics and such).
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Switches training-only behaviour (dropout, batch statistics) on or off.
    fn set_training(&mut self, _training: bool) {}

    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// Parameters then buffers, as PyTorch's `state_dict()` lists them.
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut all = self.named_parameters();
        all.extend(self.named_buffers());
        all
    }

    fn train(&mut self) {
        self.set_training(true);
    }

    fn eval(&mut self) {
        self.set_training(false);
    }

    fn num_parameters(&self) -> usize {
        self.named_parameters().iter().map(|(_, t)| t.numel()).sum()
    }
}

/// Prefixes child names the way PyTorch nests modules (`fc1.weight`).
pub fn prefixed(prefix: &str, items: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    items
        .into_iter()
        .map(|(n, t)| (format!("{prefix}.{n}"), t))
        .collect()
}
