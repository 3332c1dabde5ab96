//! Device creation, typed tensor handles, upload and readback.
//!
//! `gpu` knows no layers and no kernels: it opens a device on the adapter the user asked for
//! (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`), turns wgpu's validation errors and device loss into
//! [`GpuError`]s, and moves bytes between host and device.

use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

/// What a user must do when no adapter exists: the one fix that works on every OS.
pub const NO_ADAPTER_HINT: &str = "install a Vulkan, Metal or DX12 driver; on a headless Linux \
machine without a GPU install lavapipe (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`)";

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter found (backends: {backends}); {hint}")]
    NoAdapter {
        backends: String,
        hint: &'static str,
    },
    #[error("WGPU_BACKEND={value:?}: {part:?} is no back end wgpu knows (vulkan, metal, dx12, gl, or a comma-separated list of them); fix it or unset it to search them all")]
    UnknownBackend { value: String, part: String },
    #[error("no adapter matches WGPU_ADAPTER_NAME={wanted:?}; available: {available}")]
    AdapterNotFound { wanted: String, available: String },
    #[error("could not open a device on {adapter}: {source}")]
    RequestDevice {
        adapter: String,
        #[source]
        source: wgpu::RequestDeviceError,
    },
    #[error("GPU validation error in {context}: {message}")]
    Validation { context: String, message: String },
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    #[error("GPU readback failed: {0}")]
    Readback(String),
    /// A layer cannot be built for the shapes a plan asks of it (a batch too small, ...).
    #[error("{0}")]
    Shape(String),
    #[error("{what} needs {needed} bytes ({} MiB) in one buffer, the adapter allows {limit} ({} MiB)", needed >> 20, limit >> 20)]
    TooLarge {
        what: String,
        needed: u64,
        limit: u64,
    },
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;

/// Coarse adapter class, used to pick kernel variants (register blocking on CPUs, shared-memory
/// tiles on GPUs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterClass {
    Cpu,
    Gpu,
}

impl AdapterClass {
    pub fn of(info: &wgpu::AdapterInfo) -> Self {
        match info.device_type {
            wgpu::DeviceType::Cpu => AdapterClass::Cpu,
            _ => AdapterClass::Gpu,
        }
    }
}

/// An open device with its queue and the error sinks that make wgpu errors visible.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub class: AdapterClass,
    /// A CPU adapter whose subgroups are SIMD groups of exactly 8 lanes (lavapipe on AVX2), with
    /// the `SUBGROUP` feature enabled: the kernel families compile their subgroup forms
    /// (`kernels::module_source`), which share a group's common loads by broadcast.
    pub subgroups8: bool,
    errors: Arc<Mutex<Vec<String>>>,
    lost: Arc<Mutex<Option<String>>>,
    /// Bytes of every storage buffer created so far, and the largest one (`dst info`'s memory
    /// report).
    allocated: std::sync::atomic::AtomicU64,
    /// The largest one's size and label.
    largest: Arc<Mutex<(u64, String)>>,
}

/// Keeps a headless compute program away from display servers.
///
/// Mesa installs an implicit Vulkan layer (`VK_LAYER_MESA_device_select`) that, when an instance
/// enables `VK_KHR_wayland_surface` (wgpu always does where the driver offers it), connects to a
/// Wayland display while enumerating adapters to learn which GPU drives it. With no
/// `XDG_RUNTIME_DIR`, as on any headless machine, libwayland then prints
/// `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` to stderr, once per
/// enumeration. We pick adapters ourselves (`WGPU_ADAPTER_NAME`, else the most capable kind), so
/// that layer has nothing to add: it is switched off through its documented off switch
/// (`NODEVICE_SELECT=1`), unless the user configured it (`NODEVICE_SELECT` or
/// `MESA_VK_DEVICE_SELECT` already set). Runs once, before the first Vulkan instance exists (the
/// loader reads the variable when it creates an instance), so no Vulkan call races with it.
fn quiet_display_probe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("NODEVICE_SELECT").is_none()
            && std::env::var_os("MESA_VK_DEVICE_SELECT").is_none()
        {
            std::env::set_var("NODEVICE_SELECT", "1");
        }
    });
}

