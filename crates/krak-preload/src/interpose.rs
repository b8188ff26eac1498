//! The interposed C functions. Each one decides: arena (far memory) or glibc/the kernel.
//! Arena addresses are recognised by range, so memory from before the pager started, or
//! from glibc, is always handed back to glibc. When the program brings its own allocator,
//! the malloc family is forwarded (`forward.rs`) and only the memory calls decide.

use std::sync::atomic::Ordering::Relaxed;

use libc::{c_int, c_void, off_t, size_t};

use crate::alloc::*;
use crate::far::{self, die, in_arena, MAP_THRESHOLD, THRESHOLD};
use crate::forward::{self, route};

fn large(size: usize) -> bool {
    size >= THRESHOLD.load(Relaxed)
}

/// An arena run for a large request, or a small block with `--allocator far`; None for
/// glibc (small, a fork child, pager code, arena full). Only `calloc` asks for `zeroed`:
/// the others may get a run freed before, with its old contents (`retained.rs`).
fn far_alloc(size: usize, align: usize, growable: bool, zeroed: bool) -> Option<*mut c_void> {
    if large(size) {
        let far = far::far()?;
        return if zeroed { far.alloc(size, align, growable) } else { far.alloc_reusing(size, align, growable) };
    }
    if far::small_blocks() {
        return far::far()?.small_alloc(size, align.max(16));
    }
    None
}

/// # Safety
/// As malloc(3).
#[no_mangle]
pub unsafe extern "C" fn malloc(size: size_t) -> *mut c_void {
    if let Some(route) = route() {
        return forward::malloc(route, size);
    }
    // SAFETY: glibc's malloc for everything the arena does not take.
    far_alloc(size, 1, true, false).unwrap_or_else(|| unsafe { __libc_malloc(size) })
}

/// # Safety
/// As free(3).
#[no_mangle]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    if forward::active() {
        // SAFETY: as free(3).
        return unsafe { forward::free(ptr) };
    }
    if in_arena(ptr as usize) {
        // In a fork child the arena is fenced off: nothing to give back.
        if !far::forked_child() {
            far::started().free(ptr as usize);
        }
    } else {
        // SAFETY: not an arena address, so glibc's (or null).
        unsafe { __libc_free(ptr) }
    }
}

/// # Safety
/// As calloc(3).
#[no_mangle]
pub unsafe extern "C" fn calloc(n: size_t, size: size_t) -> *mut c_void {
    let Some(total) = n.checked_mul(size) else {
        set_errno(libc::ENOMEM);
        return std::ptr::null_mut();
    };
    if let Some(route) = route() {
        return forward::calloc(route, n, size);
    }
    match far_alloc(total, 1, true, true) {
        // Arena runs are handed out discarded: they read as zeros without being touched;
        // small blocks may have been used before.
        Some(p) => {
            if total <= crate::small::MAX_SMALL {
                // SAFETY: a fresh block of at least `total` bytes.
                unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0, total) };
            }
            p
        }
        // SAFETY: glibc's calloc otherwise.
        None => unsafe { __libc_calloc(n, size) },
    }
}

/// # Safety
/// As realloc(3).
#[no_mangle]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: size_t) -> *mut c_void {
    if ptr.is_null() {
        // SAFETY: realloc(NULL, n) is malloc(n).
        return unsafe { malloc(size) };
    }
    if let Some(route) = route() {
        // SAFETY: as realloc(3), ptr not null.
        return unsafe { forward::realloc(route, ptr, size) };
    }
    if in_arena(ptr as usize) {
        if far::forked_child() {
            die("realloc of far memory in a fork child: the arena is not mapped there");
        }
        if size == 0 {
            // SAFETY: realloc(p, 0) frees p, as glibc does.
            unsafe { free(ptr) };
            return std::ptr::null_mut();
        }
        return far::started().realloc(ptr as usize, size);
    }
    if let Some(new) = far_alloc(size, 1, true, false) {
        // Growing past the threshold: the block moves to the arena.
        let old = glibc_usable_size(ptr);
        // SAFETY: ptr is a live glibc block of `old` usable bytes, new a fresh run of `size`.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), new.cast::<u8>(), old.min(size));
            __libc_free(ptr);
        }
        return new;
    }
    // SAFETY: a glibc block staying in glibc.
    unsafe { __libc_realloc(ptr, size) }
}

