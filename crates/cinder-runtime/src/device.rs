//! Adapter selection, the wgpu device and queue, and the caches and counters that
//! make a training loop's steady state allocation-free.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;

use crate::error::{Error, Result};
use crate::kernels::KernelSource;
use crate::pool::BufferPool;
use crate::spirv::Spirv;

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

/// What the environment asks for: `CINDER_BACKEND=vulkan|metal|dx12|gl`,
/// `CINDER_ADAPTER=<name substring>`, `CINDER_PORTABLE_KERNELS=1`,
/// `CINDER_BUFFER_MATMUL=1` and `CINDER_COMPILE_AHEAD=0`.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    pub backend: Option<String>,
    pub adapter_name: Option<String>,
    /// Use only kernels that need no optional device features, even where
    /// faster ones would run (`CINDER_PORTABLE_KERNELS=1`); for comparing
    /// kernels and for testing the portable ones on any adapter.
    pub portable_kernels: bool,
    /// On a CPU adapter, read matmul operands straight from their buffers
    /// instead of packing them into textures first (`CINDER_BUFFER_MATMUL=1`);
    /// for comparing the two and for testing the buffer kernels.
    pub buffer_matmul: bool,
    /// The limits to request instead of the adapter's own (which is what
    /// `None` asks for: the full binding and buffer sizes the hardware
    /// offers). `Some(wgpu::Limits::default())` behaves like a browser's
    /// WebGPU: 8 storage buffers per kernel, 128 MiB bindings. Each limit
    /// must be within the adapter's.
    pub limits: Option<wgpu::Limits>,
    /// How many plans, pipelines, bind groups and operand textures the
    /// device keeps for reuse.
    pub cache_sizes: CacheSizes,
    /// On a CPU adapter, have a helper device compile each new plan's
    /// kernels on another core while the plan runs (see `ahead.rs`); on by
    /// default, off with `CINDER_COMPILE_AHEAD=0`.
    pub compile_ahead: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            backend: None,
            adapter_name: None,
            portable_kernels: false,
            buffer_matmul: false,
            limits: None,
            cache_sizes: CacheSizes::default(),
            compile_ahead: true,
        }
    }
}

/// Capacities of a device's caches, each least-recently-used: past its
/// size, the entry used longest ago is dropped. What a plan in use holds
/// (its pipelines, textures) lives as long as the plan. Pooled buffers that
/// no realization has used for [`CacheSizes::buffer_age`] realizations are
/// freed. A training loop replays one or two plans and stays far inside
/// every bound; a loop over a thousand shapes keeps this much and no more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSizes {
    /// Compiled plans, by graph structure (default 128).
    pub plans: usize,
    /// Compiled pipelines, by kernel source and constants (default 1024).
    pub pipelines: usize,
    /// Bind groups, by pipeline and buffers (default 8192).
    pub bind_groups: usize,
    /// Matmul operand textures, by size and tag (default 64).
    pub textures: usize,
    /// Realizations after which an unused pooled buffer is freed (default 128).
    pub buffer_age: u64,
}

impl Default for CacheSizes {
    fn default() -> Self {
        CacheSizes {
            plans: 128,
            pipelines: 1024,
            bind_groups: 8192,
            textures: 64,
            buffer_age: 128,
        }
    }
}

