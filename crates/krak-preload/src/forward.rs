//! The program's own allocator. A program linked with an allocator other than glibc's
//! (Debian's redis-server with libjemalloc) keeps it: the malloc family is forwarded to the
//! `malloc` that follows this library in the lookup order, and that allocator's large `mmap`s
//! (jemalloc's extents, 2 MiB and up) land in the arena through the interposed `mmap`, so its
//! small blocks live in far memory too.
//!
//! glibc blocks are mixed in and must go back to glibc: the ones handed out before the
//! allocator is known (it is resolved in the library's constructor) and the ones of pager code
//! (the pager must never touch far memory, and the program's allocator may be in the middle
//! of the `mmap` that starts the pager, holding its own locks). They are remembered by address.

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::OnceLock;

use krak_arena::contract::AllocatorChoice;
use libc::{c_int, c_void, size_t};
use parking_lot::Mutex;

use crate::alloc::*;
use crate::far::{self, die};

/// The program's allocator: the functions everything else is built on.
pub struct Program {
    malloc: unsafe extern "C" fn(size_t) -> *mut c_void,
    free: unsafe extern "C" fn(*mut c_void),
    calloc: unsafe extern "C" fn(size_t, size_t) -> *mut c_void,
    realloc: unsafe extern "C" fn(*mut c_void, size_t) -> *mut c_void,
    posix_memalign: unsafe extern "C" fn(*mut *mut c_void, size_t, size_t) -> c_int,
    usable_size: unsafe extern "C" fn(*mut c_void) -> size_t,
    /// The object that defines them, e.g. `/lib/x86_64-linux-gnu/libjemalloc.so.2`.
    object: String,
}

const UNRESOLVED: u8 = 0;
const KRAK: u8 = 1;
const PROGRAM: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNRESOLVED);
static PROGRAM_ALLOC: OnceLock<Program> = OnceLock::new();

/// glibc blocks handed out while forwarding (or before resolving), by address.
static GLIBC_BLOCKS: Mutex<BTreeSet<usize>> = parking_lot::const_mutex(BTreeSet::new());
static GLIBC_COUNT: AtomicUsize = AtomicUsize::new(0);
/// Lowest and highest address remembered: a cheap test before taking the lock.
static GLIBC_LOW: AtomicUsize = AtomicUsize::new(usize::MAX);
static GLIBC_HIGH: AtomicUsize = AtomicUsize::new(0);
/// The pager's threads and start-up need a few dozen; far more means a leak, loudly.
const MAX_GLIBC_BLOCKS: usize = 1 << 16;

/// Where a new block comes from.
#[derive(Clone, Copy)]
pub enum Route {
    /// glibc, remembered (before resolving, or pager code while forwarding).
    Glibc,
    /// The program's allocator.
    Program(&'static Program),
}

/// None when krak serves the malloc family (the code in `interpose.rs`), else the route.
pub fn route() -> Option<Route> {
    match STATE.load(Acquire) {
        // Before resolving: no thread-local access (this may run before TLS is set up).
        UNRESOLVED => Some(Route::Glibc),
        KRAK => None,
        _ => {
            let program = PROGRAM_ALLOC.get().expect("set before the state says so");
            Some(if far::pager_context() { Route::Glibc } else { Route::Program(program) })
        }
    }
}

/// Whether `forward.rs` handles the malloc family (forwarding, or not yet resolved): for
/// calls on existing blocks, which need no route.
pub fn active() -> bool {
    STATE.load(Acquire) != KRAK
}

fn remember(p: *mut c_void) -> *mut c_void {
    if p.is_null() {
        return p;
    }
    let a = p as usize;
    let mut blocks = GLIBC_BLOCKS.lock();
    if blocks.len() >= MAX_GLIBC_BLOCKS {
        drop(blocks);
        die("more than 65536 glibc blocks held by pager code beside the program's allocator");
    }
    blocks.insert(a);
    GLIBC_LOW.fetch_min(a, Relaxed);
    GLIBC_HIGH.fetch_max(a, Relaxed);
    GLIBC_COUNT.store(blocks.len(), Release);
    p
}

fn is_glibc(p: *mut c_void) -> bool {
    let a = p as usize;
    GLIBC_COUNT.load(Acquire) > 0
        && a >= GLIBC_LOW.load(Relaxed)
        && a <= GLIBC_HIGH.load(Relaxed)
        && GLIBC_BLOCKS.lock().contains(&a)
}

/// Forgets `p` if it is a remembered glibc block; true if it was.
fn forget(p: *mut c_void) -> bool {
    if !is_glibc(p) {
        return false;
    }
    let mut blocks = GLIBC_BLOCKS.lock();
    let was = blocks.remove(&(p as usize));
    GLIBC_COUNT.store(blocks.len(), Release);
    was
}

/// The program's allocator while forwarding (for code that needs it without a route).
fn program() -> Option<&'static Program> {
    PROGRAM_ALLOC.get()
}

