//! A uniform average of weight files of one network: a "model soup" (Wortsman et al., ICML
//! 2022). Fine-tunes that start from the same weights land in one basin, and the mean of their
//! parameters often scores better than each of them: two warm restarts of the default model
//! that each tied their starting point (sessions 15 and 16) average to +0.4 PCK points
//! (`models/README.md`, session 17). Every parameter is averaged, batch-norm running statistics
//! included (the mean of the running means and of the running variances).

use std::path::Path;

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::models;

use super::{load_bytes_into, named_params, named_params_mut, read_bytes, read_card_bytes, ModelCard};

/// The uniform average of `paths` (at least two files, all of the same config), as the config's
/// graph holding the averaged parameters and a card that says what it is: `training_data` lists
/// each input with its crops and recipe; `train_crops_total` is the earliest start plus every
/// input's own crops when each input started from that start or continued another input
/// (see `lineage_crops`), absent otherwise; the wall time, epochs, metrics and the per-run training keys of the inputs
/// are not carried over (they describe single runs).
///
/// Every input is loaded with the checks of [`super::load_into`], so a missing, truncated or
/// mismatched file is an error naming it; a config mismatch is an [`Error::Input`].
pub fn average_files(paths: &[&Path]) -> Result<(Graph, ModelCard)> {
    if paths.len() < 2 {
        return Err(Error::Input(format!("averaging needs at least two weight files, got {}", paths.len())));
    }
    // Each file is read once (all are held at once: soups are of a few small files): its card
    // for the config check, then its tensors with every check of `load_into`.
    let files: Vec<(String, Vec<u8>, ModelCard)> = paths
        .iter()
        .map(|p| {
            let (label, bytes) = (p.display().to_string(), read_bytes(p)?);
            let card = read_card_bytes(&bytes, &label)?;
            Ok((label, bytes, card))
        })
        .collect::<Result<_>>()?;
    let config = &files[0].2.config;
    if let Some((label, _, card)) = files.iter().find(|(_, _, c)| &c.config != config) {
        return Err(Error::Input(format!(
            "cannot average different networks: {} is `{config}`, {label} is `{}`",
            files[0].0, card.config
        )));
    }
    // The network is built as the first card describes it (input size, joint count): a soup of
    // 192x128 fine-tunes must stay a 192x128 network, not fall back to the config's default.
    let first = &files[0].2;
    if let Some((label, _, card)) = files.iter().find(|(_, _, c)| c.input != first.input || c.joints != first.joints) {
        return Err(Error::Input(format!(
            "cannot average networks trained at different shapes: {} has input {:?} and {:?} joints, {label} has {:?} and {:?}",
            files[0].0, first.input, first.joints, card.input, card.joints
        )));
    }
    let cfg = models::config(config)?.with_card(first);
    let mut graph = cfg.build(0)?;
    let mut sums: Vec<Vec<f64>> = named_params(&graph).iter().map(|(_, t)| vec![0.0; t.data.len()]).collect();
    for (label, bytes, _) in &files {
        let mut g = graph.clone();
        load_bytes_into(bytes, label, &mut g)?;
        for (sum, (_, t)) in sums.iter_mut().zip(named_params(&g)) {
            sum.iter_mut().zip(&t.data).for_each(|(s, &v)| *s += v as f64);
        }
    }
    let cards: Vec<ModelCard> = files.into_iter().map(|(_, _, c)| c).collect();
    let n = paths.len() as f64;
    for (sum, (_, t)) in sums.iter().zip(named_params_mut(&mut graph)) {
        t.data.iter_mut().zip(sum).for_each(|(v, &s)| *v = (s / n) as f32);
    }
    let card = soup_card(&cfg, &graph, paths, &cards)?;
    Ok((graph, card))
}

