//! COCO keypoint AP/AR, replicating pycocotools' `COCOeval` with `iouType='keypoints'`
//! (checked against it by `scripts/coco_eval_check.py`).

use std::collections::{HashMap, HashSet};

use super::oks::{coco_sigmas, oks_unchecked, pairwise_sum};
use crate::data::coco::{CocoDataset, CocoResult};
use crate::{Error, Result};

/// COCO keypoint summary: the ten numbers `COCOeval.summarize()` prints for keypoints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CocoKeypointStats {
    /// AP averaged over OKS thresholds 0.50:0.05:0.95, area all.
    pub ap: f64,
    /// AP at OKS 0.50, area all.
    pub ap50: f64,
    /// AP at OKS 0.75, area all.
    pub ap75: f64,
    /// Area 32^2..96^2.
    pub ap_medium: f64,
    /// Area > 96^2.
    pub ap_large: f64,
    /// AR averaged over OKS thresholds 0.50:0.05:0.95 (20 detections per image), area all.
    pub ar: f64,
    /// AR at OKS 0.50.
    pub ar50: f64,
    /// AR at OKS 0.75.
    pub ar75: f64,
    /// AR, area 32^2..96^2.
    pub ar_medium: f64,
    /// AR, area > 96^2.
    pub ar_large: f64,
}

impl CocoKeypointStats {
    /// Short names of the ten numbers, in [`CocoKeypointStats::as_array`] order.
    pub const NAMES: [&'static str; 10] = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"];

    /// In `COCOeval.stats` order.
    pub fn as_array(&self) -> [f64; 10] {
        [
            self.ap,
            self.ap50,
            self.ap75,
            self.ap_medium,
            self.ap_large,
            self.ar,
            self.ar50,
            self.ar75,
            self.ar_medium,
            self.ar_large,
        ]
    }
}

const MAX_DETS: usize = 20;
const AREA_RANGES: [[f64; 2]; 3] = [[0.0, 1e10], [1024.0, 9216.0], [9216.0, 1e10]];

/// `np.linspace(.5, 0.95, 10)`, bit for bit.
fn iou_thresholds() -> [f64; 10] {
    let step = (0.95 - 0.5) / 9.0;
    let mut t = [0.0; 10];
    for (i, v) in t.iter_mut().enumerate() {
        *v = i as f64 * step + 0.5;
    }
    t[9] = 0.95;
    t
}

/// `np.linspace(.0, 1.00, 101)`, bit for bit.
fn rec_thresholds() -> [f64; 101] {
    let mut r = [0.0; 101];
    for (i, v) in r.iter_mut().enumerate() {
        *v = i as f64 * 0.01 + 0.0;
    }
    r[100] = 1.0;
    r
}

struct Gt<'a> {
    id: u64,
    kps: &'a [f64],
    bbox: [f64; 4],
    area: f64,
    iscrowd: bool,
    ignore: bool,
}

struct Dt<'a> {
    id: u64,
    score: f64,
    kps: &'a [f64],
    area: f64,
}

/// `evaluateImg`'s output for one image, category and area range.
struct ImgEval {
    scores: Vec<f64>,
    /// Per threshold, per detection: id of the matched ground truth, 0 if none.
    dtm: Vec<Vec<u64>>,
    dt_ig: Vec<Vec<bool>>,
    gt_ig: Vec<bool>,
}

