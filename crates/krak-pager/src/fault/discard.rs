//! Forgetting pages: what `free`, `munmap` and `MADV_DONTNEED` mean for a region's pages.

use std::time::{Duration, Instant};

use krak_uffd::PAGE_SIZE;

use crate::error::{InstallError, PagerError};
use crate::state::core::RegionShared;
use crate::state::core::MAX_PENDING_DISCARDS;
use crate::state::page_table::Kind;
use crate::state::stats::Counters;

/// Bound on waiting for fetches and evictions in flight on the discarded pages.
const BUSY_WAIT_MS: u64 = 60_000;

impl RegionShared {
    /// Forgets the pages of `[offset, offset + len)` (page-aligned): local copies are
    /// dropped and remote copies forgotten, so the next touch of each reads a zero page, as
    /// after `munmap` and a fresh `mmap`, or `madvise(MADV_DONTNEED)` on private memory.
    /// Waits for fetches and evictions in flight on those pages first.
    pub(crate) fn discard(&self, offset: usize, len: usize) -> Result<(), PagerError> {
        if !offset.is_multiple_of(PAGE_SIZE)
            || !len.is_multiple_of(PAGE_SIZE)
            || offset.checked_add(len).is_none_or(|end| end > self.map.len())
        {
            return Err(crate::error::ConfigError::BadDiscard { offset, len }.into());
        }
        let (first, end) = (offset / PAGE_SIZE, (offset + len) / PAGE_SIZE);
        let shared = self;
        let mut core = shared.core.lock();
        let deadline = Instant::now() + Duration::from_millis(BUSY_WAIT_MS);
        while core.pages.any_in_flight(first..end) {
            if Instant::now() > deadline {
                return Err(InstallError::DiscardRaced.into());
            }
            shared.space.wait_for(&mut core, Duration::from_millis(10));
        }
        // Unmapped first (under the lock, so nothing maps them again meanwhile): on an
        // error every page is still as it was.
        if (first..end).any(|p| matches!(core.pages.kind(p), Kind::Clean | Kind::Dirty)) {
            shared.map.discard(offset, len).map_err(PagerError::Mapping)?;
        }
        let mut remote: Option<std::ops::Range<usize>> = None;
        for page in first..end {
            let forgotten = core.pages.forget(page);
            if forgotten.remote {
                remote = Some(remote.map_or(page..page + 1, |r| r.start..page + 1));
            }
            if forgotten.mapped {
                core.eviction.removed(page);
            }
        }
        // Queued write-backs of these pages are stale now: never sent.
        let queued = core.wb_queue.len();
        core.wb_queue.retain(|(p, _)| !(first..end).contains(p));
        core.wb_pending -= queued - core.wb_queue.len();
        if let Some(range) = remote {
            if core.discards.len() < MAX_PENDING_DISCARDS {
                core.discards.push_back(range);
                shared.wb_wake.notify_one();
            }
        }
        Counters::add(&shared.counters.discarded_pages, (end - first) as u64);
        shared.space.notify_all();
        Ok(())
    }

    /// Keeps the region out of `fork(2)` children (see [`krak_uffd::AnonMapping::exclude_from_fork`]).
    pub(crate) fn exclude_from_fork(&self) -> Result<(), PagerError> {
        self.map.own().and_then(|m| m.exclude_from_fork()).map_err(PagerError::Mapping)
    }

    /// Called in a `fork(2)` child only: makes the region's addresses inaccessible there.
    /// The region must not be used (nor dropped) in the child afterwards.
    pub(crate) fn fence_in_child(&self) -> Result<(), PagerError> {
        self.map.own().and_then(|m| m.fence_in_child()).map_err(PagerError::Mapping)
    }
}
