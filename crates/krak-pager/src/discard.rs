//! Forgetting pages: what `free`, `munmap` and `MADV_DONTNEED` mean for a region's pages.

use std::time::{Duration, Instant};

use krak_uffd::PAGE_SIZE;

use crate::core::*;
use crate::stats::Counters;
use crate::{FarMemory, PagerError};

/// Bound on waiting for fetches and evictions in flight on the discarded pages.
const BUSY_WAIT_MS: u64 = 60_000;

impl FarMemory {
    /// Forgets the pages of `[offset, offset + len)` (page-aligned): local copies are
    /// dropped and remote copies forgotten, so the next touch of each reads a zero page, as
    /// after `munmap` and a fresh `mmap`, or `madvise(MADV_DONTNEED)` on private memory.
    /// Waits for fetches and evictions in flight on those pages first.
    pub fn discard(&self, offset: usize, len: usize) -> Result<(), PagerError> {
        if !offset.is_multiple_of(PAGE_SIZE)
            || !len.is_multiple_of(PAGE_SIZE)
            || offset.checked_add(len).is_none_or(|end| end > self.len())
        {
            return Err(PagerError::Config(format!("discard of {len} bytes at {offset} is unaligned or outside")));
        }
        let (first, end) = (offset / PAGE_SIZE, (offset + len) / PAGE_SIZE);
        let shared = &self.shared;
        let mut core = shared.core.lock();
        let deadline = Instant::now() + Duration::from_millis(BUSY_WAIT_MS);
        while core.states[first..end].iter().any(|s| matches!(s & STATE_MASK, FETCHING | EVICTING)) {
            if Instant::now() > deadline {
                return Err(PagerError::Install("pages being discarded stayed in flight".into()));
            }
            shared.space.wait_for(&mut core, Duration::from_millis(10));
        }
        let mut mapped = 0;
        let mut remote: Option<std::ops::Range<usize>> = None;
        for page in first..end {
            if core.states[page] & REMOTE != 0 {
                remote = Some(remote.map_or(page..page + 1, |r| r.start..page + 1));
            }
            match core.states[page] & STATE_MASK {
                CLEAN | DIRTY => {
                    mapped += 1;
                    core.eviction.removed(page);
                }
                // Its queued write may still land; only a newer staged copy would be kept.
                STAGED => drop(core.staged.remove(&page)),
                _ => {}
            }
            core.states[page] = ABSENT;
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
        if mapped > 0 {
            shared.map.discard(offset, len).map_err(PagerError::Mapping)?;
            core.resident -= mapped;
        }
        Counters::add(&shared.counters.discarded_pages, (end - first) as u64);
        shared.space.notify_all();
        Ok(())
    }

    /// Keeps the region out of `fork(2)` children (see [`krak_uffd::AnonMapping::exclude_from_fork`]).
    pub fn exclude_from_fork(&self) -> Result<(), PagerError> {
        self.shared.map.own().and_then(|m| m.exclude_from_fork()).map_err(PagerError::Mapping)
    }

    /// Called in a `fork(2)` child only: makes the region's addresses inaccessible there.
    /// The region must not be used (nor dropped) in the child afterwards.
    pub fn fence_in_child(&self) -> Result<(), PagerError> {
        self.shared.map.own().and_then(|m| m.fence_in_child()).map_err(PagerError::Mapping)
    }
}
