//! Ops of one's own: a WGSL kernel for the forward pass (see
//! [`CustomKernel`] for its bindings) and a backward rule built from tensor
//! ops, which may be other custom ops. The op is planned, bound, cached and
//! differentiated like a built-in one, and nothing in the runtime changes.
//! `examples/custom_op.rs` is a complete one.

use std::sync::Arc;

use cinder_runtime::{CustomKernel, DType, Error, Node, Result};

use crate::tensor::Tensor;

/// An op defined outside cinder: its kernel ([`CustomKernel`]), its shape
/// rule and its backward rule.
pub trait CustomOp: CustomKernel {
    /// The output's shape and dtype for these inputs; an error (say
    /// `Error::Shape`) where they do not fit the op.
    fn output(&self, inputs: &[&Tensor]) -> Result<(Vec<usize>, DType)>;

    /// The gradient of each input, given the inputs, the output and the
    /// output's gradient `grad`, each of its input's shape (`None` for an
    /// input that has none, such as indices). Build it from tensor ops;
    /// they are recorded and fused like any others. The default: the op is
    /// not differentiable.
    fn backward(
        &self,
        inputs: &[Tensor],
        output: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let _ = (inputs, output, grad);
        Err(Error::NoGradient(format!(
            "custom op `{}` has no backward rule (implement CustomOp::backward)",
            self.name()
        )))
    }
}

impl Tensor {
    /// Applies a custom op to `inputs` (see [`CustomOp`]).
    pub fn custom(op: Arc<dyn CustomOp>, inputs: &[&Tensor]) -> Result<Tensor> {
        let (shape, dtype) = op.output(inputs)?;
        let nodes: Vec<Node> = inputs.iter().map(|t| t.node().clone()).collect();
        let node = Node::custom(op.as_ref(), &nodes, &shape, dtype)?;
        let saved: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
        let count = inputs.len();
        Ok(Tensor::from_op(
            node,
            "custom",
            inputs,
            Box::new(move |grad, out| {
                let grads = op.backward(&saved, out, grad)?;
                if grads.len() != count {
                    return Err(Error::invalid(
                        "custom op backward",
                        format!(
                            "`{}` returned {} gradients for {count} inputs",
                            op.name(),
                            grads.len()
                        ),
                    ));
                }
                Ok(grads)
            }),
        ))
    }
}
