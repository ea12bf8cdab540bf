//! The smallest complete use of wgpose: keypoints of the people in a photo.
//!
//! `cargo run --release --example predict -- [IMAGE] [x,y,w,h]`
//! (default: the bundled `assets/sample.jpg`; no box: the shipped person detector finds everyone).

use wgpose::image_io::load_rgb;
use wgpose::{Boxes, Device, Estimator};

fn main() -> wgpose::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sample.jpg").to_string());
    let boxes = match args.next() {
        Some(b) => {
            let v: Vec<f32> = b.split(',').filter_map(|p| p.trim().parse().ok()).collect();
            let [x, y, w, h] = v[..] else {
                return Err(wgpose::Error::Input(format!("box `{b}` is not x,y,w,h")));
            };
            Boxes::from([x, y, w, h])
        }
        None => Boxes::Auto,
    };

    // The default shipped network, on the GPU unless the adapter is a software one.
    let mut estimator = Estimator::from_name("fasterpose-r18-s16-lsp", Device::Auto)?;
    eprintln!("{}; running on the {}", estimator.weights, estimator.device_choice());

    // Any photo: EXIF rotation applied, large images downscaled; coordinates stay the file's.
    let photo = load_rgb(path.as_ref())?;
    for pose in estimator.estimate(&photo, boxes)? {
        println!("person in box {:?}, score {:.3}", pose.bbox, pose.score);
        for (joint, k) in pose.skeleton.joints.iter().zip(&pose.keypoints) {
            println!("  {joint:<16} x {:>7.1}  y {:>7.1}  score {:.3}", k.x, k.y, k.score);
        }
    }
    Ok(())
}
