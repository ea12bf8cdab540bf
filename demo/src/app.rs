//! The window: controls on the right, the frame (a wgpu texture shared with the estimator) with
//! the skeleton drawn over it by egui's painter in the middle.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eframe::egui;
use egui::{Color32, Pos2, Rect, Stroke, Vec2};
use serde::Serialize;
use wgpose::estimator::{Estimator, EstimatorOptions};
use wgpose::gpu::{GpuContext, NodeTime};
use wgpose::models::{ModelConfig, WeightsSource};
use wgpose::pipeline::{FrameLayout, Keypoint, OneEuroConfig, PoseSmoother};
use wgpose::skeleton::Skeleton;
use wgpose::{TrackStep, Tracker, TrackerOptions};

use crate::source::{Source, SourceSpec};

/// Command-line settings the window starts with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub source: Option<SourceSpec>,
    pub model: ModelConfig,
    pub threshold: f32,
    pub smoothing: bool,
    pub headless: Option<Headless>,
}

/// `--frames N --screenshot OUT.png`: run N frames, save the window and the keypoints, exit.
#[derive(Clone, Debug)]
pub struct Headless {
    pub frames: usize,
    pub screenshot: PathBuf,
    /// Gives up (exit code 1) when the screenshot has not been written by then.
    pub timeout: Duration,
    /// `--memory-every N`: print the resident memory every N frames (a soak of the whole app:
    /// capture, upload, detector, pose, drawing)...
    pub memory_every: Option<usize>,
    /// ...and exit non-zero when it grew by more than this many MiB after the first report.
    pub memory_margin_mib: f64,
}

/// Set when the app wants the process to exit non-zero once the window has closed.
pub type ExitError = Arc<Mutex<Option<String>>>;

fn colour(c: image::Rgb<u8>) -> Color32 {
    Color32::from_rgb(c.0[0], c.0[1], c.0[2])
}

/// The frame on the GPU: a texture egui samples for display and a storage buffer the estimator
/// reads, filled from the texture by a GPU copy.
struct GpuFrame {
    texture: wgpu::Texture,
    buffer: wgpu::Buffer,
    tex_id: egui::TextureId,
    width: u32,
    height: u32,
    bytes_per_row: u32,
}

/// Exponential moving averages of stage times, milliseconds.
#[derive(Default)]
struct Timings {
    capture: f64,
    upload: f64,
    estimate: f64,
    post: f64,
    draw: f64,
    frame: f64,
}

