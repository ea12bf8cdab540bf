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
//!
//! [`pin_cpu_threads`] (or `WGPOSE_CPU_PIN=1`) gives each worker a CPU of its own: for live video,
//! where the pool idles between frames (see its documentation for the measurements).

use std::sync::atomic::{AtomicBool, Ordering};

use super::parallel::Team;

/// Runs `work` on a worker of rayon's global pool (the calling thread waits once, not once per
/// operator), as the owner of a [`Team`] that every other worker polls (and the pool, through
/// `rayon::yield_now`), so that each parallel loop's tasks (`parallel`) are taken at once. The
/// polling ends with `work`. Called from a worker already (a nested run), `work` simply runs here.
pub(crate) fn run_with_busy_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    if rayon::current_thread_index().is_some() {
        return work();
    }
    pin_if_asked();
    if threads <= 1 {
        // On the one worker too: from outside the pool every parallel loop of the run would
        // hand its single task to that worker and sleep until woken (tens of microseconds per
        // operator: the hourglass's 17 gated adds took 0.9-1.1 ms instead of 0.21, one thread of an
        // AVX-512 Xeon, session 23).
        return rayon::scope(|_| work());
    }
    let done = &AtomicBool::new(false);
    let team = &Team::new();
    rayon::scope(|s| {
        let owner = rayon::current_thread_index();
        for me in 1..threads {
            s.spawn(move |_| {
                // The worker running `work` may pop one of these itself while it waits in a
                // join: it must not poll there (`work` could never finish), only return.
                if rayon::current_thread_index() == owner {
                    return;
                }
                // Spin: a `sched_yield` hands the CPU to any other runnable process for a whole
                // time slice (`parallel`), and operators follow each other within microseconds.
                // Only after a long idle stretch (2^14 empty polls: a serial part of the run,
                // which waits for nobody) does the thread offer its CPU, for a machine running
                // more workers than CPUs. (The threshold is a choice, not a measured optimum.)
                let mut idle = 0u32;
                while !done.load(Ordering::Acquire) {
                    if team.help(me) || rayon::yield_now() == Some(rayon::Yield::Executed) {
                        idle = 0;
                    } else {
                        idle = idle.saturating_add(1);
                        if idle >= 1 << 14 && idle.is_multiple_of(256) {
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
        team.own(work)
    })
}

/// Pins every worker of rayon's global pool to a CPU of its own (worker `i` to the `i`-th CPU
/// the process may run on), for the rest of the process, and returns how many were pinned.
/// `None`, and nothing changes, where that cannot be done: not Linux, fewer allowed CPUs than
/// workers (two workers on one CPU would be worse than none pinned), or a refused system call.
/// Called from inside another rayon pool, it pins that pool's workers instead.
///
/// **When to call it:** in an application that runs the CPU executor on live video, before the
/// first frame (the desktop demo does so when it runs on the CPU). Between frames the pool
/// idles; on the 2-CPU virtual machines these numbers come from, the first inference after an
/// idle spell then ran with both workers on one CPU for the whole run. The default model at
/// 128x128, two threads, one inference every 30 ms: 6.3-8.6 ms per inference unpinned (4.7-6.5
/// on one thread) and 4.5-5.3 ms pinned, with ONNX Runtime at 2.8-4.0; back to back, 2.8-4.0 ms
/// either way (session 31, README "CPU executor speed").
///
/// **Why not always:** the global pool is shared with the rest of the process, and a pinned
/// thread cannot move off a CPU that another busy process takes. `WGPOSE_CPU_PIN=1` calls it
/// before the first inference of a program that does not.
pub fn pin_cpu_threads() -> Option<usize> {
    let allowed = cpu_affinity::CpuMask::current()?.cpus();
    let threads = rayon::current_num_threads();
    if allowed.len() < threads {
        return None;
    }
    let pinned: Vec<bool> = rayon::broadcast(|ctx| cpu_affinity::CpuMask::only(allowed[ctx.index()]).apply());
    pinned.iter().all(|&ok| ok).then_some(threads)
}

/// [`pin_cpu_threads`] once per process when `WGPOSE_CPU_PIN=1`.
fn pin_if_asked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var("WGPOSE_CPU_PIN").is_ok_and(|v| v == "1") {
            pin_cpu_threads();
        }
    });
}

/// The calling thread's affinity mask (Linux; elsewhere nothing is known and nothing moves).
mod cpu_affinity {
    /// A set of CPUs, as glibc's and musl's `cpu_set_t` (1024 bits).
    #[derive(Clone, Copy)]
    pub(super) struct CpuMask([u64; 16]);

    #[cfg(target_os = "linux")]
    extern "C" {
        fn sched_getaffinity(pid: i32, size: usize, mask: *mut u64) -> i32;
        fn sched_setaffinity(pid: i32, size: usize, mask: *const u64) -> i32;
    }

    impl CpuMask {
        /// The calling thread's affinity mask.
        pub(super) fn current() -> Option<CpuMask> {
            #[cfg(target_os = "linux")]
            {
                let mut mask = CpuMask([0; 16]);
                // SAFETY: pid 0 is the calling thread; the buffer holds `size_of_val` bytes.
                let ok = unsafe { sched_getaffinity(0, std::mem::size_of_val(&mask.0), mask.0.as_mut_ptr()) } == 0;
                ok.then_some(mask)
            }
            #[cfg(not(target_os = "linux"))]
            {
                None
            }
        }

        /// The set of one CPU.
        pub(super) fn only(cpu: usize) -> CpuMask {
            let mut mask = CpuMask([0; 16]);
            mask.0[cpu / 64] = 1 << (cpu % 64);
            mask
        }

        /// The CPUs in the set, in increasing order.
        pub(super) fn cpus(&self) -> Vec<usize> {
            (0..64 * self.0.len()).filter(|&c| (self.0[c / 64] >> (c % 64)) & 1 == 1).collect()
        }

        /// Makes this the calling thread's affinity mask (the kernel moves the thread at once
        /// if it runs outside it); false, and the mask unchanged, if the kernel refuses.
        pub(super) fn apply(&self) -> bool {
            #[cfg(target_os = "linux")]
            {
                // SAFETY: pid 0 is the calling thread; the buffer holds `size_of_val` bytes.
                unsafe { sched_setaffinity(0, std::mem::size_of_val(&self.0), self.0.as_ptr()) == 0 }
            }
            #[cfg(not(target_os = "linux"))]
            {
                let _ = self;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use super::{cpu_affinity::CpuMask, pin_cpu_threads, run_with_busy_pool};

    /// Inside a pool of as many workers as allowed CPUs, every worker ends on a CPU of its own
    /// (Linux); with one worker more than CPUs nothing is pinned. Elsewhere: `None`.
    #[test]
    fn pins_each_worker_to_its_own_cpu_or_nothing() {
        let Some(allowed) = CpuMask::current().map(|m| m.cpus()) else {
            assert_eq!(pin_cpu_threads(), None);
            return;
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(allowed.len()).build().unwrap();
        let (pinned, masks) = pool.install(|| {
            let pinned = pin_cpu_threads();
            (pinned, rayon::broadcast(|_| CpuMask::current().unwrap().cpus()))
        });
        assert_eq!(pinned, Some(allowed.len()));
        let mut cpus: Vec<usize> = masks
            .iter()
            .map(|m| {
                assert_eq!(m.len(), 1, "{masks:?}");
                m[0]
            })
            .collect();
        cpus.sort();
        assert_eq!(cpus, allowed);
        let crowded = rayon::ThreadPoolBuilder::new().num_threads(allowed.len() + 1).build().unwrap();
        let (pinned, masks) =
            crowded.install(|| (pin_cpu_threads(), rayon::broadcast(|_| CpuMask::current().unwrap().cpus())));
        assert_eq!(pinned, None);
        assert!(masks.iter().all(|m| *m == allowed), "{masks:?}");
    }

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
