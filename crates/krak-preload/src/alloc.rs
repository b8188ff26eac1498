//! The library's own heap: glibc's allocator called by its internal names, so that nothing
//! the pager allocates ever goes through the interposed `malloc` (and into the arena).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use libc::{c_int, c_void, size_t};

use crate::far::die;

extern "C" {
    pub fn __libc_malloc(size: usize) -> *mut c_void;
    pub fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    pub fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
    pub fn __libc_free(ptr: *mut c_void);
    pub fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
    pub fn __libc_valloc(size: usize) -> *mut c_void;
    pub fn __libc_pvalloc(size: usize) -> *mut c_void;
}

/// glibc's `malloc` guarantees this alignment.
const MALLOC_ALIGN: usize = 16;

pub struct LibcHeap;

// SAFETY: every method forwards to glibc's allocator, which returns memory of at least the
// requested size and alignment (memalign for alignments above malloc's), or null.
unsafe impl GlobalAlloc for LibcHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain glibc allocations.
        unsafe {
            if layout.align() <= MALLOC_ALIGN {
                __libc_malloc(layout.size()).cast()
            } else {
                __libc_memalign(layout.align(), layout.size()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MALLOC_ALIGN {
            // SAFETY: calloc returns zeroed memory (lazily, for large sizes: untouched pages).
            return unsafe { __libc_calloc(1, layout.size()).cast() };
        }
        // SAFETY: a fresh allocation of layout.size() bytes, zeroed before use.
        unsafe {
            let p = __libc_memalign(layout.align(), layout.size()).cast::<u8>();
            if !p.is_null() {
                std::ptr::write_bytes(p, 0, layout.size());
            }
            p
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: ptr came from this allocator, i.e. from glibc.
        unsafe { __libc_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= MALLOC_ALIGN {
            // SAFETY: ptr came from glibc's malloc family with malloc's alignment.
            return unsafe { __libc_realloc(ptr.cast(), new_size).cast() };
        }
        // SAFETY: a new block of the same alignment; the old one is live for layout.size().
        unsafe {
            let new = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

/// This thread's `errno`, as the last failing system call left it.
pub fn errno() -> c_int {
    // SAFETY: errno is this thread's own variable.
    unsafe { *libc::__errno_location() }
}

/// Sets this thread's `errno`, as a failing libc call does.
pub fn set_errno(e: c_int) {
    // SAFETY: errno is this thread's own variable.
    unsafe { *libc::__errno_location() = e };
}

/// glibc's `malloc_usable_size`, which the one below hides.
pub fn glibc_usable_size(ptr: *mut c_void) -> usize {
    static REAL: AtomicUsize = AtomicUsize::new(0);
    let mut f = REAL.load(Relaxed);
    if f == 0 {
        // glibc's own, not the next in search order: a program linked with another
        // allocator (redis with jemalloc) has that one's first, and its blocks are glibc's now.
        // SAFETY: dlopen of the already loaded libc (RTLD_NOLOAD) and dlsym, with constant
        // NUL-terminated names.
        f = unsafe {
            let libc_handle = libc::dlopen(c"libc.so.6".as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
            if libc_handle.is_null() {
                die("cannot find glibc (libc.so.6)");
            }
            libc::dlsym(libc_handle, c"malloc_usable_size".as_ptr())
        } as usize;
        if f == 0 {
            die("cannot find glibc's malloc_usable_size");
        }
        REAL.store(f, Relaxed);
    }
    // SAFETY: f is glibc's malloc_usable_size, of this signature; ptr is glibc's.
    unsafe { std::mem::transmute::<usize, unsafe extern "C" fn(*mut c_void) -> size_t>(f)(ptr) }
}