impl DeviceOptions {
    pub fn from_env() -> Self {
        let non_empty = |v: String| if v.trim().is_empty() { None } else { Some(v) };
        let flag =
            |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty() && v.trim() != "0");
        DeviceOptions {
            backend: std::env::var("CINDER_BACKEND").ok().and_then(non_empty),
            adapter_name: std::env::var("CINDER_ADAPTER").ok().and_then(non_empty),
            portable_kernels: flag("CINDER_PORTABLE_KERNELS"),
            buffer_matmul: flag("CINDER_BUFFER_MATMUL"),
            limits: None,
            cache_sizes: CacheSizes::default(),
            compile_ahead: std::env::var("CINDER_COMPILE_AHEAD").map_or(true, |v| v.trim() != "0"),
        }
    }

    /// The backends `backend` names; `None` for a name that is no backend.
    fn backends(&self) -> Option<wgpu::Backends> {
        match self.backend.as_deref().map(|b| b.to_ascii_lowercase()) {
            None => Some(wgpu::Backends::all()),
            Some(b) => match b.as_str() {
                "vulkan" | "vk" => Some(wgpu::Backends::VULKAN),
                "metal" => Some(wgpu::Backends::METAL),
                "dx12" | "d3d12" => Some(wgpu::Backends::DX12),
                "gl" | "gles" | "opengl" => Some(wgpu::Backends::GL),
                _ => None,
            },
        }
    }

    /// The filters set, as the environment spells them:
    /// `CINDER_BACKEND=vulkan and CINDER_ADAPTER=llvmpipe`; empty if none.
    fn filter(&self) -> String {
        let mut parts = Vec::new();
        if let Some(b) = &self.backend {
            parts.push(format!("CINDER_BACKEND={b}"));
        }
        if let Some(a) = &self.adapter_name {
            parts.push(format!("CINDER_ADAPTER={a}"));
        }
        parts.join(" and ")
    }

    /// The error for no adapter: with a filter set and adapters present,
    /// the filter is the problem, and the error lists what exists so the
    /// reader can pick; with nothing present, the driver is missing.
    fn no_adapter(&self, unknown_backend: bool) -> Error {
        let filter = self.filter();
        let available: Vec<String> = if filter.is_empty() {
            Vec::new()
        } else {
            list_adapters()
                .into_iter()
                .map(|a| format!("{} ({}, {})", a.name, a.backend, a.device_type))
                .collect()
        };
        if available.is_empty() && !unknown_backend {
            let filter = if filter.is_empty() {
                filter
            } else {
                format!(" matching {filter}")
            };
            return Error::NoAdapter { filter };
        }
        let filter = if unknown_backend {
            format!("{filter} (not a backend: use one of vulkan, metal, dx12, gl)")
        } else {
            filter
        };
        Error::NoMatchingAdapter { filter, available }
    }
}

/// One adapter as `cinder info` shows it.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub features: Vec<String>,
}

fn report(adapter: &wgpu::Adapter) -> AdapterReport {
    let info = adapter.get_info();
    let limits = adapter.limits();
    let features = adapter.features();
    let interesting = [
        (wgpu::Features::SHADER_F16, "shader-f16"),
        (wgpu::Features::SUBGROUP, "subgroup"),
        (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
        (wgpu::Features::SHADER_INT64, "shader-int64"),
    ];
    AdapterReport {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: info.driver.clone(),
        driver_info: info.driver_info.clone(),
        max_buffer_size: limits.max_buffer_size,
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
        max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
        features: interesting
            .iter()
            .filter(|(f, _)| features.contains(*f))
            .map(|(_, n)| n.to_string())
            .collect(),
    }
}

/// Every adapter wgpu can see, in the order `Device::new` prefers them.
pub fn list_adapters() -> Vec<AdapterReport> {
    let instance = new_instance(wgpu::Backends::all());
    let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.sort_by_key(rank);
    adapters.iter().map(report).collect()
}

fn new_instance(backends: wgpu::Backends) -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    })
}

/// Lower is better: real GPUs before software ones, native APIs before GL.
fn rank(adapter: &wgpu::Adapter) -> (u8, u8) {
    let info = adapter.get_info();
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let api = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (kind, api)
}

/// Counters that prove what a training step creates. Read with [`Device::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub shader_modules_created: u64,
    pub pipelines_created: u64,
    /// Of those, pipelines that cinder translated to SPIR-V itself, leaving
    /// out the zeroing of private arrays (see
    /// [`crate::CustomKernel::writes_private_arrays_first`]).
    pub spirv_pipelines_created: u64,
    pub bind_groups_created: u64,
    pub buffers_created: u64,
    /// Textures created (the texture matmul's operand textures, one per size
    /// and tag, kept for reuse: see `Device::operand_texture`).
    pub textures_created: u64,
    /// Bytes held by live and pooled GPU buffers and by operand textures
    /// right now.
    pub bytes_allocated: u64,
    /// Matmuls run over operand textures (on CPU adapters), and the
    /// dispatches that copied one of their operands into a texture. The
    /// others' producers computed them straight into theirs.
    pub texture_products: u64,
    pub operand_packs: u64,
    pub submits: u64,
    pub dispatches: u64,
    /// Plan-cache misses (each compiles a plan), hits, and plans dropped
    /// to stay within [`CacheSizes::plans`].
    pub plans_compiled: u64,
    pub plan_cache_hits: u64,
    pub plan_cache_evictions: u64,
    /// Pipeline-cache hits and evictions (misses are `pipelines_created`).
    pub pipeline_cache_hits: u64,
    pub pipeline_cache_evictions: u64,
    /// Bind groups dropped to stay within [`CacheSizes::bind_groups`].
    pub bind_group_cache_evictions: u64,
    /// Pooled buffers freed after going unused for
    /// [`CacheSizes::buffer_age`] realizations (or by `Device::trim`).
    pub buffers_freed: u64,
    /// What the caches hold right now.
    pub plans_cached: u64,
    pub pipelines_cached: u64,
    pub bind_groups_cached: u64,
    pub textures_cached: u64,
    /// Kernels a helper device ran over no workgroups on another core, so
    /// that a CPU adapter's driver compiled them there ahead of the plan's
    /// own run (see [`DeviceOptions::compile_ahead`]). Counted once each
    /// has compiled, which is after the realization that sent it may have
    /// returned.
    pub kernels_compiled_ahead: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub shader_modules: AtomicU64,
    pub pipelines: AtomicU64,
    pub spirv_pipelines: AtomicU64,
    pub bind_groups: AtomicU64,
    pub buffers: AtomicU64,
    pub textures: AtomicU64,
    pub bytes: AtomicU64,
    pub submits: AtomicU64,
    pub dispatches: AtomicU64,
    pub texture_products: AtomicU64,
    pub operand_packs: AtomicU64,
    pub plans_compiled: AtomicU64,
    pub plan_hits: AtomicU64,
    pub plan_evictions: AtomicU64,
    pub pipeline_hits: AtomicU64,
    pub pipeline_evictions: AtomicU64,
    pub bind_group_evictions: AtomicU64,
    pub buffers_freed: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

