//! `wgpose soak`: thousands of frames through the [`Estimator`] on each executor (given boxes,
//! and every fourth frame the person detector and the tracker), with the process's resident
//! memory reported at intervals, to show that nothing grows per frame.

use clap::Args;
use wgpose::bench::rss_kib;
use wgpose::estimator::{Estimator, EstimatorOptions};
use wgpose::models::config;
use wgpose::pipeline::crop::ImageRef;
use wgpose::rng::Rng;
use wgpose::{Error, Result};

use super::{open_gpu, DeviceArg};

#[derive(Args)]
pub struct SoakArgs {
    /// Frames per executor.
    #[arg(long, default_value_t = 2000)]
    frames: usize,
    #[arg(long, value_enum, default_value_t = DeviceArg::Both)]
    device: DeviceArg,
    #[arg(long, default_value = "sghg-1x64-lsp")]
    model: String,
    /// Report memory every this many frames.
    #[arg(long, default_value_t = 250)]
    every: usize,
    /// Fail when resident memory at the end exceeds that after the warm-up (the first report)
    /// by more than this many MiB.
    #[arg(long, default_value_t = 32.0)]
    margin_mib: f64,
}

pub fn run(a: SoakArgs) -> Result<()> {
    if a.frames == 0 || a.every == 0 {
        return Err(Error::Input("--frames and --every must be at least 1".into()));
    }
    if !(a.margin_mib.is_finite() && a.margin_mib >= 0.0) {
        return Err(Error::Input(format!("--margin-mib {} must be a finite number, 0 or above", a.margin_mib)));
    }
    let cfg = config(&a.model)?;
    let devices: &[DeviceArg] = match a.device {
        DeviceArg::Both => &[DeviceArg::Cpu, DeviceArg::Gpu],
        DeviceArg::Cpu => &[DeviceArg::Cpu],
        // The soak checks each executor it is asked for; `auto` means the GPU's path, as in bench.
        DeviceArg::Gpu | DeviceArg::Auto => &[DeviceArg::Gpu],
    };
    let mut worst = 0.0f64;
    for &device in devices {
        let ctx = open_gpu(device)?;
        if device == DeviceArg::Gpu && ctx.is_none() {
            eprintln!("warning: no GPU adapter; the GPU soak is skipped");
            continue;
        }
        let mut est =
            Estimator::new(&cfg, None, ctx.as_ref(), EstimatorOptions { random_weights: true, ..Default::default() })?;
        let name = if est.on_gpu() { "gpu" } else { "cpu" };
        println!(
            "{name}: {} frames of {} ({}), {}, memory every {} frames",
            a.frames,
            cfg.name,
            est.weights,
            if est.detector().is_some() { "every 4th frame through the detector and tracker" } else { "no detector" },
            a.every
        );
        let mut tracker = wgpose::Tracker::new(wgpose::TrackerOptions::default())?;
        let mut rng = Rng::new(1);
        // Frames change size and content; 1 to 3 people per frame exercise the batch cache.
        let sizes = [(320usize, 240usize), (640, 360), (241, 317)];
        let mut baseline = None;
        let t0 = std::time::Instant::now();
        for f in 0..a.frames {
            let (w, h) = sizes[f % sizes.len()];
            let shade = (f % 251) as u8;
            let pixels: Vec<u8> = (0..w * h * 3).map(|i| (i as u8).wrapping_mul(31).wrapping_add(shade)).collect();
            let img = image::RgbImage::from_raw(w as u32, h as u32, pixels)
                .ok_or_else(|| Error::Input("frame buffer size".into()))?;
            let people = 1 + f % 3;
            let boxes: Vec<[f32; 4]> = (0..people)
                .map(|_| {
                    let (bw, bh) = (w as f32 * (0.2 + 0.6 * rng.uniform()), h as f32 * (0.3 + 0.6 * rng.uniform()));
                    [rng.uniform() * (w as f32 - bw), rng.uniform() * (h as f32 - bh), bw, bh]
                })
                .collect();
            // Every fourth frame goes through the person detector (Boxes::Auto) and the tracker
            // instead: their buffers and batch sizes must not grow either.
            if f % 4 == 3 && est.detector().is_some() {
                est.estimate(&img, wgpose::Boxes::Auto)?;
                tracker.track(&mut est, &img)?;
            } else {
                let poses = est.estimate_batch(&ImageRef::from(&img), &boxes)?;
                if poses.len() != people {
                    return Err(Error::Graph(format!("{} poses for {people} boxes", poses.len())));
                }
            }
            if (f + 1) % a.every == 0 || f + 1 == a.frames {
                let rss = rss_kib()? as f64 / 1024.0;
                let base = *baseline.get_or_insert(rss);
                let fps = (f + 1) as f64 / t0.elapsed().as_secs_f64();
                println!(
                    "{name} frame {:>6}: RSS {rss:8.1} MiB ({:+6.1} since frame {}), {fps:.1} frames/s",
                    f + 1,
                    rss - base,
                    a.every
                );
                worst = worst.max(rss - base);
            }
        }
    }
    println!("largest growth after warm-up: {worst:.1} MiB (margin {:.1} MiB)", a.margin_mib);
    if worst > a.margin_mib {
        return Err(Error::TooLarge(format!(
            "resident memory grew by {worst:.1} MiB, over the {:.1} MiB margin",
            a.margin_mib
        )));
    }
    Ok(())
}
