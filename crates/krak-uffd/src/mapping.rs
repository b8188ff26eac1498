//! Anonymous private memory that a userfaultfd serves.

use std::io;
use std::ptr::NonNull;

use crate::PAGE_SIZE;

/// A private anonymous mapping, unmapped on drop. Its pages are populated only by the
/// pager (through the userfaultfd) and dropped only by [`AnonMapping::discard`].
#[derive(Debug)]
pub struct AnonMapping {
    ptr: NonNull<u8>,
    len: usize,
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
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mapping = AnonMapping { ptr: NonNull::new(ptr.cast()).expect("mmap never returns null on success"), len };
        // SAFETY: the range is exactly the mapping we just created.
        let rc = unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
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

    /// Drops the pages of `[offset, offset+len)`; a later touch faults again.
    pub fn discard(&self, offset: usize, len: usize) -> io::Result<()> {
        self.check_range(offset, len)?;
        // SAFETY: the range lies inside our mapping (checked above); MADV_DONTNEED only
        // drops page contents, which the pager has saved or knows to be zero.
        let rc = unsafe { libc::madvise(self.ptr.as_ptr().add(offset).cast(), len, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
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
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
