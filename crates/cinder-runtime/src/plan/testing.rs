//! Small hand-built graphs and targets for the passes' unit tests: no GPU.

use super::compile;
use super::{Fusion, Graph, PlanSpec, Target, Uses};
use crate::canon::{Entry, Structure};
use crate::graph::{
    contiguous_strides, BinaryOp, DType, Op, ReduceOp, UnaryOp, ViewSpec, Window2d,
};

/// A discrete GPU with subgroups: buffer kernels everywhere.
pub(crate) fn gpu() -> Target {
    Target {
        adapter: "test GPU".into(),
        subgroup_matmul: true,
        texture_matmul: false,
        cpu: false,
        chunk: (1 << 27) / 4,
        max_bindings: 8,
        max_buffer_size: 1 << 28,
        max_workgroups_per_dimension: 65535,
        max_texture_side: 8192,
    }
}

/// lavapipe: a CPU adapter, so big products read textures.
pub(crate) fn lavapipe() -> Target {
    Target {
        adapter: "test CPU".into(),
        texture_matmul: true,
        cpu: true,
        max_texture_side: 16384,
        ..gpu()
    }
}

/// Builds a [`Structure`] entry by entry; every method returns the new
/// entry's index.
#[derive(Default)]
pub(crate) struct Builder {
    entries: Vec<Entry>,
}

impl Builder {
    pub(crate) fn new() -> Builder {
        Builder::default()
    }

    pub(crate) fn push(&mut self, shape: &[usize], dtype: DType, op: Op<usize>) -> usize {
        self.entries.push(Entry {
            shape: shape.to_vec(),
            dtype,
            op,
        });
        self.entries.len() - 1
    }

    fn shape(&self, i: usize) -> Vec<usize> {
        self.entries[i].shape.clone()
    }

    pub(crate) fn upload(&mut self, shape: &[usize]) -> usize {
        self.push(shape, DType::F32, Op::Upload)
    }

    pub(crate) fn unary(&mut self, op: UnaryOp, a: usize) -> usize {
        let (shape, dtype) = (self.shape(a), self.entries[a].dtype);
        self.push(&shape, dtype, Op::Unary(op, a))
    }

    pub(crate) fn binary(&mut self, op: BinaryOp, a: usize, b: usize) -> usize {
        let (shape, dtype) = (self.shape(a), self.entries[a].dtype);
        self.push(&shape, dtype, Op::Binary(op, a, b))
    }

    pub(crate) fn view(&mut self, a: usize, shape: &[usize], strides: Vec<i64>) -> usize {
        self.view_at(a, shape, strides, 0)
    }

    pub(crate) fn view_at(
        &mut self,
        a: usize,
        shape: &[usize],
        strides: Vec<i64>,
        offset: i64,
    ) -> usize {
        let dtype = self.entries[a].dtype;
        let spec = ViewSpec {
            strides,
            offset,
            mask: None,
        };
        self.push(shape, dtype, Op::View(spec, a))
    }

    /// A 2-D transpose.
    pub(crate) fn transpose(&mut self, a: usize) -> usize {
        let s = self.shape(a);
        self.view(a, &[s[1], s[0]], vec![1, s[1] as i64])
    }

    pub(crate) fn reshape(&mut self, a: usize, shape: &[usize]) -> usize {
        self.view(a, shape, contiguous_strides(shape))
    }

    /// Broadcasts size-1 dimensions to `shape`.
    pub(crate) fn expand(&mut self, a: usize, shape: &[usize]) -> usize {
        let from = self.shape(a);
        let cs = contiguous_strides(&from);
        let strides = (0..shape.len())
            .map(|d| if from[d] == 1 { 0 } else { cs[d] })
            .collect();
        self.view(a, shape, strides)
    }

    pub(crate) fn matmul(&mut self, a: usize, b: usize) -> usize {
        let (sa, sb) = (self.shape(a), self.shape(b));
        let shape = [sa[sa.len() - 2], sb[sb.len() - 1]];
        self.push(
            &shape,
            DType::F32,
            Op::Matmul {
                a,
                b,
                a_batched: false,
                b_batched: false,
            },
        )
    }

    pub(crate) fn reduce(&mut self, op: ReduceOp, axes: &[usize], input: usize) -> usize {
        let mut shape = self.shape(input);
        for &a in axes {
            shape[a] = 1;
        }
        let dtype = match op {
            ReduceOp::ArgMax | ReduceOp::ArgMin => DType::I32,
            _ => self.entries[input].dtype,
        };
        self.push(
            &shape,
            dtype,
            Op::Reduce {
                op,
                axes: axes.to_vec(),
                input,
            },
        )
    }

    pub(crate) fn sum_all(&mut self, input: usize) -> usize {
        let axes: Vec<usize> = (0..self.entries[input].shape.len()).collect();
        self.reduce(ReduceOp::Sum, &axes, input)
    }

    pub(crate) fn finish(self, roots: &[usize]) -> Structure {
        Structure {
            entries: self.entries,
            roots: roots.to_vec(),
            effects: Vec::new(),
        }
    }
}

/// A 3x3 convolution (padding 1) over 8 images of 16x16 pixels with
/// `channels` channels, stored channels-last: `(builder, rows, product)`,
/// where `rows` is the unfold the product reads as A.
pub(crate) fn conv_rows_product(channels: usize) -> (Builder, usize, usize) {
    let mut g = Builder::new();
    let (n, side, out) = (8, 16, 64);
    let image = g.upload(&[n * side * side, channels]);
    let window = Window2d {
        image: [side, side],
        out: [side, side],
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
        dilation: [1, 1],
    };
    let rows = g.push(
        &[n * side * side, 9 * channels],
        DType::F32,
        Op::ConvRows(window, image),
    );
    let weight = g.upload(&[9 * channels, out]);
    let product = g.matmul(rows, weight);
    (g, rows, product)
}

/// Runs passes 0 to 9 and hands their outcome to `f`.
pub(crate) fn fusion_of_graph<T>(
    g: Builder,
    roots: &[usize],
    target: &Target,
    f: impl FnOnce(&Graph, &Uses, &Fusion, &Target) -> T,
) -> T {
    let s = g.finish(roots);
    match super::decide(target, &s) {
        Ok((graph, uses, fusion)) => f(&graph, &uses, &fusion, target),
        Err(e) => panic!("planning failed: {e}"),
    }
}

/// Passes 0 to 9's outcome.
pub(crate) fn fusion_of(g: Builder, roots: &[usize], target: &Target) -> Fusion {
    fusion_of_graph(g, roots, target, |_, _, fusion, _| Fusion {
        mat: fusion.mat.clone(),
        implicit: fusion.implicit.clone(),
        epilogues: fusion.epilogues.clone(),
        residents: fusion.residents.clone(),
        groups: fusion.groups.clone(),
        group_of: fusion.group_of.clone(),
    })
}

/// The whole plan.
pub(crate) fn spec_of(g: Builder, roots: &[usize], target: &Target) -> PlanSpec {
    let s = g.finish(roots);
    match compile(target, &s) {
        Ok(spec) => spec,
        Err(e) => panic!("planning failed: {e}"),
    }
}
