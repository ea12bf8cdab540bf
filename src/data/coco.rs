//! COCO person keypoints: the annotation JSON (`person_keypoints_{train,val}2017.json` or any file
//! in that format) and keypoint results files (`[{image_id, category_id, keypoints, score}]`).
//!
//! [`load_coco`] keeps every image, category and annotation of the file, because the evaluator
//! needs them all (crowd regions and people without keypoints are "ignore" regions, images
//! without people still count). [`CocoDataset::persons`] gives the training/evaluation list:
//! person annotations with at least one labelled keypoint, not crowd, whose image is on disk.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Annotation, Extra};
use crate::skeleton::COCO17;
use crate::{Error, Result};

/// COCO's category id for people.
pub(crate) const PERSON_CATEGORY: u64 = 1;

/// An image entry of the JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoImage {
    /// The image's id, referred to by annotations and results.
    pub id: u64,
    /// File name relative to the image directory.
    pub file_name: String,
    /// Width in pixels, as the JSON states it.
    pub width: u32,
    /// Height in pixels, as the JSON states it.
    pub height: u32,
    /// `image_dir/file_name`.
    pub path: PathBuf,
    /// Whether `path` exists.
    pub exists: bool,
}

/// An annotation of the JSON, with numbers as the file has them.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoAnnotation {
    /// The annotation's id.
    pub id: u64,
    /// The image it belongs to.
    pub image_id: u64,
    /// Its category (1: person).
    pub category_id: u64,
    /// `[x, y, v] * K` (empty for categories without keypoints).
    pub keypoints: Vec<f64>,
    /// As given; when the file omits it, the number of keypoints with `v > 0`.
    pub num_keypoints: u32,
    /// Segmentation area in square pixels (OKS's scale).
    pub area: f64,
    /// Box `[x, y, w, h]` in image pixels.
    pub bbox: [f64; 4],
    /// A crowd region: never matched, only ignored by the evaluator.
    pub iscrowd: bool,
}

/// A category entry.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoCategory {
    /// The category's id.
    pub id: u64,
    /// The category's name (`person`).
    pub name: String,
    /// Keypoint names, in the order of the annotations' `keypoints`.
    pub keypoints: Vec<String>,
}

/// A whole COCO annotation file.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoDataset {
    /// The annotation file it was read from.
    pub json: PathBuf,
    /// The directory image files are looked up in.
    pub image_dir: PathBuf,
    /// Every image of the file, in file order.
    pub images: Vec<CocoImage>,
    /// Every annotation of the file (all categories, crowds included).
    pub annotations: Vec<CocoAnnotation>,
    /// Every category of the file.
    pub categories: Vec<CocoCategory>,
    /// Images listed in the JSON whose file is not in `image_dir`.
    pub missing_images: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct RawFile {
    images: Vec<RawImage>,
    /// Required: a file without it (an image-info list) has nothing to evaluate.
    annotations: Option<Vec<RawAnn>>,
    #[serde(default)]
    categories: Vec<RawCat>,
}

#[derive(Deserialize)]
struct RawImage {
    id: u64,
    file_name: String,
    #[serde(default)]
    width: u32,
    #[serde(default)]
    height: u32,
}

#[derive(Deserialize)]
struct RawAnn {
    id: u64,
    image_id: u64,
    category_id: u64,
    #[serde(default)]
    keypoints: Vec<f64>,
    #[serde(default)]
    num_keypoints: Option<u32>,
    area: f64,
    bbox: [f64; 4],
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Deserialize)]
struct RawCat {
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    keypoints: Vec<String>,
}

fn format_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format { path: path.display().to_string(), msg: msg.into() }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })
}

