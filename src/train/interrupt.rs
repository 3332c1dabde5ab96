//! Ctrl-C during training. While a run trains (`Catching`), the first SIGINT only asks the loop
//! to stop at its next log point (`requested`), where it says how to continue; a second one, or
//! one at any other time, stops the process at once as usual. Unix only: elsewhere Ctrl-C keeps
//! its default (the run keeps its last checkpoint either way).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
/// Runs training now (nested `Catching` guards count).
static CATCHING: AtomicUsize = AtomicUsize::new(0);

/// Whether Ctrl-C asked the running training to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// While alive, the first Ctrl-C asks the training loop to stop instead of killing the process.
pub struct Catching(());

impl Catching {
    pub fn new() -> Catching {
        install();
        CATCHING.fetch_add(1, Ordering::SeqCst);
        Catching(())
    }
}

impl Default for Catching {
    fn default() -> Self {
        Catching::new()
    }
}

impl Drop for Catching {
    fn drop(&mut self) {
        CATCHING.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(unix)]
fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let handler: extern "C" fn(libc::c_int) = on_sigint;
        // SAFETY: the handler only touches atomics and calls async-signal-safe functions
        // (write, signal, raise).
        unsafe {
            libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        }
    });
}

#[cfg(not(unix))]
fn install() {}

#[cfg(unix)]
extern "C" fn on_sigint(_: libc::c_int) {
    if CATCHING.load(Ordering::SeqCst) > 0 && !REQUESTED.swap(true, Ordering::SeqCst) {
        const MSG: &[u8] =
            b"\ninterrupt: stopping at the next log point (Ctrl-C again to stop at once)\n";
        // SAFETY: write(2) is async-signal-safe; the buffer is static.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
        }
    } else {
        // SAFETY: restoring the default action and re-raising is async-signal-safe.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::raise(libc::SIGINT);
        }
    }
}
