//! Ctrl-C during training (and downloads). While a run trains (`Catching`), the first SIGINT
//! only asks the loop to stop at its next log point (`requested`), where it says how to
//! continue; a second one stops the process at once, saying how to continue too (the guard's
//! hint), and one at any other time stops it at once as usual. `dst fetch` uses the same guard
//! (`Catching::saying`) so that a stopped download removes what it left. Unix only: elsewhere
//! Ctrl-C keeps its default (the run keeps its last checkpoint either way).

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
/// Runs training now (nested `Catching` guards count).
static CATCHING: AtomicUsize = AtomicUsize::new(0);
/// The innermost guard's hint for a stop at once: a leaked, immutable `Hint` (so the signal
/// handler never reads freed memory), or null.
static HINT: AtomicPtr<Hint> = AtomicPtr::new(std::ptr::null_mut());
/// The innermost guard's message on the first Ctrl-C (leaked like `HINT`), or null.
static FIRST: AtomicPtr<Hint> = AtomicPtr::new(std::ptr::null_mut());

/// What training says on the first Ctrl-C.
const TRAINING_FIRST: &str = "stopping at the next log point (Ctrl-C again to stop at once)";

/// The bytes the signal handler writes on a stop at once.
struct Hint(Box<[u8]>);

/// Whether Ctrl-C asked the running training to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Asks the running training to stop at its next log point, as a first Ctrl-C does (its output
/// was closed: `dst train | head`).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// While alive, the first Ctrl-C asks the training loop to stop instead of killing the process;
/// a second one kills it after printing `hint` (how to go on from what was saved).
pub struct Catching {
    /// The hint and first message of the guard this one nests in, put back on drop.
    outer: (*mut Hint, *mut Hint),
}

impl Catching {
    pub fn new(hint: &str) -> Catching {
        Catching::saying(TRAINING_FIRST, hint)
    }

    /// A guard whose first Ctrl-C prints `interrupt: {first}` (training's: it stops at the next
    /// log point) and whose second prints `hint`.
    pub fn saying(first: &str, hint: &str) -> Catching {
        install();
        // Small leaks per guard (a run, a study, a fetch): the handler may read them at any time.
        let leak =
            |text: String| -> *mut Hint { Box::leak(Box::new(Hint(text.into_bytes().into()))) };
        let h = leak(format!("\nstopped at once: {hint}\n"));
        let f = leak(format!("\ninterrupt: {first}\n"));
        let outer = (
            HINT.swap(h, Ordering::SeqCst),
            FIRST.swap(f, Ordering::SeqCst),
        );
        CATCHING.fetch_add(1, Ordering::SeqCst);
        Catching { outer }
    }
}

impl Drop for Catching {
    fn drop(&mut self) {
        CATCHING.fetch_sub(1, Ordering::SeqCst);
        HINT.store(self.outer.0, Ordering::SeqCst);
        FIRST.store(self.outer.1, Ordering::SeqCst);
    }
}

/// Writes a leaked `Hint` to stderr, if there is one. Async-signal-safe.
#[cfg(unix)]
fn write_hint(hint: *mut Hint) {
    if !hint.is_null() {
        // SAFETY: a non-null pointer here is a leaked `Hint`, never freed nor changed;
        // write(2) is async-signal-safe.
        unsafe {
            let b = &(*hint).0;
            libc::write(2, b.as_ptr().cast(), b.len());
        }
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
        write_hint(FIRST.load(Ordering::SeqCst));
    } else {
        if CATCHING.load(Ordering::SeqCst) > 0 {
            write_hint(HINT.load(Ordering::SeqCst));
        }
        // SAFETY: restoring the default action and re-raising is async-signal-safe.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::raise(libc::SIGINT);
        }
    }
}
