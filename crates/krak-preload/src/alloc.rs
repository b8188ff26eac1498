//! The library's own heap: glibc's allocator called by its internal names, so that nothing
//! the pager allocates ever goes through the interposed `malloc` (and into the arena).

use std::alloc::{GlobalAlloc, Layout};

use libc::c_void;

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
