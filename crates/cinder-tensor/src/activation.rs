//! Activations with PyTorch's forward and backward formulas, kinks included.
//!
//! Each is a composition of existing element-wise ops (which fusion makes
//! one kernel). Where autodiff of the composition would give a gradient
//! other than PyTorch's (at a kink, or above softplus's threshold), the
//! value is computed with recording off and the op carries an explicit
//! backward rule transcribing PyTorch's `*_backward` kernel, itself built
//! from tensor ops. `log1p` is the one new runtime primitive: no
//! composition of `log` is accurate for small `x`.

use cinder_runtime::{Result, UnaryOp};

use crate::autograd::{with_no_grad, BackwardFn};
use crate::ops::float_only;
use crate::tensor::Tensor;

/// GELU's form (`torch.nn.functional.gelu(approximate=...)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Approximate {
    /// The exact form `x * Phi(x)` (erf), PyTorch's default.
    #[default]
    None,
    /// `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`.
    Tanh,
}

/// SELU's constants, as in PyTorch (rounded to f32 there too).
const SELU_ALPHA: f32 = 1.673_263_242_354_377_3_f64 as f32;
const SELU_SCALE: f32 = 1.050_700_987_355_480_5_f64 as f32;

impl Tensor {
    /// `value` computed with autodiff off, recorded as one op `name` of
    /// `self` with the explicit rule `backward`.
    pub(crate) fn composite(
        &self,
        name: &'static str,
        value: impl FnOnce() -> Result<Tensor>,
        backward: BackwardFn,
    ) -> Result<Tensor> {
        float_only(name, self)?;
        let v = with_no_grad(value)?;
        Ok(Tensor::from_op(v.node().clone(), name, &[self], backward))
    }

    /// `log(1 + x)`, accurate for small `x` (`torch.log1p`).
    pub fn log1p(&self) -> Result<Tensor> {
        float_only("log1p", self)?;
        let x = self.detach();
        Ok(Tensor::from_op(
            self.node().unary(UnaryOp::Log1p),
            "log1p",
            &[self],
            Box::new(move |g, _| Ok(vec![Some(g.div(&x.add_scalar(1.0)?)?)])),
        ))
    }

    /// `x > 0 ? x : x * negative_slope`; the gradient at 0 is the slope, as
    /// PyTorch's `leaky_relu_backward` (`x > 0 ? g : g * slope`).
    pub fn leaky_relu(&self, negative_slope: f32) -> Result<Tensor> {
        let x = self.detach();
        let xv = x.clone();
        self.composite(
            "leaky_relu",
            move || {
                let pos = xv.gt(&xv.scalar_like(0.0))?;
                Tensor::where_cond(&pos, &xv, &xv.mul_scalar(negative_slope)?)
            },
            Box::new(move |g, _| {
                let pos = x.gt(&x.scalar_like(0.0))?;
                Ok(vec![Some(Tensor::where_cond(
                    &pos,
                    g,
                    &g.mul_scalar(negative_slope)?,
                )?)])
            }),
        )
    }

    /// `clamp(x, min_val, max_val)`; the gradient is 0 at the limits
    /// themselves, as PyTorch's `hardtanh_backward`
    /// (`x <= min || x >= max ? 0 : g`).
    pub fn hardtanh(&self, min_val: f32, max_val: f32) -> Result<Tensor> {
        self.hardtanh_named("hardtanh", min_val, max_val)
    }

    /// `hardtanh(x, 0, 6)`, as PyTorch's `relu6`: the gradient is 0 at 0
    /// and at 6.
    pub fn relu6(&self) -> Result<Tensor> {
        self.hardtanh_named("relu6", 0.0, 6.0)
    }

