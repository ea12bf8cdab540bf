//! Results as the JSON `www/wgpose.js` parses into plain objects.

use serde_json::{json, Value};
use wgpose::estimator::Pose;
use wgpose::gpu::NodeTime;
use wgpose::models::ModelConfig;
use wgpose::pipeline::detect::Detection;
use wgpose::skeleton::Skeleton;
use wgpose::{TrackStep, Tracked};

/// A pose and, when the person detector found the person, its detection.
pub type Found = (Pose, Option<Detection>);

/// `{score, box: [x, y, w, h], keypoints: [{x, y, score, name}]}` in source pixels, plus
/// `detection: {score, box}` when the detector found the person.
fn pose_value(p: &Pose, detection: Option<&Detection>) -> Value {
    let kps: Vec<Value> = p
        .keypoints
        .iter()
        .zip(p.skeleton.joints)
        .map(|(k, name)| json!({ "x": k.x, "y": k.y, "score": k.score, "name": name }))
        .collect();
    let mut v = json!({ "score": p.score, "box": p.bbox, "keypoints": kps });
    if let Some(d) = detection {
        v["detection"] = json!({ "score": d.score, "box": d.bbox });
    }
    v
}

/// The poses of one call, as a JSON array (see `pose_value`).
pub fn poses_json(found: &[Found]) -> String {
    Value::Array(found.iter().map(|(p, d)| pose_value(p, d.as_ref())).collect()).to_string()
}

/// `null` when nobody is tracked, else `{step: "found" | "followed", pose}` (a found pose
/// carries its `detection` when the detector found it).
pub fn tracked_json(t: Option<&Tracked>) -> String {
    match t {
        None => "null".to_string(),
        Some(t) => {
            let step = match t.step {
                TrackStep::Found => "found",
                TrackStep::Followed => "followed",
            };
            json!({ "step": step, "pose": pose_value(&t.pose, t.detection.as_ref()) }).to_string()
        }
    }
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

/// `[[name, ms], ...]`: stage times as JSON.
pub fn stages_json(stages: &[(&'static str, f64)]) -> String {
    json!(stages).to_string()
}
