//! The training curve as a PNG, drawn with the `image` crate only: loss per step (blue, left
//! axis: linear from 0, or logarithmic in whole decades when the loss spans more than a factor 20) and validation PCK per epoch (red, right axis, 0 to 1), with axes,
//! ticks and numeric labels in a built-in 5x7 bitmap font.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::{Error, Result};

const W: u32 = 900;
const H: u32 = 520;
const LEFT: i32 = 70;
const RIGHT: i32 = 60;
const TOP: i32 = 30;
const BOTTOM: i32 = 50;

const BLUE: Rgb<u8> = Rgb([30, 90, 200]);
const RED: Rgb<u8> = Rgb([210, 40, 40]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);

/// 5x7 glyphs, one `u8` per row, bit 4 = leftmost column.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        '@' => [0x0E, 0x11, 0x17, 0x15, 0x17, 0x10, 0x0E],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        _ => [0; 7],
    }
}

fn put(img: &mut RgbImage, x: i32, y: i32, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Text with its top-left corner at `(x, y)`, `scale` pixels per font pixel.
fn text(img: &mut RgbImage, x: i32, y: i32, s: &str, c: Rgb<u8>, scale: i32) {
    for (i, ch) in s.chars().enumerate() {
        let g = glyph(ch.to_ascii_uppercase());
        for (r, bits) in g.iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(img, x + (i as i32 * 6 + col) * scale + dx, y + r as i32 * scale + dy, c);
                        }
                    }
                }
            }
        }
    }
}

fn text_width(s: &str, scale: i32) -> i32 {
    s.chars().count() as i32 * 6 * scale
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb<u8>, thick: i32) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as i32).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
        for d in 0..thick {
            for e in 0..thick {
                put(img, x.round() as i32 + d - thick / 2, y.round() as i32 + e - thick / 2, c);
            }
        }
    }
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        let digits = (-(v.abs().log10().floor()) as usize + 1).min(6);
        let s = format!("{v:.digits$}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Writes the curve: `losses` as `(step, loss)`, `pcks` as `(step at the epoch's end, pck in
/// [0, 1])`.
pub(crate) fn write_curve(path: &Path, losses: &[(f64, f64)], pcks: &[(f64, f64)]) -> Result<()> {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (x0, x1) = (LEFT as f64, (W as i32 - RIGHT) as f64);
    let (y0, y1) = ((H as i32 - BOTTOM) as f64, TOP as f64);
    let raw_max = losses.iter().chain(pcks).map(|p| p.0).fold(1.0f64, f64::max);
    // Round the step axis up to a multiple of 5 so the ticks are whole numbers.
    let max_step = (raw_max / 5.0).ceil() * 5.0;
    let finite: Vec<f64> = losses.iter().map(|p| p.1).filter(|v| v.is_finite() && *v > 0.0).collect();
    let lmax = finite.iter().copied().fold(0.0f64, f64::max).max(1e-12);
    let lmin = finite.iter().copied().fold(f64::INFINITY, f64::min).min(lmax);
    // Log scale (whole decades) when the loss spans more than a factor 20, else linear from 0.
    let log = lmax / lmin > 20.0;
    let (lo, hi) = if log { (lmin.log10().floor(), lmax.log10().ceil()) } else { (0.0, lmax * 1.05) };
    let sx = |s: f64| x0 + (x1 - x0) * s / max_step;
    let sl = |l: f64| {
        let f = if log { (l.max(1e-30).log10() - lo) / (hi - lo) } else { (l - lo) / (hi - lo) };
        y0 + (y1 - y0) * f.clamp(0.0, 1.0)
    };
    let sp = |p: f64| y0 + (y1 - y0) * p.clamp(0.0, 1.0);
    // Grid and ticks: 5 intervals on the step and PCK axes; decades or 5 intervals for the loss.
    let loss_ticks: Vec<f64> = if log {
        (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=5).map(|i| hi * i as f64 / 5.0).collect()
    };
    for &v in &loss_ticks {
        let y = sl(v);
        line(&mut img, (x0, y), (x1, y), GRID, 1);
        let l = fmt_tick(v);
        text(&mut img, LEFT - 8 - text_width(&l, 1), y as i32 - 3, &l, BLUE, 1);
    }
    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let y = y0 + (y1 - y0) * f;
        line(&mut img, (x1 - 4.0, y), (x1, y), RED, 1);
        text(&mut img, x1 as i32 + 6, y as i32 - 3, &fmt_tick(f), RED, 1);
        let x = x0 + (x1 - x0) * f;
        line(&mut img, (x, y0), (x, y0 + 4.0), BLACK, 1);
        let s = format!("{:.0}", max_step * f);
        text(&mut img, x as i32 - text_width(&s, 1) / 2, y0 as i32 + 8, &s, BLACK, 1);
    }
    line(&mut img, (x0, y0), (x1, y0), BLACK, 1);
    line(&mut img, (x0, y0), (x0, y1), BLUE, 1);
    line(&mut img, (x1, y0), (x1, y1), RED, 1);
    text(&mut img, (x0 + x1) as i32 / 2 - text_width("STEP", 2) / 2, H as i32 - 22, "STEP", BLACK, 2);
    text(&mut img, LEFT, 8, if log { "LOSS (LOG)" } else { "LOSS" }, BLUE, 2);
    let label = "VAL PCK@0.2";
    text(&mut img, W as i32 - RIGHT - text_width(label, 2), 8, label, RED, 2);
    // Curves.
    let pts: Vec<(f64, f64)> = losses.iter().filter(|p| p.1.is_finite()).map(|&(s, l)| (sx(s), sl(l))).collect();
    for w in pts.windows(2) {
        line(&mut img, w[0], w[1], BLUE, 2);
    }
    if pts.len() == 1 {
        line(&mut img, pts[0], pts[0], BLUE, 4);
    }
    let pp: Vec<(f64, f64)> = pcks.iter().map(|&(s, p)| (sx(s), sp(p))).collect();
    for w in pp.windows(2) {
        line(&mut img, w[0], w[1], RED, 2);
    }
    for &p in &pp {
        line(&mut img, (p.0 - 3.0, p.1), (p.0 + 3.0, p.1), RED, 3);
    }
    img.save(path)
        .map_err(|e| Error::Format { path: path.display().to_string(), msg: format!("cannot write the PNG: {e}") })
}
