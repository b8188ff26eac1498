//! What the program holds in the arena besides its runs: pages whose protection is not
//! read-write (reservations made `PROT_NONE` and committed later, guard pages, JIT code),
//! and ranges another mapping covers (a file mapped `MAP_FIXED` over far memory). Both are
//! undone when the pages are given up, so a run handed out again is plain read-write far
//! memory.
//!
//! Protections are the kernel's, on the arena's own mapping: with the pager in a process of
//! its own, pages without `PROT_READ` are evicted and served like any other (the pager reads
//! them through the memfd, and installs them with `UFFDIO_COPY`, which ignores the
//! mapping's protection); a fault on them is the program's `SIGSEGV`, as without krak. With
//! the pager in the program, which reads pages through the mapping, such pages are refused.

use std::ops::{Deref, DerefMut};

use krak_pager::PAGE_SIZE;
use libc::c_int;

use crate::fallback::{fell_back, Reason};
use crate::far::{die, Arena, Far};
use crate::retained::Retained;
use crate::runs::Runs;
use crate::spans::Spans;

const RW: c_int = libc::PROT_READ | libc::PROT_WRITE;
/// The mark of pages whose protection a failed mprotect left unknown.
const UNKNOWN_PROT: c_int = -1;
/// Protections a far page may have.
const SERVABLE_PROT: c_int = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;

/// The runs, with the marks on their pages; one lock.
#[derive(Debug)]
pub struct Held {
    runs: Runs,
    /// Pages whose protection is not read-write.
    prot: Spans<c_int>,
    /// Pages another mapping covers (the kernel's, not the arena's).
    foreign: Spans<()>,
    /// Freed runs kept for the next `malloc` of their size (`retained.rs`): still in
    /// `runs`, never marked.
    pub retained: Retained,
}

impl Held {
    pub fn new(runs: Runs, retained: Retained) -> Held {
        Held { runs, prot: Spans::new(), foreign: Spans::new(), retained }
    }

    /// [`Runs::release`], after which no kept run overlaps the range: a program that
    /// unmaps what it freed must not get the pieces back from `malloc`.
    pub fn release(&mut self, first: usize, pages: usize) -> Vec<(usize, usize)> {
        let runs = &self.runs;
        self.retained.drop_if(|f| runs.get(f).is_some_and(|r| f < first + pages && f + r.reserved > first));
        self.runs.release(first, pages)
    }

    /// A kept run of `pages` in use, with at least `reserved` pages reserved and its start
    /// a multiple of `align_pages`, taken back out of `retained`.
    pub fn take_retained(&mut self, pages: usize, reserved: usize, align_pages: usize) -> Option<usize> {
        let runs = &self.runs;
        self.retained.take(pages, |first| {
            first.is_multiple_of(align_pages) && runs.get(first).is_some_and(|r| r.reserved >= reserved)
        })
    }

    /// Whether any page of the range has a protection or another mapping: such ranges are
    /// not moved by `mremap` or `realloc` (a copy would read what cannot be read).
    pub fn marked(&self, first: usize, n: usize) -> bool {
        !self.prot.pieces(first, n).is_empty() || !self.foreign.pieces(first, n).is_empty()
    }

    /// Records the protection `prot` of `[first, first+n)` after an mprotect that ended
    /// `done`. One that failed may have changed part of the range (vm.max_map_count): it is
    /// marked unknown, so that giving the pages up makes them read-write again.
    fn record_prot(&mut self, first: usize, n: usize, prot: c_int, done: Result<(), c_int>) -> Result<(), c_int> {
        match done {
            Err(errno) => {
                self.prot.insert(first, n, UNKNOWN_PROT);
                Err(errno)
            }
            Ok(()) if prot == RW => {
                self.prot.remove(first, n);
                Ok(())
            }
            Ok(()) => {
                self.prot.insert(first, n, prot);
                Ok(())
            }
        }
    }
}

impl Deref for Held {
    type Target = Runs;
    fn deref(&self) -> &Runs {
        &self.runs
    }
}

impl DerefMut for Held {
    fn deref_mut(&mut self) -> &mut Runs {
        &mut self.runs
    }
}

/// Whether a protection can be served from far memory in this mode.
pub fn servable_prot(prot: c_int, separate: bool) -> bool {
    prot & !SERVABLE_PROT == 0 && (separate || prot & libc::PROT_READ != 0)
}