/// An rgba32float texture that a matmul operand is packed into.
pub(crate) struct OperandTexture {
    pub id: u64,
    pub view: wgpu::TextureView,
    /// Kept alive by the view, held here for clarity of ownership.
    _texture: wgpu::Texture,
    bytes: u64,
    device: std::sync::Weak<DeviceInner>,
}

impl Drop for OperandTexture {
    fn drop(&mut self) {
        if let Some(device) = self.device.upgrade() {
            device
                .counters
                .bytes
                .fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

/// One binding of a bind group: a byte range of a buffer, or a texture.
pub(crate) enum BindResource<'a> {
    Buffer {
        id: u64,
        offset: u64,
        size: u64,
        buffer: &'a wgpu::Buffer,
    },
    Texture(&'a OperandTexture),
}

/// A pipeline's cache key: its source and its override constants, rendered.
pub(crate) type PipelineKey = (KernelSource, String);

fn pipeline_key(source: &KernelSource, constants: &[(String, f64)]) -> PipelineKey {
    let mut rendered = String::new();
    for (name, value) in constants {
        rendered.push_str(&format!("\n//{name}={value}"));
    }
    (source.clone(), rendered)
}

/// A kernel to compile: its label, source and override constants.
pub(crate) type KernelRef<'a> = (&'a str, &'a KernelSource, &'a [(String, f64)]);

/// A compiled pipeline not yet in the cache.
struct CreatedPipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

pub(crate) struct PipelineEntry {
    pub id: u64,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

pub(crate) struct Caches {
    /// By source (a shader's name, or generated text) and override constants.
    pub pipelines: LruCache<PipelineKey, Arc<PipelineEntry>>,
    /// By pipeline id, then (id, offset, size) per binding.
    pub bind_groups: LruCache<Vec<u64>, Arc<wgpu::BindGroup>>,
    pub plans: LruCache<crate::canon::Structure, Arc<crate::exec::Plan>>,
    /// Operand textures by (width, height, tag): tags 0 and 1 are packed A
    /// and B, which every matmul of that size shares (the queue runs one
    /// kernel's packing and product before the next one's); a plan's values
    /// computed into textures take tags 2 and up.
    pub textures: LruCache<(u32, u32, u8), Arc<OperandTexture>>,
    pub next_texture_id: u64,
    pub next_pipeline_id: u64,
}

impl Caches {
    fn new(sizes: &CacheSizes) -> Caches {
        let cap = |n: usize| NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN);
        Caches {
            pipelines: LruCache::new(cap(sizes.pipelines)),
            bind_groups: LruCache::new(cap(sizes.bind_groups)),
            plans: LruCache::new(cap(sizes.plans)),
            textures: LruCache::new(cap(sizes.textures)),
            next_texture_id: 0,
            next_pipeline_id: 0,
        }
    }
}

pub(crate) struct DeviceInner {
    pub id: u64,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// Whether matmuls use the subgroup kernels (shaders/matmul_subgroup_*.wgsl).
    pub subgroup_matmul: bool,
    /// Whether those read their operands from textures where the shapes allow
    /// (shaders/matmul_texture_*.wgsl).
    pub texture_matmul: bool,
    /// Whether kernels that write their private arrays first are compiled
    /// to SPIR-V by cinder without the zeroing of those arrays (`spirv.rs`).
    pub spirv_passthrough: bool,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub counters: Counters,
    pub pool: Mutex<BufferPool>,
    pub caches: Mutex<Caches>,
    /// Serialises realizations: one plan executes at a time per device.
    pub exec: Mutex<()>,
    pub gpu_error: Arc<Mutex<Option<String>>>,
    pub seed: AtomicU64,
    /// Writes that ride along with the next realization (see `defer_assign`).
    pub deferred: Mutex<Vec<crate::canon::Effect>>,
    /// The helper that compiles new kernels ahead, where that pays.
    pub ahead: Option<crate::ahead::CompileAhead>,
    pub role: Role,
}

/// What a device is for: a user's, or a helper that compiles ahead for one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Main,
    /// Its kernels are the main device's again, so `CINDER_DUMP_KERNELS`
    /// leaves them out.
    CompileAhead,
}

/// A GPU to compute on. Cheap to clone (an `Arc`), `Send + Sync`; several can
/// exist in one process and each keeps its own caches.
#[derive(Clone)]
pub struct Device {
    pub(crate) inner: Arc<DeviceInner>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Device({} on {:?})",
            self.inner.info.name, self.inner.info.backend
        )
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        self.inner.id == other.inner.id
    }
}

