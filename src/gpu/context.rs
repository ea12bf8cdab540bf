//! Adapter and device: one `GpuContext` can be shared by several compiled models and by a
//! renderer (the demo shares its device with the estimator). It is a bundle of owned handles:
//! wgpu's `Device`, `Queue` and `Adapter` are reference-counted, so cloning a context is cheap
//! and every clone drives the same device.

use std::sync::{Arc, Mutex};

use super::pipelines::PipelineCache;
use crate::error::{Error, Result};

/// What to install when no adapter is found; printed by the CLI as is.
pub const NO_ADAPTER_HELP: &str = "no Vulkan, Metal or DX12 adapter was found. On a Linux machine \
without a GPU, install Mesa's software Vulkan driver (lavapipe): \
`apt-get install -y mesa-vulkan-drivers libvulkan1`; or run on the CPU with `--device cpu`";

/// An open device with its queue: what compiled models and the estimator run on. Clone it to
/// give several owners the same device.
#[derive(Clone, Debug)]
pub struct GpuContext {
    /// The wgpu device everything is created on.
    pub device: wgpu::Device,
    /// Its queue: uploads and command buffers go through it.
    pub queue: wgpu::Queue,
    /// The adapter the device was opened on, when this context opened it (a device wrapped with
    /// [`GpuContext::from_device`] comes without one).
    pub adapter: Option<wgpu::Adapter>,
    /// Name, backend and type of the adapter (as given to [`GpuContext::from_device`]
    /// when no adapter is known).
    pub adapter_info: wgpu::AdapterInfo,
    /// Whether per-dispatch GPU timestamps are available (profiling).
    pub timestamps: bool,
    lost: Arc<Mutex<Option<String>>>,
    /// The graph kernels compiled on this device, shared by its models.
    pub(crate) pipelines: PipelineCache,
    /// Whether models compiled on this context use the kernels that share loads across a
    /// subgroup (the device has the `subgroups` feature with subgroups of at least 4
    /// invocations). Set by [`GpuContext::from_adapter`] on software adapters (lavapipe,
    /// SwiftShader), where they were measured; `WGPOSE_GPU_SUBGROUPS=1` in the environment turns
    /// them on for any adapter that has the feature, `=0` off. A context from [`GpuContext::from_device`] starts without
    /// them: set it only if that device was opened with [`wgpu::Features::SUBGROUP`] and its
    /// subgroups hold at least 4 invocations. Changing it affects models compiled afterwards.
    pub subgroup_kernels: bool,
    /// Whether models compiled on this context let a convolution apply the channel affine
    /// (an unfoldable batch norm, with its ReLU) that feeds it as it loads its input, instead of
    /// running the affine as a pass of its own ([`crate::graph::passes::input_affines`]). On by
    /// default; `WGPOSE_GPU_FUSE_AFFINES=0` in the environment turns it off (for comparisons).
    /// Changing it affects models compiled afterwards.
    pub fuse_input_affines: bool,
}

impl GpuContext {
    /// Picks the first adapter wgpu offers (high performance preferred) and opens a device with
    /// WebGPU's default limits, raised only where the adapter allows and large models need it
    /// (storage binding and buffer size).
    pub fn new() -> Result<Self> {
        pollster::block_on(Self::new_async())
    }

    /// [`GpuContext::new`] without blocking (the browser build awaits it).
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

