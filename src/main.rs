//! The `wgpose` command line.

mod cli;

fn main() {
    restore_default_sigpipe();
    keep_freed_memory();
    let result = cli::main();
    cli::flush_stdout();
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Rust ignores SIGPIPE, so `wgpose models | head` would make `println!` panic on the closed
/// pipe; a command-line tool should end quietly like every other Unix filter instead.
#[cfg(unix)]
fn restore_default_sigpipe() {
    // SAFETY: called first thing in `main`, before any thread exists; it only resets the
    // disposition of SIGPIPE to the default, which is what a C program starts with.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn restore_default_sigpipe() {}

/// The CPU executor and trainer allocate and free tensors of tens of MiB on every layer. glibc
/// serves those with `mmap` and hands them back with `munmap`, so every layer paid again for
/// zeroed fresh pages: in a batch-16 training step of sghg-1x64-lsp, 236k page faults, over 15%
/// of the CPU time in the kernel's page clearing. Serving them from the heap and never trimming
/// it halves the faults (what remains is the first touch of the peak working set) and cuts the
/// step's CPU time by 7-12%. The memory stays with the process, which is what a command that
/// runs a network again and again wants.
///
/// One arena for every thread: glibc gives each thread that allocates its own arena, and a
/// thread's arena is a heap of its own that glibc shrinks when its top is free (the trim
/// threshold only holds the main one), so the pool's threads kept faulting their scratch space
/// in again: fasterpose-r18-s32-lsp's batch-16 training step on two threads took 5k-15k page
/// faults after warm-up, none with one arena (`perf stat` on `wgpose bench train`, 3 against 13
/// steps, session 39). The threads allocate a few large blocks per layer, so they seldom meet on
/// the arena's lock (the step times stayed within this host's run-to-run noise).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: called in `main` before any thread exists; mallopt only changes allocator
    // parameters (a refused value leaves the default in place, which is harmless).
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}
