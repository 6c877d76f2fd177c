//! Compiles a canonical graph into a plan (kernels, pipelines, a buffer plan by
//! liveness) and replays it: one command buffer, one submit.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::canon::{canonicalize, Bindings, Canon, CanonEffect, Effect, Entry, Kind};
use crate::codegen::{self, Generated, ELEMENTWISE_WG};
use crate::device::{lock, BindResource, Counters, Device, OperandTexture, PipelineEntry};
use crate::error::{Error, Result};
use crate::graph::ReduceOp;
use crate::graph::{numel, Node};
use crate::kernels;
use crate::pool::{padded_size, BufferKind, Storage};

/// Where a binding's buffer comes from at replay time.
#[derive(Clone, Debug)]
enum Resource {
    /// A realized tensor's buffer.
    External(usize),
    /// Host data written into a fresh buffer, which the node then keeps.
    Upload(usize),
    /// A requested result; its node keeps the buffer.
    Output(usize),
    /// An intermediate, shared by values whose lifetimes do not overlap.
    Slot(u64),
}

enum ScalarSource {
    Seeds(Vec<usize>),
    /// A matmul's shape words, then its epilogue's constants and seeds.
    MatmulEpilogue {
        dims: Vec<u32>,
        seeds: Vec<usize>,
    },
    /// Fixed words: a matmul's shape.
    Words(Vec<u32>),
    Hyper {
        effect: usize,
        n: u32,
    },
}

/// A binding: a resource and the byte range of it that one binding covers.
#[derive(Clone, Copy)]
struct Binding {
    resource: usize,
    offset: u64,
    size: u64,
}

struct Step {
    /// What the kernel computes, for `CINDER_PROFILE` output.
    label: String,
    pipeline: Arc<PipelineEntry>,
    /// Bound first (a texture matmul's operands, a pack kernel's target).
    textures: Vec<Arc<OperandTexture>>,
    bindings: Vec<Binding>,
    scalars: Option<(Storage, ScalarSource)>,
    /// Bound after the scalars (a fused matmul epilogue's inputs).
    extra_bindings: Vec<Binding>,
    workgroups: (u32, u32, u32),
}

