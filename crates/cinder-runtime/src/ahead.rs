//! Compiling a new plan's kernels ahead, on another core, on lavapipe.
//!
//! lavapipe turns a pipeline into machine code only when a dispatch first
//! runs it, on the one thread that executes its queue, so creating
//! pipelines on many threads (`Device::prepare_pipelines`) does not move
//! that work: a new plan's first run waits for each of its kernels'
//! compiles in turn (most of a DCGAN step's first 2.8 s with Mesa's shader
//! cache empty). Mesa keeps the machine code it compiles in its shader
//! cache, keyed by the kernel and the state it runs with, where any device
//! finds it. So a second device on the same adapter, on a thread of its
//! own, runs each new kernel with no workgroups, last kernel first: its
//! queue compiles them on another core while the plan's own run compiles
//! from the first, and a kernel the helper got to first is loaded from the
//! cache instead of compiled again.
//!
//! The process must not exit while a helper compiles: the exit-time
//! teardown of LLVM's state would pull the compiler from under it (a crash
//! after `main` returns). An exit handler stops the helpers and waits for
//! the kernel in hand. Exit handlers run last registered first, and LLVM
//! registers the destructors of some of its state when a compile first
//! uses it, so the helper registers the handler again before each kernel:
//! it then runs before the teardown of everything earlier compiles set up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use crate::device::{lock, BindResource, CacheSizes, Device, DeviceOptions, OperandTexture, Role};
use crate::kernels::KernelSource;
use crate::pool::{BufferKind, Storage};

/// A kernel to compile ahead, with what it binds: the driver's machine code
/// depends on the kinds of its bindings, and for a texture on whether its
/// sides are powers of two.
pub(crate) struct AheadKernel {
    pub label: String,
    pub source: KernelSource,
    pub constants: Vec<(String, f64)>,
    pub binds: Vec<AheadBind>,
}

#[derive(Clone, Copy)]
pub(crate) enum AheadBind {
    /// A buffer of this many bytes. The stand-in need not be as big for a
    /// storage binding, but a uniform binding must hold what the shader
    /// declares.
    Buffer {
        bytes: u64,
    },
    Texture {
        width: u32,
        height: u32,
    },
}

/// The helper: started with the first kernels sent to it, stopped when the
/// device that owns it is dropped. The drop waits for the kernel in hand and
/// for the helper's device to go: torn down on the helper's thread while
/// the process exits, the last device would unload the driver under the
/// exit handlers.
pub(crate) struct CompileAhead {
    adapter: wgpu::Adapter,
    options: DeviceOptions,
    helper: OnceLock<Mutex<Helper>>,
    /// Kernels the helper has compiled (`Stats::kernels_compiled_ahead`).
    pub compiled: Arc<AtomicU64>,
    stopped: Arc<AtomicBool>,
}

struct Helper {
    jobs: Sender<Vec<AheadKernel>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for CompileAhead {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(helper) = self.helper.take() {
            let Helper { jobs, thread } = helper.into_inner().unwrap_or_else(|p| p.into_inner());
            // Its thread's receive now fails once the kernel in hand is done.
            drop(jobs);
            if let Some(thread) = thread {
                let _ = thread.join();
            }
        }
    }
}

/// Set once the process exits: no helper starts another kernel.
static EXITING: AtomicBool = AtomicBool::new(false);
/// Helpers in the middle of a kernel.
static COMPILING: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" {
    /// The C library's: runs `handler` when the process exits, before the
    /// handlers registered earlier.
    fn atexit(handler: extern "C" fn()) -> std::os::raw::c_int;
}

