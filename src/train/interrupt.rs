//! Ctrl-C during training. While a run trains (`Catching`), the first SIGINT only asks the loop
//! to stop at its next log point (`requested`), where it says how to continue; a second one
//! stops the process at once, saying how to continue too (the guard's hint), and one at any
//! other time stops it at once as usual. Unix only: elsewhere Ctrl-C keeps its default (the run
//! keeps its last checkpoint either way).

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
/// Runs training now (nested `Catching` guards count).
static CATCHING: AtomicUsize = AtomicUsize::new(0);
/// The innermost guard's hint for a stop at once: a leaked, immutable `Hint` (so the signal
/// handler never reads freed memory), or null.
static HINT: AtomicPtr<Hint> = AtomicPtr::new(std::ptr::null_mut());

/// The bytes the signal handler writes on a stop at once.
struct Hint(Box<[u8]>);

/// Whether Ctrl-C asked the running training to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// While alive, the first Ctrl-C asks the training loop to stop instead of killing the process;
/// a second one kills it after printing `hint` (how to go on from what was saved).
pub struct Catching {
    /// The hint of the guard this one nests in, put back on drop.
    outer: *mut Hint,
}

impl Catching {
    pub fn new(hint: &str) -> Catching {
        install();
        // One small leak per guard (a run, a study): the handler may read it at any time.
        let h: &'static mut Hint = Box::leak(Box::new(Hint(
            format!("\nstopped at once: {hint}\n").into_bytes().into(),
        )));
        let outer = HINT.swap(h, Ordering::SeqCst);
        CATCHING.fetch_add(1, Ordering::SeqCst);
        Catching { outer }
    }
}

impl Drop for Catching {
    fn drop(&mut self) {
        CATCHING.fetch_sub(1, Ordering::SeqCst);
        HINT.store(self.outer, Ordering::SeqCst);
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
        let hint = HINT.load(Ordering::SeqCst);
        if CATCHING.load(Ordering::SeqCst) > 0 && !hint.is_null() {
            // SAFETY: a non-null HINT points to a leaked `Hint`, never freed nor changed;
            // write(2) is async-signal-safe.
            unsafe {
                let b = &(*hint).0;
                libc::write(2, b.as_ptr().cast(), b.len());
            }
        }
        // SAFETY: restoring the default action and re-raising is async-signal-safe.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::raise(libc::SIGINT);
        }
    }
}