pub fn malloc(route: Route, size: size_t) -> *mut c_void {
    match route {
        // SAFETY: plain allocations from glibc or the program's allocator.
        Route::Glibc => remember(unsafe { __libc_malloc(size) }),
        // SAFETY: as above.
        Route::Program(p) => unsafe { (p.malloc)(size) },
    }
}

pub fn calloc(route: Route, n: size_t, size: size_t) -> *mut c_void {
    match route {
        // SAFETY: plain allocations from glibc or the program's allocator.
        Route::Glibc => remember(unsafe { __libc_calloc(n, size) }),
        // SAFETY: as above.
        Route::Program(p) => unsafe { (p.calloc)(n, size) },
    }
}

/// `memalign` and friends; `align` is a power of two.
pub fn memalign(route: Route, align: size_t, size: size_t) -> *mut c_void {
    match route {
        // SAFETY: a plain allocation from glibc.
        Route::Glibc => remember(unsafe { __libc_memalign(align, size) }),
        Route::Program(p) => {
            let mut out = std::ptr::null_mut();
            // posix_memalign wants a multiple of the pointer size: a larger power of two is
            // still a valid alignment for memalign's caller.
            let align = align.max(std::mem::size_of::<usize>());
            // SAFETY: out is a local the call writes the block to.
            match unsafe { (p.posix_memalign)(&mut out, align, size) } {
                0 => out,
                e => {
                    crate::alloc::set_errno(e);
                    std::ptr::null_mut()
                }
            }
        }
    }
}

/// # Safety
/// As free(3), while forwarding or before resolving.
pub unsafe fn free(ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    match program() {
        Some(p) if !forget(ptr) => {
            // SAFETY: not a remembered glibc block, so the program allocator's.
            return unsafe { (p.free)(ptr) };
        }
        Some(_) => {}
        None => {
            // Before resolving every block is glibc's.
            forget(ptr);
        }
    }
    // SAFETY: a glibc block.
    unsafe { __libc_free(ptr) }
}

/// # Safety
/// As realloc(3) with a non-null `ptr`, while forwarding or before resolving.
pub unsafe fn realloc(route: Route, ptr: *mut c_void, size: size_t) -> *mut c_void {
    let glibc = is_glibc(ptr) || program().is_none();
    match (glibc, route) {
        (true, _) if size == 0 => {
            // SAFETY: realloc(p, 0) frees p, as glibc does.
            unsafe { free(ptr) };
            std::ptr::null_mut()
        }
        (true, Route::Glibc) => {
            // SAFETY: a glibc block staying in glibc.
            let new = unsafe { __libc_realloc(ptr, size) };
            if !new.is_null() {
                forget(ptr);
                remember(new);
            }
            new
        }
        (true, Route::Program(p)) => {
            // A glibc block (from before resolving) moves to the program's allocator.
            // SAFETY: a fresh block of `size`; ptr a live glibc block of `old` usable bytes.
            unsafe {
                let new = (p.malloc)(size);
                if !new.is_null() {
                    let old = crate::alloc::glibc_usable_size(ptr);
                    std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), new.cast::<u8>(), old.min(size));
                    free(ptr);
                }
                new
            }
        }
        // The program's block stays the program's, even from pager code (glibc's thread
        // bookkeeping reused by a pager thread): moving it would need its size, and the block
        // is in the program allocator's memory anyway.
        (false, _) => {
            let p = program().expect("a block not glibc's implies forwarding");
            // SAFETY: the program allocator's block, resized by it.
            unsafe { (p.realloc)(ptr, size) }
        }
    }
}

