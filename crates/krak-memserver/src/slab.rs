//! One slab: an anonymous mapping lent to a client, plus the CRC-32C of each of its pages.
//!
//! The mapping is `MAP_NORESERVE` so a slab costs nothing until its pages are written, and
//! untouched pages read back as zeros. The CRC is stored, not recomputed, so a read answers
//! with the checksum the writer sent (which was verified on the way in).

use std::io;
use std::ptr::NonNull;
use std::sync::OnceLock;

use krak_proto::{page_crc, PAGE_SIZE};

/// CRC-32C of a page of zeros: what every page of a fresh slab holds.
pub(crate) fn zero_page_crc() -> u32 {
    static CRC: OnceLock<u32> = OnceLock::new();
    *CRC.get_or_init(|| page_crc(&[0u8; PAGE_SIZE]))
}

/// Memory of one slab. Shared access reads, exclusive access writes: callers guard it
/// with a lock, so the borrow rules are the only synchronisation this type needs.
#[derive(Debug)]
pub(crate) struct Slab {
    base: NonNull<u8>,
    len_bytes: usize,
    crcs: Vec<u32>,
}

// SAFETY: the mapping is owned by this value alone (never aliased elsewhere); reads go
// through `&self` and writes through `&mut self`, so moving or sharing it across threads is
// as safe as for a `Vec<u8>`.
unsafe impl Send for Slab {}
// SAFETY: see `Send`: no interior mutability, `&Slab` only reads.
unsafe impl Sync for Slab {}

impl Slab {
    /// Maps `len_bytes` (a non-zero multiple of the page size) of zeroed memory.
    pub(crate) fn map(len_bytes: usize, mlock: bool) -> io::Result<Slab> {
        if len_bytes == 0 || !len_bytes.is_multiple_of(PAGE_SIZE) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("slab of {len_bytes} bytes")));
        }
        // SAFETY: a fresh anonymous private mapping at an address of the kernel's choosing
        // touches no existing memory; the result is checked against MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let slab = Slab { base, len_bytes, crcs: vec![zero_page_crc(); len_bytes / PAGE_SIZE] };
        if mlock {
            // SAFETY: the range is exactly the mapping created above, owned by `slab`.
            if unsafe { libc::mlock(ptr, len_bytes) } != 0 {
                tracing::warn!(
                    "mlock of a {len_bytes}-byte slab failed ({}); its pages may be swapped",
                    io::Error::last_os_error()
                );
            }
        }
        Ok(slab)
    }

    /// Number of pages in the slab.
    pub(crate) fn pages(&self) -> u32 {
        self.crcs.len() as u32
    }

    /// The stored CRC and contents of page `index`, or `None` past the end.
    pub(crate) fn page(&self, index: u32) -> Option<(u32, &[u8])> {
        let crc = *self.crcs.get(index as usize)?;
        // SAFETY: `index` is in range (checked through `crcs`, which has one entry per page),
        // so the page lies inside the live mapping; `&self` rules out a concurrent writer.
        let data = unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(index as usize * PAGE_SIZE), PAGE_SIZE) };
        Some((crc, data))
    }

    /// Stores one page and its (already verified) CRC. Returns false past the end.
    pub(crate) fn store(&mut self, index: u32, crc: u32, data: &[u8]) -> bool {
        let Some(slot) = self.crcs.get_mut(index as usize) else { return false };
        if data.len() != PAGE_SIZE {
            return false;
        }
        *slot = crc;
        // SAFETY: `index` is in range (checked through `crcs`), so the page lies inside the
        // live mapping; `&mut self` makes this the only access to it.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(index as usize * PAGE_SIZE), PAGE_SIZE) };
        dst.copy_from_slice(data);
        true
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: `base`/`len_bytes` describe the mapping created in `map`, unmapped only
        // here; no borrow of its pages can outlive `self`.
        if unsafe { libc::munmap(self.base.as_ptr().cast(), self.len_bytes) } != 0 {
            tracing::error!("munmap of a {}-byte slab failed: {}", self.len_bytes, io::Error::last_os_error());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_pages_are_zero_with_the_zero_crc() {
        let slab = Slab::map(4 * PAGE_SIZE, false).unwrap();
        assert_eq!(slab.pages(), 4);
        let (crc, data) = slab.page(3).unwrap();
        assert_eq!(crc, page_crc(&[0u8; PAGE_SIZE]));
        assert!(data.iter().all(|&b| b == 0));
        assert!(slab.page(4).is_none());
    }

    #[test]
    fn stores_pages_and_crcs_in_place() {
        let mut slab = Slab::map(2 * PAGE_SIZE, true).unwrap();
        let page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 7) as u8).collect();
        assert!(slab.store(1, page_crc(&page), &page));
        assert!(!slab.store(2, 0, &page), "past the end");
        assert!(!slab.store(0, 0, &page[..10]), "short page");
        let (crc, data) = slab.page(1).unwrap();
        assert_eq!((crc, data), (page_crc(&page), page.as_slice()));
        assert_eq!(slab.page(0).unwrap().0, zero_page_crc(), "neighbour untouched");
    }
}
