//! Pass 0: products (and concatenations) too big for one storage binding. A matmul kernel binds
//! A, B and C whole; where one of them holds more elements than a binding
//! does, the product is rewritten as tiles that fit: blocks of A and B
//! (copied out by element-wise kernels, which read big tensors in chunks),
//! products of the blocks, sums over K's blocks, and the result assembled
//! from the blocks by padding views (an element-wise kernel too). Batched
//! products are cut along the batch first. Plans without such products are
//! left untouched.

use super::{Graph, Target};
use crate::canon::Entry;
use crate::graph::{contiguous_strides, numel, BinaryOp, DType, Op, ViewSpec};

/// Rewrites every product whose A, B or C exceeds `target.chunk` elements,
/// and every concatenation whose output or an input does (its copy kernel
/// binds them whole): as a sum of padded views, an element-wise kernel
/// that reads and writes in binding-sized ranges.
pub(crate) fn products(graph: &mut Graph, target: &Target) {
    let limit = target.chunk;
    let too_big = |entries: &[Entry], i: usize| -> bool {
        // An empty result needs no kernel at all (emission skips it).
        if numel(&entries[i].shape) == 0 {
            return false;
        }
        let bound = match &entries[i].op {
            Op::Matmul { a, b, .. } => vec![*a, *b],
            Op::Concat { inputs, .. } => inputs.clone(),
            _ => return false,
        };
        std::iter::once(i)
            .chain(bound)
            .any(|x| numel(&entries[x].shape) > limit)
    };
    if !(0..graph.entries.len()).any(|i| too_big(&graph.entries, i)) {
        return;
    }
    let mut out = Rewriter::default();
    let mut map = vec![usize::MAX; graph.entries.len()];
    for i in 0..graph.entries.len() {
        let e = &graph.entries[i];
        let op = e.op.map(|&c| map[c]);
        // The rewrite of a product or concatenation too big for one
        // binding; every one of them yields at least one entry, but should
        // one not, the op stays as it was.
        let rewritten = match &op {
            Op::Matmul {
                a,
                b,
                a_batched,
                b_batched,
            } if too_big(&graph.entries, i) => {
                let k = *out.entries[*a].shape.last().unwrap_or(&0);
                if k == 0 {
                    // A sum over nothing: zeros, read from nowhere.
                    let mask = vec![(0, 0); e.shape.len()];
                    Some(out.view(*a, &e.shape, vec![0; e.shape.len()], 0, Some(mask)))
                } else if *a_batched || *b_batched {
                    out.batched(*a, *b, [*a_batched, *b_batched], limit)
                } else {
                    out.tiled(*a, *b, limit)
                }
            }
            Op::Concat { axis, inputs } if too_big(&graph.entries, i) => {
                out.padded_sum(&e.shape, *axis, inputs)
            }
            _ => None,
        };
        map[i] = match rewritten {
            Some(entry) => {
                out.adopt(entry, graph.origin[i]);
                entry
            }
            None => out.push(&e.shape, e.dtype, op, graph.origin[i]),
        };
    }
    graph.entries = out.entries;
    graph.origin = out.origin;
    graph.synthetic_from = graph.entries.len();
    graph.renumber(&map);
}

/// Block sizes `(tm, tk, tn)` of an `m x k` by `k x n` product whose blocks
/// of A (`tm x tk`), B (`tk x tn`) and C (`tm x tn`) each hold at most
/// `limit` elements: the biggest dimension among those of an oversized
/// block is halved until none is.
pub(crate) fn tiles(m: usize, k: usize, n: usize, limit: usize) -> (usize, usize, usize) {
    let (mut tm, mut tk, mut tn) = (m, k, n);
    loop {
        let mut candidates = Vec::new();
        if tm * tk > limit {
            candidates.extend([tm, tk]);
        }
        if tk * tn > limit {
            candidates.extend([tk, tn]);
        }
        if tm * tn > limit {
            candidates.extend([tm, tn]);
        }
        let Some(&biggest) = candidates.iter().max() else {
            return (tm, tk, tn);
        };
        // Halving the biggest always shrinks an oversized block; ties go to
        // K first, which keeps C's blocks (and the assembly) few.
        if tk == biggest {
            tk = tk.div_ceil(2);
        } else if tm == biggest {
            tm = tm.div_ceil(2);
        } else {
            tn = tn.div_ceil(2);
        }
    }
}

/// The rewritten entry list, built in order.
#[derive(Default)]
struct Rewriter {
    entries: Vec<Entry>,
    origin: Vec<Option<usize>>,
}

impl Rewriter {
    fn push(
        &mut self,
        shape: &[usize],
        dtype: DType,
        op: Op<usize>,
        origin: Option<usize>,
    ) -> usize {
        self.entries.push(Entry {
            shape: shape.to_vec(),
            dtype,
            op,
        });
        self.origin.push(origin);
        self.entries.len() - 1
    }

