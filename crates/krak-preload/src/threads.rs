//! `pthread_create`, interposed to mark the pager's threads: a thread started by pager code
//! (the pager's start-up, or another pager thread) is one of the pager's for its lifetime,
//! so that the C-level allocations made in it (glibc's thread bookkeeping) go to glibc,
//! never to far memory, which the pager must not touch. Other threads start unchanged.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use libc::{c_int, c_void, pthread_attr_t, pthread_t};

use crate::far::{self, die};

type StartRoutine = extern "C" fn(*mut c_void) -> *mut c_void;
type PthreadCreate = unsafe extern "C" fn(*mut pthread_t, *const pthread_attr_t, StartRoutine, *mut c_void) -> c_int;

static REAL: AtomicUsize = AtomicUsize::new(0);

/// glibc's `pthread_create`; resolved by the constructor (`resolve`) or at first use.
fn real() -> PthreadCreate {
    let mut f = REAL.load(Relaxed);
    if f == 0 {
        resolve();
        f = REAL.load(Relaxed);
    }
    // SAFETY: f is the next pthread_create after this library, of this signature.
    unsafe { std::mem::transmute::<usize, PthreadCreate>(f) }
}

pub fn resolve() {
    // SAFETY: dlsym with RTLD_NEXT and a constant NUL-terminated name only looks it up.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"pthread_create".as_ptr()) } as usize;
    if f == 0 {
        die("cannot find pthread_create after libkrak_preload.so");
    }
    REAL.store(f, Relaxed);
}

struct Start {
    routine: StartRoutine,
    arg: *mut c_void,
}

extern "C" fn pager_thread(start: *mut c_void) -> *mut c_void {
    // SAFETY: `start` is the Box leaked by pthread_create below, handed to this thread alone.
    let start = unsafe { Box::from_raw(start.cast::<Start>()) };
    far::mark_pager_thread();
    (start.routine)(start.arg)
}

/// # Safety
/// As pthread_create(3).
#[no_mangle]
pub unsafe extern "C" fn pthread_create(
    thread: *mut pthread_t,
    attr: *const pthread_attr_t,
    routine: StartRoutine,
    arg: *mut c_void,
) -> c_int {
    let real = real();
    if !far::pager_context() {
        // SAFETY: glibc's pthread_create, as the caller asked.
        return unsafe { real(thread, attr, routine, arg) };
    }
    let start = Box::into_raw(Box::new(Start { routine, arg }));
    // SAFETY: as the caller asked, with the routine wrapped; the new thread owns `start`.
    let rc = unsafe { real(thread, attr, pager_thread, start.cast()) };
    if rc != 0 {
        // SAFETY: no thread was started: `start` is still ours.
        drop(unsafe { Box::from_raw(start) });
    }
    rc
}
