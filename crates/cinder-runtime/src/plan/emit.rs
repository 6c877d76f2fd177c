//! Pass 10: kernel emission. One kernel per materialized entry, in entry
//! order (children first), then one per effect: its WGSL, what it binds in
//! binding order, and its grid.

use super::epilogue::Epilogue;
use super::product::{matmul_kernel, operand_sources};
use super::texture::Resident;
use super::{Fusion, Graph, Group, Target};
use crate::canon::CanonEffect;
use crate::codegen::{self, Generated, InputForm, ReduceForm, StoreForm, ELEMENTWISE_WG};
use crate::error::{Error, Result};
use crate::graph::{numel, Op, ReduceOp};
use crate::kernels::{self, KernelSource};

/// Where a kernel's scalars buffer gets its words at replay.
#[derive(Clone, Debug)]
pub(crate) enum ScalarSource {
    /// Two words per entry: a `Rand`'s seed or a `Const`'s bits.
    Seeds(Vec<usize>),
    /// A matmul's shape words, then its epilogue's constants and seeds.
    MatmulEpilogue { dims: Vec<u32>, seeds: Vec<usize> },
    /// Fixed words (a matmul's shape), written once when the plan is built.
    Words(Vec<u32>),
    /// An optimizer effect's `hypers` hyper-parameters, then the element
    /// count `n`.
    Hyper {
        effect: usize,
        hypers: usize,
        n: u32,
    },
}

/// How an entry's buffer is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// In consecutive ranges of at most one binding each: generated kernels
    /// read a big tensor through a helper that picks the range.
    Chunked,
    /// Whole, to its padded size: hand-written kernels (matmul, optimizers)
    /// and generated ones reading vec4s read whole 16-byte blocks.
    Whole,
    /// Whole, in one binding rounded up to 16 bytes: an input a generated
    /// kernel reads as a uniform buffer of vec4s.
    Uniform,
    /// `len` elements from element `start` (a multiple of a binding's
    /// elements, so the offset is aligned), to their padded size.
    Range { start: usize, len: usize },
}

/// One binding (or run of bindings) of a kernel, in binding order.
#[derive(Clone, Debug)]
pub(crate) enum Bind {
    Entry {
        entry: usize,
        layout: Layout,
    },
    /// An operand texture, by size and tag (see `Device::operand_texture`).
    Texture {
        width: u32,
        height: u32,
        tag: u8,
    },
    Scalars(ScalarSource),
}

/// How many workgroups a kernel dispatches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dispatch {
    /// Enough workgroups of `wg` threads for `items` threads, folded into
    /// two dimensions where one would exceed the adapter's limit.
    Threads {
        items: u64,
        wg: u32,
    },
    Groups(u32, u32, u32),
}

impl Dispatch {
    pub(crate) fn workgroups(self, target: &Target) -> (u32, u32, u32) {
        match self {
            Dispatch::Groups(x, y, z) => (x, y, z),
            Dispatch::Threads { items, wg } => {
                let groups = items.div_ceil(wg as u64).max(1);
                let max = target.max_workgroups_per_dimension.max(1) as u64;
                if groups <= max {
                    (groups as u32, 1, 1)
                } else {
                    let y = groups.div_ceil(max);
                    let x = groups.div_ceil(y);
                    (x as u32, y as u32, 1)
                }
            }
        }
    }
}

/// A kernel to dispatch: everything but its GPU objects.
pub(crate) struct Kernel {
    /// The pipeline's label (what `CINDER_DUMP_KERNELS` names files by).
    pub name: String,
    /// The step's label, for `CINDER_PROFILE`: what it computes, and its shape.
    pub label: String,
    pub source: KernelSource,
    pub constants: Vec<(String, f64)>,
    pub binds: Vec<Bind>,
    pub dispatch: Dispatch,
    /// Entries it reads from buffers, and the entries it writes (none for a
    /// pack, which writes a texture): what liveness needs.
    pub reads: Vec<usize>,
    pub outputs: Vec<usize>,
    /// It writes a realized tensor in place (an optimizer step, an
    /// assignment): running it twice would apply it twice.
    pub in_place: bool,
    /// A matmul over operand textures, and a dispatch packing an operand
    /// into one (for [`crate::Stats`]).
    pub texture_product: bool,
    pub pack: bool,
}

