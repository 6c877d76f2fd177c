//! Pass 11: liveness and slot allocation. Every materialized entry gets a
//! resource: a realized buffer, an upload, a returned output, or a slot that
//! intermediates whose lifetimes do not overlap share. Then every binding
//! is resolved to a byte range of a resource.

use super::emit::{Bind, Kernel, Layout, ScalarSource};
use super::{Fusion, Graph, PlanSpec, Target, Uses};
use crate::canon::{CanonEffect, Entry};
use crate::codegen;
use crate::error::{Error, Result};
use crate::graph::{numel, Op};
use crate::pool::padded_size;

/// Where a binding's buffer comes from at replay time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Resource {
    /// A realized tensor's buffer (entry index).
    External(usize),
    /// Host data written into a fresh buffer, which the node then keeps.
    Upload(usize),
    /// A requested result; its node keeps the buffer.
    Output(usize),
    /// An intermediate of this many bytes, shared by values whose lifetimes
    /// do not overlap.
    Slot(u64),
}

/// A byte range of a resource that one binding covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Binding {
    pub resource: usize,
    pub offset: u64,
    pub size: u64,
}

/// A kernel's binding, resolved.
#[derive(Clone, Debug)]
pub(crate) enum Bound {
    Buffer(Binding),
    Texture { width: u32, height: u32, tag: u8 },
    Scalars(ScalarSource),
}

/// A kernel with its bindings resolved.
pub(crate) struct StepSpec {
    pub kernel: Kernel,
    pub bound: Vec<Bound>,
}

/// Resources for the materialized entries, slots by liveness over the
/// kernel order (an intermediate's slot is free after its last reader and
/// may then hold a later kernel's output, of the same padded size), and
/// every binding's range.
pub(crate) fn allocate(
    graph: Graph,
    uses: &Uses,
    fusion: &Fusion,
    kernels: Vec<Kernel>,
    target: &Target,
) -> Result<PlanSpec> {
    let entries = &graph.entries;
    let n = entries.len();
    let mut resources = Vec::new();
    let mut res_of: Vec<Option<usize>> = vec![None; n];
    for i in 0..n {
        let r = match entries[i].op {
            Op::External => Resource::External(i),
            Op::Upload => Resource::Upload(i),
            _ if !fusion.mat[i] || fusion.residents.contains_key(&i) => continue,
            _ if uses.is_root[i] => Resource::Output(i),
            _ => Resource::Slot(padded_size(
                (numel(&entries[i].shape) * entries[i].dtype.size()) as u64,
            )),
        };
        res_of[i] = Some(resources.len());
        resources.push(r);
    }

    let (mut slot_sizes, mut assigned_slot) = share_slots(&kernels, &resources, &res_of);
    // A replay binds buffers, uploads and seeds by the structure's indices.
    let canonical = |i: usize| -> Result<usize> {
        graph.origin.get(i).copied().flatten().ok_or_else(|| {
            Error::Gpu(format!(
                "internal: entry {i} is bound at replay but is not in the structure"
            ))
        })
    };
    // Externals, uploads and outputs keep their order; then one resource
    // per physical slot. An intermediate no kernel writes (it is empty)
    // gets a slot of its own.
    let mut final_resources: Vec<Resource> = Vec::new();
    let mut remap = vec![usize::MAX; resources.len()];
    for (r, res) in resources.iter().enumerate() {
        let res = match *res {
            Resource::Slot(_) => continue,
            Resource::External(i) => Resource::External(canonical(i)?),
            Resource::Upload(i) => Resource::Upload(canonical(i)?),
            Resource::Output(i) => Resource::Output(canonical(i)?),
        };
        remap[r] = final_resources.len();
        final_resources.push(res);
    }
    for (r, res) in resources.iter().enumerate() {
        if let (Resource::Slot(size), None) = (res, assigned_slot[r]) {
            slot_sizes.push(*size);
            assigned_slot[r] = Some(slot_sizes.len() - 1);
        }
    }
    let slot_base = final_resources.len();
    final_resources.extend(slot_sizes.iter().map(|&size| Resource::Slot(size)));
    for r in 0..resources.len() {
        if let Some(s) = assigned_slot[r] {
            remap[r] = slot_base + s;
        }
    }
    let resource_of = |i: usize| -> Result<usize> {
        res_of[i]
            .map(|r| remap[r])
            .filter(|&r| r != usize::MAX)
            .ok_or_else(|| Error::Gpu(format!("internal: entry {i} has no buffer")))
    };

    let mut steps = Vec::with_capacity(kernels.len());
    for kernel in kernels {
        let bound = bind(&kernel, entries, target, &resource_of, &canonical)?;
        steps.push(StepSpec { kernel, bound });
    }
    let root_resources = graph
        .roots
        .iter()
        .map(|&r| resource_of(r))
        .collect::<Result<Vec<_>>>()?;
    let mut written = Vec::new();
    for effect in &graph.effects {
        match effect {
            CanonEffect::Optim { param, state, .. } => {
                written.push(resource_of(*param)?);
                for &s in state {
                    written.push(resource_of(s)?);
                }
            }
            CanonEffect::Assign { target, .. } => written.push(resource_of(*target)?),
        }
    }
    Ok(PlanSpec {
        steps,
        resources: final_resources,
        root_resources,
        written,
    })
}