/// # Safety
/// As malloc_usable_size(3) with a non-null `ptr`, while forwarding or before resolving.
pub unsafe fn usable_size(ptr: *mut c_void) -> size_t {
    match program() {
        // SAFETY: the program allocator's block.
        Some(p) if !is_glibc(ptr) => unsafe { (p.usable_size)(ptr) },
        _ => crate::alloc::glibc_usable_size(ptr),
    }
}

/// Base address and file name of the object holding `addr` (dladdr), if any.
fn object_of(addr: *const c_void) -> Option<(usize, String)> {
    // SAFETY: Dl_info is plain data that dladdr fills; dli_fname is a NUL-terminated string
    // owned by the dynamic linker, valid while the object stays loaded (for good here).
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(addr, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        Some((info.dli_fbase as usize, CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned()))
    }
}

/// The next definition of `name` after this library, and the object defining it.
fn next_symbol(name: &CStr) -> Option<(usize, (usize, String))> {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name only looks the symbol up.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    if f.is_null() {
        return None;
    }
    Some((f as usize, object_of(f)?))
}

/// Decides whose allocator serves the malloc family; run once, from the library's
/// constructor, after the configuration is read.
pub fn resolve(choice: AllocatorChoice) {
    let glibc = object_of(__libc_malloc as *const c_void).unwrap_or_else(|| die("cannot find glibc's malloc"));
    let next = next_symbol(c"malloc");
    let foreign = next.as_ref().is_some_and(|(_, (base, _))| *base != glibc.0);
    let forward = match choice {
        AllocatorChoice::Auto => foreign,
        AllocatorChoice::Krak | AllocatorChoice::Far => false,
        AllocatorChoice::Program => true,
    };
    if !forward {
        GLIBC_BLOCKS.lock().clear();
        GLIBC_COUNT.store(0, Release);
        STATE.store(KRAK, Release);
        return;
    }
    let Some((malloc, (base, object))) = next else { die("no malloc after libkrak_preload.so to forward to") };
    // Every function must come from the same allocator: a block of one freed by another is
    // heap corruption.
    let get = |name: &CStr| match next_symbol(name) {
        Some((f, (b, _))) if b == base => f,
        Some((_, (_, other))) => die(&format!(
            "the program's malloc is {object}'s but its {} is {other}'s: cannot forward to one allocator \
             (use krak run --allocator krak)",
            name.to_string_lossy()
        )),
        None => die(&format!("{object} has no {}: cannot forward to it", name.to_string_lossy())),
    };
    // SAFETY: each address is the named C function of the allocator, of the standard
    // signature (C library ABI).
    let program = unsafe {
        Program {
            malloc: std::mem::transmute::<usize, unsafe extern "C" fn(size_t) -> *mut c_void>(malloc),
            free: std::mem::transmute::<usize, unsafe extern "C" fn(*mut c_void)>(get(c"free")),
            calloc: std::mem::transmute::<usize, unsafe extern "C" fn(size_t, size_t) -> *mut c_void>(get(c"calloc")),
            realloc: std::mem::transmute::<usize, unsafe extern "C" fn(*mut c_void, size_t) -> *mut c_void>(get(
                c"realloc",
            )),
            posix_memalign: std::mem::transmute::<usize, unsafe extern "C" fn(*mut *mut c_void, size_t, size_t) -> c_int>(
                get(c"posix_memalign"),
            ),
            usable_size: std::mem::transmute::<usize, unsafe extern "C" fn(*mut c_void) -> size_t>(get(
                c"malloc_usable_size",
            )),
            object,
        }
    };
    let _ = PROGRAM_ALLOC.set(program);
    STATE.store(PROGRAM, Release);
}

/// For `--stats`: whose allocator served the malloc family.
pub fn describe() -> serde_json::Value {
    match program() {
        Some(p) => serde_json::json!({
            "allocator": "program",
            "allocator_object": p.object,
            "glibc_blocks": GLIBC_COUNT.load(Relaxed),
        }),
        None => serde_json::json!({ "allocator": "krak" }),
    }
}
