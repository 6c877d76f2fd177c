//! Pass 7: epilogue fusion. A product whose only consumer chain (element-wise
//! ops and one-to-one views, each read once) ends in a materialized entry
//! writes that entry directly: its C stores evaluate the chain (see
//! `codegen::matmul_epilogue`), and its own output never exists. Bias, batch
//! norm in evaluation mode and activations after `Linear` or `conv2d` so
//! cost no pass of their own.

use std::collections::{HashMap, HashSet};

use super::product::matmul_kernel;
use super::{limits, Graph, Target, Uses};
use crate::canon::Entry;
use crate::graph::{numel, DType, Op};

/// A product fused into the kernel of the entry its chain ends in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Epilogue {
    pub matmul: usize,
    /// From the product's consumer up to the written entry (the last).
    pub chain: Vec<usize>,
}

/// The epilogues, by the entry each writes. Only products whose kernel
/// compiles in about a second take one (`MatmulVariant::fusable`): each fused
/// site is a pipeline of its own with its shapes baked in.
pub(crate) fn fuse(
    graph: &Graph,
    uses: &Uses,
    implicit: &HashSet<usize>,
    mat: &mut [bool],
    target: &Target,
) -> HashMap<usize, Epilogue> {
    let entries = &graph.entries;
    let mut epilogues = HashMap::new();
    for m in graph.ordinary() {
        if !matches!(entries[m].op, Op::Matmul { .. })
            || implicit.contains(&m)
            || graph.split_products.contains_key(&m)
            || uses.is_root[m]
            || uses.count[m] != 1
            || entries[m].dtype != DType::F32
        {
            continue;
        }
        let Some(chain) = one_to_one_chain(graph, uses, mat, m) else {
            continue;
        };
        let end = chain[chain.len() - 1];
        // One product per fused kernel: a second one feeding the same entry
        // (the two gradients of x @ x) keeps its own buffer.
        let cheap = || {
            matmul_kernel(target, entries, m, 1, [false; 2], false)
                .is_some_and(|(_, _, k)| k.variant.fusable())
        };
        // A, B, C and the shape words, then the chain's own inputs: all
        // within the device's storage buffers per kernel.
        let fits = || {
            let mut reads = limits::epilogue_reads(graph, mat, end, m);
            reads.scalars = false;
            4 + limits::bindings(graph, target, &reads, None) <= target.max_bindings
        };
        if !epilogues.contains_key(&end) && cheap() && fits() {
            mat[m] = false;
            epilogues.insert(end, Epilogue { matmul: m, chain });
        }
    }
    epilogues
}

/// Whether entry `e` reads `input` (of shape `shape`) only at its own
/// element's position, up to a one-to-one reordering: the links an
/// epilogue may follow.
fn index_preserving(e: &Entry, input: usize, shape: &[usize]) -> bool {
    let once = |xs: &[usize]| xs.iter().filter(|&&x| x == input).count() == 1;
    e.dtype == DType::F32
        && match &e.op {
            Op::Unary(_, a) => *a == input,
            Op::Binary(_, x, y) => e.shape == shape && once(&[*x, *y]),
            Op::Where(c, x, y) => e.shape == shape && once(&[*c, *x, *y]),
            Op::View(spec, a) => {
                *a == input
                    && numel(&e.shape) == numel(shape)
                    && crate::codegen::is_permutation_view(spec, &e.shape)
            }
            _ => false,
        }
}

/// The chain of consumers from `start` up to the first materialized entry,
/// when every link is its predecessor's only consumer, reads it at its own
/// element (`index_preserving`) and, short of the end, is read once: then
/// each element of `start` is computed exactly once, in the end's kernel.
/// The chain excludes `start` and ends with the materialized entry.
pub(crate) fn one_to_one_chain(
    graph: &Graph,
    uses: &Uses,
    mat: &[bool],
    start: usize,
) -> Option<Vec<usize>> {
    let entries = &graph.entries;
    let mut chain = Vec::new();
    let mut cur = start;
    loop {
        let [next] = uses.consumers[cur][..] else {
            return None;
        };
        if next >= graph.synthetic_from
            || !index_preserving(&entries[next], cur, &entries[cur].shape)
        {
            return None;
        }
        chain.push(next);
        if mat[next] {
            return Some(chain);
        }
        if uses.count[next] != 1 {
            return None;
        }
        cur = next;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gpu, lavapipe, Builder};
    use super::super::{materialize, Graph, Uses};
    use crate::graph::{BinaryOp, UnaryOp};
    use std::collections::HashSet;

    fn fused(
        g: Builder,
        roots: &[usize],
        target: &super::Target,
    ) -> (Vec<bool>, super::HashMap<usize, super::Epilogue>) {
        let s = g.finish(roots);
        let graph = Graph::new(&s);
        let uses = Uses::count(&graph);
        let mut mat = materialize::initial(&graph, &uses);
        materialize::inputs(&graph, &uses, &HashSet::new(), &mut mat);
        let epilogues = super::fuse(&graph, &uses, &HashSet::new(), &mut mat, target);
        (mat, epilogues)
    }

    #[test]
    fn bias_and_relu_run_in_the_products_kernel() {
        for target in [gpu(), lavapipe()] {
            let mut g = Builder::new();
            let x = g.upload(&[16, 32]);
            let w = g.upload(&[32, 8]);
            let y = g.matmul(x, w);
            let bias = g.upload(&[1, 8]);
            let bias = g.expand(bias, &[16, 8]);
            let z = g.binary(BinaryOp::Add, y, bias);
            let r = g.unary(UnaryOp::Relu, z);
            let (mat, epilogues) = fused(g, &[r], &target);
            let e = &epilogues[&r];
            assert_eq!((e.matmul, e.chain.clone()), (y, vec![z, r]));
            assert!(!mat[y], "the product's own output never exists");
        }
    }

    #[test]
    fn a_product_read_twice_or_returned_keeps_its_buffer() {
        let mut g = Builder::new();
        let x = g.upload(&[16, 32]);
        let w = g.upload(&[32, 8]);
        let y = g.matmul(x, w);
        let a = g.unary(UnaryOp::Relu, y);
        let b = g.unary(UnaryOp::Exp, y);
        let r = g.binary(BinaryOp::Add, a, b);
        let y2 = g.matmul(x, w);
        let (mat, epilogues) = fused(g, &[r, y2], &gpu());
        assert!(epilogues.is_empty());
        assert!(mat[y] && mat[y2]);
    }

    #[test]
    fn two_products_feeding_one_entry_fuse_one() {
        let mut g = Builder::new();
        let x = g.upload(&[16, 16]);
        let p = g.matmul(x, x);
        let q = g.matmul(x, x);
        let r = g.binary(BinaryOp::Add, p, q);
        let (mat, epilogues) = fused(g, &[r], &gpu());
        assert_eq!(epilogues.len(), 1);
        assert_eq!(mat[p] as u8 + mat[q] as u8, 1);
    }
}