impl Kernel {
    /// A generated kernel: its inputs in chunks, then its output (a buffer
    /// in chunks, or a texture bound first), then its scalars.
    fn generated(name: &str, generated: Generated, output: usize, wg: u32) -> Kernel {
        let mut binds = input_binds(&generated);
        binds.push(Bind::Entry {
            entry: output,
            layout: Layout::Chunked,
        });
        if !generated.seeds.is_empty() {
            binds.push(Bind::Scalars(ScalarSource::Seeds(generated.seeds)));
        }
        Kernel {
            name: name.to_string(),
            label: String::new(),
            source: KernelSource::Generated(generated.source),
            constants: Vec::new(),
            binds,
            dispatch: Dispatch::Threads {
                items: generated.items,
                wg,
            },
            reads: generated.inputs,
            outputs: vec![output],
            in_place: false,
            texture_product: false,
            pack: false,
        }
    }
}

/// A generated kernel's input bindings, in order: uniform buffers whole,
/// storage buffers in chunks, or whole where read a vec4 at a time.
fn input_binds(generated: &Generated) -> Vec<Bind> {
    generated
        .inputs
        .iter()
        .zip(&generated.forms)
        .map(|(&entry, &form)| Bind::Entry {
            entry,
            layout: match form {
                InputForm::Storage => Layout::Chunked,
                InputForm::Uniform => Layout::Uniform,
                InputForm::Quads => Layout::Whole,
            },
        })
        .collect()
}

/// How a kernel that reads `operand` as a plain buffer binds `buffer`, the
/// materialized entry under its reshapes: whole, or only the prefix it
/// reads (a view of the first rows, a tile of a big product).
fn operand_layout(entries: &[crate::canon::Entry], operand: usize, buffer: usize) -> Layout {
    let len = numel(&entries[operand].shape);
    if len < numel(&entries[buffer].shape) {
        Layout::Range { start: 0, len }
    } else {
        Layout::Whole
    }
}

/// How a reduction of `outputs` results, `span` elements in `parts` parts
/// each, lays out its threads on this target.
fn reduce_form(
    target: &Target,
    op: ReduceOp,
    span: usize,
    parts: usize,
    outputs: usize,
) -> ReduceForm {
    ReduceForm::choose(op, span, parts, outputs, target.cpu, target.subgroup_matmul)
}

/// The kernels, in dispatch order.
pub(crate) fn kernels(graph: &Graph, fusion: &Fusion, target: &Target) -> Result<Vec<Kernel>> {
    let entries = &graph.entries;
    let mut out: Vec<Kernel> = Vec::new();
    for i in graph.ordinary() {
        if !fusion.mat[i]
            || matches!(entries[i].op, Op::External | Op::Upload)
            || numel(&entries[i].shape) == 0
        {
            continue;
        }
        if let Some(&g) = fusion.group_of.get(&i) {
            let group = &fusion.groups[g];
            if i == group.last() {
                out.push(group_kernel(graph, fusion, target, group));
            }
            continue;
        }
        if let Some(epilogue) = fusion.epilogues.get(&i) {
            epilogue_product(&mut out, graph, fusion, target, i, epilogue)?;
            continue;
        }
        match &entries[i].op {
            Op::Reduce { op, axes, input } => {
                out.extend(reduce_kernels(graph, fusion, target, i, *op, axes, *input));
            }
            Op::Concat { axis, inputs } => {
                out.extend(concat_copies(graph, fusion, i, *axis, inputs)?);
            }
            Op::Custom(call, inputs) => out.push(custom_kernel(graph, fusion, i, call, inputs)?),
            Op::Matmul { .. } => matmul_kernels(&mut out, graph, fusion, target, i)?,
            _ => match fusion.residents.get(&i) {
                Some(resident) => out.push(texels_kernel(graph, fusion, target, i, resident)),
                None => out.push(elementwise(graph, fusion, target, i)),
            },
        }
    }
    for (ei, effect) in graph.effects.iter().enumerate() {
        out.extend(effect_kernels(graph, fusion, target, ei, effect)?);
    }
    for k in &mut out {
        if k.label.is_empty() {
            let shape = k
                .outputs
                .first()
                .map(|&o| entries[o].shape.clone())
                .unwrap_or_default();
            k.label = format!("{} -> {shape:?}", k.name);
        }
    }
    Ok(out)
}

