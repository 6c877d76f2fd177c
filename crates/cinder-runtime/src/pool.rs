//! GPU buffers are recycled through a pool keyed by exact size, so a training
//! loop that repeats the same shapes stops creating buffers after its first step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crate::device::{lock, Counters, Device, DeviceInner};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum BufferKind {
    Storage,
    Readback,
    Scalars,
}

impl BufferKind {
    /// The usages of a buffer of this kind; `uniform_inputs` where
    /// generated kernels read small inputs as uniform buffers (a CPU
    /// adapter, `codegen::BindingRules`).
    fn usage(self, uniform_inputs: bool) -> wgpu::BufferUsages {
        match self {
            BufferKind::Storage => {
                let usage = wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST;
                if uniform_inputs {
                    usage | wgpu::BufferUsages::UNIFORM
                } else {
                    usage
                }
            }
            BufferKind::Readback => wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            // Generated kernels read their scalars as a uniform buffer,
            // hand-written ones (matmul shapes, optimizer settings) as storage.
            BufferKind::Scalars => {
                wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::UNIFORM
                    | wgpu::BufferUsages::COPY_DST
            }
        }
    }
}

pub(crate) struct PooledBuffer {
    pub id: u64,
    pub buffer: wgpu::Buffer,
    pub size: u64,
    kind: BufferKind,
    /// The realization in which it last went back to the pool.
    returned: u64,
}

pub(crate) struct BufferPool {
    free: HashMap<(u64, BufferKind), Vec<PooledBuffer>>,
    next_id: u64,
    /// Realizations so far.
    epoch: u64,
    /// Realizations after which a free buffer nobody took is destroyed.
    max_age: u64,
}

impl BufferPool {
    pub fn new(max_age: u64) -> BufferPool {
        BufferPool {
            free: HashMap::new(),
            next_id: 0,
            epoch: 0,
            max_age: max_age.max(1),
        }
    }

    /// Starts a realization; destroys the free buffers that no realization
    /// took for `max_age` of them and returns their ids and sizes. A
    /// training loop takes the same buffers back every step, so only
    /// buffers of shapes the program stopped using age out.
    pub fn next_epoch(&mut self) -> HashMap<u64, u64> {
        self.epoch += 1;
        let mut freed = HashMap::new();
        // Checked every 16 realizations: a scan of the free lists is cheap,
        // but not free.
        if !self.epoch.is_multiple_of(16) {
            return freed;
        }
        let (epoch, max_age) = (self.epoch, self.max_age);
        self.free.retain(|_, list| {
            list.retain(|b| {
                let keep = epoch - b.returned <= max_age;
                if !keep {
                    freed.insert(b.id, b.size);
                    b.buffer.destroy();
                }
                keep
            });
            !list.is_empty()
        });
        freed
    }

    fn take(&mut self, size: u64, kind: BufferKind, prefer: Option<u64>) -> Option<PooledBuffer> {
        let list = self.free.get_mut(&(size, kind))?;
        if let Some(want) = prefer {
            if let Some(pos) = list.iter().position(|b| b.id == want) {
                return Some(list.swap_remove(pos));
            }
        }
        list.pop()
    }

    fn give(&mut self, mut buffer: PooledBuffer) {
        buffer.returned = self.epoch;
        self.free
            .entry((buffer.size, buffer.kind))
            .or_default()
            .push(buffer);
    }

    /// Drops every pooled buffer; returns their ids and sizes.
    pub fn clear(&mut self) -> HashMap<u64, u64> {
        let mut freed = HashMap::new();
        for (_, list) in self.free.drain() {
            for b in list {
                freed.insert(b.id, b.size);
                b.buffer.destroy();
            }
        }
        freed
    }
}

/// Rounded so that buffers of nearly equal size share a free list and every
/// copy and binding stays 4-byte aligned.
pub(crate) fn padded_size(bytes: u64) -> u64 {
    bytes.max(16).div_ceil(16) * 16
}

/// A GPU allocation owned by a realized tensor. Dropping the last clone
/// returns the buffer to its device's pool.
#[derive(Clone)]
pub struct Storage(pub(crate) Arc<StorageInner>);

pub(crate) struct StorageInner {
    buffer: Option<PooledBuffer>,
    device: Weak<DeviceInner>,
    /// Bumped by every in-place write, so that lazy readers created before the
    /// write can detect it instead of reading the new value silently.
    pub version: AtomicU64,
}

impl Storage {
    pub(crate) fn pooled(&self) -> &PooledBuffer {
        match &self.0.buffer {
            Some(b) => b,
            // The buffer is only taken out in Drop, after which no Storage exists.
            None => unreachable!("storage used after drop"),
        }
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.pooled().buffer
    }

    pub(crate) fn id(&self) -> u64 {
        self.pooled().id
    }

    pub fn size_bytes(&self) -> u64 {
        self.pooled().size
    }

    pub fn version(&self) -> u64 {
        self.0.version.load(Ordering::Acquire)
    }

    pub(crate) fn bump_version(&self) {
        self.0.version.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for StorageInner {
    fn drop(&mut self) {
        if let (Some(buffer), Some(device)) = (self.buffer.take(), self.device.upgrade()) {
            lock(&device.pool).give(buffer);
        }
    }
}

impl Device {
    /// A buffer of at least `bytes` bytes, from the pool when one of that size
    /// is free (`prefer` names the one a cached plan used last time).
    pub(crate) fn alloc(
        &self,
        bytes: u64,
        kind: BufferKind,
        prefer: Option<u64>,
    ) -> Result<Storage> {
        let size = padded_size(bytes);
        let limits = &self.inner.limits;
        if size > limits.max_buffer_size {
            return Err(Error::OutOfMemory {
                bytes: size,
                detail: format!(
                    "a single tensor of {size} bytes exceeds this adapter's max_buffer_size of {} bytes",
                    limits.max_buffer_size
                ),
            });
        }
        let reused = lock(&self.inner.pool).take(size, kind, prefer);
        let pooled = match reused {
            Some(b) => b,
            None => self.create_buffer(size, kind)?,
        };
        Ok(Storage(Arc::new(StorageInner {
            buffer: Some(pooled),
            device: Arc::downgrade(&self.inner),
            version: AtomicU64::new(0),
        })))
    }

    fn create_buffer(&self, size: u64, kind: BufferKind) -> Result<PooledBuffer> {
        let dev = &self.inner.device;
        let scope = dev.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = dev.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: kind.usage(self.is_cpu()),
            mapped_at_creation: false,
        });
        if let Some(err) = pollster::block_on(scope.pop()) {
            // Pooled buffers may be what fills the device: free them and retry once.
            self.trim();
            let scope = dev.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            let retry = dev.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: kind.usage(self.is_cpu()),
                mapped_at_creation: false,
            });
            if pollster::block_on(scope.pop()).is_some() {
                return Err(Error::OutOfMemory {
                    bytes: size,
                    detail: err.to_string(),
                });
            }
            return Ok(self.register(retry, size, kind));
        }
        Ok(self.register(buffer, size, kind))
    }

    fn register(&self, buffer: wgpu::Buffer, size: u64, kind: BufferKind) -> PooledBuffer {
        let c = &self.inner.counters;
        Counters::bump(&c.buffers, 1);
        Counters::bump(&c.bytes, size);
        let mut pool = lock(&self.inner.pool);
        pool.next_id += 1;
        PooledBuffer {
            id: pool.next_id,
            buffer,
            size,
            kind,
            returned: pool.epoch,
        }
    }
}