impl Step {
    /// Binds this step's resources (its textures, its bindings, then its
    /// scalars, then a fused epilogue's inputs: the binding order its kernel
    /// declares) and records its dispatch.
    fn dispatch(&self, device: &Device, storages: &[Storage], pass: &mut wgpu::ComputePass<'_>) {
        let range = |b: &Binding| {
            let s = &storages[b.resource];
            BindResource::Buffer {
                id: s.id(),
                offset: b.offset,
                size: b.size,
                buffer: s.buffer(),
            }
        };
        let mut resources: Vec<BindResource<'_>> = self
            .textures
            .iter()
            .map(|t| BindResource::Texture(t))
            .collect();
        resources.extend(self.bindings.iter().map(range));
        if let Some((s, _)) = &self.scalars {
            resources.push(BindResource::Buffer {
                id: s.id(),
                offset: 0,
                size: s.size_bytes(),
                buffer: s.buffer(),
            });
        }
        resources.extend(self.extra_bindings.iter().map(range));
        let bg = device.bind_group(&self.pipeline, &resources);
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, Some(bg.as_ref()), &[]);
        let (x, y, z) = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

pub(crate) struct Plan {
    steps: Vec<Step>,
    resources: Vec<Resource>,
    /// Resource holding each root, in root order.
    root_resources: Vec<usize>,
    /// Externals written in place by effects.
    written: Vec<usize>,
    /// Its matmuls over operand textures and its pack steps (for [`crate::Stats`]).
    texture_products: u64,
    operand_packs: u64,
    /// The buffers this plan used last time, asked for again so that the
    /// bind-group cache hits.
    last_ids: Mutex<Vec<Option<u64>>>,
}

/// Workgroup counts covering `items` threads of `wg` each, folded into two
/// dimensions when one would exceed the adapter's per-dimension limit.
pub(crate) fn grid(device: &Device, items: u64, wg: u32) -> (u32, u32, u32) {
    let groups = items.div_ceil(wg as u64).max(1);
    let max = device
        .inner
        .limits
        .max_compute_workgroups_per_dimension
        .max(1) as u64;
    if groups <= max {
        (groups as u32, 1, 1)
    } else {
        let y = groups.div_ceil(max);
        let x = groups.div_ceil(y);
        (x as u32, y as u32, 1)
    }
}

/// Matmul entry `m`'s operands and its kernel in `parts` parts along K;
/// `in_texture` says which operands their producer can write into a texture,
/// `implicit` that A, a channels-last unfold, is fetched from its image (the
/// image is then the first operand returned).
fn matmul_kernel(
    device: &Device,
    entries: &[Entry],
    m: usize,
    parts: usize,
    in_texture: [bool; 2],
    implicit: bool,
) -> Option<(usize, usize, kernels::MatmulKernel)> {
    let Kind::Matmul {
        a,
        b,
        a_batched,
        b_batched,
    } = entries[m].kind
    else {
        return None;
    };
    let conv = match &entries[a].kind {
        Kind::ConvRows(window, image) if implicit => Some((window, *image)),
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
        device.inner.subgroup_matmul,
        // A pack kernel dispatches one workgroup per 8 texture rows and a
        // texture side must also fit the workgroup limit.
        device.inner.texture_matmul.then_some(
            device
                .inner
                .limits
                .max_texture_dimension_2d
                .min(device.inner.limits.max_compute_workgroups_per_dimension),
        ),
        parts,
    );
    Some((conv.map_or(a, |(_, image)| image), b, kernel))
}

/// Whether entry `e` reads `input` (of shape `shape`) only at its own
/// element's position, up to a one-to-one reordering: the links a matmul
/// epilogue may follow.
fn index_preserving(e: &Entry, input: usize, shape: &[usize]) -> bool {
    let once = |xs: &[usize]| xs.iter().filter(|&&x| x == input).count() == 1;
    e.dtype == crate::graph::DType::F32
        && match &e.kind {
            Kind::Unary(_, a) => *a == input,
            Kind::Binary(_, x, y) => e.shape == shape && once(&[*x, *y]),
            Kind::Where(c, x, y) => e.shape == shape && once(&[*c, *x, *y]),
            Kind::View(spec, a) => {
                *a == input
                    && numel(&e.shape) == numel(shape)
                    && codegen::is_permutation_view(spec, &e.shape)
            }
            _ => false,
        }
}

/// The chain of consumers from `start` up to the first materialized entry,
/// when every link is its predecessor's only consumer, reads it at its own
/// element (`index_preserving`) and, short of the end, is used once: then
/// each element of `start` is computed exactly once, in the end's kernel.
/// The chain excludes `start` and ends with the materialized entry.
fn one_to_one_chain(
    entries: &[Entry],
    consumers: &[Vec<usize>],
    uses: &[usize],
    mat: &[bool],
    synthetic_from: usize,
    start: usize,
) -> Option<Vec<usize>> {
    let mut chain = Vec::new();
    let mut cur = start;
    loop {
        let [next] = consumers[cur][..] else {
            return None;
        };
        if next >= synthetic_from || !index_preserving(&entries[next], cur, &entries[cur].shape) {
            return None;
        }
        chain.push(next);
        if mat[next] {
            return Some(chain);
        }
        if uses[next] != 1 {
            return None;
        }
        cur = next;
    }
}

/// What matmul `m` reads for A and B: its operands, except that an
/// implicit product reads its A's image.
fn operand_sources(
    entries: &[Entry],
    implicit: &std::collections::HashSet<usize>,
    m: usize,
) -> [Option<usize>; 2] {
    let Kind::Matmul { a, b, .. } = entries[m].kind else {
        return [None; 2];
    };
    let a = match entries[a].kind {
        Kind::ConvRows(_, image) if implicit.contains(&m) => image,
        _ => a,
    };
    [Some(a), Some(b)]
}

/// A value computed straight into the operand texture of the matmuls that
/// read it (see [`texture_residents`]).
#[derive(Clone, Copy, Debug)]
struct Resident {
    /// Columns of the matrix the matmuls read it as.
    cols: usize,
    width: u32,
    height: u32,
    /// Its texture among the device's operand textures: 0 and 1 are the
    /// pack kernels' A and B, a plan's residents take 2 and up.
    tag: u8,
}

/// The 2-D matmuls that read entry `j`, directly or through reshapes that
/// are not materialized, each with the operand slot (0 for A, 1 for B) and
/// the columns of the matrix it reads `j` as (an `implicit` product reads
/// its A's image, `[N * H * W, C]`); `None` when anything else reads it.
fn matmul_readers(
    entries: &[Entry],
    consumers: &[Vec<usize>],
    mat: &[bool],
    synthetic_from: usize,
    implicit: &std::collections::HashSet<usize>,
    j: usize,
) -> Option<Vec<(usize, usize, usize)>> {
    let mut readers = Vec::new();
    let mut stack = vec![j];
    while let Some(x) = stack.pop() {
        for &c in &consumers[x] {
            match entries[c].kind {
                // A split product's partial repeats its original's operands.
                Kind::Matmul { .. } if c >= synthetic_from => {}
                // A view that drops elements (a prefix of rows) would leave
                // the value's other rows where B's padding must be zero.
                Kind::Matmul { .. } if numel(&entries[x].shape) != numel(&entries[j].shape) => {
                    return None
                }
                Kind::Matmul {
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
                Kind::ConvRows(..) if c < synthetic_from && !mat[c] => {
                    let products: Vec<usize> = consumers[c]
                        .iter()
                        .copied()
                        .filter(|m| implicit.contains(m))
                        .collect();
                    if products.is_empty() {
                        return None;
                    }
                    readers.extend(products.into_iter().map(|m| (m, 0, entries[x].shape[1])));
                }
                _ if c < synthetic_from
                    && !mat[c]
                    && is_contiguous_view(&entries[c].kind, &entries[c].shape) == Some(x) =>
                {
                    stack.push(c)
                }
                _ => return None,
            }
        }
    }
    Some(readers)
}

/// Operand textures a plan can skip packing: a value whose only readers are
/// matmuls taking the texture kernel, all reading it as the same matrix, is
/// computed by its own (element-wise) kernel straight into a texture. A
/// convolution's unfolded input feeds its forward product and its weight
/// gradient this way, and its output gradient (transposed) the input and
/// weight gradients: 3.6 M and 0.8 M elements that a pack would copy.
/// `parts` gives each matmul's split-K parts; `buffer_of` finds the
/// materialized entry under an operand's reshapes.
#[allow(clippy::too_many_arguments)]
fn texture_residents(
    device: &Device,
    entries: &[Entry],
    consumers: &[Vec<usize>],
    mat: &[bool],
    is_root: &[bool],
    synthetic_from: usize,
    parts: &dyn Fn(usize) -> usize,
    buffer_of: &dyn Fn(usize) -> Option<usize>,
    effect_reads: &[usize],
    epilogue_outputs: &dyn Fn(usize) -> bool,
    implicit: &std::collections::HashSet<usize>,
) -> std::collections::HashMap<usize, Resident> {
    let mut residents = std::collections::HashMap::new();
    if !device.inner.texture_matmul {
        return residents;
    }
    let effect_buffers: Vec<usize> = effect_reads.iter().filter_map(|&e| buffer_of(e)).collect();
    let mut readers_of = std::collections::HashMap::new();
    for j in 0..synthetic_from {
        let e = &entries[j];
        if !mat[j]
            || is_root[j]
            || e.dtype != crate::graph::DType::F32
            || matches!(
                e.kind,
                Kind::External | Kind::Upload | Kind::Reduce { .. } | Kind::Matmul { .. }
            )
            || effect_buffers.contains(&j)
            // A fused matmul epilogue writes its entry through buffer stores.
            || epilogue_outputs(j)
        {
            continue;
        }
        let Some(readers) = matmul_readers(entries, consumers, mat, synthetic_from, implicit, j)
        else {
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
    // Whether a product takes the texture kernel depends on which of its
    // operands come free; a value stays resident only if all its readers do.
    let kernel = |m: usize, resident: &dyn Fn(usize) -> bool| {
        let free = operand_sources(entries, implicit, m)
            .map(|x| x.and_then(buffer_of).is_some_and(resident));
        matmul_kernel(device, entries, m, parts(m), free, implicit.contains(&m)).map(|(_, _, k)| k)
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

/// Threads per workgroup of a reduction over `span` elements in `parts`.
fn reduce_wg(span: usize, parts: usize) -> u32 {
    if codegen::serial_reduce(span, parts) {
        ELEMENTWISE_WG
    } else {
        codegen::REDUCE_WG
    }
}

fn is_contiguous_view(kind: &Kind, shape: &[usize]) -> Option<usize> {
    match kind {
        Kind::View(spec, child) if codegen::is_reshape(spec, shape) => Some(*child),
        _ => None,
    }
}

/// Elements per storage binding: the adapter's limit, rounded down to keep
/// every range offset 256-byte aligned.
pub(crate) fn binding_chunk(device: &Device) -> usize {
    let limit = device.inner.limits.max_storage_buffer_binding_size;
    let align = (device.inner.limits.min_storage_buffer_offset_alignment as u64).max(4);
    ((limit / align * align) / 4).max(64) as usize
}

/// Broadcast values at least this large get a buffer of their own (see
/// `compile`).
const BROADCAST_MATERIALIZE_MIN: usize = 1 << 16;

/// Elements one reduce workgroup handles at most before the reduction is
/// split into partials (see `codegen::reduce`).
const REDUCE_SPAN: usize = 1 << 16;

fn compile(device: &Device, canon: &Canon) -> Result<Plan> {
    let chunk = binding_chunk(device);
    // Large reductions (not arg-reductions) become two: partials over bounded
    // spans into a scratch tensor, then a reduction of the partials.
    let mut entries: Vec<Entry> = canon.entries.clone();
    let mut split: std::collections::HashMap<usize, (usize, usize, usize)> =
        std::collections::HashMap::new();
    for i in 0..canon.entries.len() {
        if let Kind::Reduce { op, axes, input } = &canon.entries[i].kind {
            let span: usize = axes
                .iter()
                .map(|&a| canon.entries[*input].shape[a])
                .product();
            let arg = matches!(
                op,
                crate::graph::ReduceOp::ArgMax | crate::graph::ReduceOp::ArgMin
            );
            if span > REDUCE_SPAN && !arg {
                let parts = span.div_ceil(REDUCE_SPAN);
                let outputs = numel(&canon.entries[i].shape);
                let dtype = canon.entries[i].dtype;
                let partial = entries.len();
                entries.push(Entry {
                    shape: vec![outputs, parts],
                    dtype,
                    kind: Kind::Reduce {
                        op: *op,
                        axes: axes.clone(),
                        input: *input,
                    },
                });
                let combine = entries.len();
                entries.push(Entry {
                    shape: vec![outputs, 1],
                    dtype,
                    kind: Kind::Reduce {
                        op: *op,
                        axes: vec![1],
                        input: partial,
                    },
                });
                split.insert(i, (partial, combine, parts));
            }
        }
    }
    // Long-K products with few output blocks become split-K: partial
    // products, one per part of K, then their sum.
    let mut split_matmuls: std::collections::HashMap<usize, (usize, usize, usize)> =
        std::collections::HashMap::new();
    for i in 0..canon.entries.len() {
        if let Kind::Matmul {
            a,
            b,
            a_batched,
            b_batched,
        } = canon.entries[i].kind
        {
            let (sa, sb) = (&canon.entries[a].shape, &canon.entries[b].shape);
            let (m, k, n) = (sa[sa.len() - 2], sa[sa.len() - 1], sb[sb.len() - 1]);
            let batch = if a_batched || b_batched {
                canon.entries[i].shape[0]
            } else {
                1
            };
            let parts = kernels::split_k(m, n, k, batch, device.inner.subgroup_matmul);
            if parts > 1 {
                let partial = entries.len();
                entries.push(Entry {
                    shape: vec![parts, m * n],
                    dtype: canon.entries[i].dtype,
                    kind: canon.entries[i].kind.clone(),
                });
                let combine = entries.len();
                entries.push(Entry {
                    shape: vec![1, m * n],
                    dtype: canon.entries[i].dtype,
                    kind: Kind::Reduce {
                        op: crate::graph::ReduceOp::Sum,
                        axes: vec![0],
                        input: partial,
                    },
                });
                split_matmuls.insert(i, (partial, combine, parts));
            }
        }
    }
    let synthetic_from = canon.entries.len();
    let entries = &entries;
    let n = entries.len();
    let mut uses = vec![0usize; n];
    let mut is_root = vec![false; n];
    for e in entries {
        for c in e.kind.children() {
            uses[c] += 1;
        }
    }
    for &r in &canon.roots {
        is_root[r] = true;
    }
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, e) in entries.iter().enumerate() {
        for c in e.kind.children() {
            if !consumers[c].contains(&i) {
                consumers[c].push(i);
            }
        }
    }
    let mut mat = vec![false; n];
    for i in 0..n {
        if i >= synthetic_from {
            // Partials get a scratch buffer; the combining step writes into
            // the original reduction's buffer.
            mat[i] = split
                .values()
                .chain(split_matmuls.values())
                .any(|&(p, _, _)| p == i);
            continue;
        }
        mat[i] = match &entries[i].kind {
            Kind::External | Kind::Upload | Kind::Reduce { .. } | Kind::Matmul { .. } => true,
            // A fold sums several taps per pixel: inlined into a consumer
            // that reads it at more than one position its cost would
            // multiply. Decided below, once every other entry is.
            Kind::Fold(..) => is_root[i] || uses[i] > 1,
            // Views and generators are free to recompute in every consumer.
            Kind::View(..) | Kind::Const | Kind::Iota { .. } | Kind::Rand { .. } => is_root[i],
            _ => is_root[i] || uses[i] > 1,
        };
    }
    // Matmul and optimizer kernels read plain contiguous buffers.
    let buffer_of = |mat: &[bool], mut i: usize| -> Option<usize> {
        loop {
            if mat[i] {
                return Some(i);
            }
            i = is_contiguous_view(&entries[i].kind, &entries[i].shape)?;
        }
    };
    // A product whose A is a channels-last unfold (`Kind::ConvRows`) that
    // nothing else reads fetches A from the unfold's image on a CPU adapter
    // (an implicit GEMM): the unfold, KH * KW times the image, is never
    // materialized (it takes the texture kernel whatever its operands cost
    // to pack, see `kernels::matmul`).
    let parts_of = |m: usize| split_matmuls.get(&m).map_or(1, |&(_, _, parts)| parts);
    let mut implicit = std::collections::HashSet::new();
    if device.inner.texture_matmul {
        for m in 0..synthetic_from {
            let Kind::Matmul { a, .. } = entries[m].kind else {
                continue;
            };
            // (a split product's partial repeats its operands)
            let partial = split_matmuls.get(&m).map(|&(partial, _, _)| partial);
            let only_reader = consumers[a].iter().all(|&c| c == m || Some(c) == partial);
            if !matches!(entries[a].kind, Kind::ConvRows(..)) || is_root[a] || !only_reader {
                continue;
            }
            if matmul_kernel(device, entries, m, parts_of(m), [false; 2], true)
                .is_some_and(|(_, _, k)| k.packs.is_some())
            {
                implicit.insert(m);
                mat[a] = false;
            }
        }
    }
    // (A split product's partial reads the same operands as its original.)
    let mut needs_buffer = Vec::new();
    for m in 0..synthetic_from {
        // An implicit product reads its A's image, which a pack may copy.
        if let [Some(a), Some(b)] = operand_sources(entries, &implicit, m) {
            needs_buffer.extend([a, b]);
        }
    }
    for eff in &canon.effects {
        match eff {
            CanonEffect::Optim { grad, .. } => needs_buffer.push(*grad),
            CanonEffect::Assign { value, .. } => needs_buffer.push(*value),
        }
    }
    for i in needs_buffer {
        if buffer_of(&mat, i).is_none() {
            // Materialize below any reshapes: consumers that reshape the same
            // value differently then share one buffer instead of each
            // computing it again.
            let mut j = i;
            while let Some(child) = is_contiguous_view(&entries[j].kind, &entries[j].shape) {
                j = child;
            }
            mat[j] = true;
        }
    }
    // An unfold reads each pixel once per tap: what it reads is computed
    // once into a buffer rather than once per tap (views and constants
    // excepted, which cost nothing to recompute).
    // A channels-last unfold's image gets a buffer of its own below its
    // reshapes only: an implicit product fetches it as that `[N * H * W, C]`
    // matrix (through a permute it would be a different value).
    for e in &entries[..synthetic_from] {
        let (mut j, through_any_view) = match e.kind {
            Kind::Unfold(_, _, j) => (j, true),
            Kind::ConvRows(_, j) => (j, false),
            _ => continue,
        };
        loop {
            match &entries[j].kind {
                Kind::View(_, child) if through_any_view => j = *child,
                kind => match is_contiguous_view(kind, &entries[j].shape) {
                    Some(child) => j = child,
                    None => break,
                },
            }
        }
        if !matches!(entries[j].kind, Kind::Const | Kind::Iota { .. }) {
            mat[j] = true;
        }
    }
    // Likewise a large value that an element-wise consumer broadcasts (reads
    // at several of its own elements): inlined, its loads would repeat per
    // read. Max-pooling's backward broadcasts the pooled gradient (after the
    // ReLU's mask) over each window's taps. Small broadcast values stay
    // inlined: a kernel of their own costs more than recomputing them.
    for e in &entries[..synthetic_from] {
        let operands: &[usize] = match &e.kind {
            Kind::Binary(_, x, y) => &[*x, *y],
            Kind::Where(c, x, y) => &[*c, *x, *y],
            _ => &[],
        };
        for &operand in operands {
            // Smaller than the result, or through a view that expands a
            // dimension (stride 0); a padding view is not a broadcast.
            let mut broadcast = numel(&entries[operand].shape) < numel(&e.shape);
            let mut j = operand;
            while let Kind::View(spec, child) = &entries[j].kind {
                broadcast |= spec
                    .strides
                    .iter()
                    .zip(&entries[j].shape)
                    .any(|(&stride, &size)| stride == 0 && size > 1);
                j = *child;
            }
            if !broadcast {
                continue;
            }
            let computed = !matches!(
                entries[j].kind,
                Kind::Const | Kind::Iota { .. } | Kind::Rand { .. }
            );
            if computed && numel(&entries[j].shape) >= BROADCAST_MATERIALIZE_MIN {
                mat[j] = true;
            }
        }
    }
    // A fold stays inlined only where each of its pixels is computed once:
    // a chain of single-use, one-to-one consumers (a ReLU mask after a
    // max-pool's gradient, a permute) that ends in a buffer.
    for i in 0..synthetic_from {
        if !matches!(entries[i].kind, Kind::Fold(..)) || mat[i] {
            continue;
        }
        let once = one_to_one_chain(entries, &consumers, &uses, &mat, synthetic_from, i).is_some();
        mat[i] = !once;
    }

    // Epilogue fusion: a matmul whose only consumer chain (element-wise ops
    // and one-to-one views, each used once) ends in a materialized entry
    // writes that entry directly; its own output never exists.
    let mut epilogues: std::collections::HashMap<usize, (usize, Vec<usize>)> =
        std::collections::HashMap::new();
    for m in 0..synthetic_from {
        if !matches!(entries[m].kind, Kind::Matmul { .. })
            || implicit.contains(&m)
            || split_matmuls.contains_key(&m)
            || is_root[m]
            || uses[m] != 1
            || entries[m].dtype != crate::graph::DType::F32
        {
            continue;
        }
        let Some(chain) = one_to_one_chain(entries, &consumers, &uses, &mat, synthetic_from, m)
        else {
            continue;
        };
        let e = chain[chain.len() - 1];
        // One product per fused kernel: a second one feeding the same entry
        // (the two gradients of x @ x) keeps its own buffer.
        let cheap = || {
            matmul_kernel(device, entries, m, 1, [false; 2], false)
                .is_some_and(|(_, _, k)| kernels::fusable(&k))
        };
        if !epilogues.contains_key(&e) && cheap() {
            mat[m] = false;
            epilogues.insert(e, (m, chain));
        }
    }

    let effect_reads: Vec<usize> = canon
        .effects
        .iter()
        .map(|eff| match eff {
            CanonEffect::Optim { grad, .. } => *grad,
            CanonEffect::Assign { value, .. } => *value,
        })
        .collect();
    let residents = texture_residents(
        device,
        entries,
        &consumers,
        &mat,
        &is_root,
        synthetic_from,
        &parts_of,
        &|x| buffer_of(&mat, x),
        &effect_reads,
        &|j| epilogues.contains_key(&j),
        &implicit,
    );
    let in_texture = |m: usize| -> [bool; 2] {
        operand_sources(entries, &implicit, m).map(|x| {
            x.and_then(|x| buffer_of(&mat, x))
                .is_some_and(|j| residents.contains_key(&j))
        })
    };

    // Resources.
    let mut resources = Vec::new();
    let mut res_of: Vec<Option<usize>> = vec![None; n];
    for i in 0..n {
        let r = match entries[i].kind {
            Kind::External => Resource::External(i),
            Kind::Upload => Resource::Upload(i),
            _ if !mat[i] || residents.contains_key(&i) => continue,
            _ if is_root[i] => Resource::Output(i),
            _ => Resource::Slot(padded_size(
                (numel(&entries[i].shape) * entries[i].dtype.size()) as u64,
            )),
        };
        res_of[i] = Some(resources.len());
        resources.push(r);
    }

    // Kernels, in post-order (children first), then effects.
    struct Pending {
        generated: Generated,
        output: usize,
        label: String,
        wg: u32,
        constants: Vec<(String, f64)>,
        scalars: Option<ScalarSource>,
        workgroups: Option<(u32, u32, u32)>,
        hand_written: bool,
        /// Inputs of a fused matmul epilogue, bound after the scalars.
        epilogue_inputs: usize,
        /// A texture matmul packs its two inputs into textures first.
        packs: Option<[kernels::OperandPack; 2]>,
    }
    let mut pending: Vec<Pending> = Vec::new();
    let operand_buffers = |a: usize, b: usize| -> Result<(usize, usize)> {
        let buffer = |x: usize| {
            buffer_of(&mat, x).ok_or_else(|| Error::Gpu("matmul input without buffer".into()))
        };
        Ok((buffer(a)?, buffer(b)?))
    };
    let matf = |i: usize| mat[i];
    for i in 0..n {
        if i >= synthetic_from
            || !mat[i]
            || matches!(entries[i].kind, Kind::External | Kind::Upload)
        {
            continue;
        }
        if numel(&entries[i].shape) == 0 {
            continue;
        }
        if let Some((m, chain)) = epilogues.get(&i) {
            let (a, b, k) = matmul_kernel(device, entries, *m, 1, [false; 2], false)
                .ok_or_else(|| Error::Gpu("internal: epilogue of a non-matmul".into()))?;
            let (ba, bb) = operand_buffers(a, b)?;
            let epilogue = codegen::matmul_epilogue(entries, &matf, chunk, *m, chain, k.dims.len());
            let mut inputs = vec![ba, bb];
            inputs.extend(epilogue.inputs.iter().copied());
            pending.push(Pending {
                generated: Generated {
                    source: kernels::with_store(k.source, &epilogue.source),
                    inputs,
                    seeds: epilogue.seeds.clone(),
                    items: 0,
                },
                output: i,
                label: "matmul+epilogue".to_string(),
                wg: 1,
                constants: k.constants,
                scalars: Some(ScalarSource::MatmulEpilogue {
                    dims: k.dims,
                    seeds: epilogue.seeds,
                }),
                workgroups: Some(k.workgroups),
                hand_written: true,
                epilogue_inputs: epilogue.inputs.len(),
                packs: k.packs,
            });
            continue;
        }
        let mut workgroups = None;
        let mut matmul_dims = None;
        let mut packs = None;
        let (generated, label, wg, constants) = match &entries[i].kind {
            Kind::Reduce { op, axes, input } => match split.get(&i) {
                None => (
                    codegen::reduce(entries, &matf, chunk, i, i, *op, axes, *input, 1),
                    format!("reduce {op:?}"),
                    reduce_wg(axes.iter().map(|&a| entries[*input].shape[a]).product(), 1),
                    vec![],
                ),
                Some(&(partial, combine, parts)) => {
                    let generated = codegen::reduce(
                        entries, &matf, chunk, i, partial, *op, axes, *input, parts,
                    );
                    let scalars = (!generated.seeds.is_empty())
                        .then(|| ScalarSource::Seeds(generated.seeds.clone()));
                    pending.push(Pending {
                        generated,
                        output: partial,
                        label: format!("reduce {op:?} partials"),
                        wg: codegen::REDUCE_WG,
                        constants: vec![],
                        scalars,
                        workgroups: None,
                        hand_written: false,
                        epilogue_inputs: 0,
                        packs: None,
                    });
                    (
                        codegen::reduce(entries, &matf, chunk, combine, i, *op, &[1], partial, 1),
                        format!("reduce {op:?}"),
                        reduce_wg(parts, 1),
                        vec![],
                    )
                }
            },
            Kind::Matmul { .. } => {
                let (partial, combine, parts) = split_matmuls.get(&i).copied().unwrap_or((i, i, 1));
                let (a, b, k) = matmul_kernel(
                    device,
                    entries,
                    i,
                    parts,
                    in_texture(i),
                    implicit.contains(&i),
                )
                .ok_or_else(|| {
                    Error::Gpu(
                        "internal: no matmul kernel (or an implicit one without windows)".into(),
                    )
                })?;
                let (ba, bb) = operand_buffers(a, b)?;
                let generated = Generated {
                    source: k.source.to_string(),
                    inputs: vec![ba, bb],
                    seeds: vec![],
                    items: 0,
                };
                if parts == 1 {
                    workgroups = Some(k.workgroups);
                    matmul_dims = Some(k.dims);
                    packs = k.packs;
                    (generated, "matmul".to_string(), 1, k.constants)
                } else {
                    pending.push(Pending {
                        generated,
                        output: partial,
                        label: format!("matmul split-K x{parts}"),
                        wg: 1,
                        constants: k.constants,
                        scalars: Some(ScalarSource::Words(k.dims)),
                        workgroups: Some(k.workgroups),
                        hand_written: true,
                        epilogue_inputs: 0,
                        packs: k.packs,
                    });
                    (
                        codegen::reduce(
                            entries,
                            &matf,
                            chunk,
                            combine,
                            i,
                            ReduceOp::Sum,
                            &[0],
                            partial,
                            1,
                        ),
                        "split-K sum".to_string(),
                        reduce_wg(parts, 1),
                        vec![],
                    )
                }
            }
            _ if residents.contains_key(&i) => {
                let r = residents[&i];
                (
                    codegen::elementwise_texels(
                        entries, &matf, chunk, i, r.cols, r.width, r.height,
                    ),
                    "fused elementwise into texture".to_string(),
                    ELEMENTWISE_WG,
                    vec![],
                )
            }
            _ => {
                // 64-bit integers come with the subgroup matmul's features.
                let paired = codegen::paired_store(entries, i, chunk, device.inner.subgroup_matmul);
                (
                    codegen::elementwise_stored(entries, &matf, chunk, i, i, false, paired),
                    "fused elementwise".to_string(),
                    ELEMENTWISE_WG,
                    vec![],
                )
            }
        };
        let scalars = match matmul_dims {
            Some(dims) => Some(ScalarSource::Words(dims)),
            None if generated.seeds.is_empty() => None,
            None => Some(ScalarSource::Seeds(generated.seeds.clone())),
        };
        pending.push(Pending {
            generated,
            output: i,
            label,
            wg,
            constants,
            scalars,
            epilogue_inputs: 0,
            hand_written: workgroups.is_some(),
            workgroups,
            packs,
        });
    }

    let mut steps_effects: Vec<(Pending, usize)> = Vec::new();
    let mut written = Vec::new();
    for (ei, eff) in canon.effects.iter().enumerate() {
        match eff {
            CanonEffect::Optim {
                kind,
                param,
                grad,
                state,
                hyper_len,
            } => {
                let g = buffer_of(&mat, *grad)
                    .ok_or_else(|| Error::Gpu("gradient without buffer".into()))?;
                // 64-bit integers come with the subgroup matmul's features.
                let (source, constants, want_state, want_hyper) =
                    kernels::optimizer(*kind, device.inner.subgroup_matmul);
                if state.len() != want_state || *hyper_len != want_hyper {
                    return Err(Error::invalid(
                        "optimizer step",
                        format!("{kind:?} takes {want_state} state tensors and {want_hyper} hyper-parameters"),
                    ));
                }
                if entries[*grad].shape != entries[*param].shape
                    || state
                        .iter()
                        .any(|s| entries[*s].shape != entries[*param].shape)
                {
                    return Err(Error::shape(
                        "optimizer step",
                        format!(
                            "parameter {:?}, gradient {:?}",
                            entries[*param].shape, entries[*grad].shape
                        ),
                    ));
                }
                let count = numel(&entries[*param].shape);
                let mut inputs = vec![g];
                inputs.extend(state.iter().copied());
                written.push(*param);
                written.extend(state.iter().copied());
                steps_effects.push((
                    Pending {
                        generated: Generated {
                            source,
                            inputs,
                            seeds: vec![],
                            items: count.div_ceil(kernels::OPTIM_ELEMENTS_PER_THREAD) as u64,
                        },
                        output: *param,
                        label: format!("{kind:?}"),
                        wg: ELEMENTWISE_WG,
                        constants,
                        scalars: Some(ScalarSource::Hyper {
                            effect: ei,
                            n: count as u32,
                        }),
                        workgroups: None,
                        hand_written: true,
                        epilogue_inputs: 0,
                        packs: None,
                    },
                    ei,
                ));
            }
            CanonEffect::Assign { target, value } => {
                let v = buffer_of(&mat, *value)
                    .ok_or_else(|| Error::Gpu("assigned value without buffer".into()))?;
                written.push(*target);
                steps_effects.push((
                    Pending {
                        generated: codegen::elementwise(
                            entries,
                            &|i| i == v || matf(i),
                            chunk,
                            v,
                            *target,
                            true,
                        ),
                        output: *target,
                        label: "assign".into(),
                        wg: ELEMENTWISE_WG,
                        constants: vec![],
                        scalars: None,
                        workgroups: None,
                        hand_written: false,
                        epilogue_inputs: 0,
                        packs: None,
                    },
                    ei,
                ));
            }
        }
    }

    // Liveness over the kernel order: an intermediate's slot is free after
    // its last reader, and may then hold a later kernel's output.
    let all: Vec<&Pending> = pending
        .iter()
        .chain(steps_effects.iter().map(|(p, _)| p))
        .collect();
    let mut last_read = vec![0usize; n];
    for (k, p) in all.iter().enumerate() {
        for &i in &p.generated.inputs {
            last_read[i] = k;
        }
    }
    let mut slot_of: Vec<Option<usize>> = vec![None; n];
    let mut slot_sizes: Vec<u64> = Vec::new();
    let mut free_slots: Vec<usize> = Vec::new();
    let mut assigned_slot = vec![usize::MAX; resources.len()];
    for (k, p) in all.iter().enumerate() {
        let out = p.output;
        if let Some(r) = res_of[out] {
            if let Resource::Slot(size) = resources[r] {
                let pos = free_slots.iter().position(|&s| slot_sizes[s] == size);
                let s = match pos {
                    Some(pos) => free_slots.swap_remove(pos),
                    None => {
                        slot_sizes.push(size);
                        slot_sizes.len() - 1
                    }
                };
                slot_of[out] = Some(s);
                assigned_slot[r] = s;
            }
        }
        for &i in &p.generated.inputs {
            if last_read[i] == k {
                if let Some(s) = slot_of[i] {
                    if !free_slots.contains(&s) {
                        free_slots.push(s);
                    }
                }
            }
        }
    }
    // Resources become: externals/uploads/outputs as before, plus one
    // resource per physical slot; intermediate entries point at their slot.
    let mut final_resources: Vec<Resource> = Vec::new();
    let mut remap = vec![usize::MAX; resources.len()];
    for (r, res) in resources.iter().enumerate() {
        if !matches!(res, Resource::Slot(_)) {
            remap[r] = final_resources.len();
            final_resources.push(res.clone());
        }
    }
    let slot_base = final_resources.len();
    for &size in &slot_sizes {
        final_resources.push(Resource::Slot(size));
    }
    for r in 0..resources.len() {
        if matches!(resources[r], Resource::Slot(_)) {
            remap[r] = slot_base + assigned_slot[r];
        }
    }
    let resource_of = |i: usize| -> Result<usize> {
        res_of[i]
            .map(|r| remap[r])
            .filter(|&r| r != usize::MAX)
            .ok_or_else(|| Error::Gpu(format!("internal: entry {i} has no buffer")))
    };

    let mut steps = Vec::with_capacity(all.len());
    let (mut texture_products, mut operand_packs) = (0, 0);
    for p in &all {
        let pipeline = device.pipeline(&p.label, &p.generated.source, &p.constants)?;
        let bytes_of = |i: usize| (numel(&entries[i].shape) * entries[i].dtype.size()) as u64;
        // Generated kernels read big tensors through several bindings;
        // hand-written ones (matmul, optimizers) bind each tensor whole.
        let chunked = |i: usize| -> Result<Vec<Binding>> {
            let resource = resource_of(i)?;
            let total = bytes_of(i);
            let step = chunk as u64 * 4;
            let count = codegen::chunk_count(numel(&entries[i].shape), chunk) as u64;
            Ok((0..count)
                .map(|c| Binding {
                    resource,
                    offset: c * step,
                    size: (total - c * step).min(step).max(4),
                })
                .collect())
        };
        let whole = |i: usize| -> Result<Binding> {
            let size = bytes_of(i).max(4);
            if size > chunk as u64 * 4 {
                return Err(Error::Unsupported {
                    feature: format!(
                        "{} on a tensor of {size} bytes (this adapter binds at most {} bytes at once)",
                        p.label,
                        chunk * 4
                    ),
                    adapter: device.adapter_name().to_string(),
                });
            }
            Ok(Binding {
                resource: resource_of(i)?,
                offset: 0,
                size,
            })
        };
        let mut bindings = Vec::new();
        let mut extra_bindings = Vec::new();
        let mut textures = Vec::new();
        let is_optim = matches!(p.scalars, Some(ScalarSource::Hyper { .. }));
        let hand_written = is_optim || p.hand_written;
        if is_optim {
            // param (read-write) first, then gradient and state, each with
            // its buffer's padded size (Adam may read them as u64 pairs).
            for i in std::iter::once(p.output).chain(p.generated.inputs.iter().copied()) {
                let mut binding = whole(i)?;
                binding.size = padded_size(binding.size);
                bindings.push(binding);
            }
        } else if hand_written {
            // The subgroup matmul reads A and B as u64 pairs: bind whole
            // 16-byte blocks (every buffer is allocated in them).
            let own = p.generated.inputs.len() - p.epilogue_inputs;
            let padded_whole = |i: usize| -> Result<Binding> {
                let mut input = whole(i)?;
                input.size = padded_size(input.size);
                Ok(input)
            };
            match &p.packs {
                None => {
                    for &i in &p.generated.inputs[..own] {
                        bindings.push(padded_whole(i)?);
                    }
                }
                Some(packs) => {
                    // Each operand is packed into its texture by a step of
                    // its own, just before the product.
                    texture_products += 1;
                    let pack = device.pipeline("pack operand", kernels::PACK_TEXTURE, &[])?;
                    for (operand, (layout, &i)) in packs.iter().zip(&p.generated.inputs).enumerate()
                    {
                        if let Some(r) = residents.get(&i) {
                            // Its producer wrote it there.
                            textures.push(device.operand_texture(r.width, r.height, r.tag));
                            continue;
                        }
                        let texture =
                            device.operand_texture(layout.width(), layout.height, operand as u8);
                        let dims = layout.dims();
                        operand_packs += 1;
                        steps.push(Step {
                            label: format!("pack {} {:?}", ["A", "B"][operand], entries[i].shape),
                            pipeline: pack.clone(),
                            textures: vec![texture.clone()],
                            bindings: vec![padded_whole(i)?],
                            scalars: Some((
                                words_storage(device, &dims)?,
                                ScalarSource::Words(dims),
                            )),
                            extra_bindings: Vec::new(),
                            workgroups: (
                                layout.width().div_ceil(kernels::PACK_TEXTURE_WG),
                                layout.height.div_ceil(kernels::PACK_TEXTURE_WG),
                                1,
                            ),
                        });
                        textures.push(texture);
                    }
                }
            }
            for &i in &p.generated.inputs[own..] {
                extra_bindings.extend(chunked(i)?);
            }
            // The matmul writes C as vec4s: bind the buffer's padded size.
            let mut out = whole(p.output)?;
            out.size = padded_size(out.size);
            bindings.push(out);
            let max = device.inner.limits.max_compute_workgroups_per_dimension;
            if let Some((x, y, z)) = p.workgroups {
                if x > max || y > max || z > max {
                    return Err(Error::Unsupported {
                        feature: format!(
                            "a matmul needing {x}x{y}x{z} workgroups (at most {max} per dimension)"
                        ),
                        adapter: device.adapter_name().to_string(),
                    });
                }
            }
        } else {
            for &i in &p.generated.inputs {
                bindings.extend(chunked(i)?);
            }
            match residents.get(&p.output) {
                Some(r) => textures.push(device.operand_texture(r.width, r.height, r.tag)),
                None => bindings.extend(chunked(p.output)?),
            }
        }
        let scalars = match &p.scalars {
            None => None,
            Some(src) => {
                let len = match src {
                    ScalarSource::Seeds(s) => 8 * s.len() as u64,
                    ScalarSource::Words(w) => 4 * w.len() as u64,
                    ScalarSource::MatmulEpilogue { dims, seeds } => {
                        4 * dims.len() as u64 + 8 * seeds.len() as u64
                    }
                    ScalarSource::Hyper { effect, .. } => {
                        let CanonEffect::Optim { hyper_len, .. } = &canon.effects[*effect] else {
                            return Err(Error::Gpu(
                                "internal: hyper-parameters for a non-optimizer".into(),
                            ));
                        };
                        4 * (*hyper_len as u64 + 1)
                    }
                };
                let storage = match src {
                    ScalarSource::Words(words) => words_storage(device, words)?,
                    _ => device.alloc(len, BufferKind::Scalars, None)?,
                };
                let src = match src {
                    ScalarSource::Seeds(s) => ScalarSource::Seeds(s.clone()),
                    ScalarSource::Words(w) => ScalarSource::Words(w.clone()),
                    ScalarSource::MatmulEpilogue { dims, seeds } => ScalarSource::MatmulEpilogue {
                        dims: dims.clone(),
                        seeds: seeds.clone(),
                    },
                    ScalarSource::Hyper { effect, n } => ScalarSource::Hyper {
                        effect: *effect,
                        n: *n,
                    },
                };
                Some((storage, src))
            }
        };
        steps.push(Step {
            label: format!("{} -> {:?}", p.label, entries[p.output].shape),
            textures,
            extra_bindings,
            pipeline,
            bindings,
            scalars,
            workgroups: p
                .workgroups
                .unwrap_or_else(|| grid(device, p.generated.items, p.wg)),
        });
    }
    let root_resources = canon
        .roots
        .iter()
        .map(|&r| resource_of(r))
        .collect::<Result<Vec<_>>>()?;
    let written = written
        .iter()
        .map(|&w| resource_of(w))
        .collect::<Result<Vec<_>>>()?;
    Counters::bump(&device.inner.counters.plans_compiled, 1);
    let count = final_resources.len();
    Ok(Plan {
        steps,
        resources: final_resources,
        root_resources,
        written,
        texture_products,
        operand_packs,
        last_ids: Mutex::new(vec![None; count]),
    })
}

/// A scalars buffer holding these fixed words (a kernel's shape).
fn words_storage(device: &Device, words: &[u32]) -> Result<Storage> {
    let storage = device.alloc(4 * words.len() as u64, BufferKind::Scalars, None)?;
    device
        .inner
        .queue
        .write_buffer(storage.buffer(), 0, bytemuck::cast_slice(words));
    Ok(storage)
}

/// A constant's bit pattern as the kernel reads it from the scalars buffer.
fn const_bits(dtype: crate::graph::DType, v: f64) -> u32 {
    match dtype {
        crate::graph::DType::F32 => (v as f32).to_bits(),
        crate::graph::DType::I32 => v as i64 as i32 as u32,
        crate::graph::DType::U32 => v as u64 as u32,
    }
}

/// `CINDER_PROFILE=1`: every realization first runs each kernel on its own
/// and prints its wall time to stderr; the results are then computed again
/// as usual. Kernels that write in place (optimizer steps, assigns) are left
/// out, since running them twice would apply them twice.
fn profiling() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("CINDER_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0"))
}

impl Plan {
    fn profile(&self, device: &Device, storages: &[Storage]) -> Result<()> {
        let dev = &device.inner.device;
        for step in self.steps.iter().filter(|s| {
            s.scalars
                .as_ref()
                .is_none_or(|(_, src)| !matches!(src, ScalarSource::Hyper { .. }))
        }) {
            if step.label.starts_with("assign") {
                continue;
            }
            let started = std::time::Instant::now();
            let mut encoder =
                dev.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                step.dispatch(device, storages, &mut pass);
            }
            device.inner.queue.submit([encoder.finish()]);
            dev.poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::DeviceLost(e.to_string()))?;
            eprintln!(
                "cinder profile: {:8.3} ms  {:?}  kernel {:04}  {}",
                started.elapsed().as_secs_f64() * 1e3,
                step.workgroups,
                step.pipeline.id,
                step.label
            );
        }
        eprintln!("cinder profile: ---- end of realization");
        Ok(())
    }

    fn execute(
        &self,
        device: &Device,
        entries: &[Entry],
        bind: &Bindings,
        readback: &[usize],
    ) -> Result<Vec<Storage>> {
        let queue = &device.inner.queue;
        let mut last = lock(&self.last_ids);
        let mut storages: Vec<Storage> = Vec::with_capacity(self.resources.len());
        for (r, res) in self.resources.iter().enumerate() {
            let storage = match res {
                Resource::External(i) => bind.externals[i].clone(),
                Resource::Upload(i) => {
                    let data = &bind.uploads[i];
                    let s = device.alloc(data.len() as u64, BufferKind::Storage, last[r])?;
                    if !data.is_empty() {
                        queue.write_buffer(s.buffer(), 0, data);
                    }
                    s
                }
                Resource::Output(i) => {
                    let e = &entries[*i];
                    device.alloc(
                        (numel(&e.shape) * e.dtype.size()) as u64,
                        BufferKind::Storage,
                        last[r],
                    )?
                }
                Resource::Slot(size) => device.alloc(*size, BufferKind::Storage, last[r])?,
            };
            last[r] = Some(storage.id());
            storages.push(storage);
        }
        drop(last);

        for step in &self.steps {
            if let Some((buf, src)) = &step.scalars {
                let seed_words = |seeds: &[usize]| -> Vec<u32> {
                    seeds
                        .iter()
                        .flat_map(|i| match (bind.seeds.get(i), bind.consts.get(i)) {
                            (Some(&s), _) => [s as u32, (s >> 32) as u32],
                            (None, Some(&v)) => [const_bits(entries[*i].dtype, v), 0],
                            (None, None) => [0, 0],
                        })
                        .collect()
                };
                let words: Vec<u32> = match src {
                    ScalarSource::Seeds(seeds) => seed_words(seeds),
                    ScalarSource::MatmulEpilogue { dims, seeds } => {
                        let mut w = dims.clone();
                        w.extend(seed_words(seeds));
                        w
                    }
                    // Written once, when the plan was compiled.
                    ScalarSource::Words(_) => continue,
                    ScalarSource::Hyper { effect, n } => {
                        let mut w: Vec<u32> =
                            bind.hypers[*effect].iter().map(|h| h.to_bits()).collect();
                        w.push(*n);
                        w
                    }
                };
                queue.write_buffer(buf.buffer(), 0, bytemuck::cast_slice(&words));
            }
        }

        if profiling() {
            self.profile(device, &storages)?;
        }
        let mut encoder =
            device
                .inner
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("cinder step"),
                });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            for step in &self.steps {
                step.dispatch(device, &storages, &mut pass);
            }
        }
        let mut readbacks = Vec::with_capacity(readback.len());
        for &root in readback {
            let src = &storages[self.root_resources[root]];
            let dst = device.alloc(src.size_bytes(), BufferKind::Readback, None)?;
            encoder.copy_buffer_to_buffer(src.buffer(), 0, dst.buffer(), 0, src.size_bytes());
            readbacks.push(dst);
        }
        queue.submit([encoder.finish()]);
        let c = &device.inner.counters;
        Counters::bump(&c.submits, 1);
        Counters::bump(&c.dispatches, self.steps.len() as u64);
        Counters::bump(&c.texture_products, self.texture_products);
        Counters::bump(&c.operand_packs, self.operand_packs);
        for &w in &self.written {
            storages[w].bump_version();
        }
        for (r, res) in self.resources.iter().enumerate() {
            match res {
                Resource::Upload(i) | Resource::Output(i) => {
                    bind.nodes[*i].set_realized(storages[r].clone())
                }
                _ => {}
            }
        }
        Ok(readbacks)
    }
}

