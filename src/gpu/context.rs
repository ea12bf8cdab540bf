//! Adapter and device: one `GpuContext` can be shared by several compiled models and by a
//! renderer (the demo shares its device with the estimator).

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// What to install when no adapter is found; printed by the CLI as is.
pub const NO_ADAPTER_HELP: &str = "no Vulkan, Metal or DX12 adapter was found. On a Linux machine \
without a GPU, install Mesa's software Vulkan driver (lavapipe): \
`apt-get install -y mesa-vulkan-drivers libvulkan1`; or run on the CPU with `--device cpu`";

pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter_info: wgpu::AdapterInfo,
    /// Whether per-dispatch GPU timestamps are available (profiling).
    pub timestamps: bool,
    lost: Arc<Mutex<Option<String>>>,
}

impl GpuContext {
    /// Picks the first adapter wgpu offers (high performance preferred) and opens a device with
    /// WebGPU's default limits, raised only where the adapter allows and large models need it
    /// (storage binding and buffer size).
    pub fn new() -> Result<Self> {
        pollster::block_on(Self::new_async())
    }

    pub async fn new_async() -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::PRIMARY,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter(format!("{NO_ADAPTER_HELP} ({e})")))?;
        Self::from_adapter(adapter).await
    }

    pub async fn from_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        let supported = adapter.limits();
        let mut limits = wgpu::Limits::default();
        limits.max_storage_buffer_binding_size = supported.max_storage_buffer_binding_size;
        limits.max_buffer_size = supported.max_buffer_size;
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let required_features = if timestamps { wgpu::Features::TIMESTAMP_QUERY } else { wgpu::Features::empty() };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgpose"),
                required_features,
                required_limits: limits,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Gpu(format!("could not open a device on {}: {e}", info.name)))?;
        Ok(Self::from_device(device, queue, info, timestamps))
    }

    /// Wraps a device opened elsewhere (for instance by a windowing toolkit's renderer).
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter_info: wgpu::AdapterInfo,
        timestamps: bool,
    ) -> Self {
        let lost = Arc::new(Mutex::new(None));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = flag.lock() {
                *l = Some(format!("{reason:?}: {msg}"));
            }
        });
        GpuContext { device, queue, adapter_info, timestamps, lost }
    }

    /// A short description: adapter name and backend.
    pub fn describe(&self) -> String {
        format!("{} ({:?}, {:?})", self.adapter_info.name, self.adapter_info.backend, self.adapter_info.device_type)
    }

    /// Errors once the device has been lost.
    pub fn check_lost(&self) -> Result<()> {
        match self.lost.lock().ok().and_then(|l| l.clone()) {
            Some(msg) => Err(Error::DeviceLost(msg)),
            None => Ok(()),
        }
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns what they catch into
    /// errors (wgpu would otherwise panic on an uncaptured error).
    pub fn scoped<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_lost()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = v {
            return Err(Error::Gpu(format!("{what}: {e}")));
        }
        if let Some(e) = o {
            return Err(Error::Gpu(format!("{what}: out of device memory: {e}")));
        }
        self.check_lost()?;
        out
    }
}
