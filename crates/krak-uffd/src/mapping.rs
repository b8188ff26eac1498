//! Anonymous private memory that a userfaultfd serves.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr::NonNull;

use crate::PAGE_SIZE;

/// A private anonymous mapping, unmapped on drop. Its pages are populated only by the
/// pager (through the userfaultfd) and dropped only by [`AnonMapping::discard`].
#[derive(Debug)]
pub struct AnonMapping {
    ptr: NonNull<u8>,
    len: usize,
    /// Our own pidfd, for `process_madvise`; opened on first use.
    pidfd: std::sync::OnceLock<Option<std::os::fd::OwnedFd>>,
}

// SAFETY: the mapping is plain memory owned by this value; which thread touches which page
// is coordinated by the pager, not by this type.
unsafe impl Send for AnonMapping {}
// SAFETY: as above: shared access goes through raw pointers whose use is the pager's contract.
unsafe impl Sync for AnonMapping {}

impl AnonMapping {
    /// Maps `len` bytes (rounded up to pages), without reserving swap and without huge pages,
    /// since userfaultfd serves it one 4 KiB page at a time.
    pub fn new(len: usize) -> io::Result<AnonMapping> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        let len = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing touches no
        // existing memory.
        let ptr = unsafe {
            sys_mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mapping = AnonMapping {
            ptr: NonNull::new(ptr.cast()).expect("mmap never returns null on success"),
            len,
            pidfd: std::sync::OnceLock::new(),
        };
        // SAFETY: the range is exactly the mapping we just created.
        let rc = unsafe { sys_madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(mapping)
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the mapping out of children made by `fork(2)` (`MADV_DONTFORK`): a child that
    /// touches it faults on unmapped memory instead of seeing zero pages where pages were
    /// evicted, since no pager serves the child.
    pub fn exclude_from_fork(&self) -> io::Result<()> {
        // SAFETY: the range is exactly our mapping.
        unsafe { exclude_range_from_fork(self.ptr, self.len) }
    }

    /// In a child made by `fork(2)` of a process whose mapping was excluded from fork: puts
    /// an inaccessible reservation (`PROT_NONE`) at the mapping's addresses, so that any touch
    /// of them crashes (SIGSEGV) and no later mapping of the child takes their place.
    /// Async-signal-safe (one mmap), as code run right after fork must be.
    pub fn fence_in_child(&self) -> io::Result<()> {
        // SAFETY: the range is exactly our mapping, excluded from fork.
        unsafe { fence_range_in_child(self.ptr, self.len) }
    }

    /// Drops the pages of `[offset, offset+len)`; a later touch faults again.
    pub fn discard(&self, offset: usize, len: usize) -> io::Result<()> {
        self.check_range(offset, len)?;
        // SAFETY: the range lies inside our mapping (checked above); MADV_DONTNEED only
        // drops page contents, which the pager has saved or knows to be zero.
        let rc = unsafe { sys_madvise(self.ptr.as_ptr().add(offset).cast(), len, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Drops the pages at the given page indices with one `process_madvise(MADV_DONTNEED)`
    /// per 1024 pages, so the kernel flushes the TLB once per call rather than once per
    /// page (a flush is an inter-processor interrupt, costly on a virtual machine).
    pub fn discard_pages(&self, pages: &[usize]) -> io::Result<()> {
        const IOV_MAX: usize = 1024;
        let Ok(pidfd) = self.pidfd() else {
            for &p in pages {
                self.discard(p * PAGE_SIZE, PAGE_SIZE)?;
            }
            return Ok(());
        };
        for chunk in pages.chunks(IOV_MAX) {
            let mut iov = Vec::with_capacity(chunk.len());
            for &p in chunk {
                self.check_range(p * PAGE_SIZE, PAGE_SIZE)?;
                // SAFETY: p is a page of our mapping (checked above); the pointer is only
                // passed to the kernel as an address.
                let base = unsafe { self.ptr.as_ptr().add(p * PAGE_SIZE) };
                iov.push(libc::iovec { iov_base: base.cast(), iov_len: PAGE_SIZE });
            }
            let want = chunk.len() * PAGE_SIZE;
            // SAFETY: `iov` holds `iov.len()` valid iovecs naming pages of our own mapping,
            // whose contents the caller has saved or knows to be clean; pidfd is our own.
            let done = unsafe {
                libc::syscall(libc::SYS_process_madvise, pidfd, iov.as_ptr(), iov.len(), libc::MADV_DONTNEED, 0)
            };
            if done < 0 || done as usize != want {
                // Older kernels refuse MADV_DONTNEED through process_madvise, and the call may
                // stop early: finish page by page, which is always allowed.
                for &p in chunk {
                    self.discard(p * PAGE_SIZE, PAGE_SIZE)?;
                }
            }
        }
        Ok(())
    }

    fn pidfd(&self) -> io::Result<libc::c_int> {
        let fd = self.pidfd.get_or_init(|| {
            // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
            if fd < 0 {
                None
            } else {
                // SAFETY: the fd was just returned to us and nothing else owns it.
                Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) })
            }
        });
        fd.as_ref().map(|f| f.as_raw_fd()).ok_or_else(io::Error::last_os_error)
    }

    /// Copies resident bytes at `offset` into `dst`.
    ///
    /// # Safety
    /// The pages of `[offset, offset + dst.len())` must be present (reading a missing page
    /// would fault into the very pager that calls this), and no thread may write them during
    /// the copy (the pager write-protects them first).
    pub unsafe fn copy_out(&self, offset: usize, dst: &mut [u8]) {
        debug_assert!(offset + dst.len() <= self.len);
        // SAFETY: in bounds (asserted by the caller's contract and checked in debug), present
        // and not written concurrently, per this function's contract.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), dst.as_mut_ptr(), dst.len()) }
    }

    /// Counts the pages of the mapping the kernel has resident (mincore).
    pub fn resident_pages(&self, scratch: &mut Vec<u8>) -> io::Result<usize> {
        scratch.resize(self.len / PAGE_SIZE, 0);
        // SAFETY: the range is our whole mapping and `scratch` holds one byte per page of it.
        let rc = unsafe { libc::mincore(self.ptr.as_ptr().cast(), self.len, scratch.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(scratch.iter().filter(|b| **b & 1 != 0).count())
    }

    fn check_range(&self, offset: usize, len: usize) -> io::Result<()> {
        if !offset.is_multiple_of(PAGE_SIZE)
            || !len.is_multiple_of(PAGE_SIZE)
            || offset.checked_add(len).is_none_or(|end| end > self.len)
        {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "range outside the mapping or unaligned"));
        }
        Ok(())
    }
}

impl Drop for AnonMapping {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and nobody uses it after drop.
        unsafe { sys_munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// The address-space calls go to the kernel directly rather than through libc's wrappers: in a
// program run by `krak run`, krak's preload library interposes `mmap`, `munmap` and
// `madvise`, and the pager's own calls must never reach it.

/// # Safety
/// As `mmap(2)` for an anonymous mapping: with `MAP_FIXED`, `addr..addr+len` must be
/// memory the caller owns.
/// `MADV_DONTFORK` on `[ptr, ptr + len)`.
///
/// # Safety
/// The range must be a whole mapping owned by the caller.
pub(crate) unsafe fn exclude_range_from_fork(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller owns the mapping; the advice changes only what fork copies.
    if unsafe { sys_madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTFORK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// In a `fork(2)` child: an inaccessible reservation (`PROT_NONE`) over `[ptr, ptr + len)`.
/// Async-signal-safe (one mmap).
///
/// # Safety
/// The range must be a mapping of the caller's that was excluded from fork, so that in the
/// child it holds nothing that `MAP_FIXED` could replace.
pub(crate) unsafe fn fence_range_in_child(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: per the contract the range holds nothing in the child; MAP_FIXED over it
    // replaces only addresses the caller owns.
    let mapped = unsafe {
        sys_mmap(
            ptr.as_ptr().cast(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
        )
    };
    if mapped == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) unsafe fn sys_mmap(
    addr: *mut libc::c_void,
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
) -> *mut libc::c_void {
    // SAFETY: the caller's contract; an anonymous mapping takes no file descriptor.
    unsafe { sys_mmap_fd(addr, len, prot, flags, -1) }
}

/// # Safety
/// As `mmap(2)` of `fd` from offset 0 (or anonymous with `fd` -1): with `MAP_FIXED`,
/// `addr..addr+len` must be memory the caller owns.
pub(crate) unsafe fn sys_mmap_fd(
    addr: *mut libc::c_void,
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
    fd: libc::c_int,
) -> *mut libc::c_void {
    // SAFETY: the caller's contract.
    unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, 0 as libc::off_t) as *mut libc::c_void }
}

/// # Safety
/// As `madvise(2)`: the advice must not drop contents the caller still needs.
pub(crate) unsafe fn sys_madvise(addr: *mut libc::c_void, len: usize, advice: libc::c_int) -> libc::c_int {
    // SAFETY: the caller's contract.
    unsafe { libc::syscall(libc::SYS_madvise, addr, len, advice) as libc::c_int }
}

/// # Safety
/// As `munmap(2)`: nothing may use the range afterwards.
pub(crate) unsafe fn sys_munmap(addr: *mut libc::c_void, len: usize) -> libc::c_int {
    // SAFETY: the caller's contract.
    unsafe { libc::syscall(libc::SYS_munmap, addr, len) as libc::c_int }
}