/// Loads a COCO keypoints JSON; image files are looked up in `image_dir`.
pub fn load_coco(json: &Path, image_dir: &Path) -> Result<CocoDataset> {
    let bytes = read(json)?;
    let raw: RawFile =
        serde_json::from_slice(&bytes).map_err(|e| format_err(json, format!("invalid COCO JSON: {e}")))?;
    let mut seen = HashSet::new();
    let mut images = Vec::with_capacity(raw.images.len());
    let mut missing_images = Vec::new();
    for im in raw.images {
        if !seen.insert(im.id) {
            return Err(format_err(json, format!("duplicate image id {}", im.id)));
        }
        let path = image_dir.join(&im.file_name);
        let exists = path.is_file();
        if !exists {
            missing_images.push(path.clone());
        }
        images.push(CocoImage { id: im.id, file_name: im.file_name, width: im.width, height: im.height, path, exists });
    }
    let raw_annotations = raw.annotations.ok_or_else(|| {
        format_err(json, "no `annotations` list: not a keypoints annotation file (an image-info file?)")
    })?;
    let image_ids: HashSet<u64> = images.iter().map(|i| i.id).collect();
    let mut seen = HashSet::new();
    let mut annotations = Vec::with_capacity(raw_annotations.len());
    for a in raw_annotations {
        if !seen.insert(a.id) {
            return Err(format_err(json, format!("duplicate annotation id {}", a.id)));
        }
        if a.keypoints.len() % 3 != 0 {
            return Err(format_err(
                json,
                format!("annotation {}: {} keypoint values, not a multiple of 3", a.id, a.keypoints.len()),
            ));
        }
        if a.category_id == PERSON_CATEGORY && !a.keypoints.is_empty() && a.keypoints.len() != 3 * COCO17.len() {
            return Err(format_err(
                json,
                format!(
                    "annotation {}: {} keypoint values, COCO persons have {}",
                    a.id,
                    a.keypoints.len(),
                    3 * COCO17.len()
                ),
            ));
        }
        if a.keypoints.iter().chain(&a.bbox).any(|v| !v.is_finite()) || !a.area.is_finite() {
            return Err(format_err(json, format!("annotation {}: non-finite number", a.id)));
        }
        // OKS divides by the area: a negative one turns every metric into -1 (nothing matched).
        if a.area < 0.0 || a.bbox[2] < 0.0 || a.bbox[3] < 0.0 {
            return Err(format_err(
                json,
                format!("annotation {}: negative area {} or box size {:?}", a.id, a.area, &a.bbox[2..]),
            ));
        }
        if !image_ids.contains(&a.image_id) {
            return Err(format_err(json, format!("annotation {}: image_id {} is not in `images`", a.id, a.image_id)));
        }
        let counted = a.keypoints.chunks_exact(3).filter(|k| k[2] > 0.0).count() as u32;
        annotations.push(CocoAnnotation {
            id: a.id,
            image_id: a.image_id,
            category_id: a.category_id,
            num_keypoints: a.num_keypoints.unwrap_or(counted),
            keypoints: a.keypoints,
            area: a.area,
            bbox: a.bbox,
            iscrowd: a.iscrowd != 0,
        });
    }
    let categories =
        raw.categories.into_iter().map(|c| CocoCategory { id: c.id, name: c.name, keypoints: c.keypoints }).collect();
    Ok(CocoDataset {
        json: json.to_path_buf(),
        image_dir: image_dir.to_path_buf(),
        images,
        annotations,
        categories,
        missing_images,
    })
}

impl CocoDataset {
    /// The image entry with this id.
    pub fn image(&self, id: u64) -> Option<&CocoImage> {
        self.images.iter().find(|i| i.id == id)
    }

    /// Why [`persons`](Self::persons) is empty (or short): how many annotations each of its
    /// filters left out, for an error message that says more than "no people".
    pub fn persons_summary(&self) -> String {
        let by_id: std::collections::HashMap<u64, &CocoImage> = self.images.iter().map(|i| (i.id, i)).collect();
        let count = |f: &dyn Fn(&CocoAnnotation) -> bool| self.annotations.iter().filter(|a| f(a)).count();
        let other = count(&|a| a.category_id != PERSON_CATEGORY);
        let crowd = count(&|a| a.category_id == PERSON_CATEGORY && a.iscrowd);
        let unlabelled = count(&|a| a.category_id == PERSON_CATEGORY && !a.iscrowd && a.num_keypoints == 0);
        let off_disk = count(&|a| {
            a.category_id == PERSON_CATEGORY
                && !a.iscrowd
                && a.num_keypoints > 0
                && by_id.get(&a.image_id).is_none_or(|i| !i.exists)
        });
        format!(
            "{} annotation(s) on {} image(s): {other} not of the person category (id {PERSON_CATEGORY}), {crowd} crowd, \
             {unlabelled} without labelled keypoints, {off_disk} on images missing from {}",
            self.annotations.len(),
            self.images.len(),
            self.image_dir.display()
        )
    }

