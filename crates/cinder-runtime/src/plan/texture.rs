//! Pass 8: texture residency. On a CPU adapter big products read their
//! operands from rgba32float textures, packed from buffers by a kernel of
//! their own. A value whose only readers are such products, all reading it
//! as the same matrix, is instead computed by its own element-wise kernel
//! straight into the texture: a convolution's unfolded input feeds its
//! forward product and its weight gradient this way, and its output
//! gradient (transposed) the input and weight gradients: 3.6 M and 0.8 M
//! elements that a pack would copy.

use std::collections::{HashMap, HashSet};

use super::product::{matmul_kernel, operand_sources};
use super::{buffer_of, reshaped, Fusion, Graph, Target, Uses};
use crate::graph::{numel, DType, Op};
use crate::kernels;

/// A value computed straight into the operand texture of the products that
/// read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Resident {
    /// Columns of the matrix the products read it as.
    pub cols: usize,
    pub width: u32,
    pub height: u32,
    /// Its texture among the device's operand textures: 0 and 1 are the
    /// pack kernels' A and B, a plan's residents take 2 and up.
    pub tag: u8,
}

/// The residents, by entry. Whether a product takes the texture kernel
/// depends on which of its operands come free, so a value stays resident
/// only if all its readers do, decided to a fixed point.
pub(crate) fn residents(
    graph: &Graph,
    uses: &Uses,
    fusion: &Fusion,
    target: &Target,
) -> HashMap<usize, Resident> {
    let mut residents = HashMap::new();
    if !target.texture_matmul {
        return residents;
    }
    let entries = &graph.entries;
    let mat = &fusion.mat;
    let implicit = &fusion.implicit;
    let effect_buffers: Vec<usize> = graph
        .effect_reads()
        .into_iter()
        .filter_map(|e| buffer_of(entries, mat, e))
        .collect();
    let mut readers_of = HashMap::new();
    for j in graph.ordinary() {
        let e = &entries[j];
        if !mat[j]
            || uses.is_root[j]
            || e.dtype != DType::F32
            || matches!(
                e.op,
                Op::External
                    | Op::Upload
                    | Op::Reduce { .. }
                    | Op::Matmul { .. }
                    | Op::Concat { .. }
                    | Op::Custom(..)
            )
            || effect_buffers.contains(&j)
            // A fused matmul epilogue writes its entry through buffer stores.
            || fusion.epilogues.contains_key(&j)
        {
            continue;
        }
        let Some(readers) = matmul_readers(graph, uses, mat, implicit, j) else {
            continue;
        };
        // All must read it as the same matrix.
        let cols: Vec<usize> = readers.iter().map(|&(_, _, cols)| cols).collect();
        if !cols.is_empty() && cols.iter().all(|&x| x == cols[0]) {
            let readers: Vec<(usize, usize)> =
                readers.iter().map(|&(m, slot, _)| (m, slot)).collect();
            readers_of.insert(j, (cols[0], readers));
        }
    }
    // Tags are bytes: past that many, values are packed as usual.
    let mut candidates: Vec<usize> = readers_of.keys().copied().collect();
    candidates.sort_unstable();
    for j in candidates.into_iter().skip(usize::from(u8::MAX - 1)) {
        readers_of.remove(&j);
    }
    let kernel = |m: usize, resident: &dyn Fn(usize) -> bool| {
        let free = operand_sources(entries, implicit, m).map(|x| {
            x.and_then(|x| buffer_of(entries, mat, x))
                .is_some_and(resident)
        });
        matmul_kernel(
            target,
            entries,
            m,
            graph.parts_of(m),
            free,
            implicit.contains(&m),
        )
        .map(|(_, _, k)| k)
    };
    loop {
        let dropped: Vec<usize> = readers_of
            .iter()
            .filter(|(_, (_, readers))| {
                readers.iter().any(|&(m, _)| {
                    kernel(m, &|x| readers_of.contains_key(&x)).is_none_or(|k| k.packs.is_none())
                })
            })
            .map(|(&j, _)| j)
            .collect();
        if dropped.is_empty() {
            break;
        }
        for j in dropped {
            readers_of.remove(&j);
        }
    }
    let mut ordered: Vec<usize> = readers_of.keys().copied().collect();
    ordered.sort_unstable();
    for (tag, j) in (2..=u8::MAX).zip(ordered) {
        let (cols, readers) = &readers_of[&j];
        // The texture is as tall as its tallest use (B pads K to whole texels).
        let layouts: Vec<kernels::OperandPack> = readers
            .iter()
            .filter_map(|&(m, slot)| {
                kernel(m, &|x| readers_of.contains_key(&x))
                    .and_then(|k| k.packs)
                    .map(|packs| packs[slot])
            })
            .collect();
        let Some(tallest) = layouts.iter().max_by_key(|l| l.height) else {
            continue;
        };
        residents.insert(
            j,
            Resident {
                cols: *cols,
                width: tallest.width(),
                height: tallest.height,
                tag,
            },
        );
    }
    residents
}