fn instance() -> wgpu::Instance {
    quiet_display_probe();
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn backends_from_env() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())
}

/// The error for no adapter at all: the back ends searched and the fix.
pub fn no_adapter() -> GpuError {
    GpuError::NoAdapter {
        backends: backends_text(),
        hint: NO_ADAPTER_HINT,
    }
}

/// The back ends searched, by name ("vulkan, metal, dx12, gl"), and what set them.
fn backends_text() -> String {
    let b = backends_from_env();
    let names: Vec<&str> = [
        (wgpu::Backends::VULKAN, "vulkan"),
        (wgpu::Backends::METAL, "metal"),
        (wgpu::Backends::DX12, "dx12"),
        (wgpu::Backends::GL, "gl"),
    ]
    .iter()
    .filter(|(f, _)| b.contains(*f))
    .map(|(_, n)| *n)
    .collect();
    let list = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    };
    match std::env::var("WGPU_BACKEND") {
        Ok(v) => format!("{list}, as WGPU_BACKEND={v} asks: unset it to search them all"),
        Err(_) => list,
    }
}

/// Every adapter wgpu can see with the current `WGPU_BACKEND`; a name in it that wgpu does not
/// know is an error (wgpu would skip it, and the search find no adapter, or fewer, unsaid).
pub fn list_adapters() -> Result<Vec<wgpu::Adapter>> {
    if let Ok(value) = std::env::var("WGPU_BACKEND") {
        const KNOWN: [&str; 11] = [
            "vulkan", "vk", "dx12", "d3d12", "metal", "mtl", "opengl", "gles", "gl", "webgpu",
            "noop",
        ];
        let lower = value.to_lowercase();
        if let Some(part) = lower.split(',').map(str::trim).find(|p| !KNOWN.contains(p)) {
            return Err(GpuError::UnknownBackend {
                value: value.clone(),
                part: part.to_string(),
            });
        }
    }
    Ok(pollster::block_on(
        instance().enumerate_adapters(backends_from_env()),
    ))
}

fn preference(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// Chooses the adapter: the first whose name contains `WGPU_ADAPTER_NAME` (case-insensitive)
/// when that is set, else the most capable kind (discrete > integrated > virtual > CPU).
pub fn select_adapter(name: Option<&str>) -> Result<wgpu::Adapter> {
    let adapters = list_adapters()?;
    if adapters.is_empty() {
        return Err(no_adapter());
    }
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(wanted) => {
            let lower = wanted.to_lowercase();
            let available = adapters
                .iter()
                .map(|a| format!("{:?}", a.get_info().name))
                .collect::<Vec<_>>()
                .join(", ");
            adapters
                .into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&lower))
                .ok_or(GpuError::AdapterNotFound {
                    wanted: wanted.to_string(),
                    available,
                })
        }
        None => Ok(adapters
            .into_iter()
            .min_by_key(|a| preference(a.get_info().device_type))
            .expect("non-empty")),
    }
}

/// Whether `adapter` is a Vulkan CPU adapter whose subgroups are exactly 8 lanes wide and that
/// offers the `SUBGROUP` feature (the subgroup sections are checked for Vulkan:
/// tests/shaders.rs). The subgroup forms of the kernels need those 8 lanes to be one row of 8
/// along a workgroup's x axis, as a CPU driver's SIMD groups are (lavapipe with 256-bit vectors:
/// 8 lanes of f32); GPUs keep the plain forms.
fn subgroups_of_8(adapter: &wgpu::Adapter) -> bool {
    let info = adapter.get_info();
    AdapterClass::of(&info) == AdapterClass::Cpu
        && info.backend == wgpu::Backend::Vulkan
        && adapter.features().contains(wgpu::Features::SUBGROUP)
        && info.subgroup_min_size == 8
        && info.subgroup_max_size == 8
}

impl Gpu {
    /// Opens the adapter chosen by the environment (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`).
    pub fn from_env() -> Result<Gpu> {
        let name = std::env::var("WGPU_ADAPTER_NAME").ok();
        Gpu::open(select_adapter(name.as_deref())?)
    }

