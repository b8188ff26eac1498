//! Plain RAM: an anonymous private mapping.

use crate::workload::{Region, PAGE_SIZE_BYTES};
use crate::BenchError;

/// An anonymous `MAP_PRIVATE | MAP_ANONYMOUS` mapping, unmapped on drop.
///
/// Transparent huge pages are disabled on it (`MADV_NOHUGEPAGE`) so that every backend
/// works in 4 KiB pages, like the krak pager.
#[derive(Debug)]
pub struct LocalRegion {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned exclusively by this value; moving it to another thread
// moves that ownership, and nothing is tied to the creating thread.
unsafe impl Send for LocalRegion {}

impl LocalRegion {
    /// Maps `len_bytes` (rounded up to whole pages) of zeroed anonymous memory.
    pub fn new(len_bytes: usize) -> Result<Self, BenchError> {
        if len_bytes == 0 {
            return Err(BenchError::Invalid("region of 0 bytes".into()));
        }
        let len = len_bytes.div_ceil(PAGE_SIZE_BYTES) * PAGE_SIZE_BYTES;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing touches
        // no existing memory; the result is checked against MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(BenchError::io(format!("mmap {len} bytes"), std::io::Error::last_os_error()));
        }
        // SAFETY: `ptr..ptr+len` is the mapping just created. The advice is best effort.
        unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
        Ok(LocalRegion { ptr: ptr.cast(), len })
    }
}

impl Region for LocalRegion {
    fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for LocalRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe the mapping created in `new`, unmapped only here.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
