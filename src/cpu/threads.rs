//! How one inference uses rayon's pool: on a worker thread, with the other workers kept busy
//! looking for work until the run ends.
//!
//! Every operator of the fast path splits its work with rayon. Called from outside the pool,
//! each of those loops would hand its work to the pool and put the caller to sleep until a
//! worker wakes it, and between two operators the workers go to sleep themselves (rayon parks
//! an idle worker after a few dozen rounds): LDCRN's ~300 small operators per frame then paid
//! two sleeps and wake-ups each, and ran slower on two threads than on one (24.3 against 22.8
//! ms, session 17, `docs/cpu-speed-log.md`). ONNX Runtime's pool spins between operators for
//! the same reason.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `work` on a worker of rayon's global pool (the calling thread waits once, not once per
/// operator), while every other worker polls the pool for work (`rayon::yield_now`), so that
/// the halves each operator's parallel loop leaves behind are taken at once. The polling ends
/// with `work`. Called from a worker already (a nested run), `work` simply runs here.
pub(crate) fn run_with_busy_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    if rayon::current_thread_index().is_some() {
        return work();
    }
    if threads <= 1 {
        // On the one worker too: from outside the pool every parallel loop of the run would
        // hand its single task to that worker and sleep until woken (tens of microseconds per
        // operator: the hourglass's 17 gated adds took 0.9-1.1 ms instead of 0.21, one thread of an
        // AVX-512 Xeon, session 23).
        return rayon::scope(|_| work());
    }
    let done = &AtomicBool::new(false);
    rayon::scope(|s| {
        let owner = rayon::current_thread_index();
        for _ in 1..threads {
            s.spawn(move |_| {
                // The worker running `work` may pop one of these itself while it waits in a
                // join: it must not poll there (`work` could never finish), only return.
                if rayon::current_thread_index() == owner {
                    return;
                }
                let mut idle = 0u32;
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() == Some(rayon::Yield::Executed) {
                        idle = 0;
                    } else {
                        idle = idle.wrapping_add(1);
                        // Leave the core to other processes now and then (an oversubscribed
                        // machine), otherwise spin.
                        if idle % 256 == 0 {
                            std::thread::yield_now();
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                }
            });
        }
        // Set on the way out even if `work` panics: the scope waits for the pollers, which only
        // stop on this flag, so a panic would otherwise hang the caller instead of reaching it.
        struct StopPolling<'a>(&'a AtomicBool);
        impl Drop for StopPolling<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _stop = StopPolling(done);
        work()
    })
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use super::run_with_busy_pool;

    fn parallel_sum(n: usize) -> u64 {
        (0..n).into_par_iter().with_min_len(64).map(|i| (i * i % 7) as u64).sum()
    }

    /// A panic inside the work reaches the caller (the pollers stop), instead of hanging it.
    #[test]
    fn a_panicking_run_panics_instead_of_hanging() {
        let caught = std::thread::spawn(|| {
            std::panic::catch_unwind(|| {
                run_with_busy_pool(|| {
                    parallel_sum(1000);
                    panic!("a bug inside the run")
                })
            })
            .is_err()
        });
        assert!(caught.join().unwrap());
        // The pool still works afterwards.
        assert_eq!(run_with_busy_pool(|| parallel_sum(100)), (0..100u64).map(|i| i * i % 7).sum::<u64>());
    }

    /// The run's result is the work's, from outside the pool, from several threads at once (each
    /// run's pollers may run another run's jobs), and nested inside a parallel loop (already on
    /// a worker: no pollers). A deadlock would hang the test.
    #[test]
    fn runs_work_once_from_anywhere() {
        let want: u64 = (0..10_000u64).map(|i| i * i % 7).sum();
        assert_eq!(run_with_busy_pool(|| parallel_sum(10_000)), want);
        let callers: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..50).map(|_| run_with_busy_pool(|| parallel_sum(10_000))).collect::<Vec<_>>()
                })
            })
            .collect();
        for c in callers {
            assert!(c.join().unwrap().iter().all(|&s| s == want));
        }
        let nested: Vec<u64> = (0..8).into_par_iter().map(|_| run_with_busy_pool(|| parallel_sum(10_000))).collect();
        assert!(nested.iter().all(|&s| s == want));
        // On a worker of another pool (`install`), of one thread or several: run in place, once.
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let counted = std::sync::atomic::AtomicUsize::new(0);
            let got = pool.install(|| {
                run_with_busy_pool(|| {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    parallel_sum(10_000)
                })
            });
            assert_eq!((got, counted.into_inner()), (want, 1), "{threads} threads");
        }
    }
}