/// Entry `i`, a chain of element-wise ops over a product, as the product's
/// kernel with the chain spliced in as its store (and whatever packs its
/// operands need, pushed first).
fn epilogue_product(
    out: &mut Vec<Kernel>,
    graph: &Graph,
    fusion: &Fusion,
    target: &Target,
    i: usize,
    epilogue: &Epilogue,
) -> Result<()> {
    let entries = &graph.entries;
    let mat = |x: usize| fusion.mat[x];
    let (a, b, k) = matmul_kernel(target, entries, epilogue.matmul, 1, [false; 2], false)
        .ok_or_else(|| Error::Gpu("internal: epilogue of a non-matmul".into()))?;
    let generated = codegen::matmul_epilogue(
        entries,
        &mat,
        target.binding_rules(),
        epilogue.matmul,
        &epilogue.chain,
        k.dims.len(),
    );
    let source =
        KernelSource::Generated(kernels::with_store(k.variant.shader(), &generated.source)?);
    let kernel = product(
        out,
        graph,
        fusion,
        target,
        ProductKernel {
            name: "matmul+epilogue",
            source,
            kernel: k,
            operands: [a, b],
            output: i,
            epilogue: Some(generated),
        },
    )?;
    out.push(kernel);
    Ok(())
}

/// Reduction `i`'s kernels: one, or partial results and their combination
/// where planning split a long reduction.
fn reduce_kernels(
    graph: &Graph,
    fusion: &Fusion,
    target: &Target,
    i: usize,
    op: ReduceOp,
    axes: &[usize],
    input: usize,
) -> Vec<Kernel> {
    let entries = &graph.entries;
    let mat = |x: usize| fusion.mat[x];
    let Some(split) = graph.split_reductions.get(&i) else {
        let span = axes.iter().map(|&a| entries[input].shape[a]).product();
        let form = reduce_form(target, op, span, 1, numel(&entries[i].shape));
        let generated = codegen::reduce(
            entries,
            &mat,
            target.binding_rules(),
            i,
            i,
            op,
            axes,
            input,
            1,
            form,
        );
        return vec![Kernel::generated(
            &format!("reduce {op:?}"),
            generated,
            i,
            form.threads(),
        )];
    };
    let span = axes.iter().map(|&a| entries[input].shape[a]).product();
    let partial_form = reduce_form(target, op, span, split.parts, numel(&entries[i].shape));
    let partials = codegen::reduce(
        entries,
        &mat,
        target.binding_rules(),
        i,
        split.partial,
        op,
        axes,
        input,
        split.parts,
        partial_form,
    );
    let form = reduce_form(target, op, split.parts, 1, numel(&entries[i].shape));
    let combine = codegen::reduce(
        entries,
        &mat,
        target.binding_rules(),
        split.combine,
        i,
        op,
        &[1],
        split.partial,
        1,
        form,
    );
    vec![
        Kernel::generated(
            &format!("reduce {op:?} partials"),
            partials,
            split.partial,
            partial_form.threads(),
        ),
        Kernel::generated(&format!("reduce {op:?}"), combine, i, form.threads()),
    ]
}

