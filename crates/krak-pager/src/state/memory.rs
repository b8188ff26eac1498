//! The memory a region's pages live in: this process's own anonymous mapping, or another
//! process's memfd-backed arena (a program run by `krak run --pager separate`). An enum, so
//! the fault path pays one predictable branch, not an indirect call.

use std::io;

use krak_uffd::{AnonMapping, MemfdView, PAGE_SIZE};

#[derive(Debug)]
pub(crate) enum RegionMemory {
    /// Mapped here; the pager reads and drops pages in its own address space.
    Own(AnonMapping),
    /// Mapped in process `pid`; pages are read and dropped through its memfd.
    OtherProcess { map: MemfdView, pid: i32 },
}

impl RegionMemory {
    /// Start of the region, in the address space of the process that maps it.
    pub fn base(&self) -> usize {
        match self {
            RegionMemory::Own(m) => m.as_ptr() as usize,
            RegionMemory::OtherProcess { map, .. } => map.base(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            RegionMemory::Own(m) => m.len(),
            RegionMemory::OtherProcess { map, .. } => map.len(),
        }
    }

    /// Drops the pages of `[offset, offset+len)`; a later touch faults again.
    pub fn discard(&self, offset: usize, len: usize) -> io::Result<()> {
        match self {
            RegionMemory::Own(m) => m.discard(offset, len),
            RegionMemory::OtherProcess { map, .. } => map.discard(offset, len),
        }
    }

    /// Drops the pages at the given page indices.
    pub fn discard_pages(&self, pages: &[usize]) -> io::Result<()> {
        match self {
            RegionMemory::Own(m) => m.discard_pages(pages),
            RegionMemory::OtherProcess { map, .. } => map.discard_pages(pages),
        }
    }

    /// Copies page `page` into `dst` (one page).
    ///
    /// # Safety
    /// As [`AnonMapping::copy_out`]: the page is present and nobody writes it meanwhile.
    pub unsafe fn copy_page(&self, page: usize, dst: &mut [u8]) -> io::Result<()> {
        match self {
            // SAFETY: the caller's contract.
            RegionMemory::Own(m) => unsafe { m.copy_out(page * PAGE_SIZE, dst) },
            RegionMemory::OtherProcess { map, .. } => return map.copy_out(page * PAGE_SIZE, dst),
        }
        Ok(())
    }

    /// Pages of the region resident, as the kernel counts them.
    pub fn resident_pages(&self, scratch: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            RegionMemory::Own(m) => m.resident_pages(scratch),
            RegionMemory::OtherProcess { map, .. } => map.resident_pages(),
        }
    }

    /// Fails a faulting thread's access (SIGBUS): its fault cannot be served.
    pub fn fail_thread(&self, thread_id: u32) -> io::Result<()> {
        match self {
            RegionMemory::Own(_) => krak_uffd::signal_thread(thread_id, libc::SIGBUS),
            RegionMemory::OtherProcess { pid, .. } => krak_uffd::signal_thread_of(*pid, thread_id, libc::SIGBUS),
        }
    }

    /// Ends the program whose memory this is (SIGKILL): an access it keeps retrying cannot
    /// be served, and a kernel-mode access (a system call, KVM) cannot be failed otherwise.
    pub fn stop_program(&self) -> io::Result<()> {
        match self {
            RegionMemory::Own(_) => krak_uffd::signal_process(std::process::id() as i32, libc::SIGKILL),
            RegionMemory::OtherProcess { pid, .. } => krak_uffd::signal_process(*pid, libc::SIGKILL),
        }
    }

    /// This process's own mapping, for what only it can do (fork exclusion).
    pub fn own(&self) -> io::Result<&AnonMapping> {
        match self {
            RegionMemory::Own(m) => Ok(m),
            RegionMemory::OtherProcess { .. } => {
                Err(io::Error::new(io::ErrorKind::Unsupported, "the region is mapped in another process"))
            }
        }
    }
}
