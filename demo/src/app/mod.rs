//! The window: controls on the right, the frame (a wgpu texture shared with the estimator) with
//! the skeleton drawn over it by egui's painter in the middle.
//!
//! Here: the app's state and its egui loop. `frame` runs one frame of the pipeline (capture,
//! upload, tracker, timings), `tracking` decides who is drawn (detector or follow crop, One Euro
//! smoothing), `panels` draws the controls, timings, per-layer GPU times and the frame, and
//! `headless` runs the window for tests and soaks (screenshot, sidecar JSON, memory reports).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eframe::egui;
use wgpose::estimator::{Device, Estimator, EstimatorOptions};
use wgpose::gpu::{GpuContext, NodeTime};
use wgpose::models::{ModelConfig, WeightsSource};

use crate::source::{Source, SourceSpec};

mod frame;
mod headless;
mod panels;
mod tracking;

use frame::{GpuFrame, Timings};
pub use headless::Headless;
use headless::Sidecar;
use tracking::Tracking;

/// Command-line settings the window starts with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub source: Option<SourceSpec>,
    pub model: ModelConfig,
    pub threshold: f32,
    pub smoothing: bool,
    pub headless: Option<Headless>,
    /// Where the networks run: `Auto` puts them on the CPU executor when the adapter is a
    /// software one (lavapipe), where that is several times faster.
    pub device: Device,
}

/// Set when the app wants the process to exit non-zero once the window has closed.
pub type ExitError = Arc<Mutex<Option<String>>>;

pub struct DemoApp {
    gpu: GpuContext,
    render_state: egui_wgpu::RenderState,
    models: Vec<ModelConfig>,
    model: ModelConfig,
    show_all_models: bool,
    estimator: Option<Estimator>,
    estimator_error: Option<String>,
    weights_note: String,
    /// Where the networks run (the `--device` setting) and, once built, why.
    device: Device,
    device_note: String,
    /// Why there is no person detector, if there is none.
    detector_note: String,
    /// `--memory-every`: resident memory at the first report, and the largest growth since.
    memory_baseline: Option<f64>,
    memory_growth: f64,

    source_spec: Option<SourceSpec>,
    source: Option<Source>,
    source_error: Option<String>,
    folder_text: String,
    image_text: String,
    camera_index: u32,
    camera_res: (u32, u32),
    camera_list: Option<Result<Vec<(u32, String)>, String>>,
    playback_fps: f32,
    last_advance: Option<Instant>,

    frame: Option<GpuFrame>,
    frame_label: String,
    frame_path: Option<PathBuf>,
    frames_processed: usize,

    /// The tracker, smoothing and overlay settings.
    tracking: Tracking,
    pipeline_error: Option<String>,

    timings: Timings,
    fps: f32,
    fps_count: u32,
    fps_since: Instant,
    start: Instant,

    layers: Option<Result<Option<Vec<NodeTime>>, String>>,
    layers_at: Option<Instant>,
    layers_auto: bool,
    layers_every_s: f32,
    layers_ms: f64,

    headless: Option<Headless>,
    shot: Arc<Mutex<Option<Arc<egui::ColorImage>>>>,
    shot_requested: bool,
    shot_written: bool,
    last_sidecar: Option<Sidecar>,
    exit_error: ExitError,
}

impl DemoApp {
    pub fn new(cc: &eframe::CreationContext<'_>, settings: Settings, exit_error: ExitError) -> Result<Self, String> {
        let rs = cc
            .wgpu_render_state
            .clone()
            .ok_or_else(|| format!("eframe did not start its wgpu renderer. {}", wgpose::gpu::NO_ADAPTER_HELP))?;
        let info = rs.adapter.get_info();
        let timestamps = rs.device.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        // One device for egui and the estimator: the context holds clones of egui's handles.
        let mut gpu = GpuContext::from_device(rs.device.clone(), rs.queue.clone(), info, timestamps);
        gpu.adapter = Some(rs.adapter.clone());
        let (folder_text, image_text) = match &settings.source {
            Some(SourceSpec::Folder(d)) => (d.display().to_string(), String::new()),
            Some(SourceSpec::Image(p)) => (String::new(), p.display().to_string()),
            _ => (String::new(), String::new()),
        };
        let mut app = DemoApp {
            gpu,
            render_state: rs,
            models: wgpose::models::configs(),
            model: settings.model,
            show_all_models: !settings.model.name.ends_with("-lsp"),
            estimator: None,
            estimator_error: None,
            weights_note: String::new(),
            device: settings.device,
            device_note: String::new(),
            detector_note: String::new(),
            memory_baseline: None,
            memory_growth: 0.0,
            source_spec: None,
            source: None,
            source_error: None,
            folder_text,
            image_text,
            camera_index: 0,
            camera_res: (640, 480),
            camera_list: None,
            playback_fps: 15.0,
            last_advance: None,
            frame: None,
            frame_label: String::new(),
            frame_path: None,
            frames_processed: 0,
            tracking: Tracking::new(settings.threshold, settings.smoothing),
            pipeline_error: None,
            timings: Timings::default(),
            fps: 0.0,
            fps_count: 0,
            fps_since: Instant::now(),
            start: Instant::now(),
            layers: None,
            layers_at: None,
            layers_auto: false,
            layers_every_s: 10.0,
            layers_ms: 0.0,
            headless: settings.headless.clone(),
            shot: Arc::new(Mutex::new(None)),
            shot_requested: false,
            shot_written: false,
            last_sidecar: None,
            exit_error,
        };
        app.build_estimator();
        if let Some(e) = &app.estimator_error {
            if app.headless.is_some() {
                return Err(e.clone());
            }
        }
        if let Some(spec) = settings.source {
            app.open_source(spec);
            if let (Some(e), Some(_)) = (&app.source_error, &app.headless) {
                return Err(e.clone());
            }
        }
        Ok(app)
    }

