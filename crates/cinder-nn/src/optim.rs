//! SGD (momentum, Nesterov, weight decay), Adam and AdamW with PyTorch's exact
//! update rules. Each parameter's whole update is one fused kernel, and a step's
//! updates are submitted together with the loss they came from.

use cinder_tensor::runtime::{Effect, OptimKind};
use cinder_tensor::{Error, Gradients, Result, Tensor};

use crate::init;

pub trait Optimizer {
    /// Applies one update from `grads` to every parameter that has a gradient.
    fn step(&mut self, grads: &Gradients) -> Result<()> {
        self.step_realizing(grads, &[])
    }
    /// [`Optimizer::step`], realizing `also` in the same submit: values of
    /// the forward pass (accuracy counts, say) that would otherwise need the
    /// old parameters, and so a second pass, once the update has run.
    fn step_realizing(&mut self, grads: &Gradients, also: &[&Tensor]) -> Result<()>;
    /// The learning rate, kept in f64 as PyTorch keeps it (a Python float).
    fn lr(&self) -> f64;
    fn set_lr(&mut self, lr: f64);

    /// Every state tensor under a stable name (created as zeros where no step
    /// has made it yet), for checkpoints. Loading values into these tensors
    /// and calling [`Optimizer::set_counters`] restores the optimizer.
    fn state_tensors(&mut self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    /// Host-side per-parameter counters (Adam's step, SGD's started flag).
    fn counters(&self) -> Vec<u64> {
        Vec::new()
    }

    fn set_counters(&mut self, counters: &[u64]) -> Result<()> {
        if counters.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(
                "optimizer",
                "this optimizer keeps no counters",
            ))
        }
    }
}

fn check_counters(op: &'static str, counters: &[u64], params: usize) -> Result<()> {
    if counters.len() != params {
        return Err(Error::invalid(
            op,
            format!("{} counters for {params} parameters", counters.len()),
        ));
    }
    Ok(())
}

fn check_params(op: &'static str, params: &[Tensor]) -> Result<()> {
    if params.is_empty() {
        return Err(Error::invalid(op, "no parameters to optimize"));
    }
    for p in params {
        if !p.requires_grad() || !p.is_leaf() {
            return Err(Error::invalid(
                op,
                format!("parameter {p:?} must be a leaf tensor that requires grad"),
            ));
        }
        if p.device() != params[0].device() {
            return Err(Error::invalid(op, "parameters live on different devices"));
        }
    }
    // Parameters are updated in place, so they must own a buffer.
    let nodes: Vec<_> = params.iter().map(|p| p.node().clone()).collect();
    params[0].device().realize(&nodes)
}

fn state_like(p: &Tensor) -> Result<Tensor> {
    init::zeros(p.device(), p.shape())
}

fn run(params: &[Tensor], grads: &Gradients, also: &[&Tensor], effects: Vec<Effect>) -> Result<()> {
    let device = params[0].device();
    let mut roots = vec![grads.root().node().clone()];
    roots.extend(also.iter().map(|t| t.node().clone()));
    device.run(&roots, &effects, &[]).map(|_| ())
}

/// `torch.optim.SGD`. Hyper-parameters are f64, as PyTorch's Python
/// floats: what the kernel needs is computed from them in f64 and rounded
/// to f32 once.
pub struct Sgd {
    params: Vec<Tensor>,
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    buffers: Vec<Option<Tensor>>,
    started: Vec<bool>,
}

impl Sgd {
    pub fn new(params: Vec<Tensor>, lr: f64) -> Result<Sgd> {
        check_params("SGD", &params)?;
        let n = params.len();
        Ok(Sgd {
            params,
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            buffers: vec![None; n],
            started: vec![false; n],
        })
    }

    pub fn momentum(mut self, momentum: f64) -> Sgd {
        self.momentum = momentum;
        self
    }

    pub fn dampening(mut self, dampening: f64) -> Sgd {
        self.dampening = dampening;
        self
    }

    pub fn weight_decay(mut self, weight_decay: f64) -> Sgd {
        self.weight_decay = weight_decay;
        self
    }

    pub fn nesterov(mut self, nesterov: bool) -> Sgd {
        self.nesterov = nesterov;
        self
    }
}