/// Whether every page of the range is mapped (`mincore` fails with `ENOMEM` otherwise).
fn range_mapped(addr: usize, len: usize) -> bool {
    let mut vec = [0u8; 64];
    (0..len).step_by(64 * PAGE_SIZE).all(|at| {
        let chunk = (len - at).min(64 * PAGE_SIZE);
        // SAFETY: mincore only writes one byte per page of the range into `vec`, which has
        // room for 64 pages; it reads nothing of the range itself.
        unsafe { libc::mincore((addr + at) as *mut libc::c_void, chunk, vec.as_mut_ptr()) == 0 }
    })
}

/// The kernel's mprotect, on the caller's range.
fn sys_mprotect(addr: usize, len: usize, prot: c_int) -> Result<(), c_int> {
    // SAFETY: mprotect changes only the access to pages the caller holds.
    if unsafe { libc::syscall(libc::SYS_mprotect, addr, len, prot) } != 0 {
        return Err(crate::alloc::errno());
    }
    Ok(())
}

impl Far {
    fn separate(&self) -> bool {
        matches!(self.region, Arena::Separate(_))
    }

    fn offset_of(&self, page: usize) -> usize {
        page * PAGE_SIZE - self.region.as_ptr() as usize
    }

    /// Sets the protection of held pages `[first, first+n)` and records it. The kernel's
    /// mprotect on the program's own addresses, whichever the arena: it changes another
    /// mapping inside the range (a `MAP_FIXED` file) too, as it would without krak.
    fn set_prot(&self, held: &mut Held, first: usize, n: usize, prot: c_int) -> Result<(), c_int> {
        let done = sys_mprotect(first * PAGE_SIZE, n * PAGE_SIZE, prot);
        held.record_prot(first, n, prot, done)
    }

    /// Gives up pages `[first, first+n)` the program held (freed, unmapped, replaced): the
    /// arena's mapping comes back where another covered them, they are discarded (they read
    /// as zeros next), and read-write again. The runs' lock is held throughout, so nobody is
    /// handed them before.
    pub(crate) fn forget(&self, held: &mut Held, first: usize, n: usize) {
        for (start, count, ()) in held.foreign.remove(first, n) {
            let Arena::Separate(s) = &self.region else { unreachable!("foreign ranges need a separate pager") };
            if let Err(e) = crate::far::guarded(|| s.restore(self.offset_of(start), count * PAGE_SIZE)) {
                die(&format!("mapping far memory back at {:#x}: {e}", start * PAGE_SIZE));
            }
        }
        self.discard(first, n);
        for (start, count, _) in held.prot.pieces(first, n) {
            if let Err(errno) = self.set_prot(held, start, count, RW) {
                die(&format!("making far memory at {:#x} read-write again: errno {errno}", start * PAGE_SIZE));
            }
        }
    }

    /// A new mapping of `len` bytes with protection `prot` (anonymous, private, no fixed
    /// address): a run of the arena, or None (the caller maps ordinary memory).
    pub fn map(&self, len: usize, prot: c_int) -> Option<*mut libc::c_void> {
        if !servable_prot(prot, self.separate()) {
            fell_back(Reason::UnreadableInProcess, len);
            return None;
        }
        let p = self.alloc(len, PAGE_SIZE, false)?;
        if prot != RW {
            let (first, n) = (p as usize / PAGE_SIZE, len.div_ceil(PAGE_SIZE));
            let mut held = self.runs.lock();
            if self.set_prot(&mut held, first, n, prot).is_err() {
                self.forget(&mut held, first, n);
                held.free_run(first);
                drop(held);
                fell_back(Reason::ProtectionRefused, len);
                return None;
            }
        }
        Some(p)
    }