impl Device {
    /// Realizes `roots` and performs `effects` (in-place writes, after every
    /// read of the old values) in one submit; returns a host copy of each root
    /// listed in `read`.
    pub fn run(&self, roots: &[Node], effects: &[Effect], read: &[usize]) -> Result<Vec<Vec<u8>>> {
        for r in roots {
            if r.device() != self {
                return Err(Error::invalid(
                    "realize",
                    "tensor belongs to another device",
                ));
            }
        }
        let _exec = lock(&self.inner.exec);
        let deferred = {
            let mut pending = lock(&self.inner.deferred);
            let flush = !effects.is_empty()
                || pending.iter().any(|e| match e {
                    Effect::Assign { target, .. } => roots.iter().any(|r| r.id() == target.id()),
                    Effect::Optim { .. } => true,
                });
            if flush {
                std::mem::take(&mut *pending)
            } else {
                Vec::new()
            }
        };
        let canon = if deferred.is_empty() {
            canonicalize(roots, effects)?
        } else {
            let mut all = effects.to_vec();
            all.extend(deferred);
            canonicalize(roots, &all)?
        };
        let cached = lock(&self.inner.caches).plans.get(&canon.key).cloned();
        let plan = match cached {
            Some(p) => {
                Counters::bump(&self.inner.counters.plan_hits, 1);
                p
            }
            None => {
                let p = Arc::new(compile(self, &canon)?);
                lock(&self.inner.caches)
                    .plans
                    .insert(canon.key.clone(), p.clone());
                p
            }
        };
        let readbacks = plan.execute(self, &canon.entries, &canon.bind, read)?;
        self.take_gpu_error()?;
        let mut out = Vec::with_capacity(read.len());
        for (k, &root) in read.iter().enumerate() {
            let e = &canon.entries[canon.roots[root]];
            let bytes = numel(&e.shape) * e.dtype.size();
            out.push(self.map_read(&readbacks[k], bytes)?);
        }
        Ok(out)
    }

