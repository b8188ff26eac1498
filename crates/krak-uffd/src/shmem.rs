//! Far memory backed by a memfd (shmem), so that a pager in another process can serve it.
//!
//! The program maps the memfd shared ([`SharedMapping`]) and hands the memfd and its
//! userfaultfd to the pager process, which works on the pages through the file
//! ([`MemfdView`]): `pread` reads a page for write-back (a hole reads as zeros without
//! allocating), and `fallocate(PUNCH_HOLE)` drops pages, which also unmaps them from the
//! program, so that its next touch is a missing-page fault again. Pages are installed
//! through the userfaultfd (`UFFDIO_COPY` works on another process's userfaultfd).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use crate::mapping::{sys_madvise, sys_mmap_fd, sys_munmap};
use crate::PAGE_SIZE;

/// A memfd of `len` bytes mapped shared in this process, unmapped on drop.
#[derive(Debug)]
pub struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
    memfd: OwnedFd,
}

// SAFETY: plain memory owned by this value; which thread touches which page is the pager's
// contract, as for `AnonMapping`.
unsafe impl Send for SharedMapping {}
// SAFETY: as above.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// A new memfd of `len` bytes (rounded up to pages, sparse) mapped read-write shared,
    /// without huge pages, since userfaultfd serves it one 4 KiB page at a time.
    pub fn new(len: usize) -> io::Result<SharedMapping> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        let len = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        // SAFETY: memfd_create takes a NUL-terminated name and flags and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_memfd_create, c"krak-arena".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the fd was just returned to us and nothing else owns it.
        let memfd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        // SAFETY: ftruncate on our own fresh memfd only sets its size (holes, no memory).
        if unsafe { libc::ftruncate(memfd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh shared mapping of our memfd at an address of the kernel's choosing
        // touches no existing memory.
        let ptr = unsafe {
            sys_mmap_fd(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                memfd.as_raw_fd(),
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mapping = SharedMapping { ptr: NonNull::new(ptr.cast()).expect("mmap never returns null"), len, memfd };
        // SAFETY: the range is exactly the mapping we just created.
        if unsafe { sys_madvise(ptr, len, libc::MADV_NOHUGEPAGE) } != 0 {
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

    /// The memfd, to hand to the pager process.
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    /// Keeps the mapping out of `fork(2)` children (`MADV_DONTFORK`), as
    /// [`crate::AnonMapping::exclude_from_fork`].
    pub fn exclude_from_fork(&self) -> io::Result<()> {
        // SAFETY: the range is exactly our mapping.
        unsafe { crate::mapping::exclude_range_from_fork(self.ptr, self.len) }
    }

    /// Maps `[offset, offset+len)` of the memfd back at its place, read-write, over whatever
    /// another mapping put there (a `MAP_FIXED` mapping of the program's over the arena),
    /// kept out of fork children as the rest. The caller registers it with the userfaultfd
    /// again.
    pub fn restore(&self, offset: usize, len: usize) -> io::Result<()> {
        self.check_range(offset, len)?;
        // SAFETY: the range is inside our mapping's addresses (checked), which the caller
        // gave up to another mapping it now drops; MAP_FIXED replaces only that range.
        let ptr = unsafe {
            let at: *mut libc::c_void = self.ptr.as_ptr().add(offset).cast();
            libc::syscall(
                libc::SYS_mmap,
                at,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE | libc::MAP_FIXED,
                self.memfd.as_raw_fd(),
                offset as libc::off_t,
            ) as *mut libc::c_void
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the range is the mapping just made; the advice changes only paging and fork.
        unsafe {
            if sys_madvise(ptr, len, libc::MADV_NOHUGEPAGE) != 0 || sys_madvise(ptr, len, libc::MADV_DONTFORK) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    fn check_range(&self, offset: usize, len: usize) -> io::Result<()> {
        let aligned = offset.is_multiple_of(PAGE_SIZE) && len.is_multiple_of(PAGE_SIZE) && len > 0;
        if !aligned || offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "range outside the mapping"));
        }
        Ok(())
    }

    /// In a `fork(2)` child: an inaccessible reservation over the mapping's addresses, as
    /// [`crate::AnonMapping::fence_in_child`]. Async-signal-safe (one mmap).
    pub fn fence_in_child(&self) -> io::Result<()> {
        // SAFETY: the range is exactly our mapping, excluded from fork.
        unsafe { crate::mapping::fence_range_in_child(self.ptr, self.len) }
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and nobody uses it after drop.
        unsafe { sys_munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Another process's [`SharedMapping`], seen through its memfd: `base` is the address of
/// the mapping in that process (where its userfaultfd faults and installs), never touched
/// here.
#[derive(Debug)]
pub struct MemfdView {
    memfd: OwnedFd,
    base: usize,
    len: usize,
}

impl MemfdView {
    /// Takes a received memfd that a program maps at `base` for `len` bytes. Refuses an fd
    /// that is not a memfd of at least that size, and an unaligned or wrapping range.
    pub fn new(memfd: OwnedFd, base: usize, len: usize) -> io::Result<MemfdView> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_string());
        if len == 0
            || !len.is_multiple_of(PAGE_SIZE)
            || !base.is_multiple_of(PAGE_SIZE)
            || base == 0
            || base.checked_add(len).is_none()
        {
            return Err(bad("arena range empty, unaligned or wrapping"));
        }
        let link = std::fs::read_link(format!("/proc/self/fd/{}", memfd.as_raw_fd()))?;
        if !link.to_string_lossy().starts_with("/memfd:") {
            return Err(bad("the arena's fd is not a memfd"));
        }
        // SAFETY: fstat fills the struct it is given, for an fd we own.
        let size = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(memfd.as_raw_fd(), &mut st) != 0 {
                return Err(io::Error::last_os_error());
            }
            st.st_size as u64
        };
        if size < len as u64 {
            return Err(bad("the arena's memfd is smaller than the arena"));
        }
        Ok(MemfdView { memfd, base, len })
    }

    /// The mapping's address in the program (not dereferenceable here).
    pub fn base(&self) -> usize {
        self.base
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops the pages of `[offset, offset+len)` from the file, and so from the program's
    /// page tables: its next touch is a missing-page fault.
    pub fn discard(&self, offset: usize, len: usize) -> io::Result<()> {
        self.check_range(offset, len)?;
        // SAFETY: fallocate on our own fd; punching a hole only frees the file's pages,
        // whose contents the pager has saved or knows to be zero.
        let rc = unsafe {
            libc::fallocate(
                self.memfd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Drops the given pages (page indices), one hole per run of consecutive pages.
    pub fn discard_pages(&self, pages: &[usize]) -> io::Result<()> {
        let mut sorted = pages.to_vec();
        sorted.sort_unstable();
        let mut i = 0;
        while i < sorted.len() {
            let first = sorted[i];
            let mut n = 1;
            while i + n < sorted.len() && sorted[i + n] == first + n {
                n += 1;
            }
            self.discard(first * PAGE_SIZE, n * PAGE_SIZE)?;
            i += n;
        }
        Ok(())
    }

    /// Reads the bytes at `offset` into `dst` (a hole reads as zeros).
    pub fn copy_out(&self, offset: usize, dst: &mut [u8]) -> io::Result<()> {
        self.check_range(offset, dst.len().next_multiple_of(PAGE_SIZE))?;
        let mut done = 0;
        while done < dst.len() {
            let rest = &mut dst[done..];
            // SAFETY: `rest` is a live writable buffer of rest.len() bytes; our own fd.
            let n = unsafe {
                libc::pread(
                    self.memfd.as_raw_fd(),
                    rest.as_mut_ptr().cast(),
                    rest.len(),
                    (offset + done) as libc::off_t,
                )
            };
            match n {
                n if n > 0 => done += n as usize,
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "arena memfd ended early")),
                _ => {
                    let err = io::Error::last_os_error();
                    if err.raw_os_error() != Some(libc::EINTR) {
                        return Err(err);
                    }
                }
            }
        }
        Ok(())
    }

    /// Counts the pages the file holds (`SEEK_DATA`/`SEEK_HOLE`): those installed and not
    /// dropped since, the program's resident set of the arena.
    pub fn resident_pages(&self) -> io::Result<usize> {
        let fd = self.memfd.as_raw_fd();
        let (mut at, end, mut pages) = (0i64, self.len as i64, 0usize);
        while at < end {
            // SAFETY: lseek on our own fd only moves its offset.
            let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
            if data < 0 {
                let err = io::Error::last_os_error();
                return if err.raw_os_error() == Some(libc::ENXIO) { Ok(pages) } else { Err(err) };
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            if hole < 0 {
                return Err(io::Error::last_os_error());
            }
            let hole = hole.min(end);
            pages += (hole.max(data) - data) as usize / PAGE_SIZE;
            at = hole.max(data + 1);
        }
        Ok(pages)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_in_the_mapping_read_back_through_the_file_and_holes_drop_them() {
        let map = SharedMapping::new(16 * PAGE_SIZE).unwrap();
        let dup = map.memfd().try_clone_to_owned().unwrap();
        let remote = MemfdView::new(dup, map.as_ptr() as usize, map.len()).unwrap();
        // SAFETY: page 3 lies inside our own mapping, which nobody else uses.
        unsafe { std::ptr::write_bytes(map.as_ptr().add(3 * PAGE_SIZE), 0xab, PAGE_SIZE) };
        let mut page = vec![0u8; PAGE_SIZE];
        remote.copy_out(3 * PAGE_SIZE, &mut page).unwrap();
        assert!(page.iter().all(|b| *b == 0xab));
        remote.copy_out(4 * PAGE_SIZE, &mut page).unwrap();
        assert!(page.iter().all(|b| *b == 0), "a hole reads as zeros");
        assert_eq!(remote.resident_pages().unwrap(), 1, "reading a hole allocates nothing");
        remote.discard_pages(&[3]).unwrap();
        // SAFETY: as above; the page was dropped, so reading it maps a fresh zero page.
        let first = unsafe { *map.as_ptr().add(3 * PAGE_SIZE) };
        assert_eq!(first, 0);
        assert!(remote.discard(PAGE_SIZE, 16 * PAGE_SIZE).is_err(), "past the end");
        assert!(MemfdView::new(map.memfd().try_clone_to_owned().unwrap(), 4096, 17 * PAGE_SIZE).is_err());
    }

    #[test]
    fn refuses_an_fd_that_is_not_a_memfd() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(MemfdView::new(file.into(), 1 << 30, PAGE_SIZE).is_err());
    }
}