    /// `mmap(MAP_FIXED)` over `[addr, addr+len)`, inside the arena: what was there is given
    /// up; fresh anonymous private memory is far memory with the protection asked; another
    /// kind of mapping is made by the kernel in its place (ordinary memory, counted) and
    /// the arena comes back when it is unmapped. Err(errno) as mmap(2) would fail.
    pub fn map_fixed(
        &self,
        addr: usize,
        len: usize,
        prot: c_int,
        flags: c_int,
        fd: c_int,
        off: i64,
    ) -> Result<usize, c_int> {
        let (first, n) = (addr / PAGE_SIZE, len.div_ceil(PAGE_SIZE));
        if !addr.is_multiple_of(PAGE_SIZE) || len == 0 {
            return Err(libc::EINVAL);
        }
        let anon_private = flags & libc::MAP_ANONYMOUS != 0 && flags & libc::MAP_TYPE == libc::MAP_PRIVATE;
        let kernel_paged = flags & (libc::MAP_HUGETLB | libc::MAP_GROWSDOWN | libc::MAP_LOCKED) != 0;
        let far = anon_private && !kernel_paged && servable_prot(prot, self.separate());
        if !far && !self.separate() {
            // Over a private anonymous arena the pager could not take the range back: refused.
            fell_back(if anon_private { Reason::UnreadableInProcess } else { Reason::FixedRefused }, len);
            return Err(libc::ENOMEM);
        }
        let mut held = self.runs.lock();
        let claimed = held.claim(first, n);
        if far {
            self.forget(&mut held, first, n);
            if prot != RW {
                if let Err(errno) = self.set_prot(&mut held, first, n, prot) {
                    self.give_back_claimed(&mut held, &claimed);
                    return Err(errno);
                }
            }
            return Ok(addr);
        }
        // The kernel's mapping first: most failures (a bad descriptor, a refused protection)
        // leave the old mapping as it was, and the program may go on using it.
        // SAFETY: MAP_FIXED over pages the program holds (claimed above).
        let p = unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, off) };
        if p as usize as *mut libc::c_void == libc::MAP_FAILED {
            let errno = crate::alloc::errno();
            if range_mapped(addr, n * PAGE_SIZE) {
                self.give_back_claimed(&mut held, &claimed);
            } else {
                // The kernel unmapped the range before it failed: the arena's mapping goes
                // back (its contents are gone, as they would be without krak), the run too.
                held.foreign.insert(first, n, ());
                self.forget(&mut held, first, n);
                held.release(first, n);
            }
            return Err(errno);
        }
        // Not registered with the userfaultfd any more: the pager forgets these pages (a
        // window it installs meanwhile stops at the range: CopyError::OutsideMapping).
        self.discard(first, n);
        held.prot.remove(first, n);
        held.foreign.insert(first, n, ());
        fell_back(Reason::FixedOverFar, len);
        Ok(addr)
    }

    /// Gives back the pages `claim` took from the free ones (they were discarded when freed).
    fn give_back_claimed(&self, held: &mut Held, claimed: &[(usize, usize)]) {
        for &(start, count) in claimed {
            held.release(start, count);
        }
    }

    /// `mprotect` of `[addr, addr+len)`, every page held by the program.
    pub fn protect(&self, addr: usize, len: usize, prot: c_int) -> Result<(), c_int> {
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(libc::EINVAL);
        }
        if prot & !SERVABLE_PROT != 0 {
            return Err(libc::EINVAL);
        }
        if !servable_prot(prot, self.separate()) {
            // The in-process pager reads pages through this mapping to evict them.
            return Err(libc::EACCES);
        }
        let (first, n) = (addr / PAGE_SIZE, len.div_ceil(PAGE_SIZE));
        if n == 0 {
            return Ok(());
        }
        let mut held = self.runs.lock();
        if !held.all_in_use(first, n) {
            return Err(libc::ENOMEM);
        }
        self.set_prot(&mut held, first, n, prot)
    }

    /// `madvise` with a discarding advice: the arena's pages are discarded, and the advice
    /// goes to the kernel for other mappings inside the range.
    pub fn advise_discard(&self, addr: usize, len: usize, advice: c_int) {
        // Under the lock throughout: another thread's munmap may not give the pieces back to
        // the arena (and hand them out) between the look and the madvise.
        let held = self.runs.lock();
        let foreign = held.foreign.pieces(addr / PAGE_SIZE, len.div_ceil(PAGE_SIZE));
        self.dont_need(addr, len);
        for (start, count, ()) in foreign {
            // SAFETY: the kernel's madvise on the program's own mapping, as it asked.
            unsafe { libc::syscall(libc::SYS_madvise, start * PAGE_SIZE, count * PAGE_SIZE, advice) };
        }
        drop(held);
    }
}