/// Product `i`'s kernels: its operands' packs (pushed by `product`), the
/// product, and where planning split K, the sum of the parts.
fn matmul_kernels(
    out: &mut Vec<Kernel>,
    graph: &Graph,
    fusion: &Fusion,
    target: &Target,
    i: usize,
) -> Result<()> {
    let entries = &graph.entries;
    let split = graph.split_products.get(&i).copied();
    let parts = split.map_or(1, |s| s.parts);
    let in_texture = operand_sources(entries, &fusion.implicit, i).map(|x| {
        x.and_then(|x| fusion.buffer_of(entries, x))
            .is_some_and(|j| fusion.residents.contains_key(&j))
    });
    let (a, b, k) = matmul_kernel(
        target,
        entries,
        i,
        parts,
        in_texture,
        fusion.implicit.contains(&i),
    )
    .ok_or_else(|| {
        Error::Gpu("internal: no matmul kernel (or an implicit one without windows)".into())
    })?;
    let name = match split {
        None => "matmul".to_string(),
        Some(s) => format!("matmul split-K x{}", s.parts),
    };
    let kernel = product(
        out,
        graph,
        fusion,
        target,
        ProductKernel {
            name: &name,
            source: KernelSource::Shader(k.variant.shader()),
            kernel: k,
            operands: [a, b],
            output: split.map_or(i, |s| s.partial),
            epilogue: None,
        },
    )?;
    out.push(kernel);
    if let Some(split) = split {
        let mat = |x: usize| fusion.mat[x];
        let form = reduce_form(
            target,
            ReduceOp::Sum,
            split.parts,
            1,
            numel(&entries[i].shape),
        );
        let sum = codegen::reduce(
            entries,
            &mat,
            target.binding_rules(),
            split.combine,
            i,
            ReduceOp::Sum,
            &[0],
            split.partial,
            1,
            form,
        );
        out.push(Kernel::generated("split-K sum", sum, i, form.threads()));
    }
    Ok(())
}

/// Entry `i`'s fused element-wise kernel writing straight into the operand
/// texture that products read it from.
fn texels_kernel(
    graph: &Graph,
    fusion: &Fusion,
    target: &Target,
    i: usize,
    resident: &Resident,
) -> Kernel {
    let mat = |x: usize| fusion.mat[x];
    let generated = codegen::elementwise_texels(
        &graph.entries,
        &mat,
        target.binding_rules(),
        i,
        resident.cols,
        resident.width,
        resident.height,
    );
    let mut kernel = Kernel::generated(
        "fused elementwise into texture",
        generated,
        i,
        ELEMENTWISE_WG,
    );
    // The texture is binding 0, in place of a buffer output.
    kernel
        .binds
        .retain(|b| !matches!(b, Bind::Entry { entry, .. } if *entry == i));
    kernel.binds.insert(
        0,
        Bind::Texture {
            width: resident.width,
            height: resident.height,
            tag: resident.tag,
        },
    );
    kernel
}

/// A concatenation's kernels: each input copied into its region of entry
/// `i` by the one copy kernel (`shaders/copy_region.wgsl`).
fn concat_copies(
    graph: &Graph,
    fusion: &Fusion,
    i: usize,
    axis: usize,
    inputs: &[usize],
) -> Result<Vec<Kernel>> {
    let entries = &graph.entries;
    let shape = &entries[i].shape;
    let inner: usize = shape[axis + 1..].iter().product();
    let mut before = 0;
    let mut kernels = Vec::new();
    for &input in inputs {
        let len = entries[input].shape[axis];
        let count = numel(&entries[input].shape);
        let offset = before * inner;
        before += len;
        if count == 0 {
            continue;
        }
        let buffer = fusion
            .buffer_of(entries, input)
            .ok_or_else(|| Error::Gpu("internal: concatenated input without buffer".into()))?;
        let layout = operand_layout(entries, input, buffer);
        let words = [count, len * inner, shape[axis] * inner, offset].map(|w| w as u32);
        kernels.push(Kernel {
            name: "copy region".to_string(),
            label: format!(
                "concat {:?} into {shape:?} at {offset}",
                entries[input].shape
            ),
            source: KernelSource::Shader(kernels::COPY_REGION),
            constants: Vec::new(),
            binds: vec![
                Bind::Entry {
                    entry: buffer,
                    layout,
                },
                Bind::Entry {
                    entry: i,
                    layout: Layout::Whole,
                },
                Bind::Scalars(ScalarSource::Words(words.to_vec())),
            ],
            dispatch: Dispatch::Threads {
                items: count as u64,
                wg: kernels::COPY_REGION_WG,
            },
            reads: vec![buffer],
            outputs: vec![i],
            in_place: false,
            texture_product: false,
            pack: false,
        });
    }
    Ok(kernels)
}