    fn build_estimator(&mut self) {
        self.estimator = None;
        self.layers = None;
        self.tracking.reset();
        if let Some(s) = &mut self.source {
            s.rewind();
        }
        // With the shipped person detector when it loads; without it the whole frame is searched
        // (a build without models/), and the note says so.
        let (model, gpu, device) = (self.model, &self.gpu, self.device);
        // Any config may be picked; one without weights runs with a "NO TRAINED WEIGHTS" banner.
        let opts = EstimatorOptions { random_weights: true, ..Default::default() };
        let built = Estimator::with_context(&model, None, gpu, device, opts).or_else(|e| {
            let opts = EstimatorOptions { find_people: false, ..opts };
            let est = Estimator::with_context(&model, None, gpu, device, opts)?;
            self.detector_note = format!("no person detector ({e}); the whole frame is searched");
            Ok::<_, wgpose::Error>(est)
        });
        match built {
            Ok(est) => {
                if est.detector().is_some() {
                    self.detector_note.clear();
                }
                self.weights_note = match &est.weights {
                    WeightsSource::RandomInit { seed } => format!(
                        "NO TRAINED WEIGHTS: {} is a random initialisation (seed {seed}); the keypoints are meaningless",
                        self.model.name
                    ),
                    w => format!("weights: {w}"),
                };
                self.device_note = format!("networks on the {}", est.device_choice());
                if !est.device_choice().gpu {
                    // Live video idles the CPU executor's pool between frames: one CPU per
                    // worker keeps both working on each frame (`wgpose::pin_cpu_threads`).
                    wgpose::pin_cpu_threads();
                }
                self.tracking.skeleton = Some(est.skeleton);
                self.estimator = Some(est);
                self.estimator_error = None;
            }
            Err(e) => self.estimator_error = Some(format!("cannot build {}: {e}", self.model.name)),
        }
    }

    fn open_source(&mut self, spec: SourceSpec) {
        self.source = None;
        self.source_error = None;
        self.tracking.reset();
        match Source::open(&spec) {
            Ok(mut s) => {
                s.set_repeat(self.headless.is_some());
                self.source = Some(s);
            }
            Err(e) => self.source_error = Some(e),
        }
        self.source_spec = Some(spec);
    }
}

impl eframe::App for DemoApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        let now = Instant::now();
        if self.gpu.check_lost().is_err() && self.headless.is_some() {
            *self.exit_error.lock().unwrap() = Some("the GPU device was lost".into());
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
        // Freeze once the screenshot is requested so the captured frame is the described one.
        if !self.shot_requested {
            self.step(now);
        }
        if self.estimator.is_some()
            && self.frame.is_some()
            && (self.layers.is_none()
                || self.layers_auto && self.layers_at.is_some_and(|t| t.elapsed().as_secs_f32() >= self.layers_every_s))
        {
            self.profile_layers();
        }
        if self.fps_since.elapsed() >= Duration::from_secs(1) {
            self.fps = self.fps_count as f32 / self.fps_since.elapsed().as_secs_f32();
            self.fps_count = 0;
            self.fps_since = Instant::now();
        }
        egui::Panel::right("controls").exact_size(300.0).show(ui, |ui| {
            egui::ScrollArea::vertical().auto_shrink([false, false]).show(ui, |ui| self.controls(ui));
        });
        egui::Panel::bottom("stats").exact_size(190.0).show(ui, |ui| {
            ui.columns(2, |cols| {
                self.timing(&mut cols[0]);
                self.layers_ui(&mut cols[1]);
            });
        });
        let drawn = egui::CentralPanel::default_margins().show(ui, |ui| self.view(ui)).inner;
        if drawn.is_some() {
            self.last_sidecar = drawn;
        }
        if self.headless.is_some() {
            self.headless_tick(&ctx);
        } else if self.source.as_ref().is_some_and(|s| s.is_live()) {
            ctx.request_repaint();
        } else {
            ctx.request_repaint_after(Duration::from_millis(250));
        }
    }
}