extern "C" fn stop_helpers_at_exit() {
    EXITING.store(true, Ordering::SeqCst);
    // A kernel's compile takes well under a second; the bound only keeps a
    // stuck driver from holding the exit forever.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while COMPILING.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Registers [`stop_helpers_at_exit`] (again: see the module's notes);
/// false if the C library refused.
fn stop_helpers_at_exit_registered() -> bool {
    // Safety: `atexit` takes any `extern "C" fn()`; the handler touches
    // only atomics and sleeps, which is sound during exit, and running it
    // more than once is harmless.
    unsafe { atexit(stop_helpers_at_exit) == 0 }
}

impl CompileAhead {
    /// A helper for devices on `adapter`, where compiling ahead pays:
    /// lavapipe (Vulkan on llvmpipe; other CPU adapters compile when a
    /// pipeline is created) on a machine with a core to spare, and a shader
    /// cache to leave the machine code in (`MESA_SHADER_CACHE_DISABLE`
    /// unset), unless `options` turn it off.
    pub fn for_adapter(adapter: &wgpu::Adapter, options: &DeviceOptions) -> Option<CompileAhead> {
        let info = adapter.get_info();
        let lavapipe = info.device_type == wgpu::DeviceType::Cpu
            && info.backend == wgpu::Backend::Vulkan
            && info.name.contains("llvmpipe");
        let spare_core = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
        let cache_off = std::env::var("MESA_SHADER_CACHE_DISABLE")
            .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes"));
        if !(options.compile_ahead && lavapipe && spare_core && !cache_off) {
            return None;
        }
        Some(CompileAhead {
            adapter: adapter.clone(),
            options: DeviceOptions {
                compile_ahead: false,
                // A kernel compiled ahead is not run there again: the helper
                // keeps a few, so that its memory stays small however many
                // plans a program compiles.
                cache_sizes: CacheSizes {
                    plans: 1,
                    pipelines: 8,
                    bind_groups: 8,
                    textures: 8,
                    ..CacheSizes::default()
                },
                ..options.clone()
            },
            helper: OnceLock::new(),
            compiled: Arc::default(),
            stopped: Arc::default(),
        })
    }

    /// Queues `kernels`, in the order the plan first runs them. One kernel
    /// alone is left to the plan: its run would start compiling it at once,
    /// and the helper could only compile it a second time.
    pub fn send(&self, kernels: Vec<AheadKernel>) {
        if kernels.len() < 2 {
            return;
        }
        let helper = self.helper.get_or_init(|| {
            let (jobs, receiver) = channel();
            let adapter = self.adapter.clone();
            let options = self.options.clone();
            let compiled = self.compiled.clone();
            let stopped = self.stopped.clone();
            let started = std::thread::Builder::new()
                .name("cinder-compile-ahead".into())
                .spawn(move || serve(&adapter, &options, &receiver, &compiled, &stopped));
            let thread = started
                .inspect_err(|e| {
                    // Only the first step's speed depends on it.
                    log::debug!("compile ahead: no thread: {e}");
                })
                .ok();
            Mutex::new(Helper { jobs, thread })
        });
        // A send fails only once the helper has stopped, and then nothing
        // is lost but speed.
        let _ = lock(helper).jobs.send(kernels);
    }
}

fn serve(
    adapter: &wgpu::Adapter,
    options: &DeviceOptions,
    jobs: &Receiver<Vec<AheadKernel>>,
    compiled: &AtomicU64,
    stopped: &AtomicBool,
) {
    lowest_priority();
    let device =
        match unless_exiting(|| Device::from_adapter(adapter.clone(), options, Role::CompileAhead))
        {
            Some(Ok(device)) => device,
            Some(Err(e)) => {
                log::debug!("compile ahead: no helper device: {e}");
                return;
            }
            None => return,
        };
    let mut stand_ins = StandIns::default();
    while let Ok(kernels) = jobs.recv() {
        // Last first: the plan's own run compiles from the first.
        for kernel in kernels.iter().rev() {
            if stopped.load(Ordering::SeqCst) {
                break;
            }
            match unless_exiting(|| run_empty(&device, &mut stand_ins, kernel)) {
                None => break,
                Some(Ok(())) => {
                    compiled.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(e)) => log::debug!("compile ahead: {}: {e}", kernel.label),
            }
        }
    }
    // The owner is gone, and waits in its drop for this device to go.
    drop((stand_ins, device));
}

/// Leaves the cores to the plan's own work first. With Mesa's cache warm
/// the helper has nothing to win and would only compete: at normal
/// priority a DCGAN's first step took 0.77 to 0.93 s against 0.64 to 0.71
/// s without a helper; at the lowest, 0.63 to 0.69 s against 0.63 to 0.70
/// s, and the same 2.2 s with the cache empty.
#[cfg(target_os = "linux")]
fn lowest_priority() {
    unsafe extern "C" {
        fn setpriority(
            which: std::os::raw::c_int,
            who: u32,
            nice: std::os::raw::c_int,
        ) -> std::os::raw::c_int;
    }
    const PRIO_PROCESS: std::os::raw::c_int = 0;
    // Safety: plain system call. On Linux a nice value is per thread, and
    // `who = 0` names the calling thread; a refusal leaves it as it was.
    unsafe {
        setpriority(PRIO_PROCESS, 0, 19);
    }
}

#[cfg(not(target_os = "linux"))]
fn lowest_priority() {}

/// Runs `work` unless the process is exiting, and never while the exit
/// handler believes no helper is at work.
fn unless_exiting<T>(work: impl FnOnce() -> T) -> Option<T> {
    let registered = stop_helpers_at_exit_registered();
    // Counted as at work before looking at `EXITING`: the exit handler,
    // which sets it before looking at the count, either waits for this or
    // this sees it.
    COMPILING.fetch_add(1, Ordering::SeqCst);
    let result = (registered && !EXITING.load(Ordering::SeqCst)).then(work);
    COMPILING.fetch_sub(1, Ordering::SeqCst);
    result
}

/// Enough for any binding's smallest element.
const STAND_IN_BYTES: u64 = 256;

/// Bindings up to this size may be uniform buffers (the scalars, small
/// inputs): their stand-ins are as big as the real ones.
const UNIFORM_STAND_IN_BYTES: u64 = 64 << 10;

/// The bytes a stand-in binds for `bind`: a uniform binding must hold what
/// its shader declares, a storage binding only a little.
fn stand_in_bytes(bind: AheadBind) -> u64 {
    match bind {
        AheadBind::Buffer { bytes } if bytes <= UNIFORM_STAND_IN_BYTES => bytes.max(STAND_IN_BYTES),
        _ => STAND_IN_BYTES,
    }
}

/// Buffers and textures to bind in place of a plan's: one buffer per
/// binding index (a kernel may bind one read-only and another read-write),
/// and a tiny texture per binding index and power-of-two-ness of its sides.
#[derive(Default)]
struct StandIns {
    buffers: Vec<Storage>,
    textures: HashMap<TextureKey, Arc<OperandTexture>>,
}

/// A stand-in texture's binding index, and whether its width and height are
/// powers of two.
type TextureKey = (usize, bool, bool);

fn texture_key(index: usize, width: u32, height: u32) -> TextureKey {
    (index, width.is_power_of_two(), height.is_power_of_two())
}

impl StandIns {
    /// Creates the stand-ins that `binds` need and that are not there yet.
    fn provide(&mut self, device: &Device, binds: &[AheadBind]) -> crate::error::Result<()> {
        // Scalars buffers serve as storage and as uniform buffers alike.
        for (i, bind) in binds.iter().enumerate() {
            let bytes = stand_in_bytes(*bind);
            match self.buffers.get(i) {
                Some(b) if b.size_bytes() >= bytes => {}
                Some(_) => self.buffers[i] = device.alloc(bytes, BufferKind::Scalars, None)?,
                None => self
                    .buffers
                    .push(device.alloc(bytes, BufferKind::Scalars, None)?),
            }
        }
        let side = |power_of_two: bool| if power_of_two { 1 } else { 3 };
        for (i, bind) in binds.iter().enumerate() {
            if let AheadBind::Texture { width, height } = *bind {
                let key = texture_key(i, width, height);
                self.textures
                    .entry(key)
                    .or_insert_with(|| device.operand_texture(side(key.1), side(key.2), i as u8));
            }
        }
        Ok(())
    }

    /// The stand-ins for `binds`, in binding order (after [`StandIns::provide`]).
    fn resources(&self, binds: &[AheadBind]) -> Vec<BindResource<'_>> {
        binds
            .iter()
            .enumerate()
            .filter_map(|(i, bind)| match *bind {
                // Bound to what this kernel needs, not to the whole
                // stand-in, which an earlier kernel may have grown past a
                // uniform binding's limit.
                AheadBind::Buffer { .. } => self.buffers.get(i).map(|s| BindResource::Buffer {
                    id: s.id(),
                    offset: 0,
                    size: stand_in_bytes(*bind).min(s.size_bytes()),
                    buffer: s.buffer(),
                }),
                AheadBind::Texture { width, height } => self
                    .textures
                    .get(&texture_key(i, width, height))
                    .map(|t| BindResource::Texture(t)),
            })
            .collect()
    }
}

/// Creates `kernel`'s pipeline on the helper device and dispatches it over
/// no workgroups: the driver compiles it, nothing runs.
fn run_empty(
    device: &Device,
    stand_ins: &mut StandIns,
    kernel: &AheadKernel,
) -> crate::error::Result<()> {
    let pipeline = device.pipeline(&kernel.label, &kernel.source, &kernel.constants)?;
    stand_ins.provide(device, &kernel.binds)?;
    let resources = stand_ins.resources(&kernel.binds);
    let bind_group = device.bind_group(&pipeline, &resources);
    let dev = &device.inner.device;
    let mut encoder = dev.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, Some(bind_group.as_ref()), &[]);
        pass.dispatch_workgroups(0, 0, 0);
    }
    device.inner.queue.submit([encoder.finish()]);
    dev.poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| crate::error::Error::DeviceLost(e.to_string()))?;
    device.take_gpu_error()
}
