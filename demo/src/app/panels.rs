//! The panels: controls (source, model, overlay), stage timings, the GPU time per layer, and
//! the frame with the skeleton painted over it.

use std::time::Instant;

use eframe::egui;
use egui::{Color32, Pos2, Rect, Stroke, Vec2};
use serde::Serialize;

use std::path::PathBuf;

use wgpose::pipeline::Keypoint;
use wgpose::TrackStep;

use super::frame::{ema, ms};
use super::headless::Sidecar;
use super::DemoApp;
use crate::source::SourceSpec;

fn colour(c: image::Rgb<u8>) -> Color32 {
    Color32::from_rgb(c.0[0], c.0[1], c.0[2])
}

/// What the last painted frame showed, in window (physical) pixels: written to the sidecar JSON.
#[derive(Clone, Serialize)]
pub(super) struct ShownJoint {
    name: &'static str,
    x: f32,
    y: f32,
    score: f32,
    /// Drawn (score >= threshold and inside the frame); only these have skeleton pixels.
    drawn: bool,
    /// RGB of the joint's disc.
    colour: [u8; 3],
}

impl DemoApp {
    pub(super) fn profile_layers(&mut self) {
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

    pub(super) fn controls(&mut self, ui: &mut egui::Ui) {
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
        if !self.device_note.is_empty() {
            ui.label(&self.device_note);
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
        ui.add(egui::Slider::new(&mut self.tracking.threshold, 0.0..=1.0).text("confidence threshold"));
        ui.checkbox(&mut self.tracking.follow, "crop follows the person (else detect every frame)");
        ui.label(match self.tracking.step {
            Some(TrackStep::Found) => "person: detected this frame",
            Some(TrackStep::Followed) => "person: followed from the last frame",
            None => "person: nobody found",
        });
        ui.checkbox(&mut self.tracking.smoothing, "One Euro smoothing");
        ui.add_enabled(
            self.tracking.smoothing,
            egui::Slider::new(&mut self.tracking.min_cutoff, 0.01..=10.0).logarithmic(true).text("min_cutoff (Hz)"),
        );
        ui.add_enabled(self.tracking.smoothing, egui::Slider::new(&mut self.tracking.beta, 0.0..=1.0).text("beta"));
        ui.separator();
    }

    pub(super) fn timing(&mut self, ui: &mut egui::Ui) {
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

    pub(super) fn layers_ui(&mut self, ui: &mut egui::Ui) {
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

    pub(super) fn layer_chart(&self, ui: &mut egui::Ui) {
        match &self.layers {
            None => {
                ui.small("not profiled yet (timestamp queries split the passes, so this is not run every frame)");
            }
            Some(Err(e)) => {
                ui.colored_label(Color32::RED, format!("profiling failed: {e}"));
            }
            Some(Ok(None)) if self.estimator.as_ref().is_some_and(|e| !e.on_gpu()) => {
                ui.small("the networks run on the CPU executor: no GPU times per layer (`--device gpu` to see them)");
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
    pub(super) fn view(&mut self, ui: &mut egui::Ui) -> Option<Sidecar> {
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
        if let Some(b) = self.tracking.crop_box {
            let r = Rect::from_min_size(rect.min + Vec2::new(b[0], b[1]) * scale, Vec2::new(b[2], b[3]) * scale);
            painter.rect_stroke(
                r,
                0.0,
                Stroke::new(1.0, Color32::from_rgba_unmultiplied(255, 255, 255, 120)),
                egui::StrokeKind::Inside,
            );
        }
        let sk = self.tracking.skeleton?;
        let line_w = (size.x.min(size.y) / 120.0).clamp(2.0, 6.0);
        let radius = (line_w * 1.5).max(4.0);
        let at = |k: &Keypoint| rect.min + Vec2::new(k.x, k.y) * scale;
        // Score 0 marks a joint the estimator moved onto the image border because it was decoded
        // outside the image: never drawn, even at threshold 0.
        let ok = |k: &Keypoint| {
            k.score >= self.tracking.threshold
                && k.score > 0.0
                && k.x.is_finite()
                && k.y.is_finite()
                && rect.contains(at(k))
        };
        let kps = &self.tracking.keypoints;
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
            threshold: self.tracking.threshold,
            smoothing: self.tracking.smoothing,
            pixels_per_point: ppp,
            window: [(screen.width() * ppp).round() as u32, (screen.height() * ppp).round() as u32],
            image_rect: [rect.min.x * ppp, rect.min.y * ppp, rect.width() * ppp, rect.height() * ppp],
            frame_size: [gf.width, gf.height],
            crop_box: self.tracking.crop_box,
            joint_radius: radius * ppp,
            keypoints: shown,
        })
    }
}
