//! Results as the JSON `www/wgpose.js` parses into plain objects.

use serde_json::{json, Value};
use wgpose::estimator::Pose;
use wgpose::gpu::NodeTime;
use wgpose::models::ModelConfig;
use wgpose::skeleton::Skeleton;

/// `[{score, box: [x, y, w, h], keypoints: [{x, y, score, name}]}]` in source pixels.
pub fn poses_json(poses: &[Pose]) -> String {
    let v: Vec<Value> = poses
        .iter()
        .map(|p| {
            let kps: Vec<Value> = p
                .keypoints
                .iter()
                .zip(p.skeleton.joints)
                .map(|(k, name)| json!({ "x": k.x, "y": k.y, "score": k.score, "name": name }))
                .collect();
            json!({ "score": p.score, "box": p.bbox, "keypoints": kps })
        })
        .collect();
    Value::Array(v).to_string()
}

/// Name, input, joint names and limbs of a config.
pub fn model_json(cfg: &ModelConfig) -> String {
    let skeleton = Skeleton::for_joints(cfg.joints);
    json!({
        "name": cfg.name,
        "input": cfg.input,
        "joints": skeleton.map(|s| s.joints.to_vec()).unwrap_or_default(),
        "limbs": skeleton.map(|s| s.limbs.iter().map(|&(a, b)| [a, b]).collect::<Vec<_>>()).unwrap_or_default(),
    })
    .to_string()
}

/// Stage times and per-layer GPU times.
pub fn profile_json(stages: &[(&'static str, f64)], layers: Option<&[NodeTime]>) -> String {
    let layers = layers.map(|ls| {
        ls.iter()
            .map(|t| json!({ "name": t.name, "kind": t.kind, "ms": t.ns / 1e6, "flops": t.flops }))
            .collect::<Vec<_>>()
    });
    json!({ "stages": stages, "timestamps": layers.is_some(), "layers": layers }).to_string()
}
