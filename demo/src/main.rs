//! `demo`: live skeletons from a webcam, a folder of images or one image, in a winit + egui
//! window drawn with wgpu on the same device the estimator runs on.
//!
//! ```text
//! demo [--source folder:DIR|image:FILE|camera[:N[:WxH]]] [--model NAME] [--threshold T]
//!      [--size WxH] [--no-smoothing] [--device auto|gpu|cpu] [--frames N --screenshot OUT.png [--timeout SECS]
//!      [--memory-every N [--memory-margin MIB]]]
//! ```
//! With `--frames N --screenshot OUT.png` it runs N frames, saves the window as OUT.png and the
//! drawn keypoints (window pixels) as OUT.json, and exits (the headless mode the tests use
//! under Xvfb). `--memory-every N` adds a soak: the resident memory every N frames, and exit
//! status 1 when it grew by more than `--memory-margin` MiB (default 32) after the first report.

mod app;
#[cfg(feature = "camera")]
mod camera;
mod source;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eframe::egui;

use app::{DemoApp, Headless, Settings};
use source::SourceSpec;

/// Cameras to offer in the picker.
pub fn list_cameras() -> Result<Vec<(u32, String)>, String> {
    #[cfg(feature = "camera")]
    {
        camera::list()
    }
    #[cfg(not(feature = "camera"))]
    {
        Err("built without the `camera` feature".into())
    }
}

const USAGE: &str = "usage: demo [--source folder:DIR|image:FILE|camera[:N[:WxH]]] [--model NAME] [--threshold T] \
[--size WxH] [--no-smoothing] [--device auto|gpu|cpu] [--frames N --screenshot OUT.png [--timeout SECS]
      [--memory-every N [--memory-margin MIB]]]";

struct Args {
    settings: Settings,
    size: [f32; 2],
}