fn soup_card(cfg: &models::ModelConfig, graph: &Graph, paths: &[&Path], cards: &[ModelCard]) -> Result<ModelCard> {
    let num = |c: &ModelCard, k: &str| c.extra.get(k).and_then(|v| v.parse::<u64>().ok());
    let parts: Vec<String> = paths
        .iter()
        .zip(cards)
        .enumerate()
        .map(|(i, (p, c))| {
            // The run's folder and file name (`runs/fp-s15/x.safetensors` -> `fp-s15/x.safetensors`):
            // enough to tell the inputs apart without the machine's paths.
            let tail: Vec<String> =
                p.iter().rev().take(2).map(|s| s.to_string_lossy().into_owned()).collect::<Vec<_>>();
            let name = tail.into_iter().rev().collect::<Vec<_>>().join("/");
            let crops = num(c, "train_crops_total").map_or_else(|| "unknown".into(), |t| t.to_string());
            let seed = num(c, "train_seed").map(|s| format!(", seed {s}")).unwrap_or_default();
            format!("[{}] {name} ({crops} crops{seed}): {}", i + 1, c.training_data)
        })
        .collect();
    let mut card = ModelCard::for_model(cfg, graph);
    card.training_data = format!(
        "uniform average of {} weight files (model soup: every parameter and batch-norm statistic averaged): {}",
        paths.len(),
        parts.join(" | ")
    );
    card.joint_format = cards[0].joint_format.clone();
    card.normalisation = cards[0].normalisation.clone();
    let runs: Option<Vec<(u64, u64)>> =
        cards.iter().map(|c| Some((num(c, "train_prior_crops")?, num(c, "train_crops_total")?))).collect();
    if let Some(total) = runs.as_deref().and_then(lineage_crops) {
        let prior = runs.iter().flatten().map(|r| r.0).min().unwrap_or(0);
        card.extra.insert("train_prior_crops".into(), prior.to_string());
        card.extra.insert("train_crops_total".into(), total.to_string());
    }
    card.extra.insert("soup_inputs".into(), paths.len().to_string());
    // The averaged heatmaps' Gaussians: the inputs' mean sigma (the trainer's default for a card
    // without one), so that DARK decoding of a soup of runs at one sigma uses that sigma.
    let mut sigma_sum = 0.0f64;
    for c in cards {
        sigma_sum += c.heatmap_sigma()?.unwrap_or(crate::pipeline::decode::DEFAULT_SIGMA) as f64;
    }
    card.extra.insert(super::HEATMAP_SIGMA_KEY.into(), ((sigma_sum / cards.len() as f64) as f32).to_string());
    Ok(card)
}

