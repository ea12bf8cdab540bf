//! The parallel loops of one run, without the operating system between two threads.
//!
//! Inside [`super::threads::run_with_busy_pool`] the thread running the network (the owner)
//! publishes each parallel loop to a [`Team`]; the run's other workers, polling the team until
//! the run ends, claim tasks of it one at a time, and the owner claims tasks too. Nobody sleeps
//! or calls `sched_yield`: the owner waits only for tasks another thread has already claimed
//! and is running, and a thread that is away (descheduled) simply claims nothing.
//!
//! Why not rayon's loops, as before: a thread waiting in rayon's `join` calls `sched_yield`
//! between its attempts to steal, and with any other runnable process on its CPU (a build, a
//! browser tab, even one at `nice 19`) the kernel hands that process a whole time slice. The
//! default model at 128x128 on two threads of an Intel Xeon took 2.8 ms idle and 5.7-8.0 ms
//! beside two `nice -n 19` busy loops, slower than one thread (4.4 ms); with `sched_yield`
//! made a no-op (`LD_PRELOAD`) 3.3 ms. ONNX Runtime, whose pool spins, took 2.9-3.4 ms idle and
//! 3.0-3.2 beside the same loops (session 42, `docs/cpu-speed-log.md`).
//!
//! Inference and training steps both run inside such a run (`cpu::run`, `autodiff`); a
//! training step beside two busy loops at `nice 19` took 402 -> 315 ms for fasterpose-r18-s32
//! and 594 -> 327 ms for LDCRN on two threads (idle: 295-303 and 319-323 ms).
//!
//! Outside such a run (or on a thread of it other than the owner) the same calls are rayon's
//! loops, as they were; inside a task, a nested loop runs on the calling thread. One training
//! loop stays on rayon: the max pool's forward pass with argmax (`cpu::pool`), whose per-thread
//! scratch rows these helpers do not offer across two output slices.

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

/// Most contiguous ranges a job's tasks are cut into (one per thread, up to this).
const MAX_PARTS: usize = 16;

/// The next task to claim in one range, on a cache line of its own.
#[repr(align(64))]
struct Cursor(AtomicUsize);

/// One parallel loop published to a team: `task(t)` for every `t < tasks`, each exactly once.
///
/// The tasks are cut into one contiguous range per thread, and each thread claims its own range
/// first, in order, then what is left of the others'. So, as with rayon's halving, a thread
/// mostly works on the same part of a tensor in consecutive operators, which its cache still
/// holds; tasks dealt out one at a time (one shared counter) made LDCRN's convolutions 10%
/// slower on two threads (the same multiply-adds, a quarter more time in the GEMM kernel).
/// A thread that is away has its whole range done by the others.
struct Job<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    parts: usize,
    /// Per range: the next task to claim (claims past the range's end find nothing).
    cursors: [Cursor; MAX_PARTS],
    /// Tasks completed (or panicked): the owner returns once this reaches `tasks`.
    finished: AtomicUsize,
    /// The first panic of a task, re-raised on the owner once every claimed task has ended.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl<'a> Job<'a> {
    fn new(task: &'a (dyn Fn(usize) + Sync), tasks: usize, threads: usize) -> Self {
        let parts = threads.clamp(1, MAX_PARTS);
        let job = Job {
            task,
            tasks,
            parts,
            cursors: std::array::from_fn(|_| Cursor(AtomicUsize::new(0))),
            finished: AtomicUsize::new(0),
            panic: Mutex::new(None),
        };
        for i in 0..parts {
            job.cursors[i].0.store(job.start(i), Ordering::Relaxed);
        }
        job
    }

    /// First task of range `i` (range `i` ends where range `i + 1` starts).
    fn start(&self, i: usize) -> usize {
        i * self.tasks / self.parts
    }

    /// Whether some range has tasks nobody has claimed.
    fn any_left(&self) -> bool {
        (0..self.parts).any(|i| self.cursors[i].0.load(Ordering::Relaxed) < self.start(i + 1))
    }

    /// Claims and runs tasks until none is left: thread `me`'s range first, then the others'.
    fn work(&self, me: usize) {
        for k in 0..self.parts {
            let i = (me + k) % self.parts;
            let end = self.start(i + 1);
            loop {
                let t = self.cursors[i].0.fetch_add(1, Ordering::Relaxed);
                if t >= end {
                    break;
                }
                self.run_task(t);
            }
        }
    }

    fn run_task(&self, t: usize) {
        let was = IN_TASK.with(|c| c.replace(true));
        // A panic must not leave the owner waiting for this task forever, nor unwind the
        // owner's frame (which holds the job) while other threads still run its tasks.
        let result = panic::catch_unwind(AssertUnwindSafe(|| (self.task)(t)));
        IN_TASK.with(|c| c.set(was));
        if let Err(p) = result {
            let mut first = self.panic.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert(p);
        }
        self.finished.fetch_add(1, Ordering::Release);
    }
}

