//! Webcam source (`camera` feature): nokhwa (V4L2 on Linux, AVFoundation, Media Foundation) on
//! its own thread, frames decoded to RGBA there and handed over through a one-slot channel (a
//! slow estimator drops camera frames instead of queueing them). An unplugged or busy camera
//! becomes an error message, never a panic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use image::RgbaImage;
use nokhwa::pixel_format::RgbAFormat;
use nokhwa::utils::{
    ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution,
};
use nokhwa::Camera;

use crate::source::Frame;

/// Cameras the platform reports: index and name.
pub fn list() -> Result<Vec<(u32, String)>, String> {
    let infos = nokhwa::query(ApiBackend::Auto).map_err(|e| format!("cannot list cameras: {e}"))?;
    Ok(infos
        .iter()
        .map(|i| {
            let index = match i.index() {
                CameraIndex::Index(n) => *n,
                CameraIndex::String(s) => s.parse().unwrap_or(0),
            };
            (index, i.human_name())
        })
        .collect())
}

enum Msg {
    Frame(RgbaImage),
    Error(String),
}

pub struct CameraSource {
    rx: Receiver<Msg>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    label: String,
}

fn open_camera(index: u32, width: u32, height: u32) -> Result<Camera, String> {
    let want = CameraFormat::new(Resolution::new(width, height), FrameFormat::MJPEG, 30);
    let attempts = [
        RequestedFormat::new::<RgbAFormat>(RequestedFormatType::Closest(want)),
        RequestedFormat::new::<RgbAFormat>(RequestedFormatType::HighestResolution(Resolution::new(width, height))),
        RequestedFormat::new::<RgbAFormat>(RequestedFormatType::AbsoluteHighestFrameRate),
    ];
    let mut last = String::new();
    for req in attempts {
        match Camera::new(CameraIndex::Index(index), req) {
            Ok(mut cam) => match cam.open_stream() {
                Ok(()) => return Ok(cam),
                Err(e) => last = format!("camera {index}: cannot start streaming: {e}"),
            },
            Err(e) => last = format!("camera {index}: cannot open: {e}"),
        }
    }
    Err(last)
}

impl CameraSource {
    /// Opens camera `index` at (close to) `width` x `height`; fails with a message when there
    /// is no such camera or it cannot stream.
    pub fn open(index: u32, width: u32, height: u32) -> Result<CameraSource, String> {
        let (tx, rx) = mpsc::sync_channel::<Msg>(1);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_t = stop.clone();
        let thread = std::thread::Builder::new()
            .name("camera".into())
            .spawn(move || {
                let mut cam = match open_camera(index, width, height) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let fmt = cam.camera_format();
                let _ = ready_tx.send(Ok(format!("camera {index} ({}) {}", cam.info().human_name(), fmt)));
                while !stop_t.load(Ordering::Relaxed) {
                    let msg = match cam.frame() {
                        Ok(buf) => {
                            let res = buf.resolution();
                            let mut data = vec![0u8; res.width() as usize * res.height() as usize * 4];
                            match buf.decode_image_to_buffer::<RgbAFormat>(&mut data) {
                                Ok(()) => match RgbaImage::from_raw(res.width(), res.height(), data) {
                                    Some(img) => Msg::Frame(img),
                                    None => Msg::Error("camera frame has the wrong size".into()),
                                },
                                Err(e) => Msg::Error(format!("cannot decode a camera frame: {e}")),
                            }
                        }
                        Err(e) => Msg::Error(format!("camera {index} stopped (unplugged?): {e}")),
                    };
                    let fatal = matches!(msg, Msg::Error(_));
                    match tx.try_send(msg) {
                        Ok(()) | Err(mpsc::TrySendError::Full(_)) => {}
                        Err(mpsc::TrySendError::Disconnected(_)) => break,
                    }
                    if fatal {
                        // Make sure the error gets through, then stop.
                        let _ = tx.send(Msg::Error(format!("camera {index} stopped")));
                        break;
                    }
                }
                let _ = cam.stop_stream();
            })
            .map_err(|e| format!("cannot start the camera thread: {e}"))?;
        let label = match ready_rx.recv() {
            Ok(Ok(label)) => label,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(format!("camera {index}: the camera thread died while opening it"));
            }
        };
        Ok(CameraSource { rx, stop, thread: Some(thread), label })
    }

    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        match self.rx.try_recv() {
            Ok(Msg::Frame(rgba)) => Ok(Some(Frame { rgba, label: self.label.clone(), path: None })),
            Ok(Msg::Error(e)) => Err(e),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err("the camera stopped".into()),
        }
    }
}

impl Drop for CameraSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Drain so a blocked send returns, then wait for the thread to release the device.
        while self.rx.try_recv().is_ok() {}
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
