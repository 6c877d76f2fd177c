//! Turns the pending part of the graph into a canonical, index-based list
//! ([`Structure`]) that is the plan-cache key: the same structure (ops,
//! shapes, dtypes) gives the same key whatever the values, buffers or node
//! ids, which travel apart in [`Bindings`].

use std::collections::HashMap;

use crate::device::lock;
use crate::error::{Error, Result};
use crate::graph::{DType, Node, Op, OptimKind, Payload, State};
use crate::pool::Storage;

/// One value of a realization: its shape, dtype and the op that makes it from
/// earlier entries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Entry {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub op: Op<usize>,
}

/// An in-place write that a realization performs after everything else.
#[derive(Clone)]
pub enum Effect {
    /// A fused optimizer update of `param` and its `state` buffers from `grad`.
    Optim {
        kind: OptimKind,
        param: Node,
        grad: Node,
        state: Vec<Node>,
        hyper: Vec<f32>,
    },
    /// `target <- value`; the target must be realized and keep its shape and dtype.
    Assign { target: Node, value: Node },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum CanonEffect {
    Optim {
        kind: OptimKind,
        param: usize,
        grad: usize,
        state: Vec<usize>,
        hyper_len: usize,
    },
    Assign {
        target: usize,
        value: usize,
    },
}

/// The values a replay needs that are not part of the structure.
pub(crate) struct Bindings {
    pub nodes: Vec<Node>,
    pub externals: HashMap<usize, Storage>,
    pub uploads: HashMap<usize, std::sync::Arc<Vec<u8>>>,
    pub seeds: HashMap<usize, u64>,
    pub consts: HashMap<usize, f64>,
    pub hypers: Vec<Vec<f32>>,
}

/// What a compiled plan depends on, and nothing else: entries in a
/// topological order (children first), the roots to realize and the
/// in-place writes. Realizations with equal structures replay one plan; it
/// is the plan cache's key, compared and hashed as it stands.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Structure {
    pub entries: Vec<Entry>,
    pub roots: Vec<usize>,
    pub effects: Vec<CanonEffect>,
}

pub(crate) struct Canon {
    pub structure: Structure,
    pub bind: Bindings,
}

struct Builder {
    index: HashMap<u64, usize>,
    storage_index: HashMap<u64, usize>,
    entries: Vec<Entry>,
    bind: Bindings,
}

impl Builder {
    fn visit(&mut self, root: &Node) -> Result<usize> {
        if let Some(&i) = self.index.get(&root.id()) {
            return Ok(i);
        }
        // Iterative post-order: graphs of deep networks (and long unrolled
        // sequences) are deeper than the thread stack would like.
        let mut stack: Vec<(Node, bool)> = vec![(root.clone(), false)];
        while let Some((node, expanded)) = stack.pop() {
            if self.index.contains_key(&node.id()) {
                continue;
            }
            let state = lock(&node.0.state);
            match &*state {
                State::Realized(storage) => {
                    let storage = storage.clone();
                    drop(state);
                    // Two nodes over one buffer are one input, so that a kernel
                    // never binds the same buffer twice.
                    let i = match self.storage_index.get(&storage.id()) {
                        Some(&i) => i,
                        None => {
                            let i = self.push(&node, Op::External);
                            self.storage_index.insert(storage.id(), i);
                            self.bind.externals.insert(i, storage);
                            i
                        }
                    };
                    self.index.insert(node.id(), i);
                }
                State::Pending {
                    op,
                    payload,
                    versions,
                } => {
                    let inputs = op.inputs();
                    if !expanded {
                        for (input, version) in inputs.iter().zip(versions) {
                            if let (Some((id, v)), Some(s)) = (version, input.storage()) {
                                if s.id() == *id && s.version() != *v {
                                    return Err(Error::ModifiedInPlace);
                                }
                            }
                        }
                        let pending_children: Vec<Node> = inputs
                            .into_iter()
                            .filter(|c| !self.index.contains_key(&c.id()))
                            .collect();
                        drop(state);
                        stack.push((node.clone(), true));
                        for c in pending_children.into_iter().rev() {
                            stack.push((c, false));
                        }
                        continue;
                    }
                    let i = self.entries.len();
                    match payload {
                        Payload::None => {}
                        Payload::Bytes(data) => {
                            self.bind.uploads.insert(i, data.clone());
                        }
                        Payload::Scalar(v) => {
                            self.bind.consts.insert(i, *v);
                        }
                        Payload::Seed(seed) => {
                            self.bind.seeds.insert(i, *seed);
                        }
                    }
                    let op = op.map(|n| self.index[&n.id()]);
                    drop(state);
                    let i = self.push(&node, op);
                    self.index.insert(node.id(), i);
                }
            }
        }
        Ok(self.index[&root.id()])
    }

    fn push(&mut self, node: &Node, op: Op<usize>) -> usize {
        self.entries.push(Entry {
            shape: node.shape().to_vec(),
            dtype: node.dtype(),
            op,
        });
        self.bind.nodes.push(node.clone());
        self.entries.len() - 1
    }
}

pub(crate) fn canonicalize(roots: &[Node], effects: &[Effect]) -> Result<Canon> {
    let mut b = Builder {
        index: HashMap::new(),
        storage_index: HashMap::new(),
        entries: Vec::new(),
        bind: Bindings {
            nodes: Vec::new(),
            externals: HashMap::new(),
            uploads: HashMap::new(),
            seeds: HashMap::new(),
            consts: HashMap::new(),
            hypers: Vec::new(),
        },
    };
    let mut root_ix = Vec::with_capacity(roots.len());
    for r in roots {
        root_ix.push(b.visit(r)?);
    }
    let mut canon_effects = Vec::with_capacity(effects.len());
    for e in effects {
        canon_effects.push(match e {
            Effect::Optim {
                kind,
                param,
                grad,
                state,
                hyper,
            } => {
                let p = b.visit(param)?;
                let g = b.visit(grad)?;
                let mut st = Vec::new();
                for s in state {
                    st.push(b.visit(s)?);
                }
                for &i in std::iter::once(&p).chain(&st) {
                    if !matches!(b.entries[i].op, Op::External) {
                        return Err(Error::invalid(
                            "optimizer step",
                            "parameters and optimizer state must be realized tensors",
                        ));
                    }
                }
                b.bind.hypers.push(hyper.clone());
                CanonEffect::Optim {
                    kind: *kind,
                    param: p,
                    grad: g,
                    state: st,
                    hyper_len: hyper.len(),
                }
            }
            Effect::Assign { target, value } => {
                if target.shape() != value.shape() || target.dtype() != value.dtype() {
                    return Err(Error::shape(
                        "assign",
                        format!(
                            "target {:?}:{} <- value {:?}:{}",
                            target.shape(),
                            target.dtype(),
                            value.shape(),
                            value.dtype()
                        ),
                    ));
                }
                let t = b.visit(target)?;
                if !matches!(b.entries[t].op, Op::External) {
                    return Err(Error::invalid(
                        "assign",
                        "the target of an in-place write must be a realized tensor",
                    ));
                }
                let v = b.visit(value)?;
                CanonEffect::Assign {
                    target: t,
                    value: v,
                }
            }
        });
    }
    Ok(Canon {
        structure: Structure {
            entries: b.entries,
            roots: root_ix,
            effects: canon_effects,
        },
        bind: b.bind,
    })
}
