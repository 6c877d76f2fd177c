//! Passes 3 and 5: which entries get a buffer of their own. Everything else
//! element-wise is recomputed inside each kernel that reads it.

use std::collections::HashSet;

use super::epilogue::one_to_one_chain;
use super::product::operand_sources;
use super::{buffer_of, reshaped, Graph, Uses};
use crate::canon::CanonEffect;
use crate::graph::{numel, BinaryOp, Op};

/// Broadcast values at least this large get a buffer of their own (see
/// [`inputs`]).
pub(crate) const BROADCAST_MATERIALIZE_MIN: usize = 1 << 16;

/// A smaller broadcast value gets a buffer when it reads at least
/// [`BROADCAST_LOADS_MIN`] values and an element-wise consumer of at least
/// this many elements reads it (see [`inputs`]).
pub(crate) const BROADCAST_READER_MIN: usize = 1 << 18;

/// See [`BROADCAST_READER_MIN`].
pub(crate) const BROADCAST_LOADS_MIN: usize = 2;

/// Values of at most this many elements that scale a buffer by a constant
/// are inlined into every reader (see [`inputs`]).
pub(crate) const SMALL_SCALED_MAX: usize = 4096;

/// Whether `i` multiplies, divides, adds or subtracts a materialized
/// buffer and a constant (each through views): one load and one operation
/// wherever it is inlined.
fn scaled_buffer(entries: &[crate::canon::Entry], mat: &[bool], i: usize) -> bool {
    let below_views = |mut j: usize| {
        while let Op::View(_, child) = &entries[j].op {
            if mat[j] {
                break;
            }
            j = *child;
        }
        j
    };
    let Op::Binary(op, a, b) = &entries[i].op else {
        return false;
    };
    let arithmetic = matches!(
        op,
        BinaryOp::Mul | BinaryOp::Div | BinaryOp::Add | BinaryOp::Sub
    );
    let (a, b) = (below_views(*a), below_views(*b));
    let constant = |j: usize| matches!(entries[j].op, Op::Const);
    arithmetic && ((mat[a] && constant(b)) || (constant(a) && mat[b]))
}

/// The loads an inlined `entry` costs per element: the buffers and scalars
/// its expression reads (each once, however often), through inlined
/// element-wise entries. Counting stops past `cap`.
fn inline_loads(graph: &Graph, mat: &[bool], entry: usize, cap: usize) -> usize {
    let entries = &graph.entries;
    let mut seen = HashSet::new();
    let mut stack = vec![entry];
    let mut loads = 0;
    while let Some(j) = stack.pop() {
        if !seen.insert(j) || loads >= cap {
            continue;
        }
        if j != entry && mat[j] {
            loads += 1;
            continue;
        }
        match &entries[j].op {
            Op::Iota { .. } | Op::Rand { .. } => {}
            // A constant is a word of the scalars buffer.
            Op::Const => loads += 1,
            op => {
                let inputs = op.inputs();
                if inputs.is_empty() {
                    loads += 1;
                }
                stack.extend(inputs);
            }
        }
    }
    loads
}

/// Pass 3: buffers by kind and use count.
///
/// | Entry | Gets a buffer when |
/// |---|---|
/// | `External`, `Upload`, `Reduce`, `Matmul`, `Concat`, `Custom` | always (buffers, or kernels of their own) |
/// | `View`, `Const`, `Iota`, `Rand` | only as a root: free to recompute in every consumer |
/// | `Fold` | as a root or when read twice; else decided in [`inputs`] |
/// | other element-wise entries | as a root or when read more than once |
/// | split partials | always (scratch); the combining step writes the original's buffer |
pub(crate) fn initial(graph: &Graph, uses: &Uses) -> Vec<bool> {
    let n = graph.entries.len();
    let partials: Vec<usize> = graph
        .split_reductions
        .values()
        .chain(graph.split_products.values())
        .map(|s| s.partial)
        .collect();
    (0..n)
        .map(|i| {
            if i >= graph.synthetic_from {
                return partials.contains(&i);
            }
            let root = uses.is_root[i];
            match &graph.entries[i].op {
                Op::External
                | Op::Upload
                | Op::Reduce { .. }
                | Op::Matmul { .. }
                | Op::Concat { .. }
                | Op::Custom(..) => true,
                // A fold sums several taps per pixel: inlined into a consumer
                // that reads it at more than one position its cost would
                // multiply. Decided in `inputs`, once every other entry is.
                Op::Fold(..) => root || uses.count[i] > 1,
                Op::View(..) | Op::Const | Op::Iota { .. } | Op::Rand { .. } => root,
                _ => root || uses.count[i] > 1,
            }
        })
        .collect()
}