fn parse_args() -> Result<Args, String> {
    let mut source = None;
    let mut model_name: Option<String> = None;
    let mut threshold = 0.3f32;
    let mut device = wgpose::Device::Auto;
    let mut size = [960.0f32, 600.0];
    let mut smoothing = true;
    let mut frames: Option<usize> = None;
    let mut screenshot: Option<PathBuf> = None;
    let mut timeout = 300u64;
    let mut memory_every: Option<usize> = None;
    let mut memory_margin_mib = 32.0f64;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        match a.as_str() {
            "--source" => source = Some(value("--source")?.parse::<SourceSpec>()?),
            "--model" => model_name = Some(value("--model")?),
            "--threshold" => {
                threshold = value("--threshold")?.parse().map_err(|_| "--threshold wants a number".to_string())?
            }
            "--size" => {
                let v = value("--size")?;
                let (w, h) = v.split_once('x').ok_or("--size wants WxH")?;
                size = [w.parse().map_err(|_| "--size wants WxH")?, h.parse().map_err(|_| "--size wants WxH")?];
            }
            "--no-smoothing" => smoothing = false,
            "--device" => {
                device = match value("--device")?.as_str() {
                    "auto" => wgpose::Device::Auto,
                    "gpu" => wgpose::Device::Gpu,
                    "cpu" => wgpose::Device::Cpu,
                    other => return Err(format!("--device `{other}`: expected auto, gpu or cpu")),
                }
            }
            "--frames" => frames = Some(value("--frames")?.parse().map_err(|_| "--frames wants a count".to_string())?),
            "--screenshot" => screenshot = Some(PathBuf::from(value("--screenshot")?)),
            "--timeout" => timeout = value("--timeout")?.parse().map_err(|_| "--timeout wants seconds".to_string())?,
            "--memory-every" => {
                let n: usize =
                    value("--memory-every")?.parse().map_err(|_| "--memory-every wants a count".to_string())?;
                if n == 0 {
                    return Err("--memory-every must be at least 1".into());
                }
                memory_every = Some(n);
            }
            "--memory-margin" => {
                memory_margin_mib =
                    value("--memory-margin")?.parse().map_err(|_| "--memory-margin wants MiB".to_string())?;
                if !(memory_margin_mib.is_finite() && memory_margin_mib >= 0.0) {
                    return Err("--memory-margin must be a finite number, 0 or above".into());
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    let model = match &model_name {
        Some(n) => wgpose::models::config(n).map_err(|e| e.to_string())?,
        None => {
            let all = wgpose::models::configs();
            *all.iter()
                .find(|c| c.name == wgpose::models::DEFAULT_MODEL)
                .or_else(|| all.iter().find(|c| c.name.ends_with("-lsp")))
                .unwrap_or(&all[0])
        }
    };
    let headless = match (frames, screenshot) {
        (Some(frames), Some(screenshot)) => {
            if frames == 0 {
                return Err("--frames must be at least 1".into());
            }
            Some(Headless {
                frames,
                screenshot,
                timeout: Duration::from_secs(timeout),
                memory_every,
                memory_margin_mib,
            })
        }
        (None, None) if memory_every.is_some() => return Err("--memory-every needs headless mode (--frames)".into()),
        (None, None) => None,
        _ => return Err("--frames and --screenshot go together".into()),
    };
    if headless.is_some() {
        // Fail before opening a window when the source cannot work.
        match &source {
            None => return Err("headless mode needs --source".into()),
            Some(spec) => {
                source::Source::open(spec)?;
            }
        }
    }
    Ok(Args { settings: Settings { source, model, threshold, smoothing, headless, device }, size })
}

fn wgpu_options(headless: bool) -> egui_wgpu::WgpuConfiguration {
    let mut create = egui_wgpu::WgpuSetupCreateNew::without_display_handle();
    // Compute shaders: Vulkan, Metal or DX12 (not GL), unless WGPU_BACKEND says otherwise.
    create.instance_descriptor.backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
    create.device_descriptor = Arc::new(|adapter: &wgpu::Adapter| {
        let supported = adapter.limits();
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        wgpu::DeviceDescriptor {
            label: Some("wgpose demo"),
            required_features: if timestamps { wgpu::Features::TIMESTAMP_QUERY } else { wgpu::Features::empty() },
            required_limits: wgpu::Limits {
                max_texture_dimension_2d: 8192.min(supported.max_texture_dimension_2d),
                max_storage_buffer_binding_size: supported.max_storage_buffer_binding_size,
                max_buffer_size: supported.max_buffer_size,
                ..wgpu::Limits::default()
            },
            ..Default::default()
        }
    });
    let mut config = egui_wgpu::WgpuConfiguration { wgpu_setup: create.into(), ..Default::default() };
    if headless {
        // No need to wait for vblank when nobody watches.
        config.surface.present_mode = wgpu::PresentMode::AutoNoVsync;
    }
    config
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::from(2);
        }
    };
    let headless = args.settings.headless.is_some();
    let mut viewport = egui::ViewportBuilder::default().with_inner_size(args.size).with_title("wgpose demo");
    if headless {
        viewport = viewport.with_resizable(false);
    }
    let options = eframe::NativeOptions {
        viewport,
        renderer: eframe::Renderer::Wgpu,
        wgpu_options: wgpu_options(headless),
        ..Default::default()
    };
    let exit_error: app::ExitError = Arc::new(Mutex::new(None));
    let ee = exit_error.clone();
    let settings = args.settings;
    let result = eframe::run_native(
        "wgpose demo",
        options,
        Box::new(move |cc| {
            if headless {
                // Window pixels = egui points, so the sidecar's coordinates are the PNG's.
                cc.egui_ctx.set_pixels_per_point(1.0);
            }
            let app = DemoApp::new(cc, settings, ee.clone()).inspect_err(|e| {
                *ee.lock().unwrap() = Some(e.clone());
            })?;
            Ok(Box::new(app) as Box<dyn eframe::App>)
        }),
    );
    if let Some(e) = exit_error.lock().unwrap().take() {
        eprintln!("demo: {e}");
        return ExitCode::from(1);
    }
    if let Err(e) = result {
        let msg = e.to_string();
        eprintln!("demo: cannot open the window: {msg}");
        if msg.to_lowercase().contains("adapter") || msg.to_lowercase().contains("wgpu") {
            eprintln!(
                "demo: the window and the estimator need a wgpu adapter (Vulkan, Metal or DX12); there is no CPU-only \
                 fallback for the window. On Linux without a GPU install Mesa's software Vulkan driver: \
                 `apt-get install -y mesa-vulkan-drivers libvulkan1` (the `wgpose` CLI itself can run with `--device cpu`)."
            );
        }
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