/// The threads of one busy run: the owner publishes jobs, the others help.
pub(crate) struct Team {
    /// The job being run (null: none). The pointee lives on the owner's stack for as long as
    /// the pointer is here and any helper is `active`.
    job: AtomicPtr<Job<'static>>,
    /// Helpers between reading `job` and leaving it; the owner does not return from a loop
    /// (and so free its job) before this is zero.
    active: AtomicUsize,
}

thread_local! {
    /// The team this thread owns, for the duration of a busy run (null: none).
    static OWNED: Cell<*const Team> = const { Cell::new(ptr::null()) };
    /// Whether this thread is inside a task of a team's job (nested loops run here, serially).
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

impl Team {
    pub(crate) fn new() -> Team {
        Team { job: AtomicPtr::new(ptr::null_mut()), active: AtomicUsize::new(0) }
    }

    /// Runs `work` with this thread as the team's owner: the parallel loops of this module
    /// that `work` calls on this thread are published to the team.
    pub(crate) fn own<R>(&self, work: impl FnOnce() -> R) -> R {
        struct Restore(*const Team);
        impl Drop for Restore {
            fn drop(&mut self) {
                OWNED.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(OWNED.with(|c| c.replace(self as *const Team)));
        work()
    }

    /// For helper thread `me` (1, 2, ...; the owner is 0): runs tasks of the current job, if
    /// there is one with tasks left. Returns whether a job was found (the caller polls again
    /// at once then).
    pub(crate) fn help(&self, me: usize) -> bool {
        if self.job.load(Ordering::Relaxed).is_null() {
            return false;
        }
        self.active.fetch_add(1, Ordering::SeqCst);
        let job = self.job.load(Ordering::SeqCst);
        // SAFETY: the owner clears `job` before freeing the job and then waits for `active` to
        // reach zero; this thread counted itself active before loading the pointer, so a
        // non-null pointer loaded here stays valid until the `fetch_sub` below.
        let found = !job.is_null() && {
            let job = unsafe { &*job };
            let any_left = job.any_left();
            if any_left {
                job.work(me % job.parts);
            }
            any_left
        };
        self.active.fetch_sub(1, Ordering::SeqCst);
        found
    }

    /// Publishes `task` for `tasks` tasks, runs tasks on this thread too, and returns when all
    /// have ended (re-raising a task's panic then).
    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        let job = Job::new(task, tasks, rayon::current_num_threads());
        // The lifetime is erased for the shared slot; see `help` for why no helper outlives it.
        let erased = (&job as *const Job<'_>).cast::<Job<'static>>().cast_mut();
        self.job.store(erased, Ordering::SeqCst);
        job.work(0);
        while job.finished.load(Ordering::Acquire) < tasks {
            std::hint::spin_loop();
        }
        self.job.store(ptr::null_mut(), Ordering::SeqCst);
        while self.active.load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
        }
        let payload = job.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(p) = payload {
            panic::resume_unwind(p);
        }
    }
}

/// `task(t)` for every `t` in `0..tasks`, in parallel: on the team when called by its owner,
/// serially inside another task, else with rayon.
pub(crate) fn for_each_task(tasks: usize, task: impl Fn(usize) + Sync) {
    if tasks <= 1 || IN_TASK.with(|c| c.get()) {
        (0..tasks).for_each(task);
        return;
    }
    let team = OWNED.with(|c| c.get());
    if team.is_null() {
        (0..tasks).into_par_iter().for_each(&task);
    } else {
        // SAFETY: `OWNED` points at the team of the `own` call this thread is inside.
        unsafe { &*team }.run(tasks, &task);
    }
}

/// `f(i, chunk)` for every `chunk_len`-long chunk of `data` (the last one may be shorter), in
/// parallel as [`for_each_task`], with at least `min_chunks` consecutive chunks per task (as
/// rayon's `par_chunks_mut(chunk_len).with_min_len(min_chunks).enumerate()`).
pub(crate) fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    min_chunks: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    for_each_chunk_mut_with(data, chunk_len, min_chunks, || (), |_, i, d| f(i, d));
}

/// [`for_each_chunk_mut`] with scratch space: `init()` once per task (rayon's
/// `for_each_init`), passed to `f` for each of the task's chunks.
pub(crate) fn for_each_chunk_mut_with<T: Send, S>(
    data: &mut [T],
    chunk_len: usize,
    min_chunks: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [T]) + Sync + Send,
) {
    let chunk_len = chunk_len.max(1);
    let min_chunks = min_chunks.max(1);
    if OWNED.with(|c| c.get()).is_null() && !IN_TASK.with(|c| c.get()) {
        data.par_chunks_mut(chunk_len)
            .with_min_len(min_chunks)
            .enumerate()
            .for_each_init(&init, |s, (i, d)| f(s, i, d));
        return;
    }
    let len = data.len();
    let chunks = len.div_ceil(chunk_len);
    // A few tasks per thread, so that a thread that starts late or runs slower takes fewer.
    let per_task = min_chunks.max(chunks.div_ceil(4 * rayon::current_num_threads().max(1)));
    let base = SendPtr(data.as_mut_ptr());
    for_each_task(chunks.div_ceil(per_task), |t| {
        let first = t * per_task;
        let start = first * chunk_len;
        let end = ((first + per_task) * chunk_len).min(len);
        // SAFETY: tasks cover disjoint ranges of `data`, which stays borrowed mutably for the
        // whole call.
        let part = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        let mut scratch = init();
        for (k, d) in part.chunks_mut(chunk_len).enumerate() {
            f(&mut scratch, first + k, d);
        }
    });
}

