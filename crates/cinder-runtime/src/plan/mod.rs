//! The planner: a realization's [`Structure`] in, a [`PlanSpec`] out (the
//! kernels to dispatch, in order, and the buffers they bind). Planning is
//! pure: it reads the device only through a [`Target`] (limits and
//! features), so every pass is tested on small hand-built graphs without a
//! GPU. `exec.rs` turns a spec into pipelines and bind groups and replays it.
//!
//! The passes, in the order [`compile`] runs them:
//!
//! | # | pass | file | decides |
//! |---|------|------|---------|
//! | 0 | [`cse::merge`], [`limits::check_sizes`], [`limits::check_custom`], [`tile::products`], [`cse::merge`] again | `cse.rs`, `limits.rs`, `tile.rs` | a value built twice is built once; tensors too big to index, and custom kernels past a binding, are errors; products too big for one binding become tiles (the blocks two products cut from one operand are then merged) |
//! | 1 | [`split::reductions`] | `split.rs` | long reductions become partials plus a combining reduction |
//! | 2 | [`split::products`] | `split.rs` | long-K products with few output blocks become split-K partials plus a sum |
//! | 3 | [`Uses::count`], [`materialize::initial`] | `materialize.rs` | use counts; which entries get a buffer by their kind and uses |
//! | 4 | [`implicit::products`] | `implicit.rs` | which convolution products fetch their A from the image (implicit GEMM) |
//! | 5 | [`materialize::inputs`] | `materialize.rs` | buffers for what hand-written kernels, unfolds and broadcasts read; which folds stay inlined |
//! | 6 | [`limits::split_fan_in`] | `limits.rs` | fused kernels that would bind too many buffers are cut |
//! | 7 | [`epilogue::fuse`] | `epilogue.rs` | which products write their consumer chain's output directly |
//! | 8 | [`texture::residents`], [`limits::check_buffers`] | `texture.rs`, `limits.rs` | which values are computed straight into a product's operand texture; every buffer fits |
//! | 9 | [`group::siblings`] | `group.rs` | which values read from one product run together in one kernel |
//! | 10 | [`emit::kernels`] | `emit.rs` | one kernel per materialized entry (or group) and effect: its WGSL, bindings and grid; a group past the binding limit falls back to a kernel per member, a prefix of a buffer is bound as a range, a product past the workgroup limit is `Error::Unsupported` |
//! | 11 | [`slots::allocate`] | `slots.rs` | liveness: which intermediates share a buffer, and every binding's byte range |

pub(crate) mod cse;
pub(crate) mod emit;
pub(crate) mod epilogue;
pub(crate) mod group;
pub(crate) mod implicit;
pub(crate) mod limits;
pub(crate) mod materialize;
pub(crate) mod product;
pub(crate) mod slots;
pub(crate) mod split;
pub(crate) mod texture;
pub(crate) mod tile;

#[cfg(test)]
pub(crate) mod testing;

use std::collections::{HashMap, HashSet};

use crate::canon::{CanonEffect, Entry, Structure};
use crate::error::Result;
use crate::graph::Op;

pub(crate) use emit::ScalarSource;
pub(crate) use epilogue::Epilogue;
pub(crate) use group::Group;
pub(crate) use slots::{Binding, Bound, Resource, StepSpec};
pub(crate) use texture::Resident;

/// What the planner knows of a device: the limits and features its
/// decisions depend on.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The adapter's name, for errors.
    pub adapter: String,
    /// Matmuls use the subgroup kernels (`shaders/matmul_subgroup_*.wgsl`);
    /// their features include 64-bit integers, which paired stores use too.
    pub subgroup_matmul: bool,
    /// Big matmuls read their operands from textures where the shapes allow
    /// (a CPU adapter).
    pub texture_matmul: bool,
    /// The adapter is a CPU (lavapipe): a workgroup costs much, a scattered
    /// load no more than a contiguous one.
    pub cpu: bool,
    /// Elements one storage binding holds (see [`binding_chunk`]).
    pub chunk: usize,
    /// Storage buffers one kernel may bind.
    pub max_bindings: usize,
    /// The largest buffer the adapter allocates, in bytes.
    pub max_buffer_size: u64,
    pub max_workgroups_per_dimension: u32,
    /// The biggest operand texture side: the adapter's texture limit, and
    /// the workgroup limit (a pack kernel dispatches one workgroup per 8
    /// texture rows).
    pub max_texture_side: u32,
}

impl Target {
    /// How generated kernels bind their inputs here.
    pub(crate) fn binding_rules(&self) -> crate::codegen::BindingRules {
        crate::codegen::BindingRules {
            chunk: self.chunk,
            uniform_inputs: self.cpu,
            quads: self.cpu,
        }
    }

    /// How an element-wise kernel stores entry `out` here.
    pub(crate) fn store_form(&self, entries: &[Entry], out: usize) -> crate::codegen::StoreForm {
        crate::codegen::store_form(entries, out, self.binding_rules(), self.subgroup_matmul)
    }

