//! Passes 0 and 6 (and a check in 8): the device's limits, met before any
//! shader is generated: tensors that no
//! kernel can index or no buffer can hold are errors naming the tensor, and
//! fused kernels that would bind more storage buffers than the device allows
//! are cut into kernels that do not.

use super::{Graph, Target};
use crate::codegen::chunk_count;
use crate::error::{Error, Result};
use crate::graph::{numel, Op};

/// Kernels index elements with 32-bit integers, and views compute source
/// offsets in `i32`.
pub(crate) const MAX_ELEMENTS: usize = i32::MAX as usize;

/// What produced entry `op`, for errors.
fn describe(op: &Op<usize>) -> &'static str {
    match op {
        Op::External => "a tensor",
        Op::Upload => "an uploaded tensor",
        Op::Const => "a filled tensor",
        Op::Iota { .. } => "an index tensor",
        Op::Rand { .. } => "a random tensor",
        Op::Unary(..) | Op::Binary(..) | Op::Where(..) | Op::Cast(..) => "an element-wise result",
        Op::View(..) => "a view",
        Op::Gather { .. } => "a gather's result",
        Op::Reduce { .. } => "a reduction's result",
        Op::Unfold(..) | Op::ConvRows(..) => "an unfold (im2col) of a convolution's input",
        Op::Fold(..) => "a fold (col2im)",
        Op::Matmul { .. } => "a matmul's result",
        Op::Concat { .. } => "a concatenation",
        Op::Custom(..) => "a custom op's result",
    }
}

fn too_large(graph: &Graph, i: usize, target: &Target, limit: String) -> Error {
    Error::TooLarge {
        tensor: describe(&graph.entries[i].op).to_string(),
        shape: graph.entries[i].shape.clone(),
        limit,
        adapter: target.adapter.clone(),
    }
}

/// Every entry can be indexed (at most [`MAX_ELEMENTS`] elements), and
/// every root fits a buffer (checked here, before products are rewritten,
/// so that the error names the op the user called).
pub(crate) fn check_sizes(graph: &Graph, target: &Target) -> Result<()> {
    check_elements(graph, target)?;
    let mut roots = vec![false; graph.entries.len()];
    for &r in &graph.roots {
        roots[r] = true;
    }
    check_buffers(graph, &roots, target)
}

fn check_elements(graph: &Graph, target: &Target) -> Result<()> {
    for (i, e) in graph.entries.iter().enumerate() {
        // (checked_mul: a shape's product may not even fit in usize)
        let elements = e
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if elements.is_none_or(|n| n > MAX_ELEMENTS) {
            return Err(too_large(
                graph,
                i,
                target,
                format!("kernels index at most {MAX_ELEMENTS} elements (32-bit indices)"),
            ));
        }
    }
    Ok(())
}

/// A custom kernel binds each input and its output whole: each must fit one
/// binding, and all of them the device's buffers per kernel.
pub(crate) fn check_custom(graph: &Graph, target: &Target) -> Result<()> {
    for (i, e) in graph.entries.iter().enumerate() {
        let Op::Custom(call, inputs) = &e.op else {
            continue;
        };
        for &x in inputs.iter().chain(std::iter::once(&i)) {
            let bytes = numel(&graph.entries[x].shape) * graph.entries[x].dtype.size();
            if bytes > target.chunk * 4 {
                return Err(too_large(
                    graph,
                    x,
                    target,
                    format!(
                        "custom op `{}` binds it whole, and one binding holds at most {} bytes (max_storage_buffer_binding_size)",
                        call.name,
                        target.chunk * 4
                    ),
                ));
            }
        }
        let bindings = inputs.len() + 1 + usize::from(!call.params.is_empty());
        if bindings > target.max_bindings {
            return Err(too_large(
                graph,
                i,
                target,
                format!(
                    "custom op `{}` binds {bindings} storage buffers, and this adapter allows {} per kernel",
                    call.name, target.max_bindings
                ),
            ));
        }
    }
    Ok(())
}

/// Every buffer the plan allocates fits the adapter's largest buffer.
pub(crate) fn check_buffers(graph: &Graph, mat: &[bool], target: &Target) -> Result<()> {
    for (i, e) in graph.entries.iter().enumerate() {
        if !mat[i] || matches!(e.op, Op::External) {
            continue;
        }
        let bytes = (numel(&e.shape) * e.dtype.size()) as u64;
        if bytes > target.max_buffer_size {
            return Err(too_large(
                graph,
                i,
                target,
                format!(
                    "its {bytes} bytes exceed the largest buffer this adapter allocates ({} bytes, max_buffer_size)",
                    target.max_buffer_size
                ),
            ));
        }
    }
    Ok(())
}