    /// People for training and PCK/OKS lists: person annotations that are not crowd, have
    /// `num_keypoints > 0` and 17 keypoints, on images that exist on disk. In file order.
    pub fn persons(&self) -> Vec<Annotation> {
        let by_id: std::collections::HashMap<u64, &CocoImage> = self.images.iter().map(|i| (i.id, i)).collect();
        self.annotations
            .iter()
            .filter(|a| a.category_id == PERSON_CATEGORY && !a.iscrowd && a.num_keypoints > 0)
            .filter(|a| a.keypoints.len() == 3 * COCO17.len())
            .filter_map(|a| {
                let im = by_id.get(&a.image_id).filter(|i| i.exists)?;
                Some(Annotation {
                    image: im.path.clone(),
                    keypoints: a.keypoints.chunks_exact(3).map(|k| [k[0] as f32, k[1] as f32, k[2] as f32]).collect(),
                    bbox: Some(a.bbox.map(|v| v as f32)),
                    skeleton: &COCO17,
                    id: a.id.to_string(),
                    extra: Extra::Coco {
                        image_id: a.image_id,
                        ann_id: a.id,
                        area: a.area as f32,
                        iscrowd: a.iscrowd,
                        num_keypoints: a.num_keypoints,
                    },
                })
            })
            .collect()
    }
}

/// One detected person in COCO's results format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoResult {
    /// The image the person was found in.
    pub image_id: u64,
    /// Always 1 (person) for wgpose's results.
    pub category_id: u64,
    /// `[x, y, score] * 17`.
    pub keypoints: Vec<f64>,
    /// The person's score (detections are ranked by it).
    pub score: f64,
    /// Optional box; when the first result has a non-empty one, pycocotools (and our evaluator)
    /// take every detection's area from its box instead of from the keypoints' extent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<Vec<f64>>,
}

impl CocoResult {
    /// A person detection from `[x, y, score]` keypoints.
    pub fn new(image_id: u64, keypoints: &[[f32; 3]], score: f32) -> Self {
        CocoResult {
            image_id,
            category_id: PERSON_CATEGORY,
            keypoints: keypoints.iter().flat_map(|k| k.map(|v| v as f64)).collect(),
            score: score as f64,
            bbox: None,
        }
    }
}

/// Writes results as COCO results JSON.
pub fn write_coco_results(path: &Path, results: &[CocoResult]) -> Result<()> {
    if let Some(r) = results.iter().find(|r| r.keypoints.iter().any(|v| !v.is_finite()) || !r.score.is_finite()) {
        return Err(Error::Input(format!(
            "{}: result for image {} has a non-finite number",
            path.display(),
            r.image_id
        )));
    }
    let text = serde_json::to_vec(results).map_err(|e| format_err(path, e.to_string()))?;
    std::fs::write(path, text).map_err(|e| Error::Io { path: path.display().to_string(), source: e })
}

/// Reads a COCO results JSON (a list of detections).
pub fn read_coco_results(path: &Path) -> Result<Vec<CocoResult>> {
    let bytes = read(path)?;
    let results: Vec<CocoResult> =
        serde_json::from_slice(&bytes).map_err(|e| format_err(path, format!("invalid COCO results JSON: {e}")))?;
    for (i, r) in results.iter().enumerate() {
        if r.keypoints.len() % 3 != 0 {
            return Err(format_err(
                path,
                format!("result {i}: {} keypoint values, not a multiple of 3", r.keypoints.len()),
            ));
        }
    }
    Ok(results)
}
