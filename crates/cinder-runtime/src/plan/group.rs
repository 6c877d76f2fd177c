//! Pass 9: one product, several consumers. A product read by several
//! element-wise values (an LSTM's gate product sliced into four gates, a
//! GRU's three) would give each value a kernel of its own; instead they, and
//! the values computed from them at the same element (an LSTM's cell and
//! hidden state), run as one kernel after the product that writes each of
//! them. A reduction's readers group the same way: batch norm's statistics
//! (a variance, its inverse square root, the scale and shift from it) are
//! one kernel where they were a tiny dispatch each.

use std::collections::HashMap;

use super::{limits, Fusion, Graph, Target, Uses};
use crate::codegen::{chunk_count, StoreForm};
use crate::graph::{numel, Op};

/// Values computed by one kernel, in entry order; it runs where the last
/// of them would have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Group {
    pub members: Vec<usize>,
    /// The members it writes to memory: those returned, or read by a kernel
    /// outside the group or an effect. The others are computed inline
    /// where members need them and lose their buffers.
    pub stored: Vec<usize>,
}

impl Group {
    /// The member at whose place in the kernel order the group runs.
    pub(crate) fn last(&self) -> usize {
        self.members[self.members.len() - 1]
    }
}

/// The groups, and for each member its group's index.
pub(crate) fn siblings(
    graph: &Graph,
    uses: &Uses,
    fusion: &Fusion,
    target: &Target,
) -> (Vec<Group>, HashMap<usize, usize>) {
    let entries = &graph.entries;
    let effect_reads: Vec<usize> = graph
        .effect_reads()
        .into_iter()
        .filter_map(|e| fusion.buffer_of(entries, e))
        .collect();
    // A value a fused element-wise kernel of its own would compute, stored
    // one element per thread in one binding.
    let groupable = |i: usize| -> bool {
        let n = numel(&entries[i].shape);
        i < graph.synthetic_from
            && fusion.mat[i]
            && n > 0
            && matches!(
                entries[i].op,
                Op::Unary(..)
                    | Op::Binary(..)
                    | Op::Where(..)
                    | Op::Cast(..)
                    | Op::View(..)
                    | Op::Gather { .. }
                    | Op::Unfold(..)
                    | Op::Fold(..)
                    | Op::ConvRows(..)
            )
            && !fusion.residents.contains_key(&i)
            && !fusion.epilogues.contains_key(&i)
            && chunk_count(n, target.chunk) == 1
            && target.store_form(entries, i) == StoreForm::Single
    };
    // What a product's kernel writes (the product, or its epilogue's end),
    // and reductions.
    let products: Vec<usize> = (0..graph.synthetic_from)
        .filter(|&i| {
            fusion.mat[i]
                && (matches!(entries[i].op, Op::Matmul { .. } | Op::Reduce { .. })
                    || fusion.epilogues.contains_key(&i))
        })
        .collect();
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: HashMap<usize, usize> = HashMap::new();
    for p in products {
        // The materialized values that read the product, directly or
        // through values computed inline.
        let mut readers = Vec::new();
        let mut stack = vec![p];
        while let Some(x) = stack.pop() {
            for &c in &uses.consumers[x] {
                if fusion.mat[c] {
                    if groupable(c) && !readers.contains(&c) && !group_of.contains_key(&c) {
                        readers.push(c);
                    }
                } else if c < graph.synthetic_from {
                    stack.push(c);
                }
            }
        }
        // The most readers of one length.
        let mut by_len: HashMap<usize, Vec<usize>> = HashMap::new();
        for r in readers {
            by_len.entry(numel(&entries[r].shape)).or_default().push(r);
        }
        // (One reader may still gather a chain below.)
        let Some((len, mut members)) = by_len.into_iter().max_by_key(|(_, m)| m.len()) else {
            continue;
        };
        // Values computed from members at the same element (through values
        // computed inline) join them.
        loop {
            let mut joining = Vec::new();
            let mut stack = members.clone();
            let mut seen = members.clone();
            while let Some(x) = stack.pop() {
                for &c in &uses.consumers[x] {
                    if seen.contains(&c)
                        || c >= graph.synthetic_from
                        || numel(&entries[c].shape) != len
                        || !same_element(&entries[c].op, entries)
                    {
                        continue;
                    }
                    seen.push(c);
                    if !fusion.mat[c] {
                        stack.push(c);
                    } else if groupable(c) && !group_of.contains_key(&c) {
                        joining.push(c);
                    }
                }
            }
            if joining.is_empty() {
                break;
            }
            members.extend(joining);
        }
        members.sort_unstable();
        let members = runnable_prefix(graph, uses, &fusion.mat, members);
        if members.len() < 2 {
            continue;
        }
        let stored: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&m| {
                uses.is_root[m]
                    || effect_reads.contains(&m)
                    || kernel_readers(graph, uses, &fusion.mat, m)
                        .iter()
                        .any(|r| !members.contains(r))
            })
            .collect();
        // A chain that `limits::split_fan_in` cut to fit the bindings (a sum
        // of a thousand terms) stays cut.
        let reads = limits::group_reads(graph, &fusion.mat, &members);
        let outputs: usize = stored
            .iter()
            .map(|&m| chunk_count(numel(&entries[m].shape), target.chunk))
            .sum();
        if limits::bindings(graph, target, &reads, None) + outputs > target.max_bindings {
            continue;
        }
        for &m in &members {
            group_of.insert(m, groups.len());
        }
        groups.push(Group { members, stored });
    }
    (groups, group_of)
}