/// The crops behind a soup of runs `(prior crops, total crops)`, when every run either started
/// from the earliest start (fine-tunes of the same weights) or continued another input (a
/// later warm restart from that input's result): that start plus every run's own crops. None
/// when a run started from anything else (the inputs do not share a start) or a total is below
/// its prior.
fn lineage_crops(runs: &[(u64, u64)]) -> Option<u64> {
    let start = runs.iter().map(|r| r.0).min()?;
    let continues = |prior: u64| prior == start || runs.iter().any(|r| r.1 == prior);
    let sound = runs.iter().all(|&(prior, total)| total >= prior && continues(prior));
    sound.then(|| start + runs.iter().map(|(prior, total)| total - prior).sum::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{load_into, save};

    fn write(dir: &Path, name: &str, graph: &Graph, prior: u64, total: u64) -> std::path::PathBuf {
        let cfg = models::config("sghg-1x64-lsp").unwrap();
        let mut card = ModelCard::for_model(&cfg, graph);
        card.training_data = format!("run {name}");
        card.extra.insert("train_prior_crops".into(), prior.to_string());
        card.extra.insert("train_crops_total".into(), total.to_string());
        let path = dir.join(name);
        save(&path, graph, &card).unwrap();
        path
    }

    /// The average of two seeded initialisations is their element-wise mean (within f32
    /// rounding of an f64 sum: 1e-6 relative), the crops add up over the shared prior, and
    /// fewer than two files, another network and a truncated file are errors.
    #[test]
    fn averages_parameters_and_counts_crops() {
        let dir = std::env::temp_dir().join(format!("wgpose-average-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = models::config("sghg-1x64-lsp").unwrap();
        let (a, b) = (cfg.build(1).unwrap(), cfg.build(2).unwrap());
        let (pa, pb) = (write(&dir, "a.safetensors", &a, 100, 140), write(&dir, "b.safetensors", &b, 100, 148));
        let (avg, card) = average_files(&[&pa, &pb]).unwrap();
        for (((name, x), (_, y)), (_, m)) in named_params(&a).iter().zip(named_params(&b)).zip(named_params(&avg)) {
            for ((&x, &y), &m) in x.data.iter().zip(&y.data).zip(&m.data) {
                let want = (x as f64 + y as f64) / 2.0;
                assert!((m as f64 - want).abs() <= 1e-6 * want.abs().max(1e-6), "{name}: {m} vs {want}");
            }
        }
        assert_eq!(card.extra.get("train_crops_total").map(String::as_str), Some("188"));
        let first =
            format!("[1] {}/a.safetensors (140 crops): run a.safetensors", dir.file_name().unwrap().to_string_lossy());
        assert!(card.training_data.contains(&first), "{}", card.training_data);
        // The soup saves and loads back like any weights file, card included.
        let ps = dir.join("soup.safetensors");
        save(&ps, &avg, &card).unwrap();
        let mut back = cfg.build(3).unwrap();
        let back_card = load_into(&ps, &mut back).unwrap();
        assert_eq!(back_card.extra.get("soup_inputs").map(String::as_str), Some("2"));
        assert!(named_params(&back).iter().zip(named_params(&avg)).all(|((_, x), (_, y))| x.data == y.data));
        assert!(average_files(&[&pa]).is_err());
        let other = models::config("ldcrn-w16-lsp").unwrap();
        let c = other.build(1).unwrap();
        let mut oc = ModelCard::for_model(&other, &c);
        oc.training_data = "other".into();
        let pc = dir.join("c.safetensors");
        save(&pc, &c, &oc).unwrap();
        assert!(matches!(average_files(&[&pa, &pc]), Err(Error::Input(_))));
        let bytes = std::fs::read(&pb).unwrap();
        let pt = dir.join("t.safetensors");
        std::fs::write(&pt, &bytes[..bytes.len() / 2]).unwrap();
        assert!(average_files(&[&pa, &pt]).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A soup's card records the inputs' mean training sigma (2 for a card without one), and
    /// an input whose sigma does not parse is an error.
    #[test]
    fn soup_records_the_mean_sigma() {
        let dir = std::env::temp_dir().join(format!("wgpose-average-sigma-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = models::config("sghg-1x64-lsp").unwrap();
        let (a, b) = (cfg.build(1).unwrap(), cfg.build(2).unwrap());
        let pa = write(&dir, "a.safetensors", &a, 100, 140);
        let with_sigma = |name: &str, g: &Graph, sigma: &str| {
            let mut card = ModelCard::for_model(&cfg, g);
            card.extra.insert(super::super::HEATMAP_SIGMA_KEY.into(), sigma.into());
            let path = dir.join(name);
            save(&path, g, &card).unwrap();
            path
        };
        let pb = with_sigma("b.safetensors", &b, "1.5");
        let (_, card) = average_files(&[&pa, &pb]).unwrap();
        assert_eq!(card.heatmap_sigma().unwrap(), Some(1.75));
        let pc = with_sigma("c.safetensors", &b, "wide");
        assert!(matches!(average_files(&[&pa, &pc]), Err(Error::Input(m)) if m.contains("heatmap_sigma")));
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Crops behind a soup: fine-tunes of one start add their own crops to it, a run that
    /// continued another input counts once on top of it, and anything else is unknown.
    #[test]
    fn lineage_crops_count_each_run_once() {
        assert_eq!(lineage_crops(&[(100, 140), (100, 148)]), Some(188));
        // The second run started from the first's result: 100 + 40 + 64.
        assert_eq!(lineage_crops(&[(100, 140), (140, 204)]), Some(204));
        assert_eq!(lineage_crops(&[(140, 204), (100, 140), (100, 150)]), Some(254));
        assert_eq!(lineage_crops(&[(100, 140), (120, 160)]), None);
        assert_eq!(lineage_crops(&[(100, 90), (100, 140)]), None);
        assert_eq!(lineage_crops(&[]), None);
    }

    /// A soup keeps the input size its inputs were trained at (the shipped hourglass is
    /// 192x128, not its config's 128x128), and inputs of different sizes are an error.
    #[test]
    fn keeps_the_trained_input_size() {
        let dir = std::env::temp_dir().join(format!("wgpose-average-size-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tall = models::config("sghg-1x64-lsp").unwrap().with_input([3, 192, 128]);
        let save_as = |name: &str, cfg: &models::ModelConfig, seed: u64| {
            let g = cfg.build(seed).unwrap();
            let mut card = ModelCard::for_model(cfg, &g);
            card.training_data = format!("run {name}");
            let path = dir.join(name);
            save(&path, &g, &card).unwrap();
            path
        };
        let (pa, pb) = (save_as("a.safetensors", &tall, 1), save_as("b.safetensors", &tall, 2));
        let (_, card) = average_files(&[&pa, &pb]).unwrap();
        assert_eq!(card.input, Some([3, 192, 128]));
        let square = save_as("c.safetensors", &models::config("sghg-1x64-lsp").unwrap(), 3);
        let err = average_files(&[&pa, &square]).unwrap_err();
        assert!(matches!(err, Error::Input(ref m) if m.contains("different shapes")), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