/// # Safety
/// As reallocarray(3).
#[no_mangle]
pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, n: size_t, size: size_t) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: as realloc.
        Some(total) => unsafe { realloc(ptr, total) },
        None => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

/// # Safety
/// As memalign(3).
#[no_mangle]
pub unsafe extern "C" fn memalign(align: size_t, size: size_t) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    if let Some(route) = route() {
        return forward::memalign(route, align, size);
    }
    // SAFETY: glibc's memalign otherwise.
    far_alloc(size, align, false, false).unwrap_or_else(|| unsafe { __libc_memalign(align, size) })
}

/// # Safety
/// As aligned_alloc(3).
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: size_t, size: size_t) -> *mut c_void {
    // SAFETY: as memalign.
    unsafe { memalign(align, size) }
}

/// # Safety
/// As posix_memalign(3).
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: size_t, size: size_t) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(std::mem::size_of::<usize>()) {
        return libc::EINVAL;
    }
    // SAFETY: as memalign; `out` is the caller's pointer to write the result to.
    unsafe {
        let p = memalign(align, size);
        if p.is_null() {
            return libc::ENOMEM;
        }
        *out = p;
    }
    0
}

/// # Safety
/// As valloc(3).
#[no_mangle]
pub unsafe extern "C" fn valloc(size: size_t) -> *mut c_void {
    if let Some(route) = route() {
        return forward::memalign(route, krak_pager::PAGE_SIZE, size);
    }
    // SAFETY: glibc's valloc otherwise.
    far_alloc(size, krak_pager::PAGE_SIZE, false, false).unwrap_or_else(|| unsafe { __libc_valloc(size) })
}

/// # Safety
/// As pvalloc(3).
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: size_t) -> *mut c_void {
    if let Some(route) = route() {
        let Some(rounded) = size.max(1).checked_next_multiple_of(krak_pager::PAGE_SIZE) else {
            set_errno(libc::ENOMEM);
            return std::ptr::null_mut();
        };
        return forward::memalign(route, krak_pager::PAGE_SIZE, rounded);
    }
    // SAFETY: glibc's pvalloc otherwise.
    far_alloc(size, krak_pager::PAGE_SIZE, false, false).unwrap_or_else(|| unsafe { __libc_pvalloc(size) })
}

/// # Safety
/// As malloc_usable_size(3).
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> size_t {
    if ptr.is_null() {
        0
    } else if forward::active() {
        // SAFETY: as malloc_usable_size(3), ptr not null.
        unsafe { forward::usable_size(ptr) }
    } else if in_arena(ptr as usize) {
        if far::forked_child() {
            0
        } else {
            far::started().usable_size(ptr as usize)
        }
    } else {
        glibc_usable_size(ptr)
    }
}

fn overlaps_arena(addr: usize, len: usize) -> bool {
    len > 0 && (in_arena(addr) || in_arena(addr.saturating_add(len - 1)))
}

/// # Safety
/// As mmap(2).
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    let anonymous = flags & libc::MAP_ANONYMOUS != 0;
    let fixed = flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0;
    if anonymous && !fixed && len >= MAP_THRESHOLD.load(Relaxed) {
        // A hint is only a hint (the kernel may put the mapping elsewhere too): reservations
        // with one (the JVM's heap, V8's cages) are far memory as well.
        let kernel_paged = flags & (libc::MAP_HUGETLB | libc::MAP_GROWSDOWN | libc::MAP_LOCKED | libc::MAP_32BIT) != 0;
        if flags & libc::MAP_TYPE != libc::MAP_PRIVATE {
            crate::fallback::fell_back(crate::fallback::Reason::Shared, len);
        } else if kernel_paged {
            crate::fallback::fell_back(crate::fallback::Reason::KernelPaged, len);
        } else if let Some(p) = far::far().and_then(|far| far.map(len, prot)) {
            return p;
        }
    }
    if flags & libc::MAP_FIXED != 0 && overlaps_arena(addr as usize, len) && !far::forked_child() {
        let (a, end) = (addr as usize, (addr as usize).saturating_add(len));
        if !in_arena(a) || !in_arena(end - 1) {
            // Half in the arena, half out: not a mapping anyone makes on purpose.
            set_errno(libc::ENOMEM);
            return libc::MAP_FAILED;
        }
        return match far::started().map_fixed(a, len, prot, flags, fd, off) {
            Ok(p) => p as *mut c_void,
            Err(e) => {
                set_errno(e);
                libc::MAP_FAILED
            }
        };
    }
    // SAFETY: the kernel's mmap, as the caller asked.
    unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, off) as *mut c_void }
}

