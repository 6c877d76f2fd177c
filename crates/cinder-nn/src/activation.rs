//! Activation modules named and parametrised as in `torch.nn`; each calls
//! the `Tensor` method of the same name, which has PyTorch's forward and
//! backward (kinks included).

use cinder_tensor::{Approximate, Result, Tensor};

use crate::module::Module;

macro_rules! unit_activation {
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

unit_activation!(
    /// `torch.nn.SELU`.
    SELU, selu
);
unit_activation!(
    /// `torch.nn.SiLU`: `x * sigmoid(x)`.
    SiLU, silu
);
unit_activation!(
    /// `torch.nn.Mish`: `x * tanh(softplus(x))`.
    Mish, mish
);
unit_activation!(
    /// `torch.nn.ReLU6`: `hardtanh(x, 0, 6)`.
    ReLU6, relu6
);
unit_activation!(
    /// `torch.nn.Hardswish`.
    Hardswish, hardswish
);
unit_activation!(
    /// `torch.nn.Hardsigmoid`.
    Hardsigmoid, hardsigmoid
);
unit_activation!(
    /// `torch.nn.LogSigmoid`.
    LogSigmoid, logsigmoid
);

/// `torch.nn.GELU(approximate=...)`; the default is the exact (erf) form.
#[derive(Clone, Copy, Debug, Default)]
pub struct GELU {
    pub approximate: Approximate,
}

impl GELU {
    /// `GELU(approximate="tanh")`.
    pub fn tanh() -> GELU {
        GELU {
            approximate: Approximate::Tanh,
        }
    }
}

impl Module for GELU {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.gelu_with(self.approximate)
    }
}

/// `torch.nn.ELU(alpha)` (default 1).
#[derive(Clone, Copy, Debug)]
pub struct ELU {
    pub alpha: f32,
}

impl Default for ELU {
    fn default() -> Self {
        ELU { alpha: 1.0 }
    }
}

impl Module for ELU {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.elu(self.alpha)
    }
}

/// `torch.nn.Softplus(beta, threshold)` (defaults 1 and 20).
#[derive(Clone, Copy, Debug)]
pub struct Softplus {
    pub beta: f32,
    pub threshold: f32,
}

impl Default for Softplus {
    fn default() -> Self {
        Softplus {
            beta: 1.0,
            threshold: 20.0,
        }
    }
}

impl Module for Softplus {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.softplus(self.beta, self.threshold)
    }
}

/// `torch.nn.Hardtanh(min_val, max_val)` (defaults -1 and 1).
#[derive(Clone, Copy, Debug)]
pub struct Hardtanh {
    pub min_val: f32,
    pub max_val: f32,
}

impl Default for Hardtanh {
    fn default() -> Self {
        Hardtanh {
            min_val: -1.0,
            max_val: 1.0,
        }
    }
}

impl Module for Hardtanh {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.hardtanh(self.min_val, self.max_val)
    }
}