/// The 2-D products that read entry `j`, directly or through reshapes that
/// are not materialized, each with the operand slot (0 for A, 1 for B) and
/// the columns of the matrix it reads `j` as (an implicit product reads its
/// A's image, `[N * H * W, C]`); `None` when anything else reads it.
fn matmul_readers(
    graph: &Graph,
    uses: &Uses,
    mat: &[bool],
    implicit: &HashSet<usize>,
    j: usize,
) -> Option<Vec<(usize, usize, usize)>> {
    let entries = &graph.entries;
    let synthetic_from = graph.synthetic_from;
    let mut readers = Vec::new();
    let mut stack = vec![j];
    while let Some(x) = stack.pop() {
        for &c in &uses.consumers[x] {
            match entries[c].op {
                // A split product's partial repeats its original's operands.
                Op::Matmul { .. } if c >= synthetic_from => {}
                // A view that drops elements (a prefix of rows) would leave
                // the value's other rows where B's padding must be zero.
                Op::Matmul { .. } if numel(&entries[x].shape) != numel(&entries[j].shape) => {
                    return None
                }
                Op::Matmul {
                    a,
                    b,
                    a_batched: false,
                    b_batched: false,
                } if mat[c] => {
                    let cols = *entries[x].shape.last()?;
                    if a == x {
                        readers.push((c, 0, cols));
                    }
                    if b == x {
                        readers.push((c, 1, cols));
                    }
                }
                // The A of implicit products: they fetch from `x` itself
                // (unless the rows are also computed, for another reader).
                Op::ConvRows(..) if c < synthetic_from && !mat[c] => {
                    let products: Vec<usize> = uses.consumers[c]
                        .iter()
                        .copied()
                        .filter(|m| implicit.contains(m))
                        .collect();
                    if products.is_empty() {
                        return None;
                    }
                    readers.extend(products.into_iter().map(|m| (m, 0, entries[x].shape[1])));
                }
                _ if c < synthetic_from && !mat[c] && reshaped(&entries[c]) == Some(x) => {
                    stack.push(c)
                }
                _ => return None,
            }
        }
    }
    Some(readers)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{fusion_of, gpu, lavapipe, Builder};
    use crate::graph::UnaryOp;

    /// `exp(x)`, read as A by two big products.
    fn shared_operand(rows: usize, k: usize) -> (Builder, usize, usize, usize) {
        let mut g = Builder::new();
        let x = g.upload(&[rows, k]);
        let a = g.unary(UnaryOp::Exp, x);
        let w = g.upload(&[k, 256]);
        let p = g.matmul(a, w);
        let w2 = g.upload(&[k, 320]);
        let q = g.matmul(a, w2);
        (g, a, p, q)
    }

    #[test]
    fn a_value_only_texture_products_read_is_computed_into_their_texture() {
        let (g, a, p, q) = shared_operand(1024, 512);
        let fusion = fusion_of(g, &[p, q], &lavapipe());
        let r = fusion.residents[&a];
        assert_eq!(r.cols, 512);
        assert!(r.tag >= 2);
        // 512 columns are 128 texels; a side is never a power of two.
        assert_eq!(r.width, 129);
    }

    #[test]
    fn no_residents_on_a_gpu_or_when_anything_else_reads_the_value() {
        let (g, _, p, q) = shared_operand(1024, 512);
        assert!(fusion_of(g, &[p, q], &gpu()).residents.is_empty());
        // Also returned: a buffer must hold it.
        let (g, a, p, q) = shared_operand(1024, 512);
        let fusion = fusion_of(g, &[p, q, a], &lavapipe());
        assert!(!fusion.residents.contains_key(&a));
    }
}