/// # Safety
/// As mmap64(2).
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    // SAFETY: as mmap (off_t is 64 bits on x86-64).
    unsafe { mmap(addr, len, prot, flags, fd, off) }
}

/// # Safety
/// As munmap(2).
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    let a = addr as usize;
    if overlaps_arena(a, len) && !far::forked_child() {
        if !a.is_multiple_of(krak_pager::PAGE_SIZE) {
            set_errno(libc::EINVAL);
            return -1;
        }
        far::started().unmap(a, len);
        return 0;
    }
    // SAFETY: the kernel's munmap, as the caller asked.
    unsafe { libc::syscall(libc::SYS_munmap, addr, len) as c_int }
}

/// # Safety
/// As mremap(2). The new address (a variadic argument in C) is read only with MREMAP_FIXED,
/// which arena mappings refuse; on x86-64 it arrives in the fifth argument register.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: size_t,
    new_len: size_t,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    if in_arena(old as usize) && !far::forked_child() {
        if flags & !libc::MREMAP_MAYMOVE != 0 {
            set_errno(libc::EINVAL);
            return libc::MAP_FAILED;
        }
        return match far::started().remap(old as usize, old_len, new_len, flags & libc::MREMAP_MAYMOVE != 0) {
            Ok(p) => p as *mut c_void,
            Err(e) => {
                set_errno(e);
                libc::MAP_FAILED
            }
        };
    }
    // SAFETY: the kernel's mremap, as the caller asked.
    unsafe { libc::syscall(libc::SYS_mremap, old, old_len, new_len, flags, new_addr) as *mut c_void }
}

/// # Safety
/// As madvise(2).
#[no_mangle]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: size_t, advice: c_int) -> c_int {
    let a = addr as usize;
    if overlaps_arena(a, len) && !far::forked_child() {
        if !a.is_multiple_of(krak_pager::PAGE_SIZE) {
            set_errno(libc::EINVAL);
            return -1;
        }
        match advice {
            libc::MADV_DONTNEED | libc::MADV_FREE | libc::MADV_REMOVE | 24 /* MADV_DONTNEED_LOCKED */ => {
                far::started().advise_discard(a, len, advice);
                return 0;
            }
            // Advice that would change how the arena is paged or forked: the pager decides.
            libc::MADV_HUGEPAGE
            | libc::MADV_NOHUGEPAGE
            | libc::MADV_DOFORK
            | libc::MADV_DONTFORK
            | libc::MADV_WIPEONFORK
            | libc::MADV_KEEPONFORK
            | libc::MADV_MERGEABLE
            | libc::MADV_UNMERGEABLE
            | libc::MADV_WILLNEED
            | libc::MADV_COLD
            | libc::MADV_PAGEOUT
            | 25 /* MADV_COLLAPSE */ => return 0,
            _ => {}
        }
    }
    // SAFETY: the kernel's madvise, as the caller asked.
    unsafe { libc::syscall(libc::SYS_madvise, addr, len, advice) as c_int }
}

/// # Safety
/// As mprotect(2).
#[no_mangle]
pub unsafe extern "C" fn mprotect(addr: *mut c_void, len: size_t, prot: c_int) -> c_int {
    let a = addr as usize;
    if overlaps_arena(a, len) && !far::forked_child() {
        if !in_arena(a) || !in_arena(a.saturating_add(len - 1)) {
            set_errno(libc::ENOMEM);
            return -1;
        }
        return match far::started().protect(a, len, prot) {
            Ok(()) => 0,
            Err(e) => {
                set_errno(e);
                -1
            }
        };
    }
    // SAFETY: the kernel's mprotect, as the caller asked.
    unsafe { libc::syscall(libc::SYS_mprotect, addr, len, prot) as c_int }
}