/// Physical slots for the intermediates, by liveness over the kernel order:
/// a slot is free after its value's last reader and may then hold a later
/// kernel's output of the same padded size. Returns the slots' sizes and
/// each resource's slot (none for an intermediate no kernel writes).
fn share_slots(
    kernels: &[Kernel],
    resources: &[Resource],
    res_of: &[Option<usize>],
) -> (Vec<u64>, Vec<Option<usize>>) {
    let n = res_of.len();
    let mut last_read = vec![0usize; n];
    for (k, kernel) in kernels.iter().enumerate() {
        for &i in &kernel.reads {
            last_read[i] = k;
        }
    }
    let mut slot_of: Vec<Option<usize>> = vec![None; n];
    let mut slot_sizes: Vec<u64> = Vec::new();
    let mut free_slots: Vec<usize> = Vec::new();
    let mut assigned_slot: Vec<Option<usize>> = vec![None; resources.len()];
    for (k, kernel) in kernels.iter().enumerate() {
        for &out in &kernel.outputs {
            // (A concatenation's copies all write the one output.)
            if slot_of[out].is_some() {
                continue;
            }
            if let Some(r) = res_of[out] {
                if let Resource::Slot(size) = resources[r] {
                    let s = match free_slots.iter().position(|&s| slot_sizes[s] == size) {
                        Some(pos) => free_slots.swap_remove(pos),
                        None => {
                            slot_sizes.push(size);
                            slot_sizes.len() - 1
                        }
                    };
                    slot_of[out] = Some(s);
                    assigned_slot[r] = Some(s);
                }
            }
        }
        for &i in &kernel.reads {
            if last_read[i] == k {
                if let Some(s) = slot_of[i] {
                    if !free_slots.contains(&s) {
                        free_slots.push(s);
                    }
                }
            }
        }
    }
    (slot_sizes, assigned_slot)
}