/// `CINDER_DUMP_KERNELS=DIR` writes every kernel's WGSL (with its override
/// constants) to `DIR/<pipeline id>-<label>.wgsl` as it is compiled, so that a
/// kernel named by `CINDER_PROFILE` can be read. A failed write is reported
/// once and otherwise ignored: dumping is a diagnostic, not part of a result.
fn dump_kernel(id: u64, label: &str, source: &str) {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let Some(dir) = DIR.get_or_init(|| std::env::var_os("CINDER_DUMP_KERNELS").map(Into::into))
    else {
        return;
    };
    let name: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = dir.join(format!("{id:04}-{name}.wgsl"));
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, source)) {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| log::warn!("CINDER_DUMP_KERNELS: writing {}: {e}", path.display()));
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind, which
    // is still consistent, so recovering from poison is sound.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Device {
    /// The best adapter on this machine (discrete > integrated > virtual > CPU),
    /// honouring `CINDER_BACKEND` and `CINDER_ADAPTER`.
    pub fn new() -> Result<Device> {
        Device::with_options(&DeviceOptions::from_env())
    }

    pub fn with_options(options: &DeviceOptions) -> Result<Device> {
        let Some(requested) = options.backends() else {
            return Err(options.no_adapter(true));
        };
        // GL is the fallback when nothing else is asked for: probing it prints
        // EGL noise and it is the slowest path.
        let attempts = if options.backend.is_some() {
            vec![requested]
        } else {
            vec![wgpu::Backends::PRIMARY, wgpu::Backends::GL]
        };
        for backends in attempts {
            let instance = new_instance(backends);
            let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
            if let Some(want) = &options.adapter_name {
                let want = want.to_lowercase();
                adapters.retain(|a| a.get_info().name.to_lowercase().contains(&want));
            }
            adapters.sort_by_key(rank);
            if let Some(adapter) = adapters.into_iter().next() {
                return Device::from_adapter(adapter, options, Role::Main);
            }
        }
        Err(options.no_adapter(false))
    }

    pub(crate) fn from_adapter(
        adapter: wgpu::Adapter,
        options: &DeviceOptions,
        role: Role,
    ) -> Result<Device> {
        let info = adapter.get_info();
        let ahead = crate::ahead::CompileAhead::for_adapter(&adapter, options);
        // The subgroup matmul broadcasts A across 8 lanes and loads pairs of
        // floats as u64: it needs both features and subgroups of at least 8.
        let subgroup_features = wgpu::Features::SUBGROUP | wgpu::Features::SHADER_INT64;
        let subgroup_matmul = !options.portable_kernels
            && adapter.features().contains(subgroup_features)
            && info.subgroup_min_size >= 8;
        // A CPU adapter fetches a texel for all lanes at once but loads from a
        // storage buffer lane by lane (see tools/gen_matmul.py): there, matmul
        // operands are worth packing into textures. A GPU's caches serve
        // buffers well, so it keeps the buffer kernels.
        let texture_matmul =
            subgroup_matmul && !options.buffer_matmul && info.device_type == wgpu::DeviceType::Cpu;
        // Only a CPU adapter needs it (llvmpipe's slow compile of private
        // zeroing); GPUs keep wgpu's validated path.
        let spirv_passthrough = !options.portable_kernels
            && info.device_type == wgpu::DeviceType::Cpu
            && info.backend == wgpu::Backend::Vulkan
            && adapter
                .features()
                .contains(wgpu::Features::PASSTHROUGH_SHADERS);
        let mut required_features = wgpu::Features::empty();
        if subgroup_matmul {
            required_features |= subgroup_features;
        }
        if spirv_passthrough {
            required_features |= wgpu::Features::PASSTHROUGH_SHADERS;
        }
        // The adapter's real limits, not WebGPU's defaults: large tensors need
        // the full storage-binding size and buffer size the hardware offers.
        let limits = options.limits.clone().unwrap_or_else(|| adapter.limits());
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("cinder"),
            required_features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::default(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Gpu(format!("requesting a device from {}: {e}", info.name)))?;

        let gpu_error: Arc<Mutex<Option<String>>> = Arc::default();
        let sink = gpu_error.clone();
        // wgpu's default handler panics; cinder turns these into Err at the
        // next synchronisation point instead.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = lock(&sink);
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));

        Ok(Device {
            inner: Arc::new(DeviceInner {
                id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
                info,
                limits,
                subgroup_matmul,
                texture_matmul,
                spirv_passthrough,
                device,
                queue,
                counters: Counters::default(),
                pool: Mutex::new(BufferPool::new(options.cache_sizes.buffer_age)),
                caches: Mutex::new(Caches::new(&options.cache_sizes)),
                exec: Mutex::new(()),
                gpu_error,
                seed: AtomicU64::new(0x5eed),
                deferred: Mutex::new(Vec::new()),
                ahead,
                role,
            }),
        })
    }

    pub fn adapter_name(&self) -> &str {
        &self.inner.info.name
    }

    pub fn backend(&self) -> String {
        format!("{:?}", self.inner.info.backend)
    }

    /// Whether big matmuls pack their operands into textures on this device
    /// (a CPU adapter with subgroups, unless `CINDER_BUFFER_MATMUL=1`).
    pub fn texture_matmul(&self) -> bool {
        self.inner.texture_matmul
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// Whether custom kernels may use subgroup operations (`subgroupBroadcast`
    /// and the like) with subgroups of at least 8 lanes: the adapter has
    /// them and `CINDER_PORTABLE_KERNELS=1` is not set.
    pub fn subgroups(&self) -> bool {
        self.inner.subgroup_matmul
    }

    /// Whether the adapter is a CPU (a software rasterizer such as lavapipe),
    /// where a load from a buffer costs far more than arithmetic.
    pub fn is_cpu(&self) -> bool {
        self.inner.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Whether a helper device compiles new plans' kernels ahead on another
    /// core (lavapipe with a core to spare: see [`DeviceOptions::compile_ahead`]).
    pub fn compiles_ahead(&self) -> bool {
        self.inner.ahead.is_some()
    }

    pub fn stats(&self) -> Stats {
        let caches = lock(&self.inner.caches);
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            shader_modules_created: get(&c.shader_modules),
            pipelines_created: get(&c.pipelines),
            spirv_pipelines_created: get(&c.spirv_pipelines),
            bind_groups_created: get(&c.bind_groups),
            buffers_created: get(&c.buffers),
            textures_created: get(&c.textures),
            bytes_allocated: get(&c.bytes),
            submits: get(&c.submits),
            dispatches: get(&c.dispatches),
            texture_products: get(&c.texture_products),
            operand_packs: get(&c.operand_packs),
            plans_compiled: get(&c.plans_compiled),
            plan_cache_hits: get(&c.plan_hits),
            plan_cache_evictions: get(&c.plan_evictions),
            pipeline_cache_hits: get(&c.pipeline_hits),
            pipeline_cache_evictions: get(&c.pipeline_evictions),
            bind_group_cache_evictions: get(&c.bind_group_evictions),
            buffers_freed: get(&c.buffers_freed),
            plans_cached: caches.plans.len() as u64,
            pipelines_cached: caches.pipelines.len() as u64,
            bind_groups_cached: caches.bind_groups.len() as u64,
            textures_cached: caches.textures.len() as u64,
            kernels_compiled_ahead: self.inner.ahead.as_ref().map_or(0, |a| get(&a.compiled)),
        }
    }

    /// Writes `value` into the realized `target` during the next realization
    /// on this device, after everything in it has read the old value. Batch
    /// norm's running statistics use this: updated in the training step's
    /// own submit, in place, with no extra pass and no buffer created.
    ///
    /// The write happens in the next realization that has effects of its
    /// own (an optimizer step, a checkpoint load) or that reads `target`,
    /// so unrelated realizations (initialising optimizer state, say) keep
    /// their plans. A second deferral to the same target replaces the first,
    /// so a second update meant to follow the first must be computed from
    /// [`Device::deferred_value`], as PyTorch's two batch-norm forwards
    /// before one step update the running statistics twice.
    pub fn defer_assign(&self, target: &crate::graph::Node, value: crate::graph::Node) {
        let mut deferred = lock(&self.inner.deferred);
        deferred.retain(|e| {
            !matches!(e, crate::canon::Effect::Assign { target: t, .. } if t.id() == target.id())
        });
        deferred.push(crate::canon::Effect::Assign {
            target: target.clone(),
            value,
        });
    }

    /// The value a deferred write will give `target` at the next
    /// realization, if one is pending.
    pub fn deferred_value(&self, target: &crate::graph::Node) -> Option<crate::graph::Node> {
        lock(&self.inner.deferred)
            .iter()
            .rev()
            .find_map(|e| match e {
                crate::canon::Effect::Assign { target: t, value } if t.id() == target.id() => {
                    Some(value.clone())
                }
                _ => None,
            })
    }

    /// Resets the default random stream: later `rand`/`randn` calls without an
    /// explicit seed draw seeds from this one, like `torch.manual_seed`.
    pub fn manual_seed(&self, seed: u64) {
        self.inner.seed.store(seed, Ordering::Relaxed);
    }

    /// Where the default random stream stands: restoring it with
    /// [`Device::manual_seed`] continues the stream exactly (a resumed
    /// training run draws the same dropout masks as an uninterrupted one).
    pub fn seed_state(&self) -> u64 {
        self.inner.seed.load(Ordering::Relaxed)
    }

    /// The next seed of the default stream (SplitMix64 over the counter).
    pub fn next_seed(&self) -> u64 {
        let s = self
            .inner
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Returns buffers kept for reuse to the driver (and forgets the bind groups
    /// that used them). Useful between phases with very different shapes.
    /// Matmul operand textures stay: the cached plans that use them hold them.
    pub fn trim(&self) {
        let freed = lock(&self.inner.pool).clear();
        self.forget_buffers(&freed);
    }

    /// Accounts for pooled buffers that were destroyed (ids and sizes), and
    /// drops the bind groups that used them.
    pub(crate) fn forget_buffers(&self, freed: &std::collections::HashMap<u64, u64>) {
        if freed.is_empty() {
            return;
        }
        let mut caches = lock(&self.inner.caches);
        caches
            .bind_groups
            .retain(|key, _| !key[1..].chunks(3).any(|b| freed.contains_key(&b[0])));
        let bytes: u64 = freed.values().sum();
        let c = &self.inner.counters;
        c.bytes.fetch_sub(bytes, Ordering::Relaxed);
        Counters::bump(&c.buffers_freed, freed.len() as u64);
    }

    pub(crate) fn take_gpu_error(&self) -> Result<()> {
        match lock(&self.inner.gpu_error).take() {
            None => Ok(()),
            Some(msg) if msg.to_lowercase().contains("out of memory") => Err(Error::OutOfMemory {
                bytes: 0,
                detail: msg,
            }),
            Some(msg) if msg.to_lowercase().contains("lost") => Err(Error::DeviceLost(msg)),
            Some(msg) => Err(Error::Gpu(msg)),
        }
    }

    /// A compute pipeline for `source` with these override constants, created
    /// once per device and cached by source (a hand-written shader by its
    /// name) and constants.
    pub(crate) fn pipeline(
        &self,
        label: &str,
        source: &KernelSource,
        constants: &[(String, f64)],
    ) -> Result<Arc<PipelineEntry>> {
        let key = pipeline_key(source, constants);
        if let Some(entry) = self.cached_pipeline(&key) {
            return Ok(entry);
        }
        let created = self.create_pipeline(label, source, constants)?;
        Ok(self.insert_pipeline(label, key, created))
    }

    /// Creates the pipelines of `kernels` (label, source, constants) that the
    /// cache lacks, on as many threads as there are cores, so that a new
    /// plan's [`Device::pipeline`] calls find them. Creating a pipeline
    /// (WGSL to SPIR-V, and the driver's translation of that) is CPU work
    /// that a plan's first build would otherwise do one kernel at a time
    /// before anything runs: about 0.19 s for a DCGAN step's 149 kernels on
    /// lavapipe. `new` are those kernels' indices and keys, from
    /// [`Device::new_kernels`].
    pub(crate) fn prepare_pipelines(
        &self,
        kernels: &[KernelRef<'_>],
        new: &[(usize, PipelineKey)],
    ) -> Result<()> {
        let missing: Vec<_> = new
            .iter()
            .filter_map(|(i, key)| {
                let &(label, source, constants) = kernels.get(*i)?;
                Some((label, source, constants, key))
            })
            .collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(missing.len());
        if threads < 2 {
            return Ok(());
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let created: Vec<Vec<(usize, Result<CreatedPipeline>)>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(&(label, source, constants, _)) = missing.get(i) else {
                                return done;
                            };
                            done.push((i, self.create_pipeline(label, source, constants)));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_default())
                .collect()
        });
        let mut created: Vec<(usize, Result<CreatedPipeline>)> =
            created.into_iter().flatten().collect();
        // In the kernels' order, so that ids (and dumped files) do not
        // depend on which thread finished first.
        created.sort_by_key(|(i, _)| *i);
        for (i, result) in created {
            let (label, _, _, key) = &missing[i];
            self.insert_pipeline(label, (*key).clone(), result?);
        }
        Ok(())
    }

    /// The kernels in `kernels` whose pipelines the cache lacks, each at its
    /// first use: its index, and its pipeline key.
    pub(crate) fn new_kernels(&self, kernels: &[KernelRef<'_>]) -> Vec<(usize, PipelineKey)> {
        let mut seen = std::collections::HashSet::new();
        let caches = lock(&self.inner.caches);
        let mut new = Vec::new();
        for (i, &(_, source, constants)) in kernels.iter().enumerate() {
            let key = pipeline_key(source, constants);
            if !caches.pipelines.contains(&key) && seen.insert(key.clone()) {
                new.push((i, key));
            }
        }
        new
    }

    fn cached_pipeline(&self, key: &PipelineKey) -> Option<Arc<PipelineEntry>> {
        let mut caches = lock(&self.inner.caches);
        let entry = caches.pipelines.get(key)?.clone();
        Counters::bump(&self.inner.counters.pipeline_hits, 1);
        Some(entry)
    }

    /// Compiles a pipeline; touches no cache, so several threads may.
    fn create_pipeline(
        &self,
        label: &str,
        source: &KernelSource,
        constants: &[(String, f64)],
    ) -> Result<CreatedPipeline> {
        let text = source.text();
        let spirv = match source {
            KernelSource::WritesPrivateFirst(text)
                if self.inner.spirv_passthrough && constants.is_empty() =>
            {
                Some(crate::spirv::without_private_zeroing(label, text)?)
            }
            _ => None,
        };
        let dev = &self.inner.device;
        // (Error scopes are per thread.)
        let scope = dev.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = match &spirv {
            Some(spirv) => self.passthrough_pipeline(label, spirv),
            None => {
                let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(label),
                    source: wgpu::ShaderSource::Wgsl(text.into()),
                });
                let consts: Vec<(&str, f64)> =
                    constants.iter().map(|(n, v)| (n.as_str(), *v)).collect();
                dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(label),
                    layout: None,
                    module: &module,
                    entry_point: None,
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &consts,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
            }
        };
        Counters::bump(&self.inner.counters.shader_modules, 1);
        if let Some(err) = pollster::block_on(scope.pop()) {
            // The source goes to the log, not into the error: a generated
            // kernel can be megabytes long.
            log::debug!("kernel {label} failed to compile:\n{text}");
            return Err(Error::Gpu(format!(
                "compiling kernel {label}: {err} (its WGSL is logged at debug level: RUST_LOG=cinder_runtime=debug)"
            )));
        }
        Counters::bump(&self.inner.counters.pipelines, 1);
        if spirv.is_some() {
            Counters::bump(&self.inner.counters.spirv_pipelines, 1);
        }
        let layout = pipeline.get_bind_group_layout(0);
        Ok(CreatedPipeline { pipeline, layout })
    }

    /// Caches a created pipeline under `key`; returns the cached entry (an
    /// earlier one where another thread got there first).
    fn insert_pipeline(
        &self,
        label: &str,
        key: PipelineKey,
        created: CreatedPipeline,
    ) -> Arc<PipelineEntry> {
        let mut caches = lock(&self.inner.caches);
        if let Some(entry) = caches.pipelines.get(&key) {
            return entry.clone();
        }
        caches.next_pipeline_id += 1;
        if self.inner.role == Role::Main {
            dump_kernel(
                caches.next_pipeline_id,
                label,
                &format!("{}{}", key.0.text(), key.1),
            );
        }
        let entry = Arc::new(PipelineEntry {
            id: caches.next_pipeline_id,
            pipeline: created.pipeline,
            layout: created.layout,
        });
        if let Some((_, evicted)) = caches.pipelines.push(key, entry.clone()) {
            // Plans that use it keep it; its bind groups go with it.
            Counters::bump(&self.inner.counters.pipeline_evictions, 1);
            let before = caches.bind_groups.len();
            caches.bind_groups.retain(|key, _| key[0] != evicted.id);
            Counters::bump(
                &self.inner.counters.bind_group_evictions,
                (before - caches.bind_groups.len()) as u64,
            );
        }
        entry
    }

    /// A pipeline for SPIR-V that cinder translated itself: the module goes
    /// to the driver as it is, with the layout the shader declares.
    fn passthrough_pipeline(&self, label: &str, spirv: &Spirv) -> wgpu::ComputePipeline {
        let dev = &self.inner.device;
        let [x, y, z] = spirv.workgroup_size;
        // Safety: the words are naga's translation of WGSL that naga has
        // validated, with every index and buffer access bounds-checked
        // (`spirv::without_private_zeroing`); the one change, the private
        // initialisers left out, is one the kernel declared it does not
        // rely on, and its layout is derived from the same module.
        let module = unsafe {
            dev.create_shader_module_passthrough(wgpu::ShaderModuleDescriptorPassthrough {
                label: Some(label),
                entry_points: vec![wgpu::PassthroughShaderEntryPoint {
                    name: spirv.entry_point.clone().into(),
                    workgroup_size: (x, y, z),
                }]
                .into(),
                spirv: Some(spirv.words.as_slice().into()),
                ..Default::default()
            })
        };
        let group = dev.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(label),
            entries: &spirv.bindings,
        });
        let layout = dev.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(label),
            bind_group_layouts: &[Some(&group)],
            immediate_size: 0,
        });
        dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: Some(&layout),
            module: &module,
            entry_point: Some(&spirv.entry_point),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[],
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        })
    }

    /// A bind group binding whole buffers in order, cached by pipeline and
    /// buffer identity so that replaying a plan over the same buffers creates nothing.
    pub(crate) fn bind_group(
        &self,
        pipeline: &PipelineEntry,
        resources: &[BindResource<'_>],
    ) -> Arc<wgpu::BindGroup> {
        // Texture ids count down from the top so they never meet buffer ids.
        let mut key = Vec::with_capacity(3 * resources.len() + 1);
        key.push(pipeline.id);
        for r in resources {
            match r {
                BindResource::Buffer {
                    id, offset, size, ..
                } => key.extend([*id, *offset, *size]),
                BindResource::Texture(t) => key.extend([u64::MAX - t.id, 0, 0]),
            }
        }
        let mut caches = lock(&self.inner.caches);
        if let Some(bg) = caches.bind_groups.get(&key) {
            return bg.clone();
        }
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: match r {
                    BindResource::Buffer {
                        offset,
                        size,
                        buffer,
                        ..
                    } => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: *offset,
                        size: std::num::NonZeroU64::new(*size),
                    }),
                    BindResource::Texture(t) => wgpu::BindingResource::TextureView(&t.view),
                },
            })
            .collect();
        let bg = Arc::new(
            self.inner
                .device
                .create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &pipeline.layout,
                    entries: &entries,
                }),
        );
        Counters::bump(&self.inner.counters.bind_groups, 1);
        if caches.bind_groups.push(key, bg.clone()).is_some() {
            Counters::bump(&self.inner.counters.bind_group_evictions, 1);
        }
        bg
    }

    /// The rgba32float texture of `width` x `height` texels under `tag` (see
    /// `Caches::textures`), created on first use and then shared.
    pub(crate) fn operand_texture(&self, width: u32, height: u32, tag: u8) -> Arc<OperandTexture> {
        let mut caches = lock(&self.inner.caches);
        if let Some(t) = caches.textures.get(&(width, height, tag)) {
            return t.clone();
        }
        let texture = self.inner.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("matmul operand"),
            size: wgpu::Extent3d {
                width,
                height,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::TEXTURE_BINDING,
            view_formats: &[],
        });
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        Counters::bump(&self.inner.counters.textures, 1);
        Counters::bump(
            &self.inner.counters.bytes,
            16 * width as u64 * height as u64,
        );
        caches.next_texture_id += 1;
        let entry = Arc::new(OperandTexture {
            id: caches.next_texture_id,
            view,
            _texture: texture,
            bytes: 16 * width as u64 * height as u64,
            device: Arc::downgrade(&self.inner),
        });
        // An evicted texture lives on in the plans that use it.
        caches.textures.push((width, height, tag), entry.clone());
        entry
    }
}