/// Ops a fused kernel computes inline where they are not materialized.
fn inline(op: &Op<usize>) -> bool {
    !matches!(
        op,
        Op::External
            | Op::Upload
            | Op::Reduce { .. }
            | Op::Matmul { .. }
            | Op::Concat { .. }
            | Op::Custom(..)
    )
}

/// What a kernel computing entry `x` inline binds: the materialized
/// entries it loads, and whether it reads a scalars buffer (constants,
/// seeds).
#[derive(Clone, Debug, Default)]
pub(crate) struct Reads {
    pub loads: Vec<usize>,
    pub scalars: bool,
}

impl Reads {
    fn add(&mut self, other: &Reads) {
        for &l in &other.loads {
            if !self.loads.contains(&l) {
                self.loads.push(l);
            }
        }
        self.scalars |= other.scalars;
    }
}

/// What computing `x`'s inputs inline reads, given `memo` for entries
/// below it; `skip` is a product an epilogue substitutes (no load).
fn reads_below(
    graph: &Graph,
    mat: &[bool],
    memo: &[Option<Reads>],
    x: usize,
    skip: Option<usize>,
) -> Reads {
    let mut reads = Reads::default();
    for c in graph.entries[x].op.inputs() {
        if Some(c) == skip {
            continue;
        }
        let op = &graph.entries[c].op;
        if mat[c] || !inline(op) {
            reads.add(&Reads {
                loads: vec![c],
                scalars: false,
            });
            continue;
        }
        match op {
            Op::Const | Op::Rand { .. } => reads.scalars = true,
            Op::Iota { .. } => {}
            _ => match &memo[c] {
                Some(r) => reads.add(r),
                None => reads.add(&reads_below(graph, mat, memo, c, skip)),
            },
        }
    }
    reads
}

/// What the kernel writing entry `end` (an epilogue's output, the product
/// `matmul` substituted) reads besides the product's operands.
pub(crate) fn epilogue_reads(graph: &Graph, mat: &[bool], end: usize, matmul: usize) -> Reads {
    let memo = vec![None; graph.entries.len()];
    reads_below(graph, mat, &memo, end, Some(matmul))
}

/// What one kernel computing all of `members` reads: every member is
/// computed in it (none is loaded), with what their inputs read inline.
pub(crate) fn group_reads(graph: &Graph, mat: &[bool], members: &[usize]) -> Reads {
    let mut inside = mat.to_vec();
    for &m in members {
        inside[m] = false;
    }
    let memo = vec![None; graph.entries.len()];
    let mut reads = Reads::default();
    for &m in members {
        reads.add(&reads_below(graph, &inside, &memo, m, None));
    }
    reads
}

/// Storage bindings of `reads` plus an output of `out` elements.
pub(crate) fn bindings(graph: &Graph, target: &Target, reads: &Reads, out: Option<usize>) -> usize {
    let chunks = |i: usize| chunk_count(numel(&graph.entries[i].shape), target.chunk);
    reads.loads.iter().map(|&i| chunks(i)).sum::<usize>()
        + out.map_or(0, chunks)
        + usize::from(reads.scalars)
}

/// No generated kernel binds more than `target.max_bindings` storage
/// buffers (a big tensor counts one per binding-sized range). Walking the
/// entries children first, an inline entry whose inputs, output and scalars
/// would exceed the limit has its biggest inline input materialized, until
/// it fits: a sum of a thousand terms becomes a few kernels of a few terms
/// each. Only inputs whose own kernel would fit are materialized; a kernel
/// that cannot be cut to fit is `Error::TooLarge`. Values computed inline
/// are held to the limit too (with one binding kept for whatever kernel
/// writes them), so that the cuts come where the expression grows.
pub(crate) fn split_fan_in(graph: &Graph, mat: &mut [bool], target: &Target) -> Result<()> {
    // A cut below an entry already walked changes what that entry reads:
    // walk again until a walk cuts nothing.
    while cut_once(graph, mat, target)? {}
    Ok(())
}