    /// Opens a device with the adapter's real limits and the features we can use.
    pub fn open(adapter: wgpu::Adapter) -> Result<Gpu> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let subgroups8 = subgroups_of_8(&adapter);
        let mut wanted = wgpu::Features::TIMESTAMP_QUERY;
        if subgroups8 {
            wanted |= wgpu::Features::SUBGROUP;
        }
        let desc = wgpu::DeviceDescriptor {
            label: Some("dst"),
            required_features: adapter.features() & wanted,
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&desc)).map_err(|source| {
                GpuError::RequestDevice {
                    adapter: info.name.clone(),
                    source,
                }
            })?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let lost = Arc::new(Mutex::new(None));
        {
            let errors = errors.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                errors.lock().unwrap().push(e.to_string());
            }));
            let lost = lost.clone();
            device.set_device_lost_callback(move |reason, msg| {
                *lost.lock().unwrap() = Some(format!("{reason:?}: {msg}"));
            });
        }
        Ok(Gpu {
            device,
            queue,
            class: AdapterClass::of(&info),
            subgroups8,
            info,
            limits,
            errors,
            lost,
            allocated: Default::default(),
            largest: Default::default(),
        })
    }

    /// One line naming the adapter: name, backend, device type, driver.
    pub fn describe(&self) -> String {
        describe_info(&self.info)
    }

    /// Fails if wgpu reported a validation error or lost the device since the last check.
    pub fn check(&self, context: &str) -> Result<()> {
        if let Some(msg) = self.lost.lock().unwrap().clone() {
            return Err(GpuError::DeviceLost(msg));
        }
        let mut errs = self.errors.lock().unwrap();
        if !errs.is_empty() {
            let message = errs.join("; ");
            errs.clear();
            return Err(GpuError::Validation {
                context: context.to_string(),
                message,
            });
        }
        Ok(())
    }

    /// Runs `f` under a validation error scope; a wgpu validation error becomes `GpuError`.
    pub fn scoped<T>(&self, context: &str, f: impl FnOnce() -> T) -> Result<T> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Validation {
                context: context.to_string(),
                message: e.to_string(),
            });
        }
        self.check(context)?;
        Ok(out)
    }

    /// Blocks until the queue is idle.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::DeviceLost(e.to_string()))?;
        self.check("wait")
    }

    /// Largest single storage binding, in bytes.
    pub fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// A storage buffer initialised with `data` (padded to 4 bytes), usable as a copy source and
    /// destination too.
    pub fn storage_init(&self, label: &str, data: &[u8]) -> Result<wgpu::Buffer> {
        let mut bytes = data.to_vec();
        bytes.resize(data.len().div_ceil(4).max(1) * 4, 0);
        self.check_size(label, bytes.len() as u64)?;
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &bytes,
                usage: STORAGE_USAGE,
            }))
    }

    /// A storage buffer that dispatches can also read their workgroup counts from (indirect
    /// dispatch), initialised with `words`.
    pub fn indirect_init(&self, label: &str, words: &[u32]) -> Result<wgpu::Buffer> {
        let bytes: &[u8] = bytemuck::cast_slice(words);
        self.check_size(label, bytes.len() as u64)?;
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage: STORAGE_USAGE | wgpu::BufferUsages::INDIRECT,
            }))
    }

    /// A zero-filled storage buffer of `bytes` bytes.
    pub fn storage_zeroed(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        let size = bytes.div_ceil(4).max(1) * 4;
        self.check_size(label, size)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: STORAGE_USAGE,
            mapped_at_creation: false,
        }))
    }

    fn check_size(&self, what: &str, needed: u64) -> Result<()> {
        if needed > self.max_binding() {
            return Err(GpuError::TooLarge {
                what: what.to_string(),
                needed,
                limit: self.max_binding(),
            });
        }
        use std::sync::atomic::Ordering::Relaxed;
        self.allocated.fetch_add(needed, Relaxed);
        let mut largest = self.largest.lock().unwrap_or_else(|e| e.into_inner());
        if needed > largest.0 {
            *largest = (needed, what.to_string());
        }
        Ok(())
    }

    /// Bytes of all storage buffers created on this device so far (freed ones included).
    pub fn allocated(&self) -> u64 {
        self.allocated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The largest storage buffer created so far: its size in bytes and its label.
    pub fn largest(&self) -> (u64, String) {
        self.largest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A uniform buffer holding one `Pod` value.
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::bytes_of(value),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// Reads `len` bytes at `offset` of several buffer ranges back in one submission.
    pub fn read_ranges(&self, ranges: &[(&wgpu::Buffer, u64, u64)]) -> Result<Vec<Vec<u8>>> {
        let total: u64 = ranges.iter().map(|r| r.2.div_ceil(4) * 4).sum();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: total.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        let mut at = 0;
        for (buf, off, len) in ranges {
            let len4 = len.div_ceil(4) * 4;
            enc.copy_buffer_to_buffer(buf, *off, &staging, at, len4);
            at += len4;
        }
        self.queue.submit([enc.finish()]);
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|e| GpuError::Readback(e.to_string()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let data = slice
            .get_mapped_range()
            .map_err(|e| GpuError::Readback(e.to_string()))?
            .to_vec();
        staging.unmap();
        let mut out = Vec::with_capacity(ranges.len());
        let mut at = 0usize;
        for (_, _, len) in ranges {
            out.push(data[at..at + *len as usize].to_vec());
            at += (len.div_ceil(4) * 4) as usize;
        }
        Ok(out)
    }

    /// Reads a tensor back as `T`s.
    pub fn read<T: bytemuck::Pod>(&self, t: &Tensor) -> Result<Vec<T>> {
        let bytes = self.read_ranges(&[(&t.buffer, t.offset, t.bytes())])?;
        Ok(bytemuck::pod_collect_to_vec(&bytes[0]))
    }

    /// Overwrites a tensor with host data (same element count).
    pub fn write<T: bytemuck::Pod>(&self, t: &Tensor, data: &[T]) {
        assert_eq!(
            std::mem::size_of_val(data),
            t.bytes() as usize,
            "write to {}: size mismatch",
            t.label
        );
        self.queue
            .write_buffer(&t.buffer, t.offset, bytemuck::cast_slice(data));
    }
}

pub const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

pub fn describe_info(info: &wgpu::AdapterInfo) -> String {
    let driver = [info.driver.as_str(), info.driver_info.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{} ({:?}, {:?}{})",
        info.name,
        info.backend,
        info.device_type,
        if driver.is_empty() {
            String::new()
        } else {
            format!(", driver {driver}")
        }
    )
}

/// A typed view of a range of a storage buffer: 4-byte elements (f32 or u32), row-major shape.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub buffer: Arc<wgpu::Buffer>,
    /// Byte offset into `buffer` (a multiple of the adapter's storage offset alignment).
    pub offset: u64,
    pub shape: Vec<usize>,
    pub label: String,
}

impl Tensor {
    /// A whole new zero-filled buffer of `shape`.
    pub fn zeros(gpu: &Gpu, label: &str, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        Ok(Tensor {
            buffer: Arc::new(gpu.storage_zeroed(label, 4 * n as u64)?),
            offset: 0,
            shape: shape.to_vec(),
            label: label.to_string(),
        })
    }

    /// A whole new buffer holding `data` (f32 or u32).
    pub fn from_slice<T: bytemuck::Pod>(
        gpu: &Gpu,
        label: &str,
        shape: &[usize],
        data: &[T],
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        assert_eq!(
            n * 4,
            std::mem::size_of_val(data),
            "{label}: shape/data size"
        );
        Ok(Tensor {
            buffer: Arc::new(gpu.storage_init(label, bytemuck::cast_slice(data))?),
            offset: 0,
            shape: shape.to_vec(),
            label: label.to_string(),
        })
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> u64 {
        4 * self.len().max(1) as u64
    }

    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: std::num::NonZeroU64::new(self.bytes()),
        })
    }
}