/// A user's kernel: its inputs and output whole, then its parameters.
fn custom_kernel(
    graph: &Graph,
    fusion: &Fusion,
    i: usize,
    call: &crate::custom::CustomCall,
    inputs: &[usize],
) -> Result<Kernel> {
    let entries = &graph.entries;
    let mut binds = Vec::new();
    let mut reads = Vec::new();
    for &input in inputs {
        let buffer = fusion
            .buffer_of(entries, input)
            .ok_or_else(|| Error::Gpu("internal: custom op input without buffer".into()))?;
        binds.push(Bind::Entry {
            entry: buffer,
            layout: operand_layout(entries, input, buffer),
        });
        reads.push(buffer);
    }
    binds.push(Bind::Entry {
        entry: i,
        layout: Layout::Whole,
    });
    if !call.params.is_empty() {
        binds.push(Bind::Scalars(ScalarSource::Words(call.params.clone())));
    }
    let [x, y, z] = call.workgroups;
    Ok(Kernel {
        name: format!("custom {}", call.name),
        label: String::new(),
        source: match call.writes_private_first {
            true => KernelSource::WritesPrivateFirst(call.source.to_string()),
            false => KernelSource::Generated(call.source.to_string()),
        },
        constants: Vec::new(),
        binds,
        dispatch: Dispatch::Groups(x, y, z),
        reads,
        outputs: vec![i],
        in_place: false,
        texture_product: false,
        pack: false,
    })
}

/// Entry `i`'s fused element-wise kernel.
fn elementwise(graph: &Graph, fusion: &Fusion, target: &Target, i: usize) -> Kernel {
    let entries = &graph.entries;
    let generate = |form| {
        codegen::elementwise_stored(
            entries,
            &|x| fusion.mat[x],
            target.binding_rules(),
            i,
            i,
            false,
            form,
        )
    };
    let form = target.store_form(entries, i);
    let mut generated = generate(form);
    if let (StoreForm::Quads, Some(run)) = (form, codegen::tile_run(&entries[i].shape)) {
        // Tiles where an input lies transposed to the output: its columns
        // then cost one load instead of four. Measured on lavapipe (bench
        // gan), a tile's longer code pays only for a plain transpose
        // (dX^T of [12544, 64]: 1.34 -> 1.12 ms); where loads are saved
        // but others remain (a phase interleave read beside a transposed
        // mask: 36 loads a tile down to 20, 1.65 -> 1.73 ms) or the quads
        // read under guards (which lavapipe skips lane by lane: 1.38 ->
        // 1.84 ms), quads were faster.
        let tiled = generate(StoreForm::Tiles { run });
        if generated.guarded_loads == 0 && 2 * tiled.loads <= 4 * generated.loads {
            generated = tiled;
        }
    }
    Kernel::generated("fused elementwise", generated, i, ELEMENTWISE_WG)
}

/// A group's one kernel (see `group.rs`, which forms only groups whose
/// kernel fits the device's bindings).
fn group_kernel(graph: &Graph, fusion: &Fusion, target: &Target, group: &Group) -> Kernel {
    let (members, stored) = (&group.members, &group.stored);
    let generated = codegen::elementwise_group(
        &graph.entries,
        &|x| fusion.mat[x] && !members.contains(&x),
        target.binding_rules(),
        stored,
    );
    let mut binds = input_binds(&generated);
    binds.extend(stored.iter().map(|&entry| Bind::Entry {
        entry,
        layout: Layout::Chunked,
    }));
    if !generated.seeds.is_empty() {
        binds.push(Bind::Scalars(ScalarSource::Seeds(generated.seeds)));
    }
    Kernel {
        name: "fused elementwise group".to_string(),
        label: String::new(),
        source: KernelSource::Generated(generated.source),
        constants: Vec::new(),
        binds,
        dispatch: Dispatch::Threads {
            items: generated.items,
            wg: ELEMENTWISE_WG,
        },
        reads: generated.inputs,
        outputs: stored.to_vec(),
        in_place: false,
        texture_product: false,
        pack: false,
    }
}

