//! Turns the pending part of the graph into a canonical, index-based list whose
//! serialisation is the plan-cache key: the same structure (ops, shapes, dtypes)
//! gives the same key whatever the values, buffers or node ids.

use std::collections::HashMap;

use crate::device::lock;
use crate::error::{Error, Result};
use crate::graph::{
    BinaryOp, DType, Fill, Node, Op, OptimKind, ReduceOp, State, UnaryOp, ViewSpec, Window2d,
};
use crate::pool::Storage;

#[derive(Clone, Debug)]
pub(crate) enum Kind {
    External,
    Upload,
    Const,
    Iota {
        axis: usize,
    },
    Rand {
        normal: bool,
    },
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    Where(usize, usize, usize),
    Cast(usize),
    View(ViewSpec, usize),
    Gather {
        axis: usize,
        src: usize,
        index: usize,
    },
    Reduce {
        op: ReduceOp,
        axes: Vec<usize>,
        input: usize,
    },
    Unfold(Window2d, Fill, usize),
    Fold(Window2d, usize),
    ConvRows(Window2d, usize),
    Matmul {
        a: usize,
        b: usize,
        a_batched: bool,
        b_batched: bool,
    },
}

impl Kind {
    pub fn children(&self) -> Vec<usize> {
        match self {
            Kind::External | Kind::Upload | Kind::Const | Kind::Iota { .. } | Kind::Rand { .. } => {
                vec![]
            }
            Kind::Unary(_, a)
            | Kind::Cast(a)
            | Kind::View(_, a)
            | Kind::Unfold(_, _, a)
            | Kind::Fold(_, a)
            | Kind::ConvRows(_, a) => vec![*a],
            Kind::Reduce { input, .. } => vec![*input],
            Kind::Binary(_, a, b) => vec![*a, *b],
            Kind::Gather { src, index, .. } => vec![*src, *index],
            Kind::Matmul { a, b, .. } => vec![*a, *b],
            Kind::Where(c, a, b) => vec![*c, *a, *b],
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub kind: Kind,
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

#[derive(Clone, Debug)]
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

pub(crate) struct Canon {
    pub entries: Vec<Entry>,
    pub roots: Vec<usize>,
    pub effects: Vec<CanonEffect>,
    pub key: Vec<u64>,
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
                            let i = self.push(&node, Kind::External);
                            self.storage_index.insert(storage.id(), i);
                            self.bind.externals.insert(i, storage);
                            i
                        }
                    };
                    self.index.insert(node.id(), i);
                }
                State::Pending { op, versions } => {
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
                    let ix = |n: &Node| self.index[&n.id()];
                    let kind = match op {
                        Op::Upload(data) => {
                            let i = self.entries.len();
                            self.bind.uploads.insert(i, data.clone());
                            Kind::Upload
                        }
                        Op::Const(v) => {
                            let i = self.entries.len();
                            self.bind.consts.insert(i, *v);
                            Kind::Const
                        }
                        Op::Iota { axis } => Kind::Iota { axis: *axis },
                        Op::Rand { seed, normal } => {
                            let i = self.entries.len();
                            self.bind.seeds.insert(i, *seed);
                            Kind::Rand { normal: *normal }
                        }
                        Op::Unary(u, a) => Kind::Unary(*u, ix(a)),
                        Op::Binary(b, x, y) => Kind::Binary(*b, ix(x), ix(y)),
                        Op::Where(c, a, b) => Kind::Where(ix(c), ix(a), ix(b)),
                        Op::Cast(a) => Kind::Cast(ix(a)),
                        Op::View(spec, a) => Kind::View(spec.clone(), ix(a)),
                        Op::Unfold(win, fill, a) => Kind::Unfold(win.clone(), *fill, ix(a)),
                        Op::Fold(win, a) => Kind::Fold(win.clone(), ix(a)),
                        Op::ConvRows(win, a) => Kind::ConvRows(win.clone(), ix(a)),
                        Op::Gather { axis, src, index } => Kind::Gather {
                            axis: *axis,
                            src: ix(src),
                            index: ix(index),
                        },
                        Op::Reduce { op, axes, input } => Kind::Reduce {
                            op: *op,
                            axes: axes.clone(),
                            input: ix(input),
                        },
                        Op::Matmul {
                            a,
                            b,
                            a_batched,
                            b_batched,
                        } => Kind::Matmul {
                            a: ix(a),
                            b: ix(b),
                            a_batched: *a_batched,
                            b_batched: *b_batched,
                        },
                    };
                    drop(state);
                    let i = self.push(&node, kind);
                    self.index.insert(node.id(), i);
                }
            }
        }
        Ok(self.index[&root.id()])
    }

    fn push(&mut self, node: &Node, kind: Kind) -> usize {
        self.entries.push(Entry {
            shape: node.shape().to_vec(),
            dtype: node.dtype(),
            kind,
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
                    if !matches!(b.entries[i].kind, Kind::External) {
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
                if !matches!(b.entries[t].kind, Kind::External) {
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
    let key = structure_key(&b.entries, &root_ix, &canon_effects);
    Ok(Canon {
        entries: b.entries,
        roots: root_ix,
        effects: canon_effects,
        key,
        bind: b.bind,
    })
}

fn structure_key(entries: &[Entry], roots: &[usize], effects: &[CanonEffect]) -> Vec<u64> {
    let mut k: Vec<u64> = Vec::with_capacity(entries.len() * 8);
    for e in entries {
        k.push(e.dtype.code());
        k.push(e.shape.len() as u64);
        k.extend(e.shape.iter().map(|&d| d as u64));
        match &e.kind {
            Kind::External => k.push(1),
            Kind::Upload => k.push(2),
            // The value lives in the scalars buffer, not in the structure.
            Kind::Const => k.push(3),
            Kind::Iota { axis } => k.extend([4, *axis as u64]),
            Kind::Rand { normal } => k.extend([5, *normal as u64]),
            Kind::Unary(op, a) => k.extend([6, *op as u64, *a as u64]),
            Kind::Binary(op, a, b) => k.extend([7, *op as u64, *a as u64, *b as u64]),
            Kind::Where(c, a, b) => k.extend([8, *c as u64, *a as u64, *b as u64]),
            Kind::Cast(a) => k.extend([9, *a as u64]),
            Kind::View(spec, a) => {
                k.extend([10, *a as u64, spec.offset as u64]);
                k.extend(spec.strides.iter().map(|&s| s as u64));
                match &spec.mask {
                    None => k.push(0),
                    Some(m) => {
                        k.push(1);
                        for &(lo, hi) in m {
                            k.extend([lo as u64, hi as u64]);
                        }
                    }
                }
            }
            Kind::Gather { axis, src, index } => {
                k.extend([11, *axis as u64, *src as u64, *index as u64])
            }
            Kind::Unfold(win, fill, a) => {
                k.extend([14, *a as u64, *fill as u64]);
                window_key(&mut k, win);
            }
            Kind::Fold(win, a) => {
                k.extend([15, *a as u64]);
                window_key(&mut k, win);
            }
            Kind::ConvRows(win, a) => {
                k.extend([16, *a as u64]);
                window_key(&mut k, win);
            }
            Kind::Reduce { op, axes, input } => {
                k.extend([12, *op as u64, *input as u64, axes.len() as u64]);
                k.extend(axes.iter().map(|&a| a as u64));
            }
            Kind::Matmul {
                a,
                b,
                a_batched,
                b_batched,
            } => k.extend([
                13,
                *a as u64,
                *b as u64,
                *a_batched as u64,
                *b_batched as u64,
            ]),
        }
    }
    k.push(u64::MAX);
    k.extend(roots.iter().map(|&r| r as u64));
    k.push(u64::MAX);
    for e in effects {
        match e {
            CanonEffect::Optim {
                kind,
                param,
                grad,
                state,
                hyper_len,
            } => {
                let code = match kind {
                    OptimKind::Sgd => 0,
                    OptimKind::SgdMomentum { nesterov } => 1 + *nesterov as u64,
                    OptimKind::Adam => 3,
                };
                k.extend([20, code, *param as u64, *grad as u64, *hyper_len as u64]);
                k.extend(state.iter().map(|&s| s as u64));
            }
            CanonEffect::Assign { target, value } => k.extend([21, *target as u64, *value as u64]),
        }
    }
    k
}

fn window_key(k: &mut Vec<u64>, win: &Window2d) {
    for pair in [
        win.image,
        win.out,
        win.kernel,
        win.stride,
        win.padding,
        win.dilation,
    ] {
        k.extend(pair.iter().map(|&v| v as u64));
    }
}