/// One walk of [`split_fan_in`]; whether it materialized anything.
fn cut_once(graph: &Graph, mat: &mut [bool], target: &Target) -> Result<bool> {
    let n = graph.entries.len();
    let mut memo: Vec<Option<Reads>> = vec![None; n];
    let mut cuts = false;
    for x in 0..n {
        let op = &graph.entries[x].op;
        // The reductions' inputs are their kernels' expressions too.
        let kernel_root = matches!(op, Op::Reduce { .. }) && mat[x];
        if !(inline(op) || kernel_root)
            || matches!(op, Op::Const | Op::Iota { .. } | Op::Rand { .. })
        {
            continue;
        }
        let chunks = |i: usize| chunk_count(numel(&graph.entries[i].shape), target.chunk);
        loop {
            let reads = reads_below(graph, mat, &memo, x, None);
            // A kernel's own output counts; a value computed inline keeps
            // room for the one binding of whatever kernel will write it (a
            // big broadcast a reduction consumes is never stored).
            let own = if mat[x] { chunks(x) } else { 1 };
            let needed = bindings(graph, target, &reads, None) + own;
            if needed <= target.max_bindings {
                memo[x] = Some(reads);
                break;
            }
            // The input whose reads cost the most bindings, among those
            // whose own kernel would fit.
            let weight = |c: usize| {
                memo[c]
                    .as_ref()
                    .map_or(0, |r| bindings(graph, target, r, None))
            };
            let cut = graph.entries[x]
                .op
                .inputs()
                .into_iter()
                .filter(|&c| {
                    !mat[c]
                        && inline(&graph.entries[c].op)
                        && !matches!(
                            graph.entries[c].op,
                            Op::Const | Op::Iota { .. } | Op::Rand { .. }
                        )
                        && weight(c) + chunks(c) <= target.max_bindings
                })
                .max_by_key(|&c| weight(c));
            match cut {
                Some(c) => {
                    mat[c] = true;
                    cuts = true;
                }
                // Inline, it may yet be cut above (or be read by a kernel
                // that fits); a kernel of its own must fit now.
                None if !mat[x] => {
                    memo[x] = Some(reads);
                    break;
                }
                None => {
                    return Err(too_large(
                        graph,
                        x,
                        target,
                        format!(
                            "computing it binds {needed} storage buffers (tensors over {} bytes take one binding per range), and this adapter allows {} per kernel (max_storage_buffers_per_shader_stage)",
                            target.chunk * 4,
                            target.max_bindings
                        ),
                    ));
                }
            }
        }
    }
    Ok(cuts)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gpu, Builder};
    use super::super::{materialize, Graph, Uses};
    use crate::graph::{BinaryOp, UnaryOp};
    use crate::Error;
    use std::collections::HashSet;

    fn fan_in(g: Builder, roots: &[usize], max: usize) -> crate::Result<(Graph, Vec<bool>)> {
        let mut target = gpu();
        target.max_bindings = max;
        let s = g.finish(roots);
        let graph = Graph::new(&s);
        let uses = Uses::count(&graph);
        let mut mat = materialize::initial(&graph, &uses);
        materialize::inputs(&graph, &uses, &HashSet::new(), &mut mat);
        super::split_fan_in(&graph, &mut mat, &target)?;
        Ok((graph, mat))
    }

    #[test]
    fn a_sum_of_many_terms_is_cut_into_kernels_within_the_limit() {
        let mut g = Builder::new();
        let terms: Vec<usize> = (0..100).map(|_| g.upload(&[5])).collect();
        let mut sum = terms[0];
        for &t in &terms[1..] {
            sum = g.binary(BinaryOp::Add, sum, t);
        }
        let (graph, mat) = fan_in(g, &[sum], 8).unwrap(); // ok: a test; a panic is its failure
        let target = {
            let mut t = gpu();
            t.max_bindings = 8;
            t
        };
        let kernels: Vec<usize> = (100..graph.entries.len()).filter(|&i| mat[i]).collect();
        for &k in &kernels {
            let reads = super::reads_below(&graph, &mat, &vec![None; graph.entries.len()], k, None);
            assert!(super::bindings(&graph, &target, &reads, Some(k)) <= 8);
        }
        // 100 terms, at most 7 new ones per kernel.
        assert!(
            kernels.len() >= 15 && kernels.len() <= 20,
            "{} kernels",
            kernels.len()
        );
    }

    #[test]
    fn an_input_too_big_for_any_kernel_is_an_error_naming_it() {
        let mut target = gpu();
        target.chunk = 64;
        let mut g = Builder::new();
        let x = g.upload(&[64 * 10]);
        let e = g.unary(UnaryOp::Exp, x);
        let s = g.finish(&[e]);
        let graph = Graph::new(&s);
        let uses = Uses::count(&graph);
        let mut mat = materialize::initial(&graph, &uses);
        target.max_bindings = 8;
        let err = super::split_fan_in(&graph, &mut mat, &target).unwrap_err();
        assert!(
            matches!(&err, Error::TooLarge { shape, .. } if shape == &[640]),
            "{err}"
        );
        assert!(err
            .to_string()
            .contains("max_storage_buffers_per_shader_stage"));
    }

    #[test]
    fn sizes_past_32_bit_indices_are_rejected() {
        let mut g = Builder::new();
        let a = g.upload(&[100_000, 100_000]);
        let s = g.finish(&[a]);
        let graph = Graph::new(&s);
        let err = super::check_sizes(&graph, &gpu()).unwrap_err().to_string();
        assert!(
            err.contains("[100000, 100000]") && err.contains("32-bit"),
            "{err}"
        );
    }
}