    fn map_read(&self, staging: &Storage, bytes: usize) -> Result<Vec<u8>> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let slice = staging.buffer().slice(0..bytes as u64);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        self.take_gpu_error()?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Gpu(format!("reading a result back: {e}"))),
            Err(_) => return Err(Error::DeviceLost("the map callback never ran".into())),
        }
        let data = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("reading a result back: {e}")))?
            .to_vec();
        staging.buffer().unmap();
        Ok(data)
    }

    /// Realizes these nodes without reading them back.
    pub fn realize(&self, nodes: &[Node]) -> Result<()> {
        let pending: Vec<Node> = nodes.iter().filter(|n| !n.is_realized()).cloned().collect();
        if pending.is_empty() {
            return Ok(());
        }
        self.run(&pending, &[], &[]).map(|_| ())
    }

    /// Blocks until all submitted work has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        self.take_gpu_error()
    }

    /// The number of distinct graph structures compiled so far.
    pub fn plan_count(&self) -> usize {
        lock(&self.inner.caches).plans.len()
    }

    /// The WGSL of every kernel this device has compiled (generated and
    /// hand-written), for validation and inspection.
    pub fn compiled_kernels(&self) -> Vec<String> {
        lock(&self.inner.caches).pipelines.keys().cloned().collect()
    }
}

impl Node {
    pub fn realize(&self) -> Result<()> {
        self.device().realize(std::slice::from_ref(self))
    }

    /// Realizes (if needed) and copies the value to the host, row-major.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = self.device().run(std::slice::from_ref(self), &[], &[0])?;
        Ok(v.pop().unwrap_or_default())
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Device>();
    check::<Node>();
    let _ = Ordering::Relaxed;
}