/// A product's kernel, before its operands are bound.
struct ProductKernel<'a> {
    name: &'a str,
    /// The kernel's source (with its epilogue's stores spliced in).
    source: KernelSource,
    kernel: kernels::MatmulKernel,
    /// What it reads for A and B (an implicit A: its image).
    operands: [usize; 2],
    /// The entry it writes (a split product: the partials).
    output: usize,
    epilogue: Option<Generated>,
}

/// A product's kernel: A and B (whole buffers, or textures, each either
/// computed there by its producer or packed by a kernel pushed onto `out`
/// first), C, the shape words (and an epilogue's scalars), then the
/// epilogue's inputs.
fn product(
    out: &mut Vec<Kernel>,
    graph: &Graph,
    fusion: &Fusion,
    target: &Target,
    p: ProductKernel<'_>,
) -> Result<Kernel> {
    let entries = &graph.entries;
    let buffer = |x: usize| {
        fusion
            .buffer_of(entries, x)
            .ok_or_else(|| Error::Gpu("internal: matmul input without buffer".into()))
    };
    let operands = [buffer(p.operands[0])?, buffer(p.operands[1])?];
    // An operand that is a prefix of its buffer (a view of the first rows,
    // a tile of a big product) binds that prefix only.
    let layouts = [0, 1].map(|slot| operand_layout(entries, p.operands[slot], operands[slot]));
    let k = p.kernel;
    let mut binds = Vec::new();
    match &k.packs {
        None => binds.extend(
            operands
                .iter()
                .zip(layouts)
                .map(|(&entry, layout)| Bind::Entry { entry, layout }),
        ),
        Some(packs) => {
            for (slot, (layout, &i)) in packs.iter().zip(&operands).enumerate() {
                if let Some(r) = fusion.residents.get(&i) {
                    // Its producer wrote it there.
                    binds.push(Bind::Texture {
                        width: r.width,
                        height: r.height,
                        tag: r.tag,
                    });
                    continue;
                }
                let texture = Bind::Texture {
                    width: layout.width(),
                    height: layout.height,
                    tag: slot as u8,
                };
                out.push(Kernel {
                    name: "pack operand".to_string(),
                    label: format!("pack {} {:?}", ["A", "B"][slot], entries[i].shape),
                    source: KernelSource::Shader(kernels::PACK_TEXTURE),
                    constants: Vec::new(),
                    binds: vec![
                        texture.clone(),
                        Bind::Entry {
                            entry: i,
                            layout: layouts[slot],
                        },
                        Bind::Scalars(ScalarSource::Words(layout.dims())),
                    ],
                    dispatch: Dispatch::Groups(
                        layout.width().div_ceil(kernels::PACK_TEXTURE_WG),
                        layout.height.div_ceil(kernels::PACK_TEXTURE_WG),
                        1,
                    ),
                    reads: vec![i],
                    outputs: Vec::new(),
                    in_place: false,
                    texture_product: false,
                    pack: true,
                });
                binds.push(texture);
            }
        }
    }
    binds.push(Bind::Entry {
        entry: p.output,
        layout: Layout::Whole,
    });
    let mut reads = operands.to_vec();
    match p.epilogue {
        None => binds.push(Bind::Scalars(ScalarSource::Words(k.dims))),
        Some(epilogue) => {
            binds.push(Bind::Scalars(ScalarSource::MatmulEpilogue {
                dims: k.dims,
                seeds: epilogue.seeds,
            }));
            binds.extend(epilogue.inputs.iter().map(|&entry| Bind::Entry {
                entry,
                layout: Layout::Chunked,
            }));
            reads.extend(epilogue.inputs);
        }
    }
    let (x, y, z) = k.workgroups;
    let max = target.max_workgroups_per_dimension;
    if x > max || y > max || z > max {
        return Err(Error::Unsupported {
            feature: format!(
                "a matmul needing {x}x{y}x{z} workgroups (at most {max} per dimension)"
            ),
            adapter: target.adapter.clone(),
        });
    }
    Ok(Kernel {
        name: p.name.to_string(),
        label: String::new(),
        source: p.source,
        constants: k.constants,
        binds,
        dispatch: Dispatch::Groups(x, y, z),
        reads,
        outputs: vec![p.output],
        in_place: false,
        texture_product: k.packs.is_some(),
        pack: false,
    })
}

