//! Runs realizations: canonicalize the pending graph, find or compile its
//! plan (`plan::compile`, then pipelines and bind groups here), and replay
//! it: one command buffer, one submit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::ahead::{AheadBind, AheadKernel};
use crate::canon::{canonicalize, Bindings, Effect, Entry};
use crate::device::{lock, BindResource, Counters, Device, OperandTexture, PipelineEntry};
use crate::error::{Error, Result};
use crate::graph::{numel, DType, Node};
use crate::plan::{self, Binding, Bound, Resource, ScalarSource, Target};
use crate::pool::{BufferKind, Storage};

/// One binding of a step, with its GPU object where it has one of its own.
enum StepBind {
    Buffer(Binding),
    Texture(Arc<OperandTexture>),
    Scalars(Storage, ScalarSource),
}

struct Step {
    /// What the kernel computes, for `CINDER_PROFILE` output.
    label: String,
    pipeline: Arc<PipelineEntry>,
    binds: Vec<StepBind>,
    workgroups: (u32, u32, u32),
    /// Writes a realized tensor in place: profiling leaves it out.
    in_place: bool,
}

impl Step {
    /// Binds this step's resources, in binding order, and records its
    /// dispatch.
    fn dispatch(&self, device: &Device, storages: &[Storage], pass: &mut wgpu::ComputePass<'_>) {
        let resources: Vec<BindResource<'_>> = self
            .binds
            .iter()
            .map(|b| match b {
                StepBind::Buffer(b) => {
                    let s = &storages[b.resource];
                    BindResource::Buffer {
                        id: s.id(),
                        offset: b.offset,
                        size: b.size,
                        buffer: s.buffer(),
                    }
                }
                StepBind::Texture(t) => BindResource::Texture(t),
                StepBind::Scalars(s, _) => BindResource::Buffer {
                    id: s.id(),
                    offset: 0,
                    size: s.size_bytes(),
                    buffer: s.buffer(),
                },
            })
            .collect();
        let bg = device.bind_group(&self.pipeline, &resources);
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, Some(bg.as_ref()), &[]);
        let (x, y, z) = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// A compiled plan: its steps' pipelines and scalar buffers, and the
/// resources they bind.
pub(crate) struct Plan {
    steps: Vec<Step>,
    resources: Vec<Resource>,
    /// Resource holding each root, in root order.
    root_resources: Vec<usize>,
    /// Resources written in place by effects.
    written: Vec<usize>,
    /// Its matmuls over operand textures and its pack steps (for [`crate::Stats`]).
    texture_products: u64,
    operand_packs: u64,
    /// The buffers this plan used last time, asked for again so that the
    /// bind-group cache hits.
    last_ids: Mutex<Vec<Option<u64>>>,
}

impl Plan {
    /// The GPU objects of a planned realization: pipelines, operand
    /// textures, scalar buffers.
    fn build(device: &Device, spec: plan::PlanSpec) -> Result<Plan> {
        let target = Target::of(device);
        let texture_products = spec.texture_products();
        let operand_packs = spec.operand_packs();
        let mut steps = Vec::with_capacity(spec.steps.len());
        // One texture per (size, tag) for the whole plan: a pack (or a
        // producer) and the product reading it must hold the same texture,
        // whatever the device's texture cache evicts between their lookups.
        let mut textures: HashMap<(u32, u32, u8), Arc<OperandTexture>> = HashMap::new();
        let kernels: Vec<_> = spec
            .steps
            .iter()
            .map(|step| {
                let k = &step.kernel;
                (k.name.as_str(), &k.source, k.constants.as_slice())
            })
            .collect();
        let new_kernels = device.new_kernels(&kernels);
        if let Some(ahead) = &device.inner.ahead {
            ahead.send(
                new_kernels
                    .iter()
                    .filter_map(|(i, _)| spec.steps.get(*i).map(ahead_kernel))
                    .collect(),
            );
        }
        device.prepare_pipelines(&kernels, &new_kernels)?;
        for step in spec.steps {
            let kernel = step.kernel;
            let pipeline = device.pipeline(&kernel.name, &kernel.source, &kernel.constants)?;
            let mut binds = Vec::with_capacity(step.bound.len());
            for bound in step.bound {
                binds.push(match bound {
                    Bound::Buffer(b) => StepBind::Buffer(b),
                    Bound::Texture { width, height, tag } => StepBind::Texture(
                        textures
                            .entry((width, height, tag))
                            .or_insert_with(|| device.operand_texture(width, height, tag))
                            .clone(),
                    ),
                    Bound::Scalars(source) => {
                        let storage = match &source {
                            ScalarSource::Words(words) => words_storage(device, words)?,
                            other => device.alloc(
                                4 * scalar_words(other) as u64,
                                BufferKind::Scalars,
                                None,
                            )?,
                        };
                        StepBind::Scalars(storage, source)
                    }
                });
            }
            steps.push(Step {
                label: kernel.label,
                pipeline,
                binds,
                workgroups: kernel.dispatch.workgroups(&target),
                in_place: kernel.in_place,
            });
        }
        Counters::bump(&device.inner.counters.plans_compiled, 1);
        let count = spec.resources.len();
        Ok(Plan {
            steps,
            resources: spec.resources,
            root_resources: spec.root_resources,
            written: spec.written,
            texture_products,
            operand_packs,
            last_ids: Mutex::new(vec![None; count]),
        })
    }
}

/// What compiling `step`'s kernel ahead needs to know of it.
fn ahead_kernel(step: &plan::StepSpec) -> AheadKernel {
    let k = &step.kernel;
    AheadKernel {
        label: k.name.clone(),
        source: k.source.clone(),
        constants: k.constants.clone(),
        binds: step
            .bound
            .iter()
            .map(|b| match b {
                Bound::Texture { width, height, .. } => AheadBind::Texture {
                    width: *width,
                    height: *height,
                },
                Bound::Buffer(b) => AheadBind::Buffer { bytes: b.size },
                Bound::Scalars(source) => AheadBind::Buffer {
                    bytes: crate::pool::padded_size(4 * scalar_words(source) as u64),
                },
            })
            .collect(),
    }
}

/// The words a scalars buffer holds.
fn scalar_words(source: &ScalarSource) -> usize {
    match source {
        ScalarSource::Seeds(s) => 2 * s.len(),
        ScalarSource::Words(w) => w.len(),
        ScalarSource::MatmulEpilogue { dims, seeds } => dims.len() + 2 * seeds.len(),
        ScalarSource::Hyper { hypers, .. } => hypers + 1,
    }
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
fn const_bits(dtype: DType, v: f64) -> u32 {
    match dtype {
        DType::F32 => (v as f32).to_bits(),
        DType::I32 => v as i64 as i32 as u32,
        DType::U32 => v as u64 as u32,
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
        for step in self.steps.iter().filter(|s| !s.in_place) {
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
                Resource::External(i) => bind
                    .externals
                    .get(i)
                    .ok_or_else(|| Error::Gpu(format!("internal: entry {i} has no buffer")))?
                    .clone(),
                Resource::Upload(i) => {
                    let data = bind
                        .uploads
                        .get(i)
                        .ok_or_else(|| Error::Gpu(format!("internal: entry {i} has no upload")))?;
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
            for b in &step.binds {
                let StepBind::Scalars(buf, src) = b else {
                    continue;
                };
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
                    // Written once, when the plan was built.
                    ScalarSource::Words(_) => continue,
                    ScalarSource::Hyper { effect, n, .. } => {
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
        let aged = lock(&self.inner.pool).next_epoch();
        self.forget_buffers(&aged);
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
        let cached = lock(&self.inner.caches)
            .plans
            .get(&canon.structure)
            .cloned();
        let plan = match cached {
            Some(p) => {
                Counters::bump(&self.inner.counters.plan_hits, 1);
                p
            }
            None => {
                let spec = plan::compile(&Target::of(self), &canon.structure)?;
                let p = Arc::new(Plan::build(self, spec)?);
                let evicted = lock(&self.inner.caches)
                    .plans
                    .push(canon.structure.clone(), p.clone());
                if evicted
                    .as_ref()
                    .is_some_and(|(key, _)| *key != canon.structure)
                {
                    Counters::bump(&self.inner.counters.plan_evictions, 1);
                }
                // (The evicted plan is dropped here, outside the cache's lock:
                // its scalar buffers go back to the pool.)
                drop(evicted);
                p
            }
        };
        let readbacks = plan.execute(self, &canon.structure.entries, &canon.bind, read)?;
        self.take_gpu_error()?;
        let mut out = Vec::with_capacity(read.len());
        for (k, &root) in read.iter().enumerate() {
            let e = &canon.structure.entries[canon.structure.roots[root]];
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
        lock(&self.inner.caches)
            .pipelines
            .iter()
            .map(|((source, constants), _)| format!("{}{constants}", source.text()))
            .collect()
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
}