impl Optimizer for Sgd {
    fn step_realizing(&mut self, grads: &Gradients, also: &[&Tensor]) -> Result<()> {
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::invalid(
                "SGD",
                "Nesterov momentum requires a momentum and zero dampening",
            ));
        }
        let mut effects = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            if self.momentum == 0.0 {
                effects.push(Effect::Optim {
                    kind: OptimKind::Sgd,
                    param: p.node().clone(),
                    grad: g.node().clone(),
                    state: vec![],
                    hyper: vec![self.lr as f32, self.weight_decay as f32],
                });
                continue;
            }
            if self.buffers[i].is_none() {
                self.buffers[i] = Some(state_like(p)?);
            }
            let buf = self.buffers[i].as_ref().map(|b| b.node().clone());
            effects.push(Effect::Optim {
                kind: OptimKind::SgdMomentum {
                    nesterov: self.nesterov,
                },
                param: p.node().clone(),
                grad: g.node().clone(),
                state: buf.into_iter().collect(),
                hyper: vec![
                    self.lr as f32,
                    self.weight_decay as f32,
                    self.momentum as f32,
                    (1.0 - self.dampening) as f32,
                    if self.started[i] { 0.0 } else { 1.0 },
                ],
            });
        }
        run(&self.params, grads, also, effects)?;
        for (i, p) in self.params.iter().enumerate() {
            if grads.get(p).is_some() {
                self.started[i] = true;
            }
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn state_tensors(&mut self) -> Result<Vec<(String, Tensor)>> {
        if self.momentum == 0.0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            if self.buffers[i].is_none() {
                self.buffers[i] = Some(state_like(p)?);
            }
            if let Some(b) = &self.buffers[i] {
                out.push((format!("{i}.momentum_buffer"), b.clone()));
            }
        }
        Ok(out)
    }

    fn counters(&self) -> Vec<u64> {
        self.started.iter().map(|&s| s as u64).collect()
    }

    fn set_counters(&mut self, counters: &[u64]) -> Result<()> {
        check_counters("SGD", counters, self.params.len())?;
        self.started = counters.iter().map(|&c| c != 0).collect();
        Ok(())
    }
}

/// `torch.optim.Adam`, and with `decoupled` weight decay `torch.optim.AdamW`.
/// Hyper-parameters are f64, as PyTorch's Python floats: `1 - beta2` with
/// beta2 = 0.999 is 1e-3 to f64 precision before its one rounding to f32,
/// where `1 - 0.999f32` would be 1.3e-5 (relative) too small.
pub struct Adam {
    params: Vec<Tensor>,
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    decoupled: bool,
    state: Vec<Option<(Tensor, Tensor, u64)>>,
}

impl Adam {
    /// Adam with PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, no weight decay.
    pub fn new(params: Vec<Tensor>, lr: f64) -> Result<Adam> {
        check_params("Adam", &params)?;
        let n = params.len();
        Ok(Adam {
            params,
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            state: vec![None; n],
        })
    }

    /// AdamW with PyTorch's defaults (weight decay 0.01, decoupled from the gradient).
    pub fn adamw(params: Vec<Tensor>, lr: f64) -> Result<Adam> {
        let mut a = Adam::new(params, lr)?;
        a.decoupled = true;
        a.weight_decay = 0.01;
        Ok(a)
    }

    pub fn betas(mut self, beta1: f64, beta2: f64) -> Adam {
        self.betas = (beta1, beta2);
        self
    }

    pub fn eps(mut self, eps: f64) -> Adam {
        self.eps = eps;
        self
    }

    pub fn weight_decay(mut self, weight_decay: f64) -> Adam {
        self.weight_decay = weight_decay;
        self
    }
}

impl Optimizer for Adam {
    fn step_realizing(&mut self, grads: &Gradients, also: &[&Tensor]) -> Result<()> {
        let (b1, b2) = self.betas;
        let (lr, wd) = (self.lr, self.weight_decay);
        let mut effects = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            if self.state[i].is_none() {
                self.state[i] = Some((state_like(p)?, state_like(p)?, 0));
            }
            let Some((m, v, step)) = self.state[i].as_mut() else {
                continue;
            };
            *step += 1;
            let t = *step as i32;
            // PyTorch computes these in Python floats (f64) and hands f32 kernels
            // the rounded results; so do we.
            let bias_correction1 = 1.0 - b1.powi(t);
            let bias_correction2 = 1.0 - b2.powi(t);
            let (decay, coupled_wd) = if self.decoupled {
                (1.0 - lr * wd, 0.0)
            } else {
                (1.0, wd)
            };
            effects.push(Effect::Optim {
                kind: OptimKind::Adam,
                param: p.node().clone(),
                grad: g.node().clone(),
                state: vec![m.node().clone(), v.node().clone()],
                hyper: vec![
                    decay as f32,
                    (1.0 - b1) as f32,
                    b2 as f32,
                    (1.0 - b2) as f32,
                    self.eps as f32,
                    coupled_wd as f32,
                    (lr / bias_correction1) as f32,
                    bias_correction2.sqrt() as f32,
                ],
            });
        }
        run(&self.params, grads, also, effects)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn state_tensors(&mut self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            if self.state[i].is_none() {
                self.state[i] = Some((state_like(p)?, state_like(p)?, 0));
            }
            if let Some((m, v, _)) = &self.state[i] {
                out.push((format!("{i}.exp_avg"), m.clone()));
                out.push((format!("{i}.exp_avg_sq"), v.clone()));
            }
        }
        Ok(out)
    }

    fn counters(&self) -> Vec<u64> {
        self.state
            .iter()
            .map(|s| s.as_ref().map_or(0, |(_, _, step)| *step))
            .collect()
    }

    fn set_counters(&mut self, counters: &[u64]) -> Result<()> {
        check_counters("Adam", counters, self.params.len())?;
        for (i, &c) in counters.iter().enumerate() {
            if self.state[i].is_none() {
                self.state[i] = Some((
                    state_like(&self.params[i])?,
                    state_like(&self.params[i])?,
                    0,
                ));
            }
            if let Some((_, _, step)) = self.state[i].as_mut() {
                *step = c;
            }
        }
        Ok(())
    }
}
