//! Questions several passes ask about a product: what it reads, and which
//! kernel it takes.

use std::collections::HashSet;

use super::Target;
use crate::canon::Entry;
use crate::graph::Op;
use crate::kernels;

/// Product `m`'s operands and its kernel in `parts` parts along K;
/// `in_texture` says which operands their producer writes into a texture,
/// `implicit` that A, a channels-last unfold, is fetched from its image
/// (the image is then the first operand returned). `None` when `m` is not
/// a product, or `implicit` is asked of a product whose A is no unfold.
pub(crate) fn matmul_kernel(
    target: &Target,
    entries: &[Entry],
    m: usize,
    parts: usize,
    in_texture: [bool; 2],
    implicit: bool,
) -> Option<(usize, usize, kernels::MatmulKernel)> {
    let Op::Matmul {
        a,
        b,
        a_batched,
        b_batched,
    } = entries[m].op
    else {
        return None;
    };
    let conv = match &entries[a].op {
        Op::ConvRows(window, image) if implicit => Some((window, *image)),
        _ if implicit => return None,
        _ => None,
    };
    let kernel = kernels::matmul(
        kernels::Operand {
            shape: &entries[a].shape,
            batched: a_batched,
            in_texture: in_texture[0],
            conv: conv.map(|(window, image)| kernels::ConvOperand {
                window,
                channels: entries[image].shape[1],
                image_rows: entries[image].shape[0],
            }),
        },
        kernels::Operand {
            shape: &entries[b].shape,
            batched: b_batched,
            in_texture: in_texture[1],
            conv: None,
        },
        target.subgroup_matmul,
        target.texture_matmul.then_some(target.max_texture_side),
        parts,
    );
    Some((conv.map_or(a, |(_, image)| image), b, kernel))
}

/// What product `m` reads for A and B: its operands, except that an
/// implicit product reads its A's image. `[None; 2]` for other entries.
pub(crate) fn operand_sources(
    entries: &[Entry],
    implicit: &HashSet<usize>,
    m: usize,
) -> [Option<usize>; 2] {
    let Op::Matmul { a, b, .. } = entries[m].op else {
        return [None; 2];
    };
    let a = match entries[a].op {
        Op::ConvRows(_, image) if implicit.contains(&m) => image,
        _ => a,
    };
    [Some(a), Some(b)]
}
