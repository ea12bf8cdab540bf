//! Which executor an [`Estimator`](super::Estimator) runs on, and why.

use std::fmt;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;

/// Where to run the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The GPU when the adapter is a real GPU; the CPU executor when there is no adapter or the
    /// adapter is a software rasteriser (lavapipe, SwiftShader, WARP: see
    /// [`GpuContext::is_software`]). The rule is that simple on purpose: on lavapipe the CPU
    /// executor ran every shipped network 7-20x faster than the GPU path (README, "Benchmarks",
    /// whole networks), since both run on the same cores and the CPU executor's GEMM kernels beat
    /// what the driver's code generator makes of the shaders.
    #[default]
    Auto,
    /// The first adapter wgpu offers, whatever it is; an error when there is none.
    Gpu,
    /// The CPU executor.
    Cpu,
}

/// The executor an estimator chose and the reason, as returned by
/// [`Estimator::device_choice`](super::Estimator::device_choice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceChoice {
    /// True when the network runs on the GPU.
    pub gpu: bool,
    /// The adapter, when one was looked at (`name (backend, type)`).
    pub adapter: Option<String>,
    /// Why this executor: one sentence.
    pub reason: String,
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = if self.gpu { "GPU" } else { "CPU executor" };
        write!(f, "{on}: {}", self.reason)
    }
}

impl DeviceChoice {
    /// The choice when the caller handed over a GPU context (or none) themselves.
    pub(crate) fn given(ctx: Option<&GpuContext>) -> Self {
        match ctx {
            Some(c) => DeviceChoice {
                gpu: true,
                adapter: Some(c.describe()),
                reason: format!("GPU context given by the caller ({})", c.describe()),
            },
            None => DeviceChoice { gpu: false, adapter: None, reason: "no GPU context given".into() },
        }
    }
}

impl Device {
    /// Opens what this asks for: the GPU context to run on (`None`: the CPU executor) and why.
    /// `Auto` finds no adapter: the CPU; `Gpu` finds none: [`Error::NoAdapter`].
    pub fn open(self) -> Result<(Option<GpuContext>, DeviceChoice)> {
        match self {
            Device::Cpu => Ok((None, asked_cpu())),
            Device::Gpu => Ok(self.choose(GpuContext::new()?)),
            Device::Auto => match GpuContext::new() {
                Ok(ctx) => Ok(self.choose(ctx)),
                Err(Error::NoAdapter(msg)) => Ok((
                    None,
                    DeviceChoice { gpu: false, adapter: None, reason: format!("no GPU adapter found ({msg})") },
                )),
                Err(e) => Err(e),
            },
        }
    }

    /// Applies this choice to a device opened elsewhere (for instance a renderer's): keeps `ctx`
    /// or leaves it for the CPU executor, and says why.
    pub fn choose(self, ctx: GpuContext) -> (Option<GpuContext>, DeviceChoice) {
        let adapter = Some(ctx.describe());
        let name = ctx.adapter_info.name.clone();
        match self {
            Device::Cpu => (None, DeviceChoice { adapter, ..asked_cpu() }),
            Device::Gpu => (Some(ctx), DeviceChoice { gpu: true, adapter, reason: "asked for the GPU".into() }),
            Device::Auto if ctx.is_software() => {
                let reason = format!(
                    "{name} is a software adapter (the CPU emulating a GPU), where the CPU executor runs the \
                     shipped networks several times faster (README, Benchmarks)"
                );
                (None, DeviceChoice { gpu: false, adapter, reason })
            }
            Device::Auto => {
                (Some(ctx), DeviceChoice { gpu: true, adapter, reason: format!("{name} is a hardware adapter") })
            }
        }
    }
}

fn asked_cpu() -> DeviceChoice {
    DeviceChoice { gpu: false, adapter: None, reason: "asked for the CPU".into() }
}