    pub(crate) fn of(device: &crate::Device) -> Target {
        let limits = &device.inner.limits;
        Target {
            adapter: device.adapter_name().to_string(),
            subgroup_matmul: device.inner.subgroup_matmul,
            texture_matmul: device.inner.texture_matmul,
            cpu: device.is_cpu(),
            chunk: binding_chunk(limits),
            max_bindings: limits.max_storage_buffers_per_shader_stage as usize,
            max_buffer_size: limits.max_buffer_size,
            max_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_texture_side: limits
                .max_texture_dimension_2d
                .min(limits.max_compute_workgroups_per_dimension),
        }
    }
}

/// Elements per storage binding: the adapter's limit, rounded down to keep
/// every range offset aligned.
pub(crate) fn binding_chunk(limits: &wgpu::Limits) -> usize {
    let limit = limits.max_storage_buffer_binding_size;
    let align = (limits.min_storage_buffer_offset_alignment as u64).max(4);
    ((limit / align * align) / 4).max(64) as usize
}

/// An entry replaced by two steps: a partial result of `parts` parts into
/// the synthetic entry `partial`, then `combine`, which reduces the parts
/// into the original entry's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Split {
    pub partial: usize,
    pub combine: usize,
    pub parts: usize,
}

/// The graph the passes work on: the structure's entries (which a
/// rewriting pass may replace by more), then the synthetic entries that the
/// split passes append (a synthetic entry is never a root, and only the
/// kernels of its original read or write it).
pub(crate) struct Graph {
    pub entries: Vec<Entry>,
    /// The structure's entry each entry is, where it is one: a replay binds
    /// buffers, uploads, seeds and constants by the structure's indices.
    pub origin: Vec<Option<usize>>,
    pub synthetic_from: usize,
    pub roots: Vec<usize>,
    pub effects: Vec<CanonEffect>,
    pub split_reductions: HashMap<usize, Split>,
    pub split_products: HashMap<usize, Split>,
}

impl Graph {
    pub(crate) fn new(structure: &Structure) -> Graph {
        Graph {
            entries: structure.entries.clone(),
            origin: (0..structure.entries.len()).map(Some).collect(),
            synthetic_from: structure.entries.len(),
            roots: structure.roots.clone(),
            effects: structure.effects.clone(),
            split_reductions: HashMap::new(),
            split_products: HashMap::new(),
        }
    }

    /// The entries other than the split passes' scratch entries: the
    /// structure's, or what the tile pass rewrote them into.
    pub(crate) fn ordinary(&self) -> std::ops::Range<usize> {
        0..self.synthetic_from
    }

    /// The parts split-K cuts product `m` into (1 when it is not split).
    pub(crate) fn parts_of(&self, m: usize) -> usize {
        self.split_products.get(&m).map_or(1, |s| s.parts)
    }

    /// Points the roots and the effects at the entries their entries became
    /// (`map[old] = new`) after a pass renumbered the entries.
    pub(crate) fn renumber(&mut self, map: &[usize]) {
        for r in &mut self.roots {
            *r = map[*r];
        }
        for effect in &mut self.effects {
            match effect {
                CanonEffect::Optim {
                    param, grad, state, ..
                } => {
                    *param = map[*param];
                    *grad = map[*grad];
                    for s in state {
                        *s = map[*s];
                    }
                }
                CanonEffect::Assign { target, value } => {
                    *target = map[*target];
                    *value = map[*value];
                }
            }
        }
    }

    /// What the effects read from the graph: each optimizer step's
    /// gradient, each assignment's value.
    pub(crate) fn effect_reads(&self) -> Vec<usize> {
        self.effects
            .iter()
            .map(|eff| match eff {
                CanonEffect::Optim { grad, .. } => *grad,
                CanonEffect::Assign { value, .. } => *value,
            })
            .collect()
    }
}

/// How often each entry is read, by whom, and which entries are roots.
pub(crate) struct Uses {
    /// Entries that read each entry (one that names it twice counts once).
    pub count: Vec<usize>,
    /// The distinct entries that read each entry, in entry order.
    pub consumers: Vec<Vec<usize>>,
    pub is_root: Vec<bool>,
}

impl Uses {
    pub(crate) fn count(graph: &Graph) -> Uses {
        let n = graph.entries.len();
        let mut count = vec![0usize; n];
        let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
        // A split's partial step reads what its original reads, in the
        // original's place: counted twice, a reduction's inlined input
        // (batch norm's squared deviations) would get a buffer of its own.
        let partials: HashSet<usize> = graph
            .split_reductions
            .values()
            .chain(graph.split_products.values())
            .map(|s| s.partial)
            .collect();
        for (i, e) in graph.entries.iter().enumerate() {
            if partials.contains(&i) {
                continue;
            }
            // A consumer that names an input twice (`x * x`) computes it
            // once: kernels memoise each value per element.
            for c in e.op.inputs() {
                if !consumers[c].contains(&i) {
                    consumers[c].push(i);
                    count[c] += 1;
                }
            }
        }
        let mut is_root = vec![false; n];
        for &r in &graph.roots {
            is_root[r] = true;
        }
        Uses {
            count,
            consumers,
            is_root,
        }
    }
}

