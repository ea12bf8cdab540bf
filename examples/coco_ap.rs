//! Prints COCO keypoint AP/AR for a results file, as one JSON object (full precision):
//! `cargo run --release --example coco_ap -- GT.json RESULTS.json`.
//! Used by `scripts/coco_eval_check.py` to compare with pycocotools.

use std::path::Path;

use wgpose::data::{load_coco, read_coco_results};
use wgpose::metrics::{coco_keypoint_eval, CocoKeypointStats};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 2 {
        eprintln!("usage: coco_ap GT.json RESULTS.json");
        std::process::exit(2);
    }
    let run = || -> wgpose::Result<CocoKeypointStats> {
        let gt_path = Path::new(&args[0]);
        let gt = load_coco(gt_path, gt_path.parent().unwrap_or(Path::new(".")))?;
        let results = read_coco_results(Path::new(&args[1]))?;
        coco_keypoint_eval(&gt, &results)
    };
    match run() {
        Ok(s) => {
            let fields: Vec<String> = CocoKeypointStats::NAMES
                .iter()
                .zip(s.as_array())
                .map(|(n, v)| format!("\"{n}\": {}", serde_json::to_string(&v).unwrap_or_else(|_| "null".into())))
                .collect();
            println!("{{{}}}", fields.join(", "));
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
