//! Knowledge distillation (`wgpose train --teacher FILE`): a trained pose network's heatmaps,
//! computed on the very crop the student sees (same augmentation), are blended into the
//! student's Gaussian targets.
//!
//! Why it can pay on LSPET: the teacher's heatmaps follow the image, so where a crowd-sourced
//! label swapped left and right the blended target still carries the image's side; and a small
//! student learns a smoother function from soft targets than from one 2-pixel Gaussian per
//! joint. It costs one teacher forward pass per crop (inference only, no tape).
//!
//! Target per joint: `(1 - a) * gaussian + a * teacher` where the joint is labelled (its weight
//! stays); where it is not (weight 0), the teacher's heatmap alone with weight `a`. Teacher values
//! are clamped to [0, 1], the range of the Gaussian targets (and of RCE's targets).

use std::path::Path;

use super::dataset::Batch;
use crate::cpu;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::models::{load_model, Family, ModelConfig};
use crate::tensor::Tensor;

/// A trained pose network whose heatmaps become part of the student's targets.
pub struct Teacher {
    graph: Graph,
    /// The teacher's config name (for logs and the model card).
    pub name: String,
}

impl Teacher {
    /// Loads the teacher from a weights file and checks it fits `student`: a pose network with
    /// the same joint count and heatmap size at the student's input size. A teacher trained at
    /// another size runs at the student's when its size multiple allows (the networks are fully
    /// convolutional): the default model, trained at 160x128, can teach the hourglass at 192x128.
    pub fn load(path: &Path, student: &ModelConfig) -> Result<Teacher> {
        let mut cfg = ModelConfig::from_weights_file(path)?;
        let [_, h, w] = student.input;
        if cfg.input[0] == student.input[0] && h % cfg.size_multiple() == 0 && w % cfg.size_multiple() == 0 {
            cfg = cfg.with_input(student.input);
        }
        if cfg.family == Family::PersonDetector || student.family == Family::PersonDetector {
            return Err(Error::Input(format!(
                "--teacher {}: distillation is for pose networks ({} teaching {})",
                path.display(),
                cfg.name,
                student.name
            )));
        }
        if cfg.input != student.input || cfg.heatmap_shape() != student.heatmap_shape() {
            return Err(Error::Input(format!(
                "--teacher {}: {} takes {:?} and gives heatmaps {:?}, the student {} takes {:?} and gives {:?}",
                path.display(),
                cfg.name,
                cfg.input,
                cfg.heatmap_shape(),
                student.name,
                student.input,
                student.heatmap_shape()
            )));
        }
        let (graph, _, _) = load_model(&cfg, Some(path), 0)?;
        Ok(Teacher { graph, name: cfg.name.to_string() })
    }

    /// Blends the teacher's heatmaps on `batch.input` into `batch.target` / `batch.weights`
    /// with weight `alpha` (see the module docs).
    pub fn blend_into(&self, batch: &mut Batch, alpha: f32) -> Result<()> {
        let outs = cpu::run(&self.graph, std::slice::from_ref(&batch.input))?;
        let hm = outs.last().ok_or_else(|| Error::Graph("the teacher has no output".into()))?;
        blend_targets(&mut batch.target, &mut batch.weights, hm, alpha)
    }
}

/// `target` `[N, K, h, w]` and its `N * K` joint `weights` blended with `teacher` heatmaps of
/// the same shape: see the module docs.
pub fn blend_targets(target: &mut Tensor, weights: &mut [f32], teacher: &Tensor, alpha: f32) -> Result<()> {
    if teacher.shape != target.shape || target.shape.len() != 4 {
        return Err(Error::Input(format!("teacher heatmaps {:?} against targets {:?}", teacher.shape, target.shape)));
    }
    let hw = target.shape[2] * target.shape[3];
    if weights.len() * hw != target.data.len() {
        return Err(Error::Input(format!("{} joint weights for targets {:?}", weights.len(), target.shape)));
    }
    if !(alpha.is_finite() && (0.0..=1.0).contains(&alpha)) {
        return Err(Error::Input(format!("teacher weight {alpha} must be from 0 to 1")));
    }
    if let Some(v) = teacher.data.iter().find(|v| !v.is_finite()) {
        return Err(Error::Input(format!("the teacher produced {v}: its weights are broken")));
    }
    for (p, w) in weights.iter_mut().enumerate() {
        let r = p * hw..(p + 1) * hw;
        let labelled = *w > 0.0;
        for (t, &s) in target.data[r.clone()].iter_mut().zip(&teacher.data[r]) {
            let s = s.clamp(0.0, 1.0);
            *t = if labelled { (1.0 - alpha) * *t + alpha * s } else { s };
        }
        if !labelled {
            *w = alpha;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: Vec<f32>) -> Tensor {
        Tensor { shape: shape.to_vec(), data }
    }

    #[test]
    fn labelled_joints_blend_and_unlabelled_take_the_teacher() {
        // N = 1, K = 2, 1 x 3 heatmaps; joint 1 unlabelled.
        let mut target = t(&[1, 2, 1, 3], vec![1.0, 0.5, 0.0, 0.0, 0.0, 0.0]);
        let mut w = vec![1.0, 0.0];
        let teacher = t(&[1, 2, 1, 3], vec![0.0, 1.5, -0.5, 0.2, 0.9, 0.1]);
        blend_targets(&mut target, &mut w, &teacher, 0.25).unwrap();
        let want = [0.75, 0.625, 0.0, 0.2, 0.9, 0.1];
        for (a, b) in target.data.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{:?}", target.data);
        }
        assert_eq!(w, vec![1.0, 0.25]);
    }

    #[test]
    fn alpha_zero_leaves_labelled_targets_alone() {
        let mut target = t(&[1, 1, 2, 2], vec![0.1, 0.2, 0.3, 0.4]);
        let mut w = vec![2.0];
        let teacher = t(&[1, 1, 2, 2], vec![1.0; 4]);
        blend_targets(&mut target, &mut w, &teacher, 0.0).unwrap();
        assert_eq!(target.data, vec![0.1, 0.2, 0.3, 0.4]);
        assert_eq!(w, vec![2.0]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut target = t(&[1, 1, 2, 2], vec![0.0; 4]);
        let mut w = vec![1.0];
        assert!(blend_targets(&mut target, &mut w, &t(&[1, 1, 2, 1], vec![0.0; 2]), 0.5).is_err());
        assert!(blend_targets(&mut target, &mut w, &t(&[1, 1, 2, 2], vec![f32::NAN; 4]), 0.5).is_err());
        assert!(blend_targets(&mut target, &mut w, &t(&[1, 1, 2, 2], vec![0.0; 4]), 1.5).is_err());
        assert!(blend_targets(&mut target, &mut [1.0, 1.0], &t(&[1, 1, 2, 2], vec![0.0; 4]), 0.5).is_err());
    }
}