/// Which entries get a buffer, and how products and the values around them
/// are fused: the outcome of passes 3 to 9.
pub(crate) struct Fusion {
    /// Whether each entry is materialized (computed once into memory: a
    /// buffer, or an operand texture for a [`Resident`]); every other
    /// element-wise entry is recomputed inside the kernels that read it.
    pub mat: Vec<bool>,
    /// Products that fetch their A (a `ConvRows`) from its image.
    pub implicit: HashSet<usize>,
    /// Products whose kernel writes a later entry, by that entry.
    pub epilogues: HashMap<usize, Epilogue>,
    /// Values computed straight into operand textures.
    pub residents: HashMap<usize, Resident>,
    /// Values computed together by one kernel, and each member's group.
    pub groups: Vec<Group>,
    pub group_of: HashMap<usize, usize>,
}

impl Fusion {
    /// The materialized entry a hand-written kernel reads for `i` as a plain
    /// contiguous buffer: `i` itself, or what it reshapes (see
    /// [`buffer_of`]).
    pub(crate) fn buffer_of(&self, entries: &[Entry], i: usize) -> Option<usize> {
        buffer_of(entries, &self.mat, i)
    }
}

/// The materialized entry that `i` reaches through reshapes only (none
/// when a strided view or an unmaterialized value is in the way).
pub(crate) fn buffer_of(entries: &[Entry], mat: &[bool], mut i: usize) -> Option<usize> {
    loop {
        if mat[i] {
            return Some(i);
        }
        i = reshaped(&entries[i])?;
    }
}

/// What `e` reshapes, when it is a view that reads its input in order.
pub(crate) fn reshaped(e: &Entry) -> Option<usize> {
    match &e.op {
        Op::View(spec, child) if crate::codegen::is_reshape(spec, &e.shape) => Some(*child),
        _ => None,
    }
}

/// Everything a plan is, before any GPU object exists.
pub(crate) struct PlanSpec {
    /// The kernels with their bindings, in dispatch order.
    pub steps: Vec<StepSpec>,
    pub resources: Vec<Resource>,
    /// The resource holding each root, in root order.
    pub root_resources: Vec<usize>,
    /// Resources written in place by effects.
    pub written: Vec<usize>,
}

impl PlanSpec {
    /// Matmuls over operand textures in this plan.
    pub(crate) fn texture_products(&self) -> u64 {
        self.steps
            .iter()
            .filter(|s| s.kernel.texture_product)
            .count() as u64
    }

    /// Dispatches that pack a matmul operand into a texture.
    pub(crate) fn operand_packs(&self) -> u64 {
        self.steps.iter().filter(|s| s.kernel.pack).count() as u64
    }
}

/// The planner's passes, in order (see the table at the top of this file).
pub(crate) fn compile(target: &Target, structure: &Structure) -> Result<PlanSpec> {
    let (graph, uses, fusion) = decide(target, structure)?;
    let kernels = emit::kernels(&graph, &fusion, target)?;
    slots::allocate(graph, &uses, &fusion, kernels, target)
}

/// Passes 0 to 9: everything decided before kernels are emitted.
pub(crate) fn decide(target: &Target, structure: &Structure) -> Result<(Graph, Uses, Fusion)> {
    let mut graph = Graph::new(structure);
    cse::merge(&mut graph);
    limits::check_sizes(&graph, target)?;
    limits::check_custom(&graph, target)?;
    tile::products(&mut graph, target);
    // Blocks cut from one big operand by two products (a convolution's
    // unfolded input is B of its forward product and A of its weight
    // gradient) are the same views: computed once.
    cse::merge(&mut graph);
    split::reductions(&mut graph);
    split::products(&mut graph, target);
    let uses = Uses::count(&graph);
    let mut mat = materialize::initial(&graph, &uses);
    let implicit = implicit::products(&graph, &uses, &mut mat, target);
    materialize::inputs(&graph, &uses, &implicit, &mut mat);
    limits::split_fan_in(&graph, &mut mat, target)?;
    let epilogues = epilogue::fuse(&graph, &uses, &implicit, &mut mat, target);
    let mut fusion = Fusion {
        mat,
        implicit,
        epilogues,
        residents: HashMap::new(),
        groups: Vec::new(),
        group_of: HashMap::new(),
    };
    fusion.residents = texture::residents(&graph, &uses, &fusion, target);
    limits::check_buffers(&graph, &fusion.mat, target)?;
    (fusion.groups, fusion.group_of) = group::siblings(&graph, &uses, &fusion, target);
    for group in &fusion.groups {
        for m in &group.members {
            fusion.mat[*m] = group.stored.contains(m);
        }
    }
    Ok((graph, uses, fusion))
}
