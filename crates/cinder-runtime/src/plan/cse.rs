//! Pass 0, first: common values. Rules written apart build the same value
//! twice: an LSTM's input projection transposes its output gradient for
//! `dW_ih` by the product's rule, and the recurrence transposes the same
//! gradient for `dW_hh`. Every reader of such a copy is pointed at the
//! first, so the value is computed (or packed into a texture) once.

use std::collections::HashMap;

use super::Graph;
use crate::canon::Entry;
use crate::graph::Op;

/// Entries equal to an earlier one (the same op over the same inputs, the
/// same shape and dtype) are dropped and their readers read the earlier
/// one. Leaves, whose values travel beside the structure (buffers,
/// uploads, constants, seeds), and custom kernels are kept, as are roots:
/// each root keeps a buffer of its own.
pub(crate) fn merge(graph: &mut Graph) {
    let n = graph.entries.len();
    let mut is_root = vec![false; n];
    for &r in &graph.roots {
        is_root[r] = true;
    }
    let mut first: HashMap<Entry, usize> = HashMap::new();
    let mut map = vec![usize::MAX; n];
    let mut entries = Vec::with_capacity(n);
    let mut origin = Vec::with_capacity(n);
    for i in 0..n {
        let old = &graph.entries[i];
        let entry = Entry {
            shape: old.shape.clone(),
            dtype: old.dtype,
            op: old.op.map(|&x| map[x]),
        };
        let pure = !matches!(
            entry.op,
            Op::External | Op::Upload | Op::Const | Op::Rand { .. } | Op::Custom(..)
        );
        if pure && !is_root[i] {
            if let Some(&kept) = first.get(&entry) {
                map[i] = kept;
                continue;
            }
        }
        map[i] = entries.len();
        if pure {
            first.entry(entry.clone()).or_insert(map[i]);
        }
        entries.push(entry);
        origin.push(graph.origin[i]);
    }
    if entries.len() == n {
        return;
    }
    graph.entries = entries;
    graph.origin = origin;
    graph.synthetic_from = graph.entries.len();
    graph.renumber(&map);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{BinaryOp, DType, ReduceOp, UnaryOp};
    use crate::plan::testing::{lavapipe, spec_of, Builder};

    #[test]
    fn a_value_built_twice_is_computed_once() {
        let mut g = Builder::new();
        let x = g.upload(&[64, 48]);
        let w = g.upload(&[64, 32]);
        // Two transposes of x, each read by its own product, and two equal
        // sums; their results are the roots.
        let t1 = g.transpose(x);
        let t2 = g.transpose(x);
        let p1 = g.matmul(t1, w);
        let p2 = g.matmul(t2, w);
        let e1 = g.unary(UnaryOp::Exp, x);
        let e2 = g.unary(UnaryOp::Exp, x);
        let s = g.binary(BinaryOp::Add, e1, e2);
        let r = g.reduce(ReduceOp::Sum, &[0], s);
        let structure = g.finish(&[p1, p2, r]);
        let mut graph = Graph::new(&structure);
        merge(&mut graph);
        // t2 and e2 are gone; p2, a root, stays and reads t1.
        assert_eq!(graph.entries.len(), structure.entries.len() - 2);
        let [p1, p2, r] = [graph.roots[0], graph.roots[1], graph.roots[2]];
        assert_ne!(p1, p2);
        assert_eq!(graph.entries[p1].op, graph.entries[p2].op);
        let Op::Reduce { input, .. } = graph.entries[r].op else {
            panic!("the sum is still a reduction"); // ok: a test; a panic is its failure
        };
        let Op::Binary(BinaryOp::Add, a, b) = graph.entries[input].op else {
            panic!("the sum's input is still the addition"); // ok: a test; a panic is its failure
        };
        assert_eq!(a, b, "both sides read the one exp");
        // Every kept entry keeps its place in the structure.
        for (i, o) in graph.origin.iter().enumerate() {
            let o = o.expect("an entry of the structure"); // ok: a test; a panic is its failure
            assert_eq!(structure.entries[o].shape, graph.entries[i].shape);
        }
    }

    #[test]
    fn a_graph_that_builds_a_value_twice_plans_like_one_that_shares_it() {
        // Two products read x transposed (a copy each needs, or a texture):
        // built twice or once, the plan is the same.
        let plan = |twice: bool| {
            let mut g = Builder::new();
            let x = g.upload(&[256, 128]);
            let w = g.upload(&[256, 64]);
            let t1 = g.transpose(x);
            let t2 = if twice { g.transpose(x) } else { t1 };
            let p1 = g.matmul(t1, w);
            let p2 = g.matmul(t2, w);
            let sum = g.binary(BinaryOp::Add, p1, p2);
            spec_of(g, &[sum], &lavapipe()).steps.len()
        };
        assert_eq!(plan(true), plan(false));
    }

    #[test]
    fn leaves_and_roots_are_never_merged() {
        let mut g = Builder::new();
        let a = g.upload(&[8]);
        let b = g.upload(&[8]);
        let c = g.push(&[8], DType::F32, Op::Const);
        let d = g.push(&[8], DType::F32, Op::Const);
        let e1 = g.unary(UnaryOp::Exp, a);
        let e2 = g.unary(UnaryOp::Exp, a);
        let structure = g.finish(&[b, c, d, e1, e2]);
        let mut graph = Graph::new(&structure);
        merge(&mut graph);
        assert_eq!(graph.entries.len(), structure.entries.len());
        assert_eq!(graph.roots, structure.roots);
    }
}