/// COCO keypoint AP/AR of `results` against `gt`, replicating pycocotools `COCOeval` with
/// `iouType='keypoints'` and default parameters: all images and categories of the ground-truth
/// file, crowd and `num_keypoints == 0` people as ignore regions, at most 20 detections per image
/// (highest scores), area ranges all / medium / large, OKS thresholds 0.50:0.05:0.95, greedy
/// matching in score order, 101-point interpolated precision. Values that pycocotools reports
/// as -1 (nothing to evaluate) are -1 here too.
///
/// Like `COCO.loadRes`, a result for an image not in `gt` is an error, and detection areas come
/// from the keypoints' extent unless the first result has a box. Unlike pycocotools (which
/// crashes or silently broadcasts), keypoint lists of the wrong length and non-finite numbers are
/// errors too.
pub fn coco_keypoint_eval(gt: &CocoDataset, results: &[CocoResult]) -> Result<CocoKeypointStats> {
    let sigmas = coco_sigmas();
    let nk = sigmas.len();
    let gt_name = gt.json.display().to_string();
    let mut img_ids: Vec<u64> = gt.images.iter().map(|i| i.id).collect();
    img_ids.sort_unstable();
    img_ids.dedup();
    let mut cat_ids: Vec<u64> = gt.categories.iter().map(|c| c.id).collect();
    cat_ids.sort_unstable();
    cat_ids.dedup();
    let img_set: HashSet<u64> = img_ids.iter().copied().collect();
    let cat_set: HashSet<u64> = cat_ids.iter().copied().collect();

    let use_bbox = results.first().is_some_and(|r| r.bbox.as_ref().is_some_and(|b| !b.is_empty()));
    let mut dts: HashMap<(u64, u64), Vec<Dt>> = HashMap::new();
    for (i, r) in results.iter().enumerate() {
        if !img_set.contains(&r.image_id) {
            return Err(Error::Input(format!("result {i} is for image {}, which is not in {gt_name}", r.image_id)));
        }
        if r.keypoints.len() != 3 * nk {
            return Err(Error::Input(format!(
                "result {i} has {} keypoint values, expected {}",
                r.keypoints.len(),
                3 * nk
            )));
        }
        if !r.score.is_finite() || r.keypoints.iter().any(|v| !v.is_finite()) {
            return Err(Error::Input(format!("result {i} (image {}) has a non-finite number", r.image_id)));
        }
        let area = if use_bbox {
            match r.bbox.as_deref() {
                Some(b) if b.len() >= 4 && b[2].is_finite() && b[3].is_finite() => b[2] * b[3],
                _ => return Err(Error::Input(format!("result {i}: the first result has a bbox, this one has none"))),
            }
        } else {
            let xs = r.keypoints.iter().step_by(3);
            let ys = r.keypoints.iter().skip(1).step_by(3);
            let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let (y0, y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            (x1 - x0) * (y1 - y0)
        };
        if cat_set.contains(&r.category_id) {
            dts.entry((r.image_id, r.category_id)).or_default().push(Dt {
                id: i as u64 + 1,
                score: r.score,
                kps: &r.keypoints,
                area,
            });
        }
    }
    let mut gts: HashMap<(u64, u64), Vec<Gt>> = HashMap::new();
    for a in &gt.annotations {
        // `load_coco` refuses these; a dataset built in code is checked here. A negative area
        // makes every OKS undefined and every metric -1, which reads like "nothing to evaluate".
        if !(a.area.is_finite() && a.area >= 0.0) {
            return Err(Error::Input(format!("{gt_name}: annotation {} has the area {}", a.id, a.area)));
        }
        if img_set.contains(&a.image_id) && cat_set.contains(&a.category_id) {
            gts.entry((a.image_id, a.category_id)).or_default().push(Gt {
                id: a.id,
                kps: &a.keypoints,
                bbox: a.bbox,
                area: a.area,
                iscrowd: a.iscrowd,
                ignore: a.iscrowd || a.num_keypoints == 0,
            });
        }
    }

    let thr = iou_thresholds();
    let rec = rec_thresholds();
    let (t_n, r_n, k_n, a_n) = (thr.len(), rec.len(), cat_ids.len(), AREA_RANGES.len());
    // precision[t][r][k][a], recall[t][k][a], -1 where undefined.
    let mut precision = vec![-1.0f64; t_n * r_n * k_n * a_n];
    let mut recall = vec![-1.0f64; t_n * k_n * a_n];
    let empty_g: Vec<Gt> = Vec::new();
    let empty_d: Vec<Dt> = Vec::new();

    for (k, &cat) in cat_ids.iter().enumerate() {
        // evalImgs[a][image] for this category.
        let mut evals: Vec<Vec<Option<ImgEval>>> = (0..a_n).map(|_| Vec::new()).collect();
        for &img in &img_ids {
            let g = gts.get(&(img, cat)).unwrap_or(&empty_g);
            let d_all = dts.get(&(img, cat)).unwrap_or(&empty_d);
            // computeOks: detections by descending score (stable), at most MAX_DETS.
            let mut d: Vec<&Dt> = d_all.iter().collect();
            d.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap_or(std::cmp::Ordering::Equal));
            d.truncate(MAX_DETS);
            let mut ious = vec![vec![0.0f64; g.len()]; d.len()];
            if !g.is_empty() && !d.is_empty() {
                for (j, gg) in g.iter().enumerate() {
                    if gg.kps.len() != 3 * nk {
                        return Err(Error::Format {
                            path: gt_name.clone(),
                            msg: format!(
                                "annotation {} has {} keypoint values, expected {}",
                                gg.id,
                                gg.kps.len(),
                                3 * nk
                            ),
                        });
                    }
                    for (i, dd) in d.iter().enumerate() {
                        ious[i][j] = oks_unchecked(dd.kps, gg.kps, gg.bbox, gg.area, &sigmas);
                    }
                }
            }
            for (a, rng) in AREA_RANGES.iter().enumerate() {
                evals[a].push(evaluate_img(g, &d, &ious, *rng, &thr));
            }
        }
        for (a, ev) in evals.iter().enumerate() {
            let e: Vec<&ImgEval> = ev.iter().flatten().collect();
            if e.is_empty() {
                continue;
            }
            let mut scores = Vec::new();
            let mut dtm: Vec<Vec<u64>> = vec![Vec::new(); t_n];
            let mut dt_ig: Vec<Vec<bool>> = vec![Vec::new(); t_n];
            for x in &e {
                scores.extend_from_slice(&x.scores);
                for t in 0..t_n {
                    dtm[t].extend_from_slice(&x.dtm[t]);
                    dt_ig[t].extend_from_slice(&x.dt_ig[t]);
                }
            }
            let npig = e.iter().flat_map(|x| &x.gt_ig).filter(|&&ig| !ig).count();
            if npig == 0 {
                continue;
            }
            let mut inds: Vec<usize> = (0..scores.len()).collect();
            inds.sort_by(|&i, &j| scores[j].partial_cmp(&scores[i]).unwrap_or(std::cmp::Ordering::Equal));
            let nd = inds.len();
            for t in 0..t_n {
                let (mut tp, mut fp) = (0u64, 0u64);
                let mut rc = Vec::with_capacity(nd);
                let mut pr = Vec::with_capacity(nd);
                for &i in &inds {
                    let (m, ig) = (dtm[t][i] != 0, dt_ig[t][i]);
                    if m && !ig {
                        tp += 1;
                    }
                    if !m && !ig {
                        fp += 1;
                    }
                    let (tpf, fpf) = (tp as f64, fp as f64);
                    rc.push(tpf / npig as f64);
                    pr.push(tpf / (fpf + tpf + f64::EPSILON));
                }
                recall[(t * k_n + k) * a_n + a] = if nd > 0 { rc[nd - 1] } else { 0.0 };
                for i in (1..nd).rev() {
                    if pr[i] > pr[i - 1] {
                        pr[i - 1] = pr[i];
                    }
                }
                for (ri, &rt) in rec.iter().enumerate() {
                    let pi = rc.partition_point(|&x| x < rt);
                    let q = if pi < nd { pr[pi] } else { 0.0 };
                    precision[((t * r_n + ri) * k_n + k) * a_n + a] = q;
                }
            }
        }
    }

    let summarize = |ap: bool, iou: Option<f64>, a: usize| -> f64 {
        let ts: Vec<usize> = match iou {
            Some(v) => (0..t_n).filter(|&t| thr[t] == v).collect(),
            None => (0..t_n).collect(),
        };
        let mut vals = Vec::new();
        for &t in &ts {
            if ap {
                for r in 0..r_n {
                    for k in 0..k_n {
                        vals.push(precision[((t * r_n + r) * k_n + k) * a_n + a]);
                    }
                }
            } else {
                for k in 0..k_n {
                    vals.push(recall[(t * k_n + k) * a_n + a]);
                }
            }
        }
        vals.retain(|&v| v > -1.0);
        if vals.is_empty() {
            -1.0
        } else {
            pairwise_sum(&vals) / vals.len() as f64
        }
    };
    Ok(CocoKeypointStats {
        ap: summarize(true, None, 0),
        ap50: summarize(true, Some(0.5), 0),
        ap75: summarize(true, Some(0.75), 0),
        ap_medium: summarize(true, None, 1),
        ap_large: summarize(true, None, 2),
        ar: summarize(false, None, 0),
        ar50: summarize(false, Some(0.5), 0),
        ar75: summarize(false, Some(0.75), 0),
        ar_medium: summarize(false, None, 1),
        ar_large: summarize(false, None, 2),
    })
}

