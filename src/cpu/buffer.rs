//! Buffers that their operator overwrites completely, allocated without zeroing them first.
//!
//! Why: `vec![0.0; n]` zeroes an operator's output (or a padded copy of its input) right before
//! the operator writes every value again. That is a serial pass over each activation (`memset`
//! showed at 2-5% of a one-thread run), and on two threads the second thread waits it out: with
//! the convolutions' outputs and padded copies left unzeroed, the default model and the
//! hourglass took about 9% less time on two threads of an AVX-512 Xeon (session 24,
//! `docs/cpu-speed-log.md`).
//!
//! Contract: the caller writes every element of the buffer before anything reads it (a padded
//! copy zeroes its own border). Tests hold the callers to it: with [`poison_fresh_buffers`] on,
//! fresh buffers are filled with NaN instead, so an element left unwritten reaches the output as
//! NaN and fails the comparison with the reference (`tests/cpu_ops.rs`, `tests/models.rs`;
//! training's input gradients in `tests/autodiff.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static POISON: AtomicBool = AtomicBool::new(false);

/// Tests only: fill every buffer of this module with NaN from now on (`on`), so that a fast-path
/// operator that leaves part of its output unwritten shows it. Process-wide.
#[doc(hidden)]
pub fn poison_fresh_buffers(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

/// Whether [`poison_fresh_buffers`] is on.
pub(crate) fn poisoned() -> bool {
    POISON.load(Ordering::Relaxed)
}

/// `n` values for a caller that writes all of them before reading any (module contract).
// The point of this function: values the caller overwrites (module contract, NaN poison in tests).
#[allow(clippy::uninit_vec)]
pub(crate) fn overwritten(n: usize) -> Vec<f32> {
    if let Some(mut v) = spare(n) {
        // SAFETY: the capacity is at least n (`spare`); the values are initialised floats of an
        // earlier buffer, overwritten by the caller before they are read (module contract).
        unsafe { v.set_len(n) };
        if POISON.load(Ordering::Relaxed) {
            v.fill(f32::NAN);
        }
        return v;
    }
    if POISON.load(Ordering::Relaxed) {
        return vec![f32::NAN; n];
    }
    let mut v = Vec::with_capacity(n);
    // SAFETY: the capacity is n; f32 has no invalid bit patterns, and every caller writes each
    // element before it is read (the module's contract, checked in tests by the NaN poison).
    unsafe { v.set_len(n) };
    v
}

/// `buf` resized to `n` values for a caller that writes all of them before reading any (module
/// contract): a scratch buffer kept across calls (a thread-local one), so that large scratch
/// space is not returned to the system and faulted in again on every call. Filled with NaN
/// when [`poison_fresh_buffers`] is on.
pub(crate) fn reused(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    let buf = &mut buf[..n];
    if POISON.load(Ordering::Relaxed) {
        buf.fill(f32::NAN);
    }
    buf
}

/// Buffers of finished values kept for the next [`overwritten`] of about their size.
///
/// Why: an inference frees each activation once its last reader has run, and the allocator
/// gives large freed blocks back to the system, so the next inference faults every page of them
/// in again (and the kernel zeroes each page first). On the soft-gated hourglass at 192 x 128
/// the kernel's share of a run was 16-18% on one or two threads of an AVX2 Zen 3 (`perf record`
/// on `examples/cpu_profile`), 1.3% with the buffers kept; timed alternately in one process, the
/// hourglass then took 0.82-0.84 of its time on one thread at 128 x 128 (session 36,
/// `docs/cpu-speed-log.md`). ONNX Runtime keeps an arena for the same reason.
struct Spares {
    bufs: Vec<Vec<f32>>,
    /// Total capacity of `bufs`, in values.
    values: usize,
}

static SPARES: Mutex<Spares> = Mutex::new(Spares { bufs: Vec::new(), values: 0 });

/// At most this many values (256 MiB) are kept: a few times one inference's working set at the
/// shipped input sizes, so a larger batch (training) cannot make the process hold on to a
/// multiple of its own peak.
const SPARE_VALUES: usize = 1 << 26;

/// At most this many buffers are kept (a search over them per allocation).
const SPARE_BUFFERS: usize = 64;

/// Below this many values (64 KiB) the allocator's own free lists serve as well.
const MIN_SPARE: usize = 1 << 14;

/// Keeps `v` for a later [`overwritten`] (see [`Spares`]); small buffers, and any beyond the
/// limits, are simply freed.
pub(crate) fn recycle(v: Vec<f32>) {
    let capacity = v.capacity();
    if capacity < MIN_SPARE {
        return;
    }
    // A poisoned lock (a panic while it was held) only means nothing is kept.
    if let Ok(mut s) = SPARES.lock() {
        if s.bufs.len() < SPARE_BUFFERS && s.values + capacity <= SPARE_VALUES {
            s.values += capacity;
            s.bufs.push(v);
        }
    }
}

/// The smallest kept buffer that holds `n` values without wasting more than half of itself.
fn spare(n: usize) -> Option<Vec<f32>> {
    if n < MIN_SPARE {
        return None;
    }
    let mut s = SPARES.lock().ok()?;
    let i = best_fit(s.bufs.iter().map(Vec::capacity), n)?;
    let v = s.bufs.swap_remove(i);
    s.values -= v.capacity();
    Some(v)
}

/// Index of the smallest of `capacities` in `n..=2n`.
fn best_fit(capacities: impl Iterator<Item = usize>, n: usize) -> Option<usize> {
    capacities.enumerate().filter(|&(_, c)| (n..=2 * n).contains(&c)).min_by_key(|&(_, c)| c).map(|(i, _)| i)
}

/// Frees the buffers the CPU executor keeps between inferences for its next ones.
///
/// The executor keeps the buffers of the activations an inference has finished with (up to 256
/// MiB in all, process-wide), so that the next inference does not ask the system for that memory
/// again: about the working set of one inference at the shipped sizes. Call this in a long-lived
/// process that has stopped running networks on the CPU; the next inference allocates again.
pub fn release_spare_buffers() {
    if let Ok(mut s) = SPARES.lock() {
        s.bufs = Vec::new();
        s.values = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::best_fit;

    #[test]
    fn best_fit_takes_the_smallest_buffer_that_is_not_twice_too_large() {
        let caps = [100, 40, 60, 50, 81];
        assert_eq!(best_fit(caps.into_iter(), 50), Some(3));
        assert_eq!(best_fit(caps.into_iter(), 45), Some(3));
        assert_eq!(best_fit(caps.into_iter(), 55), Some(2));
        // 100 holds 41 values but would waste more than half of itself.
        assert_eq!(best_fit(caps.into_iter(), 41), Some(3));
        assert_eq!(best_fit([100].into_iter(), 41), None);
        assert_eq!(best_fit(caps.into_iter(), 101), None);
        assert_eq!(best_fit(std::iter::empty(), 1), None);
    }
}
