//! Passes 1 and 2: long reductions and long-K products are split in two
//! steps, each over bounded work, so that the GPU's cores share them.

use super::{Graph, Split, Target};
use crate::canon::Entry;
use crate::graph::{numel, Op, ReduceOp};
use crate::kernels;

/// Elements one reduce workgroup handles at most before the reduction is
/// split into partials (see `codegen::reduce`).
pub(crate) const REDUCE_SPAN: usize = 1 << 16;

/// A `Sum`/`Max`/`Min` over more than [`REDUCE_SPAN`] elements per output
/// becomes two reductions: partials over bounded spans into a scratch entry
/// of shape `[outputs, parts]`, then a reduction of the partials into the
/// original's buffer. This spreads a large reduction over the GPU and
/// avoids a lavapipe miscompile of loops that run 65535 or more times per
/// thread (see `codegen::reduce`). Arg-reductions are never split.
pub(crate) fn reductions(graph: &mut Graph) {
    for i in graph.ordinary() {
        let Op::Reduce { op, axes, input } = &graph.entries[i].op else {
            continue;
        };
        let span: usize = axes
            .iter()
            .map(|&a| graph.entries[*input].shape[a])
            .product();
        if span <= REDUCE_SPAN || matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) {
            continue;
        }
        let (op, axes, input) = (*op, axes.clone(), *input);
        let parts = span.div_ceil(REDUCE_SPAN);
        let outputs = numel(&graph.entries[i].shape);
        let dtype = graph.entries[i].dtype;
        let partial = graph.entries.len();
        graph.entries.push(Entry {
            shape: vec![outputs, parts],
            dtype,
            op: Op::Reduce { op, axes, input },
        });
        let combine = graph.entries.len();
        graph.entries.push(Entry {
            shape: vec![outputs, 1],
            dtype,
            op: Op::Reduce {
                op,
                axes: vec![1],
                input: partial,
            },
        });
        graph.split_reductions.insert(
            i,
            Split {
                partial,
                combine,
                parts,
            },
        );
    }
}

/// A long-K product with few output blocks becomes split-K (see
/// `kernels::split_k`): partial products, one per part of K, into a scratch
/// entry `[parts, m * n]`, then their sum in a fixed order.
pub(crate) fn products(graph: &mut Graph, target: &Target) {
    for i in graph.ordinary() {
        let Op::Matmul {
            a,
            b,
            a_batched,
            b_batched,
        } = graph.entries[i].op
        else {
            continue;
        };
        let (sa, sb) = (&graph.entries[a].shape, &graph.entries[b].shape);
        let (m, k, n) = (sa[sa.len() - 2], sa[sa.len() - 1], sb[sb.len() - 1]);
        let batch = if a_batched || b_batched {
            graph.entries[i].shape[0]
        } else {
            1
        };
        let parts = kernels::split_k(m, n, k, batch, target.subgroup_matmul);
        if parts <= 1 {
            continue;
        }
        let dtype = graph.entries[i].dtype;
        let partial = graph.entries.len();
        graph.entries.push(Entry {
            shape: vec![parts, m * n],
            dtype,
            op: graph.entries[i].op.clone(),
        });
        let combine = graph.entries.len();
        graph.entries.push(Entry {
            shape: vec![1, m * n],
            dtype,
            op: Op::Reduce {
                op: ReduceOp::Sum,
                axes: vec![0],
                input: partial,
            },
        });
        graph.split_products.insert(
            i,
            Split {
                partial,
                combine,
                parts,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gpu, Builder};
    use super::super::Graph;
    use crate::graph::ReduceOp;

    #[test]
    fn long_reductions_split_and_arg_reductions_do_not() {
        let mut g = Builder::new();
        let x = g.upload(&[3, 200_000]);
        let sum = g.reduce(ReduceOp::Sum, &[1], x);
        let arg = g.reduce(ReduceOp::ArgMax, &[1], x);
        let short = g.reduce(ReduceOp::Max, &[0], x);
        let s = g.finish(&[sum, arg, short]);
        let mut graph = Graph::new(&s);
        super::reductions(&mut graph);
        assert_eq!(graph.split_reductions.len(), 1);
        let split = graph.split_reductions[&sum];
        // 200000 elements in parts of at most 65536.
        assert_eq!(split.parts, 4);
        assert_eq!(graph.entries[split.partial].shape, vec![3, 4]);
        assert_eq!(graph.entries[split.combine].shape, vec![3, 1]);
        assert!(split.partial >= graph.synthetic_from);
    }

    #[test]
    fn long_k_products_with_few_blocks_split() {
        let mut g = Builder::new();
        // A weight gradient's shape: 64 x 64 outputs over K = 8192.
        let a = g.upload(&[64, 8192]);
        let b = g.upload(&[8192, 64]);
        let long = g.matmul(a, b);
        // Many output blocks: no reason to split.
        let c = g.upload(&[1024, 256]);
        let d = g.upload(&[256, 1024]);
        let wide = g.matmul(c, d);
        let s = g.finish(&[long, wide]);
        let mut graph = Graph::new(&s);
        super::products(&mut graph, &gpu());
        let split = graph.split_products[&long];
        assert!(split.parts > 1 && 8192 % split.parts == 0);
        assert_eq!(
            graph.entries[split.partial].shape,
            vec![split.parts, 64 * 64]
        );
        assert!(!graph.split_products.contains_key(&wide));
    }
}
