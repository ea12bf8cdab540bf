//! Training data: annotated people, an in-memory cache of decoded images, reproducible epoch
//! orders and a background loader that builds augmented batches on worker threads.
//!
//! # Caching
//!
//! LSP-extended images are small (people ~150 px; on average ~245 KB as RGB8, so the 8000 training
//! images take ~2 GB decoded). Decoding a JPEG costs about as much as warping it, and the decode
//! is the same every epoch, so decoded images are kept in memory, shared by all workers, up to a
//! byte budget ([`ImageCache::new`], `--cache-mb`, 3072 MB by default: all of LSPET's training
//! split fits). Images beyond the budget are decoded again whenever they are drawn. The cache
//! fills lazily, so a `--limit`ed run decodes only the images it draws.
//!
//! # Reproducibility
//!
//! Everything random derives from the run seed: the epoch's order is a Fisher-Yates shuffle
//! seeded by `(seed, epoch)`, and sample `i` of epoch `e` draws its augmentation from an
//! [`Rng`] seeded by `(seed, e, i)`. Which worker builds which batch, and when, therefore does
//! not change the batches: same seed, same samples, bit for bit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use image::RgbImage;

use super::augment::{make_sample, AugmentConfig, AugmentParams, SampleShape};
use crate::autodiff::stack_batch;
use crate::data::Annotation;
use crate::error::{Error, Result};
use crate::image_io::load_rgb;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Decoded images shared between loader threads, up to a byte budget.
pub struct ImageCache {
    map: Mutex<HashMap<PathBuf, Arc<RgbImage>>>,
    bytes: AtomicUsize,
    budget: usize,
}

impl ImageCache {
    /// An empty cache that keeps decoded images up to `budget_bytes` bytes of pixels.
    pub fn new(budget_bytes: usize) -> Self {
        ImageCache { map: Mutex::new(HashMap::new()), bytes: AtomicUsize::new(0), budget: budget_bytes }
    }