/// `kernel`'s bindings resolved to resources and byte ranges (a chunked
/// entry is one binding per chunk), its seeds to the structure's indices.
fn bind(
    kernel: &Kernel,
    entries: &[Entry],
    target: &Target,
    resource_of: &dyn Fn(usize) -> Result<usize>,
    canonical: &dyn Fn(usize) -> Result<usize>,
) -> Result<Vec<Bound>> {
    let bytes_of = |i: usize| (numel(&entries[i].shape) * entries[i].dtype.size()) as u64;
    let chunk = target.chunk;
    let mut bound = Vec::with_capacity(kernel.binds.len());
    for bind in &kernel.binds {
        match bind {
            Bind::Entry {
                entry,
                layout: Layout::Chunked,
            } => {
                let resource = resource_of(*entry)?;
                let total = bytes_of(*entry);
                let step = chunk as u64 * 4;
                let count = codegen::chunk_count(numel(&entries[*entry].shape), chunk) as u64;
                bound.extend((0..count).map(|c| {
                    Bound::Buffer(Binding {
                        resource,
                        offset: c * step,
                        size: (total - c * step).min(step).max(4),
                    })
                }));
            }
            Bind::Entry {
                entry,
                layout: Layout::Uniform,
            } => bound.push(Bound::Buffer(Binding {
                resource: resource_of(*entry)?,
                offset: 0,
                size: crate::pool::padded_size(bytes_of(*entry)),
            })),
            Bind::Entry {
                entry,
                layout: Layout::Whole,
            } => {
                let size = bytes_of(*entry).max(4);
                if size > chunk as u64 * 4 {
                    return Err(Error::Unsupported {
                        feature: format!(
                            "{} on a tensor of {size} bytes (this adapter binds at most {} bytes at once)",
                            kernel.name,
                            chunk * 4
                        ),
                        adapter: target.adapter.clone(),
                    });
                }
                bound.push(Bound::Buffer(Binding {
                    resource: resource_of(*entry)?,
                    offset: 0,
                    size: padded_size(size),
                }));
            }
            Bind::Entry {
                entry,
                layout: Layout::Range { start, len },
            } => {
                let elements = numel(&entries[*entry].shape);
                if start + len > elements || *len > chunk {
                    return Err(Error::Gpu(format!(
                        "internal: range {start}+{len} of an entry of {elements} elements"
                    )));
                }
                let size = entries[*entry].dtype.size() as u64;
                bound.push(Bound::Buffer(Binding {
                    resource: resource_of(*entry)?,
                    offset: *start as u64 * size,
                    size: padded_size(*len as u64 * size),
                }));
            }
            Bind::Texture { width, height, tag } => bound.push(Bound::Texture {
                width: *width,
                height: *height,
                tag: *tag,
            }),
            Bind::Scalars(source) => {
                let seeds = |seeds: &[usize]| -> Result<Vec<usize>> {
                    seeds.iter().map(|&i| canonical(i)).collect()
                };
                bound.push(Bound::Scalars(match source {
                    ScalarSource::Seeds(s) => ScalarSource::Seeds(seeds(s)?),
                    ScalarSource::MatmulEpilogue { dims, seeds: s } => {
                        ScalarSource::MatmulEpilogue {
                            dims: dims.clone(),
                            seeds: seeds(s)?,
                        }
                    }
                    other => other.clone(),
                }))
            }
        }
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gpu, lavapipe, spec_of, Builder};
    use super::{Bound, Resource};
    use crate::graph::UnaryOp;

    #[test]
    fn intermediates_of_one_size_share_a_slot_once_read() {
        let mut g = Builder::new();
        let x = g.upload(&[1000]);
        // A chain of values each read by two entries: each gets a buffer,
        // and each is dead once the next has been computed from it.
        let mut v = x;
        for _ in 0..6 {
            let e = g.unary(UnaryOp::Exp, v);
            let negated = g.unary(UnaryOp::Neg, e);
            v = g.binary(crate::graph::BinaryOp::Add, e, negated);
        }
        let spec = spec_of(g, &[v], &gpu());
        let slots = spec
            .resources
            .iter()
            .filter(|r| matches!(r, Resource::Slot(_)))
            .count();
        // Six intermediates (the `e`s), never more than one alive at once:
        // they ping-pong between as few slots as liveness allows.
        assert!(slots <= 2, "{slots} slots for a chain");
        // One kernel per `e`, and the last sum.
        assert_eq!(spec.steps.len(), 7);
    }

    #[test]
    fn small_inputs_are_bound_whole_as_uniform_buffers_on_a_cpu_adapter() {
        let graph = || {
            let mut g = Builder::new();
            let small = g.upload(&[5]);
            let big = g.upload(&[3000]);
            let sum = g.binary(crate::graph::BinaryOp::Add, small, small);
            let e = g.unary(UnaryOp::Exp, big);
            (g, [sum, e])
        };
        // A GPU reads them from storage: its constant cache would serve
        // lanes reading different elements one after another.
        let (g, roots) = graph();
        let spec = spec_of(g, &roots, &gpu());
        assert!(spec
            .steps
            .iter()
            .all(|s| !s.kernel.source.text().contains("var<uniform> b")));
        let mut target = lavapipe();
        target.chunk = 1024;
        let (g, roots) = graph();
        let spec = spec_of(g, &roots, &target);
        let sizes = |k: usize| -> Vec<u64> {
            spec.steps[k]
                .bound
                .iter()
                .map(|b| match b {
                    Bound::Buffer(b) => b.size,
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let source = |k: usize| spec.steps[k].kernel.source.text().to_string();
        let (small_step, big_step) = if sizes(0).len() == 2 { (0, 1) } else { (1, 0) };
        // 20 bytes read as two vec4s: bound rounded up to 32. The output is
        // bound to exactly its elements (its length bounds the kernel).
        assert_eq!(sizes(small_step), [32, 20]);
        assert!(source(small_step).contains("var<uniform> b0: array<vec4<f32>, 2>"));
        // Three bindings' worth is read from storage, in chunks.
        assert_eq!(sizes(big_step)[..3], [4096, 4096, 3808]);
        assert!(!source(big_step).contains("var<uniform>"));
    }

    #[test]
    fn big_tensors_are_bound_in_chunks() {
        let mut target = gpu();
        target.chunk = 1024;
        let mut g = Builder::new();
        let x = g.upload(&[3000]);
        let e = g.unary(UnaryOp::Exp, x);
        let spec = spec_of(g, &[e], &target);
        let ranges: Vec<(u64, u64)> = spec.steps[0]
            .bound
            .iter()
            .map(|b| match b {
                Bound::Buffer(b) => (b.offset, b.size),
                other => panic!("{other:?}"),
            })
            .collect();
        // The input's three ranges, then the output's.
        assert_eq!(ranges[..3], [(0, 4096), (4096, 4096), (8192, 3808)]);
        assert_eq!(ranges.len(), 6);
    }
}
