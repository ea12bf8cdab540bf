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
