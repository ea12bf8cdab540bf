//! The `wgpose` command line.

mod cli;

fn main() {
    restore_default_sigpipe();
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