    /// Opens a device on `adapter` with the limits described at [`GpuContext::new`].
    pub async fn from_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        let supported = adapter.limits();
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: supported.max_storage_buffer_binding_size,
            max_buffer_size: supported.max_buffer_size,
            ..Default::default()
        };
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        // The subgroup kernels were measured on software adapters only (faster on SwiftShader,
        // equal or faster on lavapipe); on a GPU, whose compilers already load uniform weights
        // once per wave, they are opt-in (`WGPOSE_GPU_SUBGROUPS=1`), and `=0` turns them off.
        let has_subgroups = adapter.features().contains(wgpu::Features::SUBGROUP) && info.subgroup_min_size >= 4;
        let subgroups = has_subgroups
            && match std::env::var("WGPOSE_GPU_SUBGROUPS").as_deref() {
                Ok("0") => false,
                Ok("1") => true,
                _ => is_software_adapter(&info),
            };
        let mut required_features = wgpu::Features::empty();
        if timestamps {
            required_features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        if subgroups {
            required_features |= wgpu::Features::SUBGROUP;
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgpose"),
                required_features,
                required_limits: limits,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Gpu(format!("could not open a device on {}: {e}", info.name)))?;
        let mut ctx = Self::from_device(device, queue, info, timestamps);
        ctx.adapter = Some(adapter);
        ctx.subgroup_kernels = subgroups;
        Ok(ctx)
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
        GpuContext {
            device,
            queue,
            adapter: None,
            adapter_info,
            timestamps,
            lost,
            pipelines: PipelineCache::default(),
            subgroup_kernels: false,
            fuse_input_affines: std::env::var("WGPOSE_GPU_FUSE_AFFINES").as_deref() != Ok("0"),
        }
    }

    /// A short description: adapter name and backend.
    pub fn describe(&self) -> String {
        format!("{} ({:?}, {:?})", self.adapter_info.name, self.adapter_info.backend, self.adapter_info.device_type)
    }

    /// How many graph-kernel pipelines this device has compiled: models compiled on the same
    /// context (and its clones) share them, so a second model adds only kernels the first did
    /// not use.
    pub fn compiled_pipelines(&self) -> usize {
        self.pipelines.len()
    }

    /// Errors once the device has been lost.
    pub fn check_lost(&self) -> Result<()> {
        match self.lost.lock().ok().and_then(|l| l.clone()) {
            Some(msg) => Err(Error::DeviceLost(msg)),
            None => Ok(()),
        }
    }

    /// Whether the adapter is a CPU emulation of a GPU (lavapipe, SwiftShader, WARP, ...): wgpu
    /// reports those as [`wgpu::DeviceType::Cpu`], and some drivers only say so in their name.
    pub fn is_software(&self) -> bool {
        is_software_adapter(&self.adapter_info)
    }

    fn push_scopes(&self) -> Scopes {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        Scopes { oom, validation }
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns what they catch into
    /// errors (wgpu would otherwise panic on an uncaptured error). Natively popping the scopes
    /// is immediate. In a browser their result arrives on the event loop, which a blocking call
    /// cannot wait for: there `f` runs without scopes (errors reach the device's
    /// uncaptured-error handler); use [`GpuContext::scoped_async`] to catch them.
    pub fn scoped<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_lost()?;
        if cfg!(target_arch = "wasm32") {
            return f();
        }
        let scopes = self.push_scopes();
        let out = f();
        pollster::block_on(scopes.pop(what))?;
        self.check_lost()?;
        out
    }

    /// [`GpuContext::scoped`] that awaits the scopes instead of blocking.
    pub async fn scoped_async<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_lost()?;
        let scopes = self.push_scopes();
        let out = f();
        scopes.pop(what).await?;
        self.check_lost()?;
        out
    }
}

/// Whether `info` describes a software rasteriser rather than a GPU.
pub fn is_software_adapter(info: &wgpu::AdapterInfo) -> bool {
    if info.device_type == wgpu::DeviceType::Cpu {
        return true;
    }
    let name = info.name.to_ascii_lowercase();
    ["llvmpipe", "lavapipe", "swiftshader", "microsoft basic render driver", "warp"].iter().any(|n| name.contains(n))
}

/// The two error scopes of one `scoped` call (validation innermost).
struct Scopes {
    oom: wgpu::ErrorScopeGuard,
    validation: wgpu::ErrorScopeGuard,
}

impl Scopes {
    /// Pops both scopes now (the pop takes effect immediately) and resolves to the first error.
    fn pop(self, what: &str) -> impl std::future::Future<Output = Result<()>> + use<'_> {
        let validation = self.validation.pop();
        let oom = self.oom.pop();
        async move {
            if let Some(e) = validation.await {
                return Err(Error::Gpu(format!("{what}: {e}")));
            }
            if let Some(e) = oom.await {
                return Err(Error::Gpu(format!("{what}: out of device memory: {e}")));
            }
            Ok(())
        }
    }
}
