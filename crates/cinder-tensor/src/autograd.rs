//! Reverse-mode autodiff. Each op stores one backward rule (its VJP) next to its
//! forward definition; `backward` walks the recorded graph from the loss and
//! appends gradient nodes built from the same ops, so they fuse and run on the
//! GPU like everything else.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};

use cinder_runtime::{Error, Result};

use crate::tensor::Tensor;

/// Given the gradient of the output and the output itself (detached), the
/// gradient of each input (None where the input takes none).
pub(crate) type BackwardFn =
    Box<dyn Fn(&Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

pub(crate) struct GradFn {
    pub name: &'static str,
    pub inputs: Vec<Tensor>,
    pub backward: BackwardFn,
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

pub(crate) fn grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// While alive, ops record no backward rules (PyTorch's `torch.no_grad()`).
pub struct NoGradGuard {
    previous: bool,
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

pub fn no_grad() -> NoGradGuard {
    let previous = GRAD_ENABLED.with(|g| g.replace(false));
    NoGradGuard { previous }
}

/// Runs `f` with autodiff recording off.
pub fn with_no_grad<T>(f: impl FnOnce() -> T) -> T {
    let _guard = no_grad();
    f()
}

thread_local! {
    static FROZEN: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// Whether tensor `id` is frozen by a live [`freeze`] guard.
pub(crate) fn frozen(id: u64) -> bool {
    FROZEN.with(|f| {
        let f = f.borrow();
        !f.is_empty() && f.contains(&id)
    })
}

/// While alive, the frozen tensors take no gradient from the ops recorded
/// (PyTorch's `p.requires_grad_(False)` for the span of the guard): ops
/// read them as constants, and a backward pass of what was recorded
/// leaves them out. A GAN's generator step freezes the discriminator, so
/// that nothing computes its weights' gradients (a convolution then needs
/// no unfolded input kept for one).
pub struct FreezeGuard {
    added: Vec<u64>,
}

impl Drop for FreezeGuard {
    fn drop(&mut self) {
        FROZEN.with(|f| {
            let mut f = f.borrow_mut();
            for id in &self.added {
                f.remove(id);
            }
        });
    }
}

pub fn freeze(tensors: &[Tensor]) -> FreezeGuard {
    let added = FROZEN.with(|f| {
        let mut f = f.borrow_mut();
        tensors
            .iter()
            .map(Tensor::id)
            .filter(|&id| f.insert(id))
            .collect()
    });
    FreezeGuard { added }
}

/// The gradients of one backward pass, by tensor.
pub struct Gradients {
    grads: HashMap<u64, Tensor>,
    root: Tensor,
}

impl Gradients {
    /// The gradient of `t`, if `t` requires grad and the loss depends on it.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.grads.get(&t.id())
    }

    pub fn len(&self) -> usize {
        self.grads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// Scales the gradients of `params` so that their joint L2 norm is at most
    /// `max_norm` (PyTorch's `clip_grad_norm_`, coefficient
    /// `max_norm / (norm + 1e-6)` capped at 1). Returns the norm before
    /// clipping, still lazy: nothing is read back.
    pub fn clip_grad_norm(&mut self, params: &[Tensor], max_norm: f32) -> Result<Tensor> {
        if max_norm.is_nan() || max_norm <= 0.0 {
            return Err(Error::invalid(
                "clip_grad_norm",
                format!("max_norm must be positive, got {max_norm}"),
            ));
        }
        let mut total: Option<Tensor> = None;
        for p in params {
            if let Some(g) = self.get(p) {
                let sq = g.square()?.sum_all()?;
                total = Some(match total {
                    None => sq,
                    Some(t) => t.add(&sq)?,
                });
            }
        }
        let Some(total) = total else {
            return Ok(Tensor::full(self.root.device(), &[], 0.0));
        };
        let norm = total.sqrt()?;
        let coef = norm
            .add_scalar(1e-6)?
            .recip()?
            .mul_scalar(max_norm)?
            .minimum_scalar(1.0)?;
        for p in params {
            if let Some(g) = self.grads.get_mut(&p.id()) {
                *g = g.mul(&coef)?;
            }
        }
        Ok(norm)
    }

    /// The (detached) tensor `backward` was called on. Optimizers realize it in
    /// the same submit as their updates, so that reading the loss afterwards
    /// costs no second pass over the old parameters.
    pub fn root(&self) -> &Tensor {
        &self.root
    }
}

impl Tensor {
    /// Gradients of this one-element tensor with respect to every tensor that
    /// requires them.
    pub fn backward(&self) -> Result<Gradients> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "backward",
                format!(
                    "needs a one-element loss, got shape {:?}; use backward_with(grad)",
                    self.shape()
                ),
            ));
        }
        let seed = Tensor::full(self.device(), self.shape(), 1.0);
        self.backward_with(&seed)
    }

    /// Vector-Jacobian product: gradients given `grad` as d(out)/d(self).
    pub fn backward_with(&self, grad: &Tensor) -> Result<Gradients> {
        if grad.shape() != self.shape() {
            return Err(Error::shape(
                "backward",
                format!("gradient {:?} for tensor {:?}", grad.shape(), self.shape()),
            ));
        }
        if !self.requires_grad() {
            return Err(Error::NoGradient(
                "the tensor does not depend on any tensor that requires grad (was it computed under no_grad or from detached tensors?)".into(),
            ));
        }
        let _guard = no_grad();
        let order = topo_order(self);
        let mut pending: HashMap<u64, Tensor> = HashMap::new();
        pending.insert(self.id(), grad.detach());
        let mut leaves: HashMap<u64, Tensor> = HashMap::new();
        for t in order.iter().rev() {
            let Some(g) = pending.remove(&t.id()) else {
                continue;
            };
            let Some(gf) = &t.0.grad_fn else {
                if t.recorded_requires_grad() {
                    leaves.insert(t.id(), g);
                }
                continue;
            };
            let out = t.detach();
            let input_grads = (gf.backward)(&g, &out)?;
            for (input, ig) in gf.inputs.iter().zip(input_grads) {
                let Some(ig) = ig else { continue };
                if !input.recorded_requires_grad() {
                    continue;
                }
                if ig.shape() != input.shape() {
                    return Err(Error::shape(
                        gf.name,
                        format!("backward rule produced a gradient of shape {:?} for an input of shape {:?}", ig.shape(), input.shape()),
                    ));
                }
                // A tensor used twice receives the sum of both gradients.
                let acc = match pending.remove(&input.id()) {
                    Some(prev) => prev.add(&ig)?,
                    None => ig,
                };
                pending.insert(input.id(), acc);
            }
        }
        Ok(Gradients {
            grads: leaves,
            root: self.detach(),
        })
    }
}

/// Tensors reachable from `root` through backward rules, inputs before users.
fn topo_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(gf) = &t.0.grad_fn {
            for input in &gf.inputs {
                if input.recorded_requires_grad() && !seen.contains(&input.id()) {
                    stack.push((input.clone(), false));
                }
            }
        }
    }
    order
}