    /// The decoded image (from the cache, or decoded now and cached if the budget allows).
    /// Images `load_rgb` would downscale are refused: the annotations are in original pixels.
    pub(crate) fn get(&self, path: &PathBuf) -> Result<Arc<RgbImage>> {
        if let Some(img) = self.map.lock().unwrap_or_else(|e| e.into_inner()).get(path) {
            return Ok(img.clone());
        }
        let loaded = load_rgb(path)?;
        if loaded.scale != 1.0 {
            return Err(Error::Input(format!(
                "{}: larger than {} px, would be downscaled",
                path.display(),
                crate::image_io::WORK_SIDE
            )));
        }
        let img = Arc::new(loaded.rgb);
        let size = img.as_raw().len();
        if self.bytes.load(Ordering::Relaxed) + size <= self.budget {
            let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
            if !m.contains_key(path) {
                self.bytes.fetch_add(size, Ordering::Relaxed);
                m.insert(path.clone(), img.clone());
            }
        }
        Ok(img)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of images held.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no image is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One training batch.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[B, 3, H, W]`.
    pub input: Tensor,
    /// `[B, K, h, w]`.
    pub target: Tensor,
    /// `B * K` joint weights.
    pub weights: Vec<f32>,
    /// Indices into the dataset's people.
    pub indices: Vec<usize>,
}

/// People to train on (those with at least one labelled joint) and how to turn them into
/// samples.
pub struct TrainSet {
    /// The people sampled from (each has at least one labelled joint).
    pub people: Vec<Annotation>,
    /// Input and heatmap sizes of the network being trained.
    pub shape: SampleShape,
    /// The random augmentation drawn for every sample.
    pub augment: AugmentConfig,
    /// Decoded images shared by the loader threads.
    pub cache: ImageCache,
}

/// What the loader draws batches from: pose people ([`TrainSet`]) or whole images for the
/// person detector (`detection::DetectionSet`).
pub trait BatchSource: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    /// True when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Builds the batch of positions `positions` of `order` (a deterministic function of
    /// `(seed, epoch, position)`).
    fn batch(&self, seed: u64, epoch: usize, order: &[usize], positions: std::ops::Range<usize>) -> Result<Batch>;

    /// The samples of epoch `epoch` in order: a seeded shuffle, cut to `limit`.
    fn epoch_order(&self, seed: u64, epoch: usize, limit: Option<usize>) -> Vec<usize> {
        shuffled_order(self.len(), seed, epoch, limit)
    }
}

/// `0..n` shuffled by Fisher-Yates seeded with `(seed, epoch)`, cut to `limit`.
pub(crate) fn shuffled_order(n: usize, seed: u64, epoch: usize, limit: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(mix_seed(&[seed, epoch as u64, 0x5151]));
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order.truncate(limit.unwrap_or(usize::MAX).min(order.len()));
    order
}

/// SplitMix-style mixing of several words into one seed.
pub(crate) fn mix_seed(words: &[u64]) -> u64 {
    let mut h = 0x243F_6A88_85A3_08D3u64;
    for &w in words {
        h ^= w.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(h << 6).wrapping_add(h >> 2);
        h = Rng::new(h).next_u64();
    }
    h
}

impl TrainSet {
    /// The people with at least one labelled joint, decoded images cached up to `cache_bytes`.
    pub fn new(people: Vec<Annotation>, shape: SampleShape, augment: AugmentConfig, cache_bytes: usize) -> Self {
        let people = people.into_iter().filter(|a| a.num_labelled() > 0).collect();
        TrainSet { people, shape, augment, cache: ImageCache::new(cache_bytes) }
    }

    /// Number of people.
    pub fn len(&self) -> usize {
        self.people.len()
    }

    /// True when there are no people.
    pub fn is_empty(&self) -> bool {
        self.people.is_empty()
    }

    /// The people of epoch `epoch` in order: a seeded shuffle, cut to `limit`.
    pub fn epoch_order(&self, seed: u64, epoch: usize, limit: Option<usize>) -> Vec<usize> {
        shuffled_order(self.people.len(), seed, epoch, limit)
    }

    /// The augmentation parameters of position `pos` in epoch `epoch`.
    pub(crate) fn params(&self, seed: u64, epoch: usize, pos: usize) -> AugmentParams {
        let mut rng = Rng::new(mix_seed(&[seed, epoch as u64, pos as u64]));
        AugmentParams::draw(&mut rng, &self.augment)
    }

    /// Builds the batch of the given positions of `order`.
    pub(crate) fn batch_of(
        &self,
        seed: u64,
        epoch: usize,
        order: &[usize],
        positions: std::ops::Range<usize>,
    ) -> Result<Batch> {
        let mut inputs = Vec::with_capacity(positions.len());
        let mut targets = Vec::with_capacity(positions.len());
        let mut weights = Vec::new();
        let mut indices = Vec::new();
        for pos in positions {
            let idx = order[pos];
            let a = &self.people[idx];
            let img = self.cache.get(&a.image)?;
            let p = self.params(seed, epoch, pos);
            let s = make_sample(&img, &a.keypoints, a.skeleton, &self.shape, &p)?;
            inputs.push(s.input);
            targets.push(s.target);
            weights.extend(s.weights);
            indices.push(idx);
        }
        Ok(Batch { input: stack_batch(&inputs)?, target: stack_batch(&targets)?, weights, indices })
    }
}

impl BatchSource for TrainSet {
    fn len(&self) -> usize {
        self.people.len()
    }

    fn batch(&self, seed: u64, epoch: usize, order: &[usize], positions: std::ops::Range<usize>) -> Result<Batch> {
        self.batch_of(seed, epoch, order, positions)
    }
}

/// Batches of one epoch, built ahead on worker threads.
///
/// Worker `w` of `n` builds batches `w, w + n, w + 2n, ...` and sends them over its own bounded
/// channel (`prefetch` batches deep); the consumer reads the workers in turn, so batches arrive in
/// order and at most `n * prefetch` wait in memory. Dropping the loader stops the workers (their
/// next send fails).
pub struct Loader {
    receivers: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    count: usize,
}

impl Loader {
    /// Starts loading epoch `epoch` of `set` (`order` from [`TrainSet::epoch_order`]) in batches
    /// of `batch` (the last partial batch is dropped, as batch norm dislikes tiny batches,
    /// unless the whole epoch is smaller than one batch).
    pub fn start(
        set: Arc<dyn BatchSource>,
        seed: u64,
        epoch: usize,
        order: Vec<usize>,
        batch: usize,
        workers: usize,
        prefetch: usize,
    ) -> Loader {
        let batch = batch.max(1);
        let count = if order.len() < batch { usize::from(!order.is_empty()) } else { order.len() / batch };
        let order = Arc::new(order);
        let workers = workers.clamp(1, count.max(1));
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        for w in 0..workers {
            let (tx, rx) = sync_channel(prefetch.max(1));
            let (set, order) = (set.clone(), order.clone());
            handles.push(std::thread::spawn(move || {
                let mut b = w;
                while b < count {
                    let end = ((b + 1) * batch).min(order.len());
                    let r = set.batch(seed, epoch, &order, b * batch..end);
                    if tx.send(r).is_err() {
                        return;
                    }
                    b += workers;
                }
            }));
            receivers.push(rx);
        }
        Loader { receivers, handles, next: 0, count }
    }

    /// Number of batches this epoch.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// True when the epoch has no batches.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.count {
            return None;
        }
        let rx = &self.receivers[self.next % self.receivers.len()];
        self.next += 1;
        Some(rx.recv().unwrap_or_else(|_| Err(Error::Input("a loader thread died".into()))))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
