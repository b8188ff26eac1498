//! The SIGBUS handler through which a thread resolves its own userfaultfd faults.
//!
//! With `UFFD_FEATURE_SIGBUS` a fault in a registered range raises SIGBUS in the faulting
//! thread. One process-wide handler is installed; it hands the fault address (and whether
//! it was a write) to a callback, and chains every SIGBUS the callback does not claim to the
//! handler that was there before (or to the default action, which ends the process).

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Once;

/// What the callback decides about one SIGBUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Resolved: return and let the thread retry its access.
    Resolved,
    /// Not ours, or cannot be resolved: pass the signal on to the previous handler.
    NotOurs,
}

/// Called on the faulting thread with the fault address and whether it was a write.
pub type FaultCallback = fn(addr: usize, write: bool) -> Verdict;

static CALLBACK: AtomicUsize = AtomicUsize::new(0);
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());
static INSTALL: Once = Once::new();

/// Installs the process-wide SIGBUS handler once; later calls do nothing. It stays for the
/// rest of the process and passes on every SIGBUS that no region claims.
pub fn install(callback: FaultCallback) -> std::io::Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        CALLBACK.store(callback as usize, Ordering::SeqCst);
        // SAFETY: sigaction with a zeroed struct plus handler and flags is the documented way
        // to install a handler; the previous action is written into a leaked box that lives
        // for the rest of the process, so the handler can always chain to it.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            libc::sigemptyset(&mut action.sa_mask);
            let previous = Box::into_raw(Box::new(std::mem::zeroed::<libc::sigaction>()));
            if libc::sigaction(libc::SIGBUS, &action, previous) != 0 {
                result = Err(std::io::Error::last_os_error());
                return;
            }
            PREVIOUS.store(previous, Ordering::SeqCst);
        }
    });
    result
}

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: errno is thread-local; we restore it so the interrupted code never sees the
    // errno of the syscalls made while resolving the fault.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let write = fault_was_write(context);
    let callback = CALLBACK.load(Ordering::SeqCst);
    let verdict = if callback == 0 {
        Verdict::NotOurs
    } else {
        // SAFETY: CALLBACK only ever holds a `FaultCallback` stored by `install`.
        let callback: FaultCallback = unsafe { std::mem::transmute::<usize, FaultCallback>(callback) };
        callback(addr, write)
    };
    // SAFETY: restoring the value read above.
    unsafe { *libc::__errno_location() = errno };
    if verdict == Verdict::Resolved {
        return;
    }
    chain(signal, info, context);
}

/// Hands the signal to the handler that was installed before ours, or restores the
/// default action so the retried access ends the process with SIGBUS.
fn chain(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let previous = PREVIOUS.load(Ordering::SeqCst);
    // SAFETY: PREVIOUS is null or the leaked, never-freed sigaction written by `install`.
    let previous = unsafe { previous.as_ref() };
    match previous {
        Some(p) if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
            if p.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this
                // signature; we pass it the arguments the kernel gave us.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(p.sa_sigaction) };
                f(signal, info, context);
            } else {
                // SAFETY: a handler installed without SA_SIGINFO takes only the signal number.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(p.sa_sigaction) };
                f(signal);
            }
        }
        _ => {
            // SAFETY: resetting SIGBUS to its default action and raising it again ends the
            // process, as an unresolved fault must (never a zero or stale page).
            unsafe {
                libc::signal(libc::SIGBUS, libc::SIG_DFL);
                libc::raise(libc::SIGBUS);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn fault_was_write(context: *mut libc::c_void) -> bool {
    if context.is_null() {
        return false;
    }
    // SAFETY: for a SA_SIGINFO handler the third argument is the interrupted ucontext; on
    // x86-64 its REG_ERR slot holds the page-fault error code, whose bit 1 means a write.
    let err = unsafe { (*(context as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_ERR as usize] };
    err & 2 != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn fault_was_write(_context: *mut libc::c_void) -> bool {
    // Unknown here: the pager treats a fault on a present clean page as a write anyway.
    false
}
