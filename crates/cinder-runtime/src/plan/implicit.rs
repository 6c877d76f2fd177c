//! Pass 4: implicit GEMM. On a CPU adapter, a product whose A is a
//! channels-last unfold (`Op::ConvRows`) that nothing else reads fetches A's
//! windows from the unfold's image: the unfold, KH * KW times the image, is
//! never materialized.

use std::collections::HashSet;

use super::product::matmul_kernel;
use super::{Graph, Target, Uses};
use crate::graph::Op;

/// The implicit products; their A loses its buffer. A product qualifies
/// when the texture kernel takes it (an implicit A always pays for its
/// textures, see `kernels::matmul`).
pub(crate) fn products(
    graph: &Graph,
    uses: &Uses,
    mat: &mut [bool],
    target: &Target,
) -> HashSet<usize> {
    let mut implicit = HashSet::new();
    if !target.texture_matmul {
        return implicit;
    }
    let entries = &graph.entries;
    for m in graph.ordinary() {
        let Op::Matmul { a, .. } = entries[m].op else {
            continue;
        };
        // (A split product's partial repeats its operands.)
        let partial = graph.split_products.get(&m).map(|s| s.partial);
        let only_reader = uses.consumers[a]
            .iter()
            .all(|&c| c == m || Some(c) == partial);
        if !matches!(entries[a].op, Op::ConvRows(..)) || uses.is_root[a] || !only_reader {
            continue;
        }
        if matmul_kernel(target, entries, m, graph.parts_of(m), [false; 2], true)
            .is_some_and(|(_, _, k)| k.packs.is_some())
        {
            implicit.insert(m);
            mat[a] = false;
        }
    }
    implicit
}

#[cfg(test)]
mod tests {
    use super::super::testing::{conv_rows_product, gpu, lavapipe};
    use super::super::{materialize, Graph, Uses};

    #[test]
    fn a_convolution_fetches_its_windows_on_a_cpu_adapter_only() {
        for (target, expect) in [(lavapipe(), true), (gpu(), false)] {
            let (g, rows, product) = conv_rows_product(8);
            let s = g.finish(&[product]);
            let graph = Graph::new(&s);
            let uses = Uses::count(&graph);
            let mut mat = materialize::initial(&graph, &uses);
            let implicit = super::products(&graph, &uses, &mut mat, &target);
            assert_eq!(implicit.contains(&product), expect);
            // Element-wise and read once: never a buffer of its own.
            assert!(!mat[rows]);
        }
    }

    #[test]
    fn channels_off_whole_texels_keep_the_materialized_unfold() {
        // 6 channels: a texel would straddle two taps.
        let (g, _, product) = conv_rows_product(6);
        let s = g.finish(&[product]);
        let graph = Graph::new(&s);
        let uses = Uses::count(&graph);
        let mut mat = materialize::initial(&graph, &uses);
        assert!(super::products(&graph, &uses, &mut mat, &lavapipe()).is_empty());
    }
}
