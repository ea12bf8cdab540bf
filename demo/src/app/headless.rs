//! Headless mode (`--frames N --screenshot OUT.png`, the tests' way of running the window
//! under Xvfb): run N frames, save the window and a JSON sidecar of what was drawn, exit;
//! with `--memory-every`, a memory soak of the whole app.

use std::path::PathBuf;
use std::time::Duration;

use eframe::egui;
use serde::Serialize;

use super::panels::ShownJoint;
use super::DemoApp;

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

#[derive(Clone, Serialize)]
pub(super) struct Sidecar {
    pub(super) model: String,
    pub(super) weights: String,
    pub(super) source_frame: Option<String>,
    pub(super) frames_processed: usize,
    pub(super) threshold: f32,
    pub(super) smoothing: bool,
    pub(super) pixels_per_point: f32,
    /// Window size in pixels (the screenshot's size).
    pub(super) window: [u32; 2],
    /// Where the frame is drawn, `[x, y, w, h]` in window pixels.
    pub(super) image_rect: [f32; 4],
    /// The frame's size in its own pixels.
    pub(super) frame_size: [u32; 2],
    /// Crop box used for this frame (frame pixels), None = whole frame.
    pub(super) crop_box: Option<[f32; 4]>,
    pub(super) joint_radius: f32,
    pub(super) keypoints: Vec<ShownJoint>,
}

impl DemoApp {
    /// Headless `--memory-every`: one line per N frames, growth since the first report.
    pub(super) fn report_memory(&mut self) {
        let Some(every) = self.headless.as_ref().and_then(|h| h.memory_every) else { return };
        if !self.frames_processed.is_multiple_of(every) {
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

    /// Headless mode: once N frames are done, ask for a screenshot; once it arrives, write the
    /// PNG and the sidecar and close the window.
    pub(super) fn headless_tick(&mut self, ctx: &egui::Context) {
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

pub(super) fn write_outputs(
    png: &std::path::Path,
    img: &egui::ColorImage,
    sidecar: Option<&Sidecar>,
) -> Result<(), String> {
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