    fn view(
        &mut self,
        of: usize,
        shape: &[usize],
        strides: Vec<i64>,
        offset: i64,
        mask: Option<Vec<(usize, usize)>>,
    ) -> usize {
        let dtype = self.entries[of].dtype;
        let spec = ViewSpec {
            strides,
            offset,
            mask,
        };
        self.push(shape, dtype, Op::View(spec, of), None)
    }

    /// Makes `entry`, a new entry that stands for a rewritten one, that
    /// entry (its place in the structure: a root, an output).
    fn adopt(&mut self, entry: usize, origin: Option<usize>) {
        debug_assert!(
            self.origin[entry].is_none(),
            "a rewrite returned an old entry"
        );
        self.origin[entry] = origin;
    }

    fn add(&mut self, sum: Option<usize>, term: usize) -> usize {
        match sum {
            None => term,
            Some(acc) => {
                let (shape, dtype) = (self.entries[term].shape.clone(), self.entries[term].dtype);
                self.push(&shape, dtype, Op::Binary(BinaryOp::Add, acc, term), None)
            }
        }
    }

    fn matmul(&mut self, a: usize, b: usize, shape: &[usize], batched: [bool; 2]) -> usize {
        let op = Op::Matmul {
            a,
            b,
            a_batched: batched[0],
            b_batched: batched[1],
        };
        self.push(shape, DType::F32, op, None)
    }

    /// `inputs` side by side along `axis` in `shape`: each padded with zeros
    /// to the full length, summed.
    fn padded_sum(&mut self, shape: &[usize], axis: usize, inputs: &[usize]) -> Option<usize> {
        let mut sum = None;
        let mut before = 0;
        for &input in inputs {
            let strides = contiguous_strides(&self.entries[input].shape);
            let len = self.entries[input].shape[axis];
            let mut mask: Vec<(usize, usize)> = shape.iter().map(|&n| (0, n)).collect();
            mask[axis] = (before, before + len);
            let offset = -(before as i64) * strides[axis];
            let placed = self.view(input, shape, strides, offset, Some(mask));
            sum = Some(self.add(sum, placed));
            before += len;
        }
        sum
    }

    /// `a @ b` for 2-D `a: [m, k]` and `b: [k, n]`, in blocks that fit.
    fn tiled(&mut self, a: usize, b: usize, limit: usize) -> Option<usize> {
        let (m, k) = (self.entries[a].shape[0], self.entries[a].shape[1]);
        let n = self.entries[b].shape[1];
        let (tm, tk, tn) = tiles(m, k, n, limit);
        let mut result = None;
        for r0 in (0..m).step_by(tm) {
            let rows = tm.min(m - r0);
            for c0 in (0..n).step_by(tn) {
                let cols = tn.min(n - c0);
                let mut block = None;
                for k0 in (0..k).step_by(tk) {
                    let depth = tk.min(k - k0);
                    let a_block = self.view(
                        a,
                        &[rows, depth],
                        vec![k as i64, 1],
                        (r0 * k + k0) as i64,
                        None,
                    );
                    let b_block = self.view(
                        b,
                        &[depth, cols],
                        vec![n as i64, 1],
                        (k0 * n + c0) as i64,
                        None,
                    );
                    let product = self.matmul(a_block, b_block, &[rows, cols], [false; 2]);
                    block = Some(self.add(block, product));
                }
                let Some(block) = block else { continue };
                // The block, zero outside its rows and columns of C.
                let placed = self.view(
                    block,
                    &[m, n],
                    vec![cols as i64, 1],
                    -((r0 * cols + c0) as i64),
                    Some(vec![(r0, r0 + rows), (c0, c0 + cols)]),
                );
                result = Some(self.add(result, placed));
            }
        }
        result
    }