/// `f(i, a_chunk, b_chunk)` for the `i`-th `a_len`-long chunk of `a` and `b_len`-long chunk of
/// `b` together (rayon's `a.par_chunks_mut(a_len).zip(b.par_chunks_mut(b_len))`), as far as
/// both have chunks, with at least `min_chunks` per task.
pub(crate) fn for_each_chunk_pair_mut<A: Send, B: Send>(
    a: &mut [A],
    a_len: usize,
    b: &mut [B],
    b_len: usize,
    min_chunks: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) {
    let (a_len, b_len) = (a_len.max(1), b_len.max(1));
    let pairs = a.len().div_ceil(a_len).min(b.len().div_ceil(b_len));
    let (b_total, b_base) = (b.len(), SendPtr(b.as_mut_ptr()));
    let a_end = (pairs * a_len).min(a.len());
    for_each_chunk_mut(&mut a[..a_end], a_len, min_chunks, |i, d| {
        let start = i * b_len;
        // SAFETY: chunk `i` of `b` (in bounds: `i < pairs`) belongs to the task holding chunk
        // `i` of `a` alone; `b` stays borrowed mutably for the whole call.
        let e = unsafe { std::slice::from_raw_parts_mut(b_base.get().add(start), b_len.min(b_total - start)) };
        f(i, d, e)
    });
}

/// `f(i, chunk)` for every chunk as [`for_each_chunk_mut`], returning the results in chunk
/// order (rayon's `...enumerate().map(f).collect()`).
pub(crate) fn map_chunks_mut<T: Send, R: Default + Send>(
    data: &mut [T],
    chunk_len: usize,
    min_chunks: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync,
) -> Vec<R> {
    let mut out: Vec<R> = (0..data.len().div_ceil(chunk_len.max(1))).map(|_| R::default()).collect();
    let results = SendPtr(out.as_mut_ptr());
    for_each_chunk_mut(data, chunk_len, min_chunks, |i, d| {
        let r = f(i, d);
        // SAFETY: chunk `i` is visited once and `i < out.len()`; `out` outlives the call.
        unsafe { *results.get().add(i) = r };
    });
    out
}

/// `f(t)` for every `t < tasks` as [`for_each_task`], returning the results in order.
pub(crate) fn map_tasks<R: Default + Send>(tasks: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let mut out: Vec<R> = (0..tasks).map(|_| R::default()).collect();
    for_each_chunk_mut(&mut out, 1, 1, |t, r| r[0] = f(t));
    out
}

