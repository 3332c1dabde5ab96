//! Ctrl-C during training (and downloads). While a run trains (`Catching`), the first SIGINT
//! only asks the loop to stop at its next log point (`requested`), where it says how to
//! continue; a second one stops the process at once, saying how to continue too (the guard's
//! hint), and one at any other time stops it at once as usual. SIGTERM (what `timeout`, systemd
//! and batch schedulers send) stops it at once, with the guard's hint. `dst fetch` uses the same
//! guard (`Catching::saying`) so that a stopped download removes what it left. A stop at once
//! removes the temporary file being written (`Writing`), so no `.NAME.tmp-PID` is left (but for
//! a short window: where another thread takes the signal, the main thread may begin a new
//! temporary file before the process dies; a resumed run removes those of its folder). A signal
//! the process was started ignoring (a background job of a script) stays ignored. Unix only:
//! elsewhere Ctrl-C keeps its default (the run keeps its last checkpoint either way).

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

/// The temporary file being written now (`Writing`): a leaked NUL-terminated path, or null.
static WRITING: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());

/// While alive, a stop at once removes `path` (a temporary file `write_atomic` is writing).
pub struct Writing(());

impl Writing {
    pub fn new(path: &std::path::Path) -> Writing {
        install();
        #[cfg(not(unix))]
        let _ = path;
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let mut bytes = path.as_os_str().as_bytes().to_vec();
            bytes.push(0);
            // Leaked (a few bytes per file written): the handler may read it at any time.
            let leaked: &'static mut [u8] = Box::leak(bytes.into_boxed_slice());
            WRITING.store(leaked.as_mut_ptr(), Ordering::SeqCst);
        }
        Writing(())
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        WRITING.store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}

/// Removes the file `Writing` names, if any. Async-signal-safe (unlink(2)).
#[cfg(unix)]
fn remove_writing() {
    let p = WRITING.load(Ordering::SeqCst);
    if !p.is_null() {
        // SAFETY: a non-null pointer here is a leaked NUL-terminated path, never freed.
        unsafe {
            libc::unlink(p.cast());
        }
    }
}

/// Whether a guard is alive already: a run started inside a study (whose guard says how to go on
/// with the whole study).
pub fn catching() -> bool {
    CATCHING.load(Ordering::SeqCst) > 0
}

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

/// Installs the handlers of SIGINT and SIGTERM (once; `main` calls it first thing), except for
/// a signal the process was started ignoring.
#[cfg(unix)]
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let handler: extern "C" fn(libc::c_int) = on_signal;
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: sigaction with a null new action only reads the current one; the handler
            // only touches atomics and calls async-signal-safe functions (write, unlink,
            // signal, raise).
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                    && old.sa_sigaction == libc::SIG_IGN
                {
                    continue;
                }
                libc::signal(sig, handler as libc::sighandler_t);
            }
        }
    });
}

#[cfg(not(unix))]
pub fn install() {}

#[cfg(unix)]
extern "C" fn on_signal(sig: libc::c_int) {
    let catching = CATCHING.load(Ordering::SeqCst) > 0;
    if sig == libc::SIGINT && catching && !REQUESTED.swap(true, Ordering::SeqCst) {
        write_hint(FIRST.load(Ordering::SeqCst));
    } else {
        if catching {
            write_hint(HINT.load(Ordering::SeqCst));
        }
        remove_writing();
        // SAFETY: restoring the default action and re-raising is async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}