    /// A batched product: groups of whole batches that fit, or each batch
    /// tiled on its own.
    fn batched(&mut self, a: usize, b: usize, batched: [bool; 2], limit: usize) -> Option<usize> {
        let (sa, sb) = (self.entries[a].shape.clone(), self.entries[b].shape.clone());
        let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
        let n = sb[sb.len() - 1];
        let batch = if batched[0] { sa[0] } else { sb[0] };
        let mut per_batch = m * n;
        if batched[0] {
            per_batch = per_batch.max(m * k);
        }
        if batched[1] {
            per_batch = per_batch.max(k * n);
        }
        let shared_fit = (batched[0] || m * k <= limit) && (batched[1] || k * n <= limit);
        let group = if shared_fit { limit / per_batch } else { 0 };
        let mut result = None;
        let mut b0 = 0;
        while b0 < batch {
            let count = group.clamp(1, batch - b0);
            let part = |rw: &mut Rewriter, x: usize, rows: usize, cols: usize, on: bool| {
                if !on {
                    return x;
                }
                let shape = if group == 0 {
                    vec![rows, cols]
                } else {
                    vec![count, rows, cols]
                };
                let strides = contiguous_strides(&shape);
                rw.view(x, &shape, strides, (b0 * rows * cols) as i64, None)
            };
            let a_part = part(self, a, m, k, batched[0]);
            let b_part = part(self, b, k, n, batched[1]);
            let (product, source_strides) = if group == 0 {
                // One batch is too big: tile it as a 2-D product.
                (self.tiled(a_part, b_part, limit)?, vec![0, n as i64, 1])
            } else {
                let product = self.matmul(a_part, b_part, &[count, m, n], batched);
                (product, contiguous_strides(&[count, m, n]))
            };
            let placed = self.view(
                product,
                &[batch, m, n],
                source_strides,
                if group == 0 {
                    0
                } else {
                    -((b0 * m * n) as i64)
                },
                Some(vec![(b0, b0 + count), (0, m), (0, n)]),
            );
            result = Some(self.add(result, placed));
            b0 += count;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gpu, Builder};
    use super::super::Graph;
    use super::tiles;
    use crate::graph::{numel, Op};

    #[test]
    fn tiles_fit() {
        for (m, k, n, limit) in [
            (6000, 6000, 6000, 1 << 25),
            (100, 1 << 20, 7, 4096),
            (3, 5, 1 << 22, 1000),
            (1, 1, 1, 64),
        ] {
            let (tm, tk, tn) = tiles(m, k, n, limit);
            assert!(tm * tk <= limit && tk * tn <= limit && tm * tn <= limit);
            assert!((1..=m).contains(&tm) && (1..=k).contains(&tk) && (1..=n).contains(&tn));
        }
        // 6000 x 6000 products on 128 MiB bindings: two row blocks, two K
        // blocks, C's columns whole.
        assert_eq!(tiles(6000, 6000, 6000, 1 << 25), (3000, 3000, 6000));
    }

    #[test]
    fn a_product_over_a_binding_becomes_blocks_that_fit() {
        let mut target = gpu();
        target.chunk = 4096;
        let mut g = Builder::new();
        let a = g.upload(&[100, 80]);
        let b = g.upload(&[80, 90]);
        let c = g.matmul(a, b);
        let s = g.finish(&[c]);
        let mut graph = Graph::new(&s);
        super::products(&mut graph, &target);
        let root = graph.roots[0];
        assert_eq!(graph.entries[root].shape, vec![100, 90]);
        assert_eq!(graph.origin[root], Some(c));
        let mut products = 0;
        for e in &graph.entries {
            if let Op::Matmul { a, b, .. } = e.op {
                products += 1;
                for x in [a, b] {
                    assert!(numel(&graph.entries[x].shape) <= 4096);
                }
                assert!(numel(&e.shape) <= 4096);
            }
        }
        assert!(products >= 4, "{products} products");
        // Uploads keep their place in the structure.
        assert_eq!(graph.origin[a], Some(a));
    }

    /// A convolution's unfolded input is B of its forward product and A of
    /// its weight gradient: both cut the same column blocks from it, which
    /// the second merge of equal values makes one entry each.
    #[test]
    fn blocks_two_products_cut_from_one_operand_are_built_once() {
        let mut target = gpu();
        target.chunk = 4096;
        let mut g = Builder::new();
        let x = g.upload(&[80, 200]);
        let cols = g.unary(crate::graph::UnaryOp::Exp, x);
        let w = g.upload(&[4, 80]);
        let dy = g.upload(&[200, 3]);
        let y = g.matmul(w, cols);
        let dw = g.matmul(cols, dy);
        let s = g.finish(&[y, dw]);
        let mut graph = Graph::new(&s);
        super::products(&mut graph, &target);
        let blocks_of = |graph: &Graph| {
            graph
                .entries
                .iter()
                .filter(|e| matches!(e.op, Op::View(_, of) if graph.entries[of].op == Op::Unary(crate::graph::UnaryOp::Exp, x)))
                .count()
        };
        let before = blocks_of(&graph);
        super::super::cse::merge(&mut graph);
        // Four column blocks of 50, cut twice, then once.
        assert_eq!((before, blocks_of(&graph)), (8, 4));
    }

    #[test]
    fn empty_products_over_a_binding_are_left_alone_or_zeros() {
        use super::super::testing::spec_of;
        use super::super::Resource;
        let mut target = gpu();
        target.chunk = 4096;
        for (m, k, n) in [(0, 100, 100), (100, 0, 100), (100, 100, 0)] {
            let mut g = Builder::new();
            let a = g.upload(&[m, k]);
            let b = g.upload(&[k, n]);
            let c = g.matmul(a, b);
            let spec = spec_of(g, &[c], &target);
            // The uploads keep their places, the root is the product's.
            assert!(spec.resources.contains(&Resource::Upload(a)));
            assert!(spec.resources.contains(&Resource::Upload(b)));
            assert!(spec.resources.contains(&Resource::Output(c)));
        }
    }
}