/// Pass 5: buffers for what kernels read in bulk.
///
/// - Inputs that a hand-written kernel reads as a plain contiguous buffer
///   (both matmul operands, an implicit product's image, the optimizer's
///   gradient, an assignment's value) get one below any reshapes, unless
///   they already reach one through reshapes: consumers that reshape one
///   value differently then share it.
/// - What an unfold reads is computed once (it reads each pixel once per
///   tap), views and constants excepted, and one buffer's load with its
///   arithmetic (a leaky ReLU of a product read through a permutation)
///   that nothing else reads: that costs each tap one load either way; a
///   channels-last unfold's image only below its reshapes (an implicit
///   product fetches that `[N * H * W, C]` matrix).
/// - A value of at least [`BROADCAST_MATERIALIZE_MIN`] elements that an
///   element-wise consumer broadcasts (reads through a stride-0 view, or as
///   a smaller operand): inlined, its loads would repeat per read.
///   Max-pooling's backward broadcasts the pooled gradient over each
///   window's taps. So does a smaller one that reads several values,
///   broadcast over at least [`BROADCAST_READER_MIN`] elements: batch
///   norm's per-channel shift (`bias - mean * scale`) inlined into the
///   normalised image costs three loads per pixel where its buffer costs
///   one.
/// - A fold stays inlined only where each of its pixels is computed once:
///   a chain of single-use, one-to-one consumers that ends in a buffer.
/// - A small buffer scaled by a constant (batch norm's mean) is inlined
///   into all its readers, however many: each loads the buffer instead,
///   and the constant is read once per invocation.
pub(crate) fn inputs(graph: &Graph, uses: &Uses, implicit: &HashSet<usize>, mat: &mut [bool]) {
    let entries = &graph.entries;
    let mut needs_buffer = Vec::new();
    for m in graph.ordinary() {
        if let [Some(a), Some(b)] = operand_sources(entries, implicit, m) {
            needs_buffer.extend([a, b]);
        }
    }
    // A concatenation's copies and a custom kernel read their inputs as
    // plain buffers.
    for e in &entries[graph.ordinary()] {
        if let Op::Concat { inputs, .. } | Op::Custom(_, inputs) = &e.op {
            needs_buffer.extend(inputs.iter().copied());
        }
    }
    for eff in &graph.effects {
        match eff {
            CanonEffect::Optim { grad, .. } => needs_buffer.push(*grad),
            CanonEffect::Assign { value, .. } => needs_buffer.push(*value),
        }
    }
    // A small buffer's value scaled by a constant (batch norm's mean, a sum
    // divided by its count) costs its readers the same load inlined, and
    // saves a dispatch of its own (about 0.05 ms on lavapipe), however many
    // read it.
    for i in graph.ordinary() {
        if mat[i]
            && !uses.is_root[i]
            && numel(&entries[i].shape) <= SMALL_SCALED_MAX
            && !needs_buffer.contains(&i)
            && scaled_buffer(entries, mat, i)
        {
            mat[i] = false;
        }
    }
    for i in needs_buffer {
        if buffer_of(entries, mat, i).is_none() {
            let mut j = i;
            while let Some(child) = reshaped(&entries[j]) {
                j = child;
            }
            mat[j] = true;
        }
    }

    for e in &entries[graph.ordinary()] {
        let (mut j, through_any_view) = match e.op {
            Op::Unfold(_, _, j) => (j, true),
            Op::ConvRows(_, j) => (j, false),
            _ => continue,
        };
        loop {
            match &entries[j].op {
                Op::View(_, child) if through_any_view => j = *child,
                _ => match reshaped(&entries[j]) {
                    Some(child) => j = child,
                    None => break,
                },
            }
        }
        // One load and its arithmetic are as cheap at every tap as the
        // load alone, and save the value's own pass.
        let cheap = through_any_view
            && !uses.is_root[j]
            && uses.count[j] == 1
            && crate::codegen::reads_one_buffer(entries, &|x| mat[x], j);
        if !matches!(entries[j].op, Op::Const | Op::Iota { .. }) && !cheap {
            mat[j] = true;
        }
    }

    // Small broadcast values stay inlined: a kernel of their own costs more
    // than recomputing them.
    for e in &entries[graph.ordinary()] {
        let operands: &[usize] = match &e.op {
            Op::Binary(_, x, y) => &[*x, *y],
            Op::Where(c, x, y) => &[*c, *x, *y],
            _ => &[],
        };
        for &operand in operands {
            // Smaller than the result, or through a view that expands a
            // dimension (stride 0); a padding view is not a broadcast.
            let mut broadcast = numel(&entries[operand].shape) < numel(&e.shape);
            let mut j = operand;
            while let Op::View(spec, child) = &entries[j].op {
                broadcast |= spec
                    .strides
                    .iter()
                    .zip(&entries[j].shape)
                    .any(|(&stride, &size)| stride == 0 && size > 1);
                j = *child;
            }
            let computed = !matches!(entries[j].op, Op::Const | Op::Iota { .. } | Op::Rand { .. });
            if !(broadcast && computed) || mat[j] {
                continue;
            }
            let large = numel(&entries[j].shape) >= BROADCAST_MATERIALIZE_MIN;
            // (A scaled buffer is one load and a constant that an
            // invocation reads once for all its elements.)
            let costly = numel(&e.shape) >= BROADCAST_READER_MIN
                && !scaled_buffer(entries, mat, j)
                && inline_loads(graph, mat, j, BROADCAST_LOADS_MIN) >= BROADCAST_LOADS_MIN;
            if large || costly {
                mat[j] = true;
            }
        }
    }

    for i in graph.ordinary() {
        if !matches!(entries[i].op, Op::Fold(..)) || mat[i] {
            continue;
        }
        mat[i] = one_to_one_chain(graph, uses, mat, i).is_none();
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Builder;
    use super::super::{Graph, Uses};
    use crate::graph::{BinaryOp, UnaryOp};
    use std::collections::HashSet;

    fn plan(g: Builder, roots: &[usize]) -> Vec<bool> {
        let s = g.finish(roots);
        let graph = Graph::new(&s);
        let uses = Uses::count(&graph);
        let mut mat = super::initial(&graph, &uses);
        super::inputs(&graph, &uses, &HashSet::new(), &mut mat);
        mat
    }

    #[test]
    fn values_read_twice_get_a_buffer_and_views_never_do() {
        let mut g = Builder::new();
        let x = g.upload(&[8, 8]);
        let e = g.unary(UnaryOp::Exp, x);
        let t = g.transpose(e);
        let once = g.unary(UnaryOp::Neg, t);
        let twice = g.binary(BinaryOp::Add, e, t);
        let root = g.binary(BinaryOp::Mul, once, twice);
        let mat = plan(g, &[root]);
        assert!(mat[x] && mat[root]);
        // `e` is read by the transpose and the add.
        assert!(mat[e]);
        assert!(!mat[t] && !mat[once] && !mat[twice]);
    }

    /// Batch norm's mean: a per-channel sum times 1/count, read by the
    /// variance's reduction and by the normalisation of a big image. Its
    /// readers load the sum instead; a scaled value that reads two
    /// buffers keeps its own.
    #[test]
    fn a_small_sum_scaled_by_a_constant_is_computed_where_it_is_read() {
        use crate::graph::{DType, Op, ReduceOp};
        let mut g = Builder::new();
        let x = g.upload(&[64, 128, 8, 8]);
        let sum = g.reduce(ReduceOp::Sum, &[0, 2, 3], x);
        let count = g.push(&[1, 128, 1, 1], DType::F32, Op::Const);
        let mean = g.binary(BinaryOp::Mul, sum, count);
        let wide = g.expand(mean, &[64, 128, 8, 8]);
        let centred = g.binary(BinaryOp::Sub, x, wide);
        let squares = g.binary(BinaryOp::Mul, centred, centred);
        let var = g.reduce(ReduceOp::Sum, &[0, 2, 3], squares);
        let gamma = g.upload(&[1, 128, 1, 1]);
        let scaled = g.binary(BinaryOp::Mul, gamma, mean);
        let wide_scaled = g.expand(scaled, &[64, 128, 8, 8]);
        let normalised = g.binary(BinaryOp::Sub, x, wide_scaled);
        let twice = g.binary(BinaryOp::Add, scaled, mean);
        let mat = plan(g, &[var, normalised, twice]);
        assert!(
            mat[sum] && !mat[mean],
            "the mean is read where it is needed"
        );
        assert!(mat[scaled], "two buffers' product keeps its buffer");
    }

    #[test]
    fn a_transposed_operand_gets_a_buffer_below_its_reshapes() {
        let mut g = Builder::new();
        let x = g.upload(&[6, 4]);
        let w = g.upload(&[5, 4]);
        let wt = g.transpose(w);
        let y = g.matmul(x, wt);
        // A reshape of an element-wise value: the buffer goes below it.
        let v = g.upload(&[10, 3]);
        let e = g.unary(UnaryOp::Exp, v);
        let r = g.reshape(e, &[5, 6]);
        let z = g.matmul(y, r);
        let mat = plan(g, &[z]);
        assert!(mat[wt], "the transposed weight is copied once");
        assert!(mat[e] && !mat[r], "the buffer goes below the reshape");
    }

    #[test]
    fn large_broadcast_values_get_a_buffer_and_small_ones_do_not() {
        let mut g = Builder::new();
        let big = g.upload(&[1, 1 << 16]);
        let big_e = g.unary(UnaryOp::Exp, big);
        let big_b = g.expand(big_e, &[4, 1 << 16]);
        let other = g.upload(&[4, 1 << 16]);
        let r1 = g.binary(BinaryOp::Add, big_b, other);
        let small = g.upload(&[1, 16]);
        let small_e = g.unary(UnaryOp::Exp, small);
        let small_b = g.expand(small_e, &[4, 16]);
        let other2 = g.upload(&[4, 16]);
        let r2 = g.binary(BinaryOp::Add, small_b, other2);
        let mat = plan(g, &[r1, r2]);
        assert!(mat[big_e]);
        assert!(!mat[small_e]);
    }

    /// A per-channel value computed from two buffers, broadcast over a big
    /// image, gets a buffer; one that reads a single buffer, or whose
    /// reader is small, stays inlined.
    #[test]
    fn small_broadcast_values_that_read_several_values_get_a_buffer_under_big_readers() {
        let mut g = Builder::new();
        let image = g.upload(&[16, 16, 64, 64]);
        let (mean, scale) = (g.upload(&[1, 16, 1, 1]), g.upload(&[1, 16, 1, 1]));
        let shift = g.binary(BinaryOp::Mul, mean, scale);
        let shift_b = g.expand(shift, &[16, 16, 64, 64]);
        let big = g.binary(BinaryOp::Add, image, shift_b);
        let neg = g.unary(UnaryOp::Neg, mean);
        let neg_b = g.expand(neg, &[16, 16, 64, 64]);
        let one_load = g.binary(BinaryOp::Add, image, neg_b);
        let small_image = g.upload(&[2, 16, 4, 4]);
        let shift2 = g.binary(BinaryOp::Mul, mean, scale);
        let shift2_b = g.expand(shift2, &[2, 16, 4, 4]);
        let small = g.binary(BinaryOp::Add, small_image, shift2_b);
        let mat = plan(g, &[big, one_load, small]);
        assert!(mat[shift], "two loads per pixel of a 4 M-element image");
        assert!(!mat[neg], "one load: as cheap inlined");
        assert!(!mat[shift2], "a small reader");
    }

    /// `e * e` names `e` twice but computes it once per element; and a
    /// long reduction split into partials reads its input once, in its
    /// partials: neither gets a buffer (batch norm's variance, the mean of
    /// squared deviations over 147456 pixels a channel, is one pass).
    #[test]
    fn squares_and_split_reductions_keep_their_inputs_inlined() {
        use crate::graph::ReduceOp;
        let mut g = Builder::new();
        let x = g.upload(&[4, 100_000]);
        let e = g.unary(UnaryOp::Exp, x);
        let square = g.binary(BinaryOp::Mul, e, e);
        let r = g.reduce(ReduceOp::Sum, &[1], square);
        let s = g.finish(&[r]);
        let (graph, _, fusion) = super::super::decide(&super::super::testing::lavapipe(), &s)
            .unwrap_or_else(|err| panic!("{err}")); // ok: a test; a panic is its failure
        assert!(graph.split_reductions.contains_key(&r));
        assert!(!fusion.mat[e] && !fusion.mat[square]);
    }
}