/// A raw pointer that tasks on other threads may use (each on a disjoint range).
struct SendPtr<T>(*mut T);
// SAFETY: only used by this module's loops, whose tasks touch disjoint ranges (or single
// results) of `T: Send`.
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// The pointer (a method, so that closures capture the wrapper, not its field).
    fn get(&self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::{for_each_chunk_mut, for_each_chunk_pair_mut, for_each_task, map_chunks_mut, map_tasks};
    use crate::cpu::threads::run_with_busy_pool;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
    }

    /// Every task runs exactly once, inside a busy run (the team) and outside one (rayon), for
    /// task counts around the thread count.
    #[test]
    fn every_task_runs_once() {
        for threads in [1, 2, 3] {
            for tasks in [0, 1, 2, 3, 7, 64, 1001] {
                for busy in [false, true] {
                    let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                    let body = || {
                        for_each_task(tasks, |t| {
                            counts[t].fetch_add(1, Ordering::Relaxed);
                        })
                    };
                    if busy {
                        pool(threads).install(|| run_with_busy_pool(body));
                    } else {
                        pool(threads).install(body);
                    }
                    assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "{threads} {tasks} {busy}");
                }
            }
        }
    }

    /// Chunks as `par_chunks_mut(len).with_min_len(m).enumerate()`: indices and contents, with
    /// a short last chunk; nested loops inside tasks run too; many loops in one run.
    #[test]
    fn chunks_match_rayon_and_nest() {
        let p = pool(2);
        for (len, chunk, min) in [(0, 3, 1), (10, 3, 1), (1000, 7, 5), (4096, 64, 1), (97, 100, 2)] {
            let mut ours = vec![0usize; len];
            p.install(|| {
                run_with_busy_pool(|| {
                    for round in 0..20 {
                        for_each_chunk_mut(&mut ours, chunk, min, |i, d| {
                            let inner = AtomicUsize::new(0);
                            for_each_task(3, |_| {
                                inner.fetch_add(1, Ordering::Relaxed);
                            });
                            for (k, v) in d.iter_mut().enumerate() {
                                *v = round + i * 1000 + k + inner.load(Ordering::Relaxed);
                            }
                        })
                    }
                })
            });
            let want: Vec<usize> = (0..len).map(|j| 19 + (j / chunk) * 1000 + j % chunk + 3).collect();
            assert_eq!(ours, want, "{len} {chunk} {min}");
        }
    }

    /// The mapping and paired forms give rayon's results (in order; pairs as far as both
    /// slices have chunks, short last chunks included), on the team and outside it.
    #[test]
    fn maps_and_pairs_match_sequential_loops() {
        let p = pool(2);
        for busy in [false, true] {
            for (len, chunk) in [(0, 4), (1, 4), (37, 4), (1000, 16)] {
                let mut data: Vec<u32> = (0..len as u32).collect();
                let mut sums = Vec::new();
                let mut squares = Vec::new();
                let (mut a, mut b) = (vec![0usize; len], vec![0usize; len / 2 + 1]);
                p.install(|| {
                    let mut body = || {
                        sums = map_chunks_mut(&mut data, chunk, 2, |i, d| {
                            d.iter_mut().for_each(|v| *v += 1);
                            (i, d.iter().sum::<u32>())
                        });
                        squares = map_tasks(len, |t| t * t);
                        for_each_chunk_pair_mut(&mut a, 3, &mut b, 2, 1, |i, x, y| {
                            x.fill(i + 1);
                            y.fill(i + 100);
                        });
                    };
                    if busy {
                        run_with_busy_pool(body)
                    } else {
                        body()
                    }
                });
                let want: Vec<(usize, u32)> = (0..len as u32)
                    .collect::<Vec<_>>()
                    .chunks(chunk)
                    .enumerate()
                    .map(|(i, c)| (i, c.iter().map(|v| v + 1).sum()))
                    .collect();
                assert_eq!(sums, want, "{busy} {len}");
                assert_eq!(squares, (0..len).map(|t| t * t).collect::<Vec<_>>());
                let pairs = len.div_ceil(3).min((len / 2 + 1).div_ceil(2));
                let want_a: Vec<usize> = (0..len).map(|j| if j / 3 < pairs { j / 3 + 1 } else { 0 }).collect();
                let want_b: Vec<usize> =
                    (0..len / 2 + 1).map(|j| if j / 2 < pairs { j / 2 + 100 } else { 0 }).collect();
                assert_eq!((a, b), (want_a, want_b), "{busy} {len}");
            }
        }
    }

    /// A task's panic reaches the caller (no hang, no task left running), and the team works
    /// again afterwards.
    #[test]
    fn a_panicking_task_reaches_the_caller() {
        let p = pool(2);
        let caught = p.install(|| {
            std::panic::catch_unwind(|| run_with_busy_pool(|| for_each_task(64, |t| assert!(t != 40, "task 40 fails"))))
        });
        assert!(caught.is_err());
        let sum = AtomicUsize::new(0);
        p.install(|| {
            run_with_busy_pool(|| {
                for_each_task(64, |t| {
                    sum.fetch_add(t, Ordering::Relaxed);
                })
            })
        });
        assert_eq!(sum.load(Ordering::Relaxed), 64 * 63 / 2);
    }

    /// Two busy runs at once from two threads (two estimators in one program) each get their
    /// own team.
    #[test]
    fn concurrent_runs_keep_their_own_jobs() {
        let sums: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|k| {
                    s.spawn(move || {
                        let sum = AtomicUsize::new(0);
                        run_with_busy_pool(|| {
                            for _ in 0..50 {
                                for_each_task(33, |t| {
                                    sum.fetch_add(t * (k + 1), Ordering::Relaxed);
                                })
                            }
                        });
                        sum.into_inner()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(sums, vec![50 * 528, 50 * 528 * 2]);
    }
}