/// pycocotools `evaluateImg` for one image and category. `d` is already sorted and truncated,
/// `ious[d][g]` in the ground truths' file order.
fn evaluate_img(g: &[Gt], d: &[&Dt], ious: &[Vec<f64>], rng: [f64; 2], thr: &[f64]) -> Option<ImgEval> {
    if g.is_empty() && d.is_empty() {
        return None;
    }
    let ignore: Vec<bool> = g.iter().map(|x| x.ignore || x.area < rng[0] || x.area > rng[1]).collect();
    // Ground truths not ignored first (stable).
    let mut gind: Vec<usize> = (0..g.len()).collect();
    gind.sort_by_key(|&i| ignore[i]);
    let gt_ig: Vec<bool> = gind.iter().map(|&i| ignore[i]).collect();
    let t_n = thr.len();
    let mut dtm = vec![vec![0u64; d.len()]; t_n];
    let mut dt_ig = vec![vec![false; d.len()]; t_n];
    let mut gtm = vec![vec![0u64; g.len()]; t_n];
    if !g.is_empty() && !d.is_empty() {
        for (t, &th) in thr.iter().enumerate() {
            for (di, dd) in d.iter().enumerate() {
                let mut iou = th.min(1.0 - 1e-10);
                let mut m: Option<usize> = None;
                for (gi, &orig) in gind.iter().enumerate() {
                    if gtm[t][gi] > 0 && !g[orig].iscrowd {
                        continue;
                    }
                    if let Some(mm) = m {
                        if !gt_ig[mm] && gt_ig[gi] {
                            break;
                        }
                    }
                    let v = ious[di][orig];
                    if v < iou {
                        continue;
                    }
                    iou = v;
                    m = Some(gi);
                }
                if let Some(mm) = m {
                    dt_ig[t][di] = gt_ig[mm];
                    dtm[t][di] = g[gind[mm]].id;
                    gtm[t][mm] = dd.id;
                }
            }
        }
    }
    for (di, dd) in d.iter().enumerate() {
        let outside = dd.area < rng[0] || dd.area > rng[1];
        for t in 0..t_n {
            dt_ig[t][di] = dt_ig[t][di] || (dtm[t][di] == 0 && outside);
        }
    }
    Some(ImgEval { scores: d.iter().map(|x| x.score).collect(), dtm, dt_ig, gt_ig })
}