/// Whether `op` computes its element from its inputs' same element: an
/// element-wise op on operands of its shape.
fn same_element(op: &Op<usize>, entries: &[crate::canon::Entry]) -> bool {
    let inputs = op.inputs();
    matches!(
        op,
        Op::Unary(..) | Op::Binary(..) | Op::Where(..) | Op::Cast(..)
    ) && inputs
        .iter()
        .all(|&i| entries[i].shape == entries[inputs[0]].shape)
}

/// The kernels that read `x`: the materialized entries reading it directly
/// or through values computed inline.
fn kernel_readers(graph: &Graph, uses: &Uses, mat: &[bool], x: usize) -> Vec<usize> {
    let mut readers = Vec::new();
    let mut stack = vec![x];
    while let Some(y) = stack.pop() {
        for &c in &uses.consumers[y] {
            if mat[c] || c >= graph.synthetic_from {
                if !readers.contains(&c) {
                    readers.push(c);
                }
            } else {
                stack.push(c);
            }
        }
    }
    readers
}

/// The members, cut short where a kernel outside the group reads a member
/// before the group would run: the group runs at its last member's place,
/// so every other kernel reading a member must come after it.
fn runnable_prefix(
    graph: &Graph,
    uses: &Uses,
    mat: &[bool],
    mut members: Vec<usize>,
) -> Vec<usize> {
    loop {
        let Some(&last) = members.last() else {
            return members;
        };
        let early = members
            .iter()
            .flat_map(|&m| kernel_readers(graph, uses, mat, m))
            .filter(|c| !members.contains(c) && *c < last)
            .min();
        match early {
            None => return members,
            Some(c) => members.retain(|&m| m < c),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_member_only_members_read_is_computed_inline_not_stored() {
        let mut g = Builder::new();
        let x = g.upload(&[16, 16]);
        let w = g.upload(&[16, 16]);
        let p = g.matmul(x, w);
        let a = g.unary(UnaryOp::Exp, p);
        let b = g.binary(BinaryOp::Mul, a, a);
        let c = g.binary(BinaryOp::Add, a, p);
        let (groups, mat) = fusion_of_graph(g, &[b, c], &gpu(), |_, _, fusion, _| {
            (fusion.groups.clone(), fusion.mat.clone())
        });
        assert_eq!(groups[0].members, vec![a, b, c]);
        assert_eq!(groups[0].stored, vec![b, c]);
        assert!(!mat[a], "{a} keeps a buffer nobody reads");
    }

    use super::super::testing::{fusion_of_graph, gpu, lavapipe, Builder};
    use crate::graph::{BinaryOp, ReduceOp, UnaryOp};

    /// Batch norm's per-channel statistics: a sum of squares, the variance
    /// and inverse standard deviation from it, the scale and shift from
    /// those; kept (returned) as training keeps them.
    #[test]
    fn a_reductions_chain_of_small_values_runs_as_one_kernel() {
        let mut g = Builder::new();
        let x = g.upload(&[64, 128]);
        let gamma = g.upload(&[1, 128]);
        let beta = g.upload(&[1, 128]);
        let mean = g.upload(&[1, 128]);
        let squares = g.binary(BinaryOp::Mul, x, x);
        let sum = g.reduce(ReduceOp::Sum, &[0], squares);
        let var = g.binary(BinaryOp::Mul, sum, mean);
        let invstd = g.unary(UnaryOp::Rsqrt, var);
        let scale = g.binary(BinaryOp::Mul, gamma, invstd);
        let shifted = g.binary(BinaryOp::Mul, mean, scale);
        let shift = g.binary(BinaryOp::Sub, beta, shifted);
        let roots = [invstd, scale, shift];
        let groups = fusion_of_graph(g, &roots, &lavapipe(), |_, _, fusion, _| {
            fusion.groups.clone()
        });
        // (The variance, read once, is computed inline.)
        assert_eq!(groups.len(), 1, "{groups:?}");
        assert_eq!(groups[0].members, roots.to_vec());
        assert_eq!(groups[0].stored, roots.to_vec());
    }

    /// A sum of many separately reduced terms: the fan-in cuts that keep
    /// each kernel within the bindings are not undone by a group.
    #[test]
    fn a_chain_cut_to_fit_the_bindings_stays_cut() {
        let mut g = Builder::new();
        let mut total = None;
        for _ in 0..40 {
            let x = g.upload(&[16]);
            let s = g.sum_all(x);
            total = Some(match total {
                None => s,
                Some(t) => g.binary(BinaryOp::Add, t, s),
            });
        }
        let total = total.unwrap_or_default();
        let target = lavapipe();
        let max = target.max_bindings;
        let groups = fusion_of_graph(g, &[total], &target, |graph, _, fusion, _| {
            fusion
                .groups
                .iter()
                .map(|group| {
                    let reads = super::limits::group_reads(graph, &fusion.mat, &group.members);
                    super::limits::bindings(graph, &target, &reads, None) + group.stored.len()
                })
                .collect::<Vec<_>>()
        });
        assert!(groups.iter().all(|&b| b <= max), "{groups:?} past {max}");
    }

    /// An LSTM cell's forward values: the gate product `[4, 4 * 8]`
    /// sliced into four gates, the cell and hidden state from them, every
    /// value also returned (as a backward pass would keep them).
    fn lstm_cell() -> (Builder, Vec<usize>) {
        let mut g = Builder::new();
        let (batch, hidden) = (4, 8);
        let x = g.upload(&[batch, 16]);
        let w = g.upload(&[16, 4 * hidden]);
        let gates = g.matmul(x, w);
        let c = g.upload(&[batch, hidden]);
        let gate = |g: &mut Builder, k: usize, op| {
            let slice = g.view_at(
                gates,
                &[batch, hidden],
                vec![4 * hidden as i64, 1],
                (k * hidden) as i64,
            );
            g.unary(op, slice)
        };
        let i = gate(&mut g, 0, UnaryOp::Sigmoid);
        let f = gate(&mut g, 1, UnaryOp::Sigmoid);
        let gg = gate(&mut g, 2, UnaryOp::Tanh);
        let o = gate(&mut g, 3, UnaryOp::Sigmoid);
        let fc = g.binary(BinaryOp::Mul, f, c);
        let ig = g.binary(BinaryOp::Mul, i, gg);
        let c2 = g.binary(BinaryOp::Add, fc, ig);
        let t = g.unary(UnaryOp::Tanh, c2);
        let h2 = g.binary(BinaryOp::Mul, o, t);
        (g, vec![i, f, gg, o, c2, h2])
    }

    #[test]
    fn an_lstm_cells_values_run_in_one_kernel_after_the_product() {
        let (g, roots) = lstm_cell();
        let groups = fusion_of_graph(g, &roots, &gpu(), |_, _, fusion, _| fusion.groups.clone());
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].members, roots);
        assert_eq!(groups[0].stored, roots);
    }

    #[test]
    fn a_reader_between_the_members_keeps_the_later_ones_out() {
        let mut g = Builder::new();
        let x = g.upload(&[4, 16]);
        let w = g.upload(&[16, 16]);
        let p = g.matmul(x, w);
        let a = g.unary(UnaryOp::Exp, p);
        // Reads `a` before `b` exists: a group running at `b` would be late.
        let s = g.sum_all(a);
        let b = g.unary(UnaryOp::Tanh, p);
        let groups = fusion_of_graph(g, &[a, s, b], &gpu(), |_, _, fusion, _| {
            fusion.groups.clone()
        });
        assert!(groups.is_empty(), "{groups:?}");
    }
}