    fn hardtanh_named(&self, name: &'static str, lo: f32, hi: f32) -> Result<Tensor> {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(cinder_runtime::Error::invalid(
                name,
                format!("min_val {lo} must not be above max_val {hi}"),
            ));
        }
        let x = self.detach();
        let xv = x.clone();
        self.composite(
            name,
            move || xv.maximum_scalar(lo)?.minimum_scalar(hi),
            Box::new(move |g, _| {
                let outside = x.le(&x.scalar_like(lo))?.add(&x.ge(&x.scalar_like(hi))?)?;
                Ok(vec![Some(Tensor::where_cond(
                    &outside,
                    &g.scalar_like(0.0),
                    g,
                )?)])
            }),
        )
    }

    /// `x * relu6(x + 3) / 6`; PyTorch's backward:
    /// `x < -3 ? 0 : x <= 3 ? g * (x / 3 + 0.5) : g`.
    pub fn hardswish(&self) -> Result<Tensor> {
        let x = self.detach();
        let xv = x.clone();
        self.composite(
            "hardswish",
            move || {
                let r = xv
                    .add_scalar(3.0)?
                    .maximum_scalar(0.0)?
                    .minimum_scalar(6.0)?;
                xv.mul(&r)?.div_scalar(6.0)
            },
            Box::new(move |g, _| {
                let middle = g.mul(&x.div_scalar(3.0)?.add_scalar(0.5)?)?;
                let upper = Tensor::where_cond(&x.le(&x.scalar_like(3.0))?, &middle, g)?;
                Ok(vec![Some(Tensor::where_cond(
                    &x.lt(&x.scalar_like(-3.0))?,
                    &g.scalar_like(0.0),
                    &upper,
                )?)])
            }),
        )
    }

    /// `relu6(x + 3) / 6`; the gradient is `g / 6` strictly inside
    /// (-3, 3), else 0, as PyTorch's `hardsigmoid_backward`.
    pub fn hardsigmoid(&self) -> Result<Tensor> {
        let x = self.detach();
        let xv = x.clone();
        self.composite(
            "hardsigmoid",
            move || {
                xv.add_scalar(3.0)?
                    .maximum_scalar(0.0)?
                    .minimum_scalar(6.0)?
                    .div_scalar(6.0)
            },
            Box::new(move |g, _| {
                let inside = x
                    .gt(&x.scalar_like(-3.0))?
                    .mul(&x.lt(&x.scalar_like(3.0))?)?
                    .to_dtype(cinder_runtime::DType::F32)?;
                Ok(vec![Some(g.mul_scalar(1.0 / 6.0)?.masked(&inside)?)])
            }),
        )
    }

    /// `x > 0 ? x : alpha * (exp(x) - 1)` (`torch.nn.functional.elu`); the
    /// gradient is `x > 0 ? g : g * alpha * exp(x)`, so `alpha` at 0.
    pub fn elu(&self, alpha: f32) -> Result<Tensor> {
        self.elu_scaled("elu", alpha, 1.0)
    }

    /// `scale * elu(x, alpha)` with PyTorch's constants.
    pub fn selu(&self) -> Result<Tensor> {
        self.elu_scaled("selu", SELU_ALPHA, SELU_SCALE)
    }

    /// PyTorch's `elu` kernel with `scale` (and input scale 1):
    /// `x <= 0 ? (exp(x) - 1) * alpha * scale : x * scale`.
    fn elu_scaled(&self, name: &'static str, alpha: f32, scale: f32) -> Result<Tensor> {
        let negcoef = alpha * scale;
        let x = self.detach();
        let xv = x.clone();
        self.composite(
            name,
            move || {
                let neg = xv.exp()?.add_scalar(-1.0)?.mul_scalar(negcoef)?;
                Tensor::where_cond(&xv.le(&xv.scalar_like(0.0))?, &neg, &xv.mul_scalar(scale)?)
            },
            Box::new(move |g, _| {
                let neg = g.mul_scalar(negcoef)?.mul(&x.exp()?)?;
                Ok(vec![Some(Tensor::where_cond(
                    &x.le(&x.scalar_like(0.0))?,
                    &neg,
                    &g.mul_scalar(scale)?,
                )?)])
            }),
        )
    }

    /// `x * sigmoid(x)` (`torch.nn.functional.silu`); autodiff of the
    /// product is PyTorch's `g * s * (1 + x * (1 - s))`.
    pub fn silu(&self) -> Result<Tensor> {
        float_only("silu", self)?;
        self.mul(&self.sigmoid()?)
    }

    /// `x * tanh(softplus(x))` (`torch.nn.functional.mish`); autodiff gives
    /// PyTorch's `g * (t + x * sigmoid(x) * (1 - t^2))`.
    pub fn mish(&self) -> Result<Tensor> {
        float_only("mish", self)?;
        self.mul(&self.softplus(1.0, 20.0)?.tanh()?)
    }

    /// `x * beta > threshold ? x : log(1 + exp(beta * x)) / beta`
    /// (`torch.nn.functional.softplus`), evaluated as
    /// `(max(bx, 0) + log1p(exp(-|bx|))) / beta` so that it never
    /// overflows; the gradient is `g` above the threshold, else
    /// `g * sigmoid(beta * x)`.
    pub fn softplus(&self, beta: f32, threshold: f32) -> Result<Tensor> {
        let x = self.detach();
        let xv = x.clone();
        self.composite(
            "softplus",
            move || {
                let bx = xv.mul_scalar(beta)?;
                let soft = bx
                    .relu()?
                    .add(&bx.abs()?.neg()?.exp()?.log1p()?)?
                    .div_scalar(beta)?;
                Tensor::where_cond(&bx.gt(&bx.scalar_like(threshold))?, &xv, &soft)
            },
            Box::new(move |g, _| {
                let bx = x.mul_scalar(beta)?;
                let inner = g.mul(&bx.sigmoid()?)?;
                Ok(vec![Some(Tensor::where_cond(
                    &bx.gt(&bx.scalar_like(threshold))?,
                    g,
                    &inner,
                )?)])
            }),
        )
    }

    /// `log(sigmoid(x))` as `min(x, 0) - log1p(exp(-|x|))`, exact for large
    /// `|x|`; the gradient is `g * sigmoid(-x)` (0.5 at 0).
    pub fn logsigmoid(&self) -> Result<Tensor> {
        let x = self.detach();
        let xv = x.clone();
        self.composite(
            "log_sigmoid",
            move || {
                xv.minimum_scalar(0.0)?
                    .sub(&xv.abs()?.neg()?.exp()?.log1p()?)
            },
            Box::new(move |g, _| Ok(vec![Some(g.mul(&x.neg()?.sigmoid()?)?)])),
        )
    }

    /// GELU with the tanh approximation (`gelu(x, approximate="tanh")`),
    /// in PyTorch's order of operations; autodiff of the composition is
    /// PyTorch's backward formula.
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        float_only("gelu", self)?;
        // sqrt(2 / pi), as PyTorch's M_SQRT2 * M_2_SQRTPI * 0.5.
        const K_BETA: f32 = 0.797_884_560_802_865_4_f64 as f32;
        const K_KAPPA: f32 = 0.044_715;
        let cube = self.mul(self)?.mul(self)?;
        let inner = self.add(&cube.mul_scalar(K_KAPPA)?)?.mul_scalar(K_BETA)?;
        self.mul_scalar(0.5)?.mul(&inner.tanh()?.add_scalar(1.0)?)
    }

    /// GELU in the given form (`torch.nn.functional.gelu`).
    pub fn gelu_with(&self, approximate: Approximate) -> Result<Tensor> {
        match approximate {
            Approximate::None => self.gelu(),
            Approximate::Tanh => self.gelu_tanh(),
        }
    }
}