/// An optimizer step's kernels (one per binding-sized range of its
/// tensors) or an assignment's kernel.
fn effect_kernels(
    graph: &Graph,
    fusion: &Fusion,
    target: &Target,
    ei: usize,
    effect: &CanonEffect,
) -> Result<Vec<Kernel>> {
    let entries = &graph.entries;
    match effect {
        CanonEffect::Optim {
            kind,
            param,
            grad,
            state,
            hyper_len,
        } => {
            let g = fusion
                .buffer_of(entries, *grad)
                .ok_or_else(|| Error::Gpu("internal: gradient without buffer".into()))?;
            let (source, constants, want_state, want_hyper) = kernels::optimizer(*kind);
            if state.len() != want_state || *hyper_len != want_hyper {
                return Err(Error::invalid(
                    "optimizer step",
                    format!(
                        "{kind:?} takes {want_state} state tensors and {want_hyper} hyper-parameters"
                    ),
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
            // The parameter (read-write) first, then the gradient and state.
            let mut reads = vec![g];
            reads.extend(state.iter().copied());
            let tensors: Vec<usize> = std::iter::once(*param)
                .chain(reads.iter().copied())
                .collect();
            // Tensors over one binding are updated a binding-sized range
            // at a time, each range by a dispatch of its own.
            let ranges: Vec<(usize, usize)> = (0..count.max(1))
                .step_by(target.chunk)
                .map(|start| (start, target.chunk.min(count - start)))
                .collect();
            let whole = ranges.len() == 1;
            Ok(ranges
                .into_iter()
                .map(|(start, len)| {
                    let mut binds: Vec<Bind> = tensors
                        .iter()
                        .map(|&entry| Bind::Entry {
                            entry,
                            layout: if whole {
                                Layout::Whole
                            } else {
                                Layout::Range { start, len }
                            },
                        })
                        .collect();
                    binds.push(Bind::Scalars(ScalarSource::Hyper {
                        effect: ei,
                        hypers: *hyper_len,
                        n: len as u32,
                    }));
                    Kernel {
                        name: format!("{kind:?}"),
                        label: String::new(),
                        source: KernelSource::Shader(source),
                        constants: constants.clone(),
                        binds,
                        dispatch: Dispatch::Threads {
                            items: len.div_ceil(kernels::OPTIM_ELEMENTS_PER_THREAD) as u64,
                            wg: ELEMENTWISE_WG,
                        },
                        reads: reads.clone(),
                        outputs: vec![*param],
                        in_place: true,
                        texture_product: false,
                        pack: false,
                    }
                })
                .collect())
        }
        CanonEffect::Assign {
            target: dest,
            value,
        } => {
            let v = fusion
                .buffer_of(entries, *value)
                .ok_or_else(|| Error::Gpu("internal: assigned value without buffer".into()))?;
            let generated = codegen::elementwise(
                entries,
                &|i| i == v || fusion.mat[i],
                target.binding_rules(),
                v,
                *dest,
                true,
            );
            let mut kernel = Kernel::generated("assign", generated, *dest, ELEMENTWISE_WG);
            kernel.in_place = true;
            Ok(vec![kernel])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{fusion_of_graph, gpu, lavapipe, Builder};
    use super::{Bind, Dispatch, Layout};
    use crate::graph::{BinaryOp, UnaryOp};

    #[test]
    fn an_mlp_layer_is_one_product_and_one_reduction() {
        let mut g = Builder::new();
        let x = g.upload(&[32, 64]);
        let w = g.upload(&[64, 16]);
        let y = g.matmul(x, w);
        let b = g.upload(&[1, 16]);
        let b = g.expand(b, &[32, 16]);
        let z = g.binary(BinaryOp::Add, y, b);
        let r = g.unary(UnaryOp::Relu, z);
        let s = g.sum_all(r);
        let kernels = fusion_of_graph(g, &[s, r], &gpu(), |graph, _, fusion, target| {
            super::kernels(graph, fusion, target).unwrap() // ok: a test; a panic is its failure
        });
        let names: Vec<&str> = kernels.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["matmul+epilogue", "reduce Sum"]);
        // A, B, C whole, the shape words, then the bias in chunks.
        let product = &kernels[0];
        assert!(
            matches!(product.binds[0], Bind::Entry { entry, layout: Layout::Whole } if entry == x)
        );
        assert!(matches!(product.binds[2], Bind::Entry { entry, .. } if entry == r));
        assert!(matches!(product.binds[3], Bind::Scalars(_)));
        assert_eq!(product.binds.len(), 5);
        assert!(matches!(product.dispatch, Dispatch::Groups(..)));
        assert_eq!(kernels[1].reads, vec![r]);
    }

    #[test]
    fn a_cpu_reduces_many_rows_of_a_few_hundred_a_thread_per_row() {
        // A softmax's row sums over 3200 rows of 86: on a CPU, one thread a
        // row; on a GPU a workgroup a row, and on a CPU for 64 rows a
        // subgroup a row (a maximum, which has no subgroup form there, a
        // workgroup).
        use crate::graph::ReduceOp;
        let plan = |rows: usize, op: ReduceOp, target: &super::Target| {
            let mut g = Builder::new();
            let x = g.upload(&[rows, 86]);
            let s = g.reduce(op, &[1], x);
            let kernels = fusion_of_graph(g, &[s], target, |graph, _, fusion, target| {
                super::kernels(graph, fusion, target).unwrap() // ok: a test; a panic is its failure
            });
            assert_eq!(kernels.len(), 1);
            let source = kernels[0].source.text();
            match kernels[0].dispatch {
                Dispatch::Threads { wg, .. } => {
                    assert_eq!(source.contains("subgroupAdd"), wg == 8);
                    assert_eq!(source.contains("var<workgroup>"), wg == 64);
                    wg
                }
                Dispatch::Groups(..) => panic!("a reduction's grid is counted in threads"),
            }
        };
        assert_eq!(plan(3200, ReduceOp::Sum, &lavapipe()), 256);
        assert_eq!(plan(3200, ReduceOp::Sum, &gpu()), 64);
        assert_eq!(plan(64, ReduceOp::Sum, &lavapipe()), 8);
        assert_eq!(plan(64, ReduceOp::Max, &lavapipe()), 64);
    }

    #[test]
    fn texture_products_pack_what_no_producer_computed_into_a_texture() {
        let mut g = Builder::new();
        let a = g.upload(&[1024, 512]);
        let b = g.upload(&[512, 256]);
        let c = g.matmul(a, b);
        let kernels = fusion_of_graph(g, &[c], &lavapipe(), |graph, _, fusion, target| {
            super::kernels(graph, fusion, target).unwrap() // ok: a test; a panic is its failure
        });
        let names: Vec<&str> = kernels.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["pack operand", "pack operand", "matmul"]);
        assert!(kernels[2].texture_product);
        assert!(matches!(kernels[2].binds[0], Bind::Texture { tag: 0, .. }));
        assert!(matches!(kernels[2].binds[1], Bind::Texture { tag: 1, .. }));
    }

    #[test]
    fn grids_fold_into_two_dimensions_past_the_limit() {
        let mut target = gpu();
        target.max_workgroups_per_dimension = 100;
        let d = Dispatch::Threads {
            items: 256 * 1000,
            wg: 256,
        };
        let (x, y, z) = d.workgroups(&target);
        assert!(x <= 100 && y <= 100 && z == 1 && x * y >= 1000);
    }
}
