//! Process-wide registry of machine state the bench changed, so that it is undone on
//! drop, on Ctrl-C/SIGTERM, and (for leftovers of a crashed run) on the next start.
//!
//! Every guard ([`MemoryCgroup`](crate::swap::MemoryCgroup), [`SwapFile`](crate::swap::SwapFile),
//! [`Zram`](crate::swap::Zram)) and every running worker child registers here. A guard's
//! `Drop` undoes its change *while holding the registry lock*, so the signal handler either
//! sees the entry (and undoes it) or does not (because it is already undone), never half.

use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

/// One change to undo.
#[derive(Debug)]
pub(crate) struct Entry {
    id: u64,
    kind: Kind,
}

enum Kind {
    Child(libc::pid_t),
    Undo(Box<dyn FnMut() + Send>),
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Child(pid) => write!(f, "Child({pid})"),
            Kind::Undo(_) => f.write_str("Undo"),
        }
    }
}

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
static HANDLER: Once = Once::new();

fn lock() -> MutexGuard<'static, Vec<Entry>> {
    REGISTRY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Token for one registered entry; pass it to [`finish`] when the change is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token(u64);

/// Registers an undo action run by [`cleanup_all`] unless [`finish`]ed first.
pub(crate) fn register_undo(undo: impl FnMut() + Send + 'static) -> Token {
    install_signal_cleanup();
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    lock().push(Entry { id, kind: Kind::Undo(Box::new(undo)) });
    Token(id)
}

/// Registers a running child process, killed by [`cleanup_all`].
pub(crate) fn register_child(pid: u32) -> Token {
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    lock().push(Entry { id, kind: Kind::Child(pid as libc::pid_t) });
    Token(id)
}

/// Runs the entry's undo action (if the signal handler has not already) and forgets it.
/// The action runs under the registry lock, so a concurrent signal cannot interrupt it.
pub(crate) fn finish(token: Token) {
    let mut entries = lock();
    if let Some(pos) = entries.iter().position(|e| e.id == token.0) {
        let mut entry = entries.remove(pos);
        if let Kind::Undo(undo) = &mut entry.kind {
            undo();
        }
    }
}

/// Undoes every registered change, newest first, after killing registered worker
/// children. Safe to call more than once. Call it from your own signal handler if
/// [`install_signal_cleanup`] could not install one (the process already had one).
pub fn cleanup_all() {
    let mut entries = lock();
    let children: Vec<libc::pid_t> = entries
        .iter()
        .filter_map(|e| match e.kind {
            Kind::Child(pid) => Some(pid),
            Kind::Undo(_) => None,
        })
        .collect();
    for &pid in &children {
        // SAFETY: `kill` has no memory-safety preconditions; `pid` is our own child that
        // has not been reaped yet (it is deregistered before it is waited for).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for &pid in &children {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid out-pointer; WNOHANG makes the call non-blocking.
            let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if rc != 0 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    while let Some(mut entry) = entries.pop() {
        if let Kind::Undo(undo) = &mut entry.kind {
            undo();
        }
    }
}

/// Installs (once) a Ctrl-C/SIGTERM handler that runs [`cleanup_all`] and exits with
/// status 130. Called automatically by every guard. If the process already has a `ctrlc`
/// handler this logs a warning and that handler must call [`cleanup_all`] itself.
pub fn install_signal_cleanup() {
    HANDLER.call_once(|| {
        let result = ctrlc::set_handler(|| {
            eprintln!("krak-bench: interrupted, restoring swap and cgroups...");
            cleanup_all();
            std::process::exit(130);
        });
        if let Err(e) = result {
            tracing::warn!(
                "krak-bench: cannot install the cleanup signal handler ({e}); \
                 the existing handler must call krak_bench::swap::cleanup_all()"
            );
        }
    });
}