fn ema(slot: &mut f64, ms: f64) {
    *slot = if *slot == 0.0 { ms } else { *slot * 0.9 + ms * 0.1 };
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What the last painted frame showed, in window (physical) pixels: written to the sidecar JSON.
#[derive(Clone, Serialize)]
struct ShownJoint {
    name: &'static str,
    x: f32,
    y: f32,
    score: f32,
    /// Drawn (score >= threshold and inside the frame); only these have skeleton pixels.
    drawn: bool,
    /// RGB of the joint's disc.
    colour: [u8; 3],
}

#[derive(Clone, Serialize)]
struct Sidecar {
    model: String,
    weights: String,
    source_frame: Option<String>,
    frames_processed: usize,
    threshold: f32,
    smoothing: bool,
    pixels_per_point: f32,
    /// Window size in pixels (the screenshot's size).
    window: [u32; 2],
    /// Where the frame is drawn, `[x, y, w, h]` in window pixels.
    image_rect: [f32; 4],
    /// The frame's size in its own pixels.
    frame_size: [u32; 2],
    /// Crop box used for this frame (frame pixels), None = whole frame.
    crop_box: Option<[f32; 4]>,
    joint_radius: f32,
    keypoints: Vec<ShownJoint>,
}

pub struct DemoApp {
    gpu: GpuContext,
    render_state: egui_wgpu::RenderState,
    models: Vec<ModelConfig>,
    model: ModelConfig,
    show_all_models: bool,
    estimator: Option<Estimator>,
    estimator_error: Option<String>,
    weights_note: String,
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

    keypoints: Vec<Keypoint>,
    skeleton: Option<&'static Skeleton>,
    crop_box: Option<[f32; 4]>,
    /// Runs the person detector when nobody is tracked, else follows the last pose's box.
    tracker: Tracker,
    /// How this frame's person was found (None: nobody).
    track_step: Option<TrackStep>,
    follow: bool,
    threshold: f32,
    smoothing: bool,
    min_cutoff: f32,
    beta: f32,
    smoother: Option<PoseSmoother>,
    smoother_key: (usize, u32, u32),
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
            keypoints: Vec::new(),
            skeleton: None,
            crop_box: None,
            tracker: Tracker::new(TrackerOptions::default()).expect("default tracker options"),
            track_step: None,
            follow: true,
            threshold: settings.threshold,
            smoothing: settings.smoothing,
            min_cutoff: 1.0,
            beta: 0.05,
            smoother: None,
            smoother_key: (0, 0, 0),
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
        self.smoother = None;
        self.keypoints.clear();
        self.tracker.reset();
        if let Some(s) = &mut self.source {
            s.rewind();
        }
        // With the shipped person detector when it loads; without it the whole frame is searched
        // (a build without models/), and the note says so.
        let built = Estimator::new(&self.model, None, Some(&self.gpu), EstimatorOptions::default()).or_else(|e| {
            let opts = EstimatorOptions { find_people: false, ..Default::default() };
            let est = Estimator::new(&self.model, None, Some(&self.gpu), opts)?;
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
                self.skeleton = Some(est.skeleton);
                self.estimator = Some(est);
                self.estimator_error = None;
            }
            Err(e) => self.estimator_error = Some(format!("cannot build {}: {e}", self.model.name)),
        }
    }

    fn open_source(&mut self, spec: SourceSpec) {
        self.source = None;
        self.source_error = None;
        self.tracker.reset();
        self.keypoints.clear();
        if let Some(s) = &mut self.smoother {
            s.reset();
        }
        match Source::open(&spec) {
            Ok(mut s) => {
                s.set_repeat(self.headless.is_some());
                self.source = Some(s);
            }
            Err(e) => self.source_error = Some(e),
        }
        self.source_spec = Some(spec);
    }

    /// Makes sure the GPU frame has the right size (a new texture and buffer otherwise).
    fn ensure_frame(&mut self, width: u32, height: u32) {
        if self.frame.as_ref().is_some_and(|f| f.width == width && f.height == height) {
            return;
        }
        let device = &self.render_state.device;
        let texture = device.create_texture(&wgpu::TextureDescriptor {
            label: Some("demo frame"),
            size: wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            // Unorm, not UnormSrgb: egui-wgpu's shader takes texture values as sRGB-encoded already
            // (an Srgb view would be decoded to linear and shown too dark).
            format: wgpu::TextureFormat::Rgba8Unorm,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let bytes_per_row =
            (width * 4).div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT) * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("demo frame for the estimator"),
            size: bytes_per_row as u64 * height as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        let mut renderer = self.render_state.renderer.write();
        let tex_id = match &self.frame {
            Some(old) => {
                renderer.update_egui_texture_from_wgpu_texture(device, &view, wgpu::FilterMode::Linear, old.tex_id);
                old.tex_id
            }
            None => renderer.register_native_texture(device, &view, wgpu::FilterMode::Linear),
        };
        self.frame = Some(GpuFrame { texture, buffer, tex_id, width, height, bytes_per_row });
    }

    /// Capture, upload, estimate, smooth, follow: one frame of the pipeline.
    fn step(&mut self, now: Instant) {
        let Some(source) = &mut self.source else { return };
        if self.estimator.is_none() {
            return;
        }
        if let Some(h) = &self.headless {
            if self.frames_processed >= h.frames {
                return;
            }
        } else if matches!(self.source_spec, Some(SourceSpec::Folder(_))) && self.playback_fps > 0.0 {
            if let Some(t) = self.last_advance {
                if now.duration_since(t).as_secs_f32() < 1.0 / self.playback_fps {
                    return;
                }
            }
        }
        let t0 = Instant::now();
        let frame = match source.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                // A camera unplugged, an unreadable file: say so, keep the window alive.
                self.source_error = Some(e);
                self.source = None;
                return;
            }
        };
        let t1 = Instant::now();
        let (w, h) = frame.rgba.dimensions();
        if self.frame.as_ref().is_some_and(|f| (f.width, f.height) != (w, h)) {
            // A folder of differently sized images: the previous box means nothing here.
            self.tracker.reset();
        }
        self.ensure_frame(w, h);
        let gf = self.frame.as_ref().expect("frame allocated");
        let queue = &self.render_state.queue;
        queue.write_texture(
            wgpu::TexelCopyTextureInfo {
                texture: &gf.texture,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            frame.rgba.as_raw(),
            wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(w * 4), rows_per_image: Some(h) },
            wgpu::Extent3d { width: w, height: h, depth_or_array_layers: 1 },
        );
        let mut enc = self
            .render_state
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("frame to buffer") });
        enc.copy_texture_to_buffer(
            wgpu::TexelCopyTextureInfo {
                texture: &gf.texture,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::TexelCopyBufferInfo {
                buffer: &gf.buffer,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(gf.bytes_per_row),
                    rows_per_image: Some(h),
                },
            },
            wgpu::Extent3d { width: w, height: h, depth_or_array_layers: 1 },
        );
        queue.submit([enc.finish()]);
        let t2 = Instant::now();

        let layout = FrameLayout { width: w, height: h, row_stride: gf.bytes_per_row / 4, offset: 0, bgra: false };
        let est = self.estimator.as_mut().expect("estimator");
        let opts = TrackerOptions { follow_threshold: self.threshold, follow: self.follow };
        if *self.tracker.options() != opts {
            // The threshold and checkbox come from the UI; both are valid by construction.
            let _ = self.tracker.set_options(opts);
        }
        let result = self.tracker.track_gpu_frame(est, &gf.buffer, &layout);
        let t3 = Instant::now();
        let tracked = match result {
            Ok(t) => t,
            Err(e) => {
                self.pipeline_error = Some(format!("estimation failed: {e}"));
                if self.headless.is_some() {
                    *self.exit_error.lock().unwrap() = Some(format!("estimation failed: {e}"));
                }
                self.source = None;
                return;
            }
        };
        self.pipeline_error = None;
        self.track_step = tracked.as_ref().map(|t| t.step);
        self.crop_box = tracked.as_ref().map(|t| t.pose.bbox);
        let pose = match tracked {
            Some(t) => {
                if t.step == TrackStep::Found {
                    // A new track: the smoother must not pull towards the last person.
                    if let Some(s) = &mut self.smoother {
                        s.reset();
                    }
                }
                t.pose
            }
            None => {
                // Nobody in the frame: draw nothing, but count the frame.
                self.keypoints.clear();
                self.finish_frame(frame.label, frame.path, now, [t0, t1, t2, t3, Instant::now()]);
                return;
            }
        };
        let key = (pose.keypoints.len(), self.min_cutoff.to_bits(), self.beta.to_bits());
        if self.smoother.is_none() || self.smoother_key != key {
            self.smoother =
                PoseSmoother::new(pose.keypoints.len(), OneEuroConfig::new(self.min_cutoff, self.beta)).ok();
            self.smoother_key = key;
        }
        self.keypoints = match (&mut self.smoother, self.smoothing) {
            (Some(s), true) => {
                s.smooth(now.duration_since(self.start).as_secs_f64(), &pose.keypoints).unwrap_or(pose.keypoints)
            }
            (Some(s), false) => {
                s.reset();
                pose.keypoints
            }
            (None, _) => pose.keypoints,
        };
        self.finish_frame(frame.label, frame.path, now, [t0, t1, t2, t3, Instant::now()]);
    }

    /// Timings and counters of a processed frame (`t`: start, captured, uploaded, estimated,
    /// post-processed).
    fn finish_frame(&mut self, label: String, path: Option<PathBuf>, now: Instant, t: [Instant; 5]) {
        ema(&mut self.timings.capture, ms(t[1] - t[0]));
        ema(&mut self.timings.upload, ms(t[2] - t[1]));
        ema(&mut self.timings.estimate, ms(t[3] - t[2]));
        ema(&mut self.timings.post, ms(t[4] - t[3]));
        ema(&mut self.timings.frame, ms(t[4] - t[0]));
        self.frame_label = label;
        self.frame_path = path;
        self.frames_processed += 1;
        self.fps_count += 1;
        self.last_advance = Some(now);
        self.report_memory();
    }

    /// Headless `--memory-every`: one line per N frames, growth since the first report.
    fn report_memory(&mut self) {
        let Some(every) = self.headless.as_ref().and_then(|h| h.memory_every) else { return };
        if self.frames_processed % every != 0 {
            return;
        }
        match wgpose::bench::rss_kib() {
            Ok(kib) => {
                let rss = kib as f64 / 1024.0;
                let base = *self.memory_baseline.get_or_insert(rss);
                self.memory_growth = self.memory_growth.max(rss - base);
                let fps = self.frames_processed as f64 / self.start.elapsed().as_secs_f64();
                eprintln!(
                    "frame {:>6}: RSS {rss:8.1} MiB ({:+6.1} since frame {every}), {fps:.1} frames/s",
                    self.frames_processed,
                    rss - base
                );
            }
            Err(e) => *self.exit_error.lock().unwrap() = Some(format!("--memory-every: {e}")),
        }
    }

    fn profile_layers(&mut self) {
        let Some(est) = &mut self.estimator else { return };
        let t = Instant::now();
        self.layers = Some(est.profile_network(1).map_err(|e| e.to_string()).map(|o| {
            o.map(|mut v| {
                v.sort_by(|a, b| b.ns.total_cmp(&a.ns));
                v
            })
        }));
        self.layers_ms = ms(t.elapsed());
        self.layers_at = Some(Instant::now());
    }

    fn controls(&mut self, ui: &mut egui::Ui) {
        ui.heading("wgpose demo");
        ui.label(format!("GPU: {}", self.gpu.describe()));
        if !self.weights_note.is_empty() {
            let c = if self.weights_note.starts_with("NO TRAINED") {
                Color32::from_rgb(255, 90, 90)
            } else {
                ui.visuals().text_color()
            };
            ui.colored_label(c, &self.weights_note);
        }
        if !self.detector_note.is_empty() {
            ui.colored_label(Color32::from_rgb(255, 170, 60), &self.detector_note);
        }
        ui.separator();

        ui.strong("Source");
        let mut open: Option<SourceSpec> = None;
        ui.horizontal(|ui| {
            ui.label("folder:");
            ui.add(egui::TextEdit::singleline(&mut self.folder_text).desired_width(130.0));
            if ui.button("Open").clicked() {
                open = Some(SourceSpec::Folder(PathBuf::from(self.folder_text.trim())));
            }
        });
        ui.horizontal(|ui| {
            ui.label("image:");
            ui.add(egui::TextEdit::singleline(&mut self.image_text).desired_width(130.0));
            if ui.button("Open").clicked() {
                open = Some(SourceSpec::Image(PathBuf::from(self.image_text.trim())));
            }
        });
        ui.horizontal(|ui| {
            ui.label("camera:");
            let devices = self.camera_list.get_or_insert_with(crate::list_cameras);
            match devices {
                Ok(list) if !list.is_empty() => {
                    let current =
                        list.iter().find(|(i, _)| *i == self.camera_index).map(|(_, n)| n.clone()).unwrap_or_default();
                    egui::ComboBox::from_id_salt("camera")
                        .selected_text(format!("{} {current}", self.camera_index))
                        .show_ui(ui, |ui| {
                            for (i, name) in list.iter() {
                                ui.selectable_value(&mut self.camera_index, *i, format!("{i} {name}"));
                            }
                        });
                }
                Ok(_) => {
                    ui.label("no camera found");
                }
                Err(e) => {
                    ui.label(e.as_str()).on_hover_text(e.as_str());
                }
            }
        });
        ui.horizontal(|ui| {
            egui::ComboBox::from_id_salt("camera_res")
                .selected_text(format!("{}x{}", self.camera_res.0, self.camera_res.1))
                .show_ui(ui, |ui| {
                    for r in [(320, 240), (640, 480), (1280, 720), (1920, 1080)] {
                        ui.selectable_value(&mut self.camera_res, r, format!("{}x{}", r.0, r.1));
                    }
                });
            if ui.button("Start camera").clicked() {
                open = Some(SourceSpec::Camera {
                    index: self.camera_index,
                    width: self.camera_res.0,
                    height: self.camera_res.1,
                });
            }
            if ui.button("Rescan").clicked() {
                self.camera_list = None;
            }
        });
        if matches!(self.source_spec, Some(SourceSpec::Folder(_))) {
            ui.add(egui::Slider::new(&mut self.playback_fps, 0.0..=60.0).text("folder fps (0 = max)"));
        }
        if let Some(spec) = open {
            self.open_source(spec);
        }
        ui.separator();

        ui.strong("Model");
        let mut chosen = self.model;
        egui::ComboBox::from_id_salt("model").selected_text(self.model.name).show_ui(ui, |ui| {
            for m in &self.models {
                if self.show_all_models || m.name.ends_with("-lsp") || m.name == self.model.name {
                    ui.selectable_value(&mut chosen, *m, m.name);
                }
            }
        });
        ui.checkbox(&mut self.show_all_models, "list all models (large = slow)");
        if chosen.name != self.model.name {
            self.model = chosen;
            self.build_estimator();
        }
        ui.separator();

        ui.strong("Overlay");
        ui.add(egui::Slider::new(&mut self.threshold, 0.0..=1.0).text("confidence threshold"));
        ui.checkbox(&mut self.follow, "crop follows the person (else detect every frame)");
        ui.label(match self.track_step {
            Some(TrackStep::Found) => "person: detected this frame",
            Some(TrackStep::Followed) => "person: followed from the last frame",
            None => "person: nobody found",
        });
        ui.checkbox(&mut self.smoothing, "One Euro smoothing");
        ui.add_enabled(
            self.smoothing,
            egui::Slider::new(&mut self.min_cutoff, 0.01..=10.0).logarithmic(true).text("min_cutoff (Hz)"),
        );
        ui.add_enabled(self.smoothing, egui::Slider::new(&mut self.beta, 0.0..=1.0).text("beta"));
        ui.separator();
    }

    fn timing(&mut self, ui: &mut egui::Ui) {
        ui.strong(format!("Timing: {:.1} pipeline FPS, frame {}", self.fps, self.frames_processed));
        let t = &self.timings;
        egui::Grid::new("timings").num_columns(2).spacing([12.0, 2.0]).show(ui, |ui| {
            for (name, v) in [
                ("capture (decode)", t.capture),
                ("upload (write + copy)", t.upload),
                ("prep+net+readback+decode", t.estimate),
                ("smoothing + follow", t.post),
                ("draw (egui shapes)", t.draw),
                ("frame total", t.frame),
            ] {
                ui.label(name);
                ui.label(format!("{v:7.2} ms"));
                ui.end_row();
            }
        });
        ui.small("CPU-side wall times (Instant), moving averages; the GPU part of the upload runs inside the estimate's wait.");
        if !self.frame_label.is_empty() {
            ui.small(format!("showing: {}", self.frame_label));
        }
    }

    fn layers_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.strong("GPU time per layer");
            if ui.small_button("Profile now").clicked() {
                self.profile_layers();
            }
            ui.checkbox(&mut self.layers_auto, "every");
            ui.add(egui::DragValue::new(&mut self.layers_every_s).range(2.0..=120.0).suffix(" s"));
        });
        self.layer_chart(ui);
    }

    fn layer_chart(&self, ui: &mut egui::Ui) {
        match &self.layers {
            None => {
                ui.small("not profiled yet (timestamp queries split the passes, so this is not run every frame)");
            }
            Some(Err(e)) => {
                ui.colored_label(Color32::RED, format!("profiling failed: {e}"));
            }
            Some(Ok(None)) => {
                ui.small("this adapter has no timestamp queries: no per-layer times");
            }
            Some(Ok(Some(nodes))) => {
                let total: f64 = nodes.iter().map(|n| n.ns).sum();
                ui.small(format!(
                    "{} nodes, {:.2} ms GPU total (profiling run took {:.0} ms)",
                    nodes.len(),
                    total / 1e6,
                    self.layers_ms
                ));
                let max = nodes.first().map(|n| n.ns).unwrap_or(1.0).max(1.0);
                egui::ScrollArea::vertical()
                    .max_height(ui.available_height().max(60.0))
                    .auto_shrink([false, false])
                    .show(ui, |ui| {
                        let width = ui.available_width();
                        for n in nodes.iter() {
                            let (rect, resp) = ui.allocate_exact_size(Vec2::new(width, 14.0), egui::Sense::hover());
                            let p = ui.painter_at(rect);
                            let frac = (n.ns / max) as f32;
                            p.rect_filled(
                                Rect::from_min_size(rect.min, Vec2::new(rect.width() * frac, rect.height())),
                                2.0,
                                Color32::from_rgb(70, 110, 170),
                            );
                            p.text(
                                rect.left_center() + Vec2::new(2.0, 0.0),
                                egui::Align2::LEFT_CENTER,
                                format!("{:.3} ms  {} ({})", n.ns / 1e6, n.name, n.kind),
                                egui::FontId::monospace(10.0),
                                Color32::WHITE,
                            );
                            resp.on_hover_text(format!(
                                "{} ({})\n{:.3} ms\n{:.2} MFLOP\n{:.2} MB moved",
                                n.name,
                                n.kind,
                                n.ns / 1e6,
                                n.flops as f64 / 1e6,
                                n.bytes as f64 / 1e6
                            ));
                        }
                    });
            }
        }
    }

    /// The frame and its skeleton; returns what was drawn for the sidecar.
    fn view(&mut self, ui: &mut egui::Ui) -> Option<Sidecar> {
        let t0 = Instant::now();
        for msg in [&self.estimator_error, &self.source_error, &self.pipeline_error].into_iter().flatten() {
            ui.colored_label(Color32::from_rgb(255, 90, 90), msg);
        }
        if self.source.is_none() && self.source_error.is_none() && self.frame.is_none() {
            ui.label("No source: open a folder, an image or a camera on the right.");
        }
        let gf = self.frame.as_ref()?;
        let avail = ui.available_rect_before_wrap();
        let scale = (avail.width() / gf.width as f32).min(avail.height() / gf.height as f32);
        let size = Vec2::new(gf.width as f32 * scale, gf.height as f32 * scale);
        let rect = Rect::from_min_size(avail.min, size);
        ui.allocate_rect(rect, egui::Sense::hover());
        let painter = ui.painter_at(rect);
        painter.image(gf.tex_id, rect, Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0)), Color32::WHITE);
        if let Some(b) = self.crop_box {
            let r = Rect::from_min_size(rect.min + Vec2::new(b[0], b[1]) * scale, Vec2::new(b[2], b[3]) * scale);
            painter.rect_stroke(
                r,
                0.0,
                Stroke::new(1.0, Color32::from_rgba_unmultiplied(255, 255, 255, 120)),
                egui::StrokeKind::Inside,
            );
        }
        let sk = self.skeleton?;
        let line_w = (size.x.min(size.y) / 120.0).clamp(2.0, 6.0);
        let radius = (line_w * 1.5).max(4.0);
        let at = |k: &Keypoint| rect.min + Vec2::new(k.x, k.y) * scale;
        // Score 0 marks a joint the estimator moved onto the image border because it was decoded
        // outside the image: never drawn, even at threshold 0.
        let ok = |k: &Keypoint| {
            k.score >= self.threshold && k.score > 0.0 && k.x.is_finite() && k.y.is_finite() && rect.contains(at(k))
        };
        let kps = &self.keypoints;
        for &(a, b) in sk.limbs {
            if let (Some(ka), Some(kb)) = (kps.get(a), kps.get(b)) {
                if ok(ka) && ok(kb) {
                    painter.line_segment(
                        [at(ka), at(kb)],
                        Stroke::new(line_w, colour(wgpose::overlay::side_colour(sk, a, b))),
                    );
                }
            }
        }
        let ppp = ui.ctx().pixels_per_point();
        let mut shown = Vec::new();
        for (j, k) in kps.iter().enumerate() {
            let c = wgpose::overlay::side_colour(sk, j, j);
            let drawn = ok(k);
            if drawn {
                painter.circle_filled(at(k), radius, colour(c));
            }
            let p = at(k);
            shown.push(ShownJoint {
                name: sk.joints.get(j).copied().unwrap_or("?"),
                x: p.x * ppp,
                y: p.y * ppp,
                score: k.score,
                drawn,
                colour: c.0,
            });
        }
        ema(&mut self.timings.draw, ms(t0.elapsed()));
        let screen = ui.ctx().content_rect();
        Some(Sidecar {
            model: self.model.name.to_string(),
            weights: self.estimator.as_ref().map(|e| e.weights.to_string()).unwrap_or_default(),
            source_frame: self.frame_path.as_ref().map(|p| p.display().to_string()),
            frames_processed: self.frames_processed,
            threshold: self.threshold,
            smoothing: self.smoothing,
            pixels_per_point: ppp,
            window: [(screen.width() * ppp).round() as u32, (screen.height() * ppp).round() as u32],
            image_rect: [rect.min.x * ppp, rect.min.y * ppp, rect.width() * ppp, rect.height() * ppp],
            frame_size: [gf.width, gf.height],
            crop_box: self.crop_box,
            joint_radius: radius * ppp,
            keypoints: shown,
        })
    }

    /// Headless mode: once N frames are done, ask for a screenshot; once it arrives, write the
    /// PNG and the sidecar and close the window.
    fn headless_tick(&mut self, ctx: &egui::Context) {
        let Some(h) = self.headless.clone() else { return };
        if self.shot_written {
            return;
        }
        if self.start.elapsed() > h.timeout {
            *self.exit_error.lock().unwrap() = Some(format!(
                "timed out after {:?} ({} of {} frames processed)",
                h.timeout, self.frames_processed, h.frames
            ));
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        if self.exit_error.lock().unwrap().is_some() || (self.source.is_none() && self.frames_processed < h.frames) {
            let mut e = self.exit_error.lock().unwrap();
            if e.is_none() {
                *e = Some(
                    self.source_error
                        .clone()
                        .or(self.pipeline_error.clone())
                        .unwrap_or_else(|| "the source stopped".into()),
                );
            }
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        if self.frames_processed >= h.frames && h.memory_every.is_some() && self.memory_growth > h.memory_margin_mib {
            *self.exit_error.lock().unwrap() = Some(format!(
                "resident memory grew by {:.1} MiB over {} frames, over the {:.1} MiB margin",
                self.memory_growth, self.frames_processed, h.memory_margin_mib
            ));
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        let shot = self.shot.lock().unwrap().take();
        if let Some(img) = shot {
            match write_outputs(&h.screenshot, &img, self.last_sidecar.as_ref()) {
                Ok(()) => {
                    eprintln!("wrote {} and its .json ({} frames)", h.screenshot.display(), self.frames_processed)
                }
                Err(e) => *self.exit_error.lock().unwrap() = Some(e),
            }
            self.shot_written = true;
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        if self.frames_processed >= h.frames && !self.shot_requested && self.last_sidecar.is_some() {
            let slot = self.shot.clone();
            let c = ctx.clone();
            ctx.request_screenshot(move |img| {
                *slot.lock().unwrap() = Some(img);
                c.request_repaint();
            });
            self.shot_requested = true;
        }
        ctx.request_repaint();
    }
}

fn write_outputs(png: &std::path::Path, img: &egui::ColorImage, sidecar: Option<&Sidecar>) -> Result<(), String> {
    let [w, h] = img.size;
    let mut rgba = image::RgbaImage::new(w as u32, h as u32);
    for (i, p) in img.pixels.iter().enumerate() {
        rgba.put_pixel((i % w) as u32, (i / w) as u32, image::Rgba([p.r(), p.g(), p.b(), 255]));
    }
    if let Some(dir) = png.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    image::DynamicImage::ImageRgba8(rgba)
        .to_rgb8()
        .save(png)
        .map_err(|e| format!("cannot write {}: {e}", png.display()))?;
    let json = png.with_extension("json");
    let s = sidecar.ok_or("nothing was drawn: no sidecar to write")?;
    let text = serde_json::to_string_pretty(s).map_err(|e| e.to_string())?;
    std::fs::write(&json, text).map_err(|e| format!("cannot write {}: {e}", json.display()))?;
    Ok(())
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
