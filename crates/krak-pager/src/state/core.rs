//! The state every fault handler shares: the page table (each page's state and the resident
//! count against the budget), the policies, and the write-back buffer. One mutex guards it
//! all; it is never held across network I/O, only across a few page-sized ioctls.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::state::lock_order::{level, Condvar, Mutex, MutexGuard, RwLock};
use krak_placement::PlacementPolicy;
use krak_uffd::{CopyError, Uffd, PAGE_SIZE};

use crate::error::{InstallError, MoveFailure, PagerError};
use crate::policy::eviction::EvictionPolicy;
use crate::policy::prefetch::PrefetchPolicy;
use crate::remote::RemoteLayout;
use crate::state::memory::RegionMemory;
use crate::state::page_table::{Kind, PageTable, Victim};
use crate::state::stats::Counters;

/// Most pages with a corrupt fragment waiting to be rewritten; past it a corruption is
/// left for the next read of the page to find again.
pub const MAX_REPAIRS: usize = 4096;

/// Most ranges of discarded pages waiting to be told to the servers.
pub const MAX_PENDING_DISCARDS: usize = 4096;

/// Most free frames the reclaimer keeps ahead of need.
const MAX_WATERMARK_PAGES: usize = 256;
/// The reclaimer's batches (`fault/reclaim.rs`): pages picked per batch, and dirty ones
/// among them. A batch's clean victims share one drop and its TLB flush; each dirty one
/// costs a write protection (a flush of its own) and a copy; a fault on a victim waits for
/// the whole batch. Chosen by fault mode from `krak bench` (BENCHMARKS.md, issue 13): with
/// self-serving threads 64 and 16 took a third less CPU per fault than 8 and 1 in thrash,
/// for a p99 about 10% longer. With handler threads 64 and 16 doubled the p99; 16 and 4
/// keep it near 8 and 1's while programs under `krak run` run as fast as with 64 and 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReclaimBatch {
    pub pages: usize,
    pub dirty: usize,
}

impl ReclaimBatch {
    pub fn for_mode(mode: crate::FaultMode) -> ReclaimBatch {
        match mode {
            crate::FaultMode::Sigbus => ReclaimBatch { pages: 64, dirty: 16 },
            crate::FaultMode::Threads => ReclaimBatch { pages: 16, dirty: 4 },
        }
    }
}

/// How long an evictor waits for the write-back thread before it looks again.
const SPACE_WAIT_MS: u64 = 20;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    pub handler_threads: usize,
    pub max_prefetch_pages: usize,
    pub writeback_batch_pages: usize,
    pub writeback_buffer_pages: usize,
    pub spin_us: u64,
    pub scrub_interval_ms: u64,
    /// Chunks get their slabs at their first write-back (`fault/reserve.rs`).
    pub reserve_on_demand: bool,
    pub reclaim_batch: ReclaimBatch,
}

/// The core lock held.
pub(crate) type CoreGuard<'a> = MutexGuard<'a, Core, { level::CORE }>;

pub(crate) struct Core {
    /// Every page's state, the resident count the budget bounds, and staged pages' bytes.
    pub pages: PageTable,
    pub budget_pages: usize,
    /// While a shrink evicts down to `budget_pages`, the budget it started from: the bound
    /// still in force for anyone watching until the shrink is done.
    pub shrinking_from: Option<usize>,
    pub eviction: Box<dyn EvictionPolicy>,
    pub prefetch: Box<dyn PrefetchPolicy>,
    /// Evicted pages not yet taken by the write-back thread, oldest first.
    pub wb_queue: VecDeque<(usize, Arc<[u8]>)>,
    /// Pages queued or being written: bounded by `writeback_buffer_pages`.
    pub wb_pending: usize,
    /// Set while write-back keeps failing; faults that need space then fail instead of waiting
    /// once the buffer is full.
    pub failure: Option<Arc<PagerError>>,
    /// Set while faults go on over the budget because the rack has no room for the chunks
    /// the pages to evict need (a region reserving on demand); cleared once eviction gets
    /// back within it.
    pub over_budget: bool,
    /// Pages whose write-back failed, waiting out a pause before they are tried again (first
    /// in line); they count in `wb_pending` and stay STAGED meanwhile.
    pub wb_parked: Vec<(usize, Arc<[u8]>)>,
    pub wb_parked_since: Option<std::time::Instant>,
    /// Pages whose faults (handler-thread mode) wait for an EVICTING page to be dropped.
    pub evict_waiters: Vec<usize>,
    /// Write-back batches taken off the queue, and of those the ones whose writes have all
    /// been answered: a chunk move waits until every batch taken before it began is done,
    /// so that no write located before the move can land after its copy read the page.
    pub wb_batches_taken: u64,
    pub wb_batches_done: u64,
    /// Chunk moves waiting for (or being run by) the write-back thread, oldest first.
    pub moves: VecDeque<ChunkMove>,
    /// Outcome of finished moves by id: pages copied, or why it failed.
    pub moves_finished: HashMap<u64, Result<u64, MoveFailure>>,
    /// Pages of a redundant region a read found a corrupt fragment of, for the write-back
    /// thread to rewrite (bounded by `MAX_REPAIRS`).
    pub repairs: VecDeque<usize>,
    /// Ranges of pages discarded whose remote copies the servers may forget, for the
    /// write-back thread to tell them, ordered with its writes (bounded by
    /// `MAX_PENDING_DISCARDS`; past it the servers keep those copies until the region goes).
    pub discards: VecDeque<std::ops::Range<usize>>,
}

impl Core {
    /// A region of `pages` pages, none resident, with `budget_pages` of local budget.
    pub fn new(
        pages: usize,
        budget_pages: usize,
        eviction: Box<dyn EvictionPolicy>,
        prefetch: Box<dyn PrefetchPolicy>,
    ) -> Core {
        Core {
            pages: PageTable::new(pages),
            budget_pages,
            shrinking_from: None,
            eviction,
            prefetch,
            wb_queue: VecDeque::new(),
            wb_pending: 0,
            failure: None,
            over_budget: false,
            wb_parked: Vec::new(),
            wb_parked_since: None,
            evict_waiters: Vec::new(),
            wb_batches_taken: 0,
            wb_batches_done: 0,
            moves: VecDeque::new(),
            moves_finished: HashMap::new(),
            repairs: VecDeque::new(),
            discards: VecDeque::new(),
        }
    }
}

/// A fragment being filled (a rebuild, or what a move's copy left) and switched by the
/// write-back thread (see `moves/fragment.rs`, `moves/reprotect.rs`).
#[derive(Debug)]
pub(crate) struct ChunkMove {
    pub id: u64,
    pub chunk: usize,
    /// Next page of the chunk (region page index) to copy.
    pub next_page: usize,
    pub pages_copied: u64,
    pub kind: MoveKind,
}

/// What a job on the write-back thread's move queue does with its chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MoveKind {
    /// Fills the replacement slab of lost fragment `i` of a redundant chunk's stripe
    /// (`moves/reprotect.rs`).
    Rebuild(usize),
    /// Fills what the mover's copy left of the slab fragment `i` moves to (fragment 0 of a
    /// region without redundancy is its whole chunk), then switches (`moves/fragment.rs`).
    Fragment(usize),
}

pub(crate) struct RegionShared {
    pub core: Mutex<Core, { level::CORE }>,
    /// Wakes the write-back thread.
    pub wb_wake: Condvar,
    /// Wakes evictors waiting for write-back space or for fetches to land.
    pub space: Condvar,
    /// Wakes the reclaimer when free frames run low.
    pub reclaim_wake: Condvar,
    /// Wakes callers waiting for a chunk move to finish.
    pub moved: Condvar,
    pub uffd: Uffd,
    pub map: RegionMemory,
    pub layout: RemoteLayout,
    /// One connection per server for slab allocation and release, indexed like the layout.
    pub admin: Mutex<Vec<Option<krak_client::Connection>>, { level::ADMIN }>,
    pub counters: Counters,
    pub tuning: Tuning,
    pub stop: AtomicBool,
    pub peak_resident: AtomicUsize,
    /// Pairs of servers (by layout index, from → to) where a push was refused: their moves
    /// relay at once instead of trying again (bounded by the pairs of servers).
    pub push_refused: Mutex<Vec<(usize, usize)>, { level::PUSH_REFUSED }>,
    /// Held (shared) by each step of a scrub, and (exclusive) by a fragment move before it
    /// frees the old slab, so that a scrub never reads a slab freed under it (which would
    /// lose its server for the region).
    pub scrub_gate: RwLock<(), { level::SCRUB_GATE }>,
    /// The policy placing this region's replacements and drained fragments over its list of
    /// servers (switchable while it runs; unused when the controller places).
    pub placement: Mutex<Arc<dyn PlacementPolicy>, { level::PLACEMENT }>,
    /// The process id (`ServerHello::server_id`) each server of the table had when the
    /// region first heard from it: a different one is a restarted server.
    pub server_ids: Mutex<HashMap<usize, u64>, { level::HELLO_IDS }>,
    /// The controller that places the region, if one does (else `placement` over its list).
    pub rack: Option<Arc<crate::follow::link::ControllerLink>>,
    /// Pages whose faults keep failing: when they began to, and when they last did.
    pub failing: Mutex<HashMap<usize, (std::time::Instant, std::time::Instant)>, { level::FAILING }>,
    /// Held across a chunk's reservation or release (`fault/reserve.rs`).
    pub reserving: Mutex<(), { level::RESERVING }>,
    /// The chunk reserved ahead of need and not written yet (`usize::MAX`: none).
    pub ahead: AtomicUsize,
    /// Asks the reservation thread to reserve a chunk ahead (a region reserving on demand).
    pub ahead_tx: Option<std::sync::mpsc::SyncSender<usize>>,
}

impl RegionShared {
    /// Counts what a thread's redundant reads found and queues rewrites of corrupt
    /// fragments. Call without the core lock.
    pub fn take_found(&self, links: &mut crate::remote::Links) {
        let found = std::mem::take(&mut links.found);
        Counters::add(&self.counters.degraded_reads, found.degraded_pages);
        if found.corrupt_pages.is_empty() {
            return;
        }
        Counters::add(&self.counters.corrupt_fragments, found.corrupt_fragments);
        let mut core = self.core.lock();
        for page in found.corrupt_pages {
            if core.repairs.len() < MAX_REPAIRS && !core.repairs.contains(&page) {
                core.repairs.push_back(page);
            }
        }
        self.wb_wake.notify_one();
    }

    /// The list placement policy now in force.
    pub fn placement_policy(&self) -> Arc<dyn PlacementPolicy> {
        self.placement.lock().clone()
    }

    pub fn region_pages(&self) -> usize {
        self.map.len() / PAGE_SIZE
    }

    pub fn addr(&self, page: usize) -> usize {
        self.map.base() + page * PAGE_SIZE
    }

    /// Most pages one fault may fetch ahead, so that the reservations of all handlers
    /// together never take more than half the budget.
    pub fn prefetch_cap(&self, core: &Core) -> usize {
        let share = core.budget_pages / (2 * self.tuning.handler_threads);
        share.saturating_sub(1).min(self.tuning.max_prefetch_pages)
    }

    /// Evicts until `n` more pages fit in the budget. The reclaimer thread normally keeps
    /// enough free frames that this finds nothing to do; when it cannot keep up, the fault
    /// path evicts just what it needs.
    /// Changes the local budget to `pages`; shrinking evicts at once (the old budget stays
    /// the one in force until eviction reached the new).
    pub fn set_local_budget(&self, pages: usize) -> Result<(), PagerError> {
        let mut core = self.core.lock();
        if pages < core.budget_pages {
            let old = core.shrinking_from.unwrap_or(core.budget_pages);
            core.shrinking_from = Some(old);
        }
        core.budget_pages = pages;
        // On success `make_room` ended the shrink; on failure the old budget stays in force
        // until a later `make_room` gets there.
        self.make_room(&mut core, 0)
    }

    pub fn make_room(&self, core: &mut CoreGuard<'_>, n: usize) -> Result<(), PagerError> {
        while core.pages.resident() + n > core.budget_pages {
            let needed = core.pages.resident() + n - core.budget_pages;
            if self.evict_batch(core, needed)? == 0 {
                // Failing write-backs fail the fault only once the buffer is full and nothing
                // in it waits but pages that failed (parked): some pages of a redundant
                // region may fail for good while the rest still land.
                let stuck = core.wb_pending >= self.tuning.writeback_buffer_pages
                    && core.wb_queue.is_empty()
                    && !core.wb_parked.is_empty();
                if let Some(why) = core.failure.as_ref().filter(|_| stuck) {
                    if why.is_rack_full() {
                        // No room on the rack for the chunks these pages need: keep pages
                        // local over the budget rather than fail the program; their
                        // write-backs are tried again and eviction resumes once there is.
                        if !core.over_budget {
                            tracing::warn!(
                                "over the local budget of {} pages: {why}; pages stay local until the rack has room",
                                core.budget_pages
                            );
                        }
                        core.over_budget = true;
                        Counters::add(&self.counters.over_budget_faults, 1);
                        return Ok(());
                    }
                    return Err(PagerError::WritebackFailed(Arc::clone(why)));
                }
                // The write-back buffer is full, or everything resident is being fetched by
                // other handlers: wait for either to make progress.
                self.space.wait_for(core, Duration::from_millis(SPACE_WAIT_MS));
            }
        }
        // Every frame, mapped or reserved, now fits the budget: a shrink is over.
        core.shrinking_from = None;
        if core.over_budget {
            core.over_budget = false;
            tracing::info!("back within the local budget of {} pages", core.budget_pages);
        }
        if core.pages.resident() + self.low_watermark(core) > core.budget_pages {
            self.reclaim_wake.notify_one();
        }
        Ok(())
    }

    /// Free frames below which the reclaimer starts evicting ahead of need.
    pub fn low_watermark(&self, core: &Core) -> usize {
        (core.budget_pages / 64).clamp(1, MAX_WATERMARK_PAGES)
    }

    /// Evicts up to `count` pages with the lock held (the fault path, when the reclaimer did
    /// not keep up); the clean ones share one TLB flush. Returns how many.
    pub fn evict_batch(&self, core: &mut Core, count: usize) -> Result<usize, PagerError> {
        let mut clean = Vec::with_capacity(count);
        let mut dirty = 0;
        let mut saved = Ok(());
        while clean.len() + dirty < count && core.wb_pending < self.tuning.writeback_buffer_pages {
            let Some(victim) = core.eviction.pick_victim() else { break };
            match core.pages.kind(victim) {
                Kind::Clean => clean.push(victim),
                Kind::Dirty => match self.evict_dirty(core, victim) {
                    Ok(()) => dirty += 1,
                    Err(e) => {
                        // still mapped and dirty: the policy keeps it
                        core.eviction.inserted(victim);
                        saved = Err(e);
                        break;
                    }
                },
                other => {
                    // The policy only ever holds resident pages; anything else is a bug.
                    debug_assert!(false, "policy named page {victim} in state {other:?}");
                    tracing::error!("eviction policy named page {victim} in state {other:?}; skipped");
                }
            }
        }
        if !clean.is_empty() {
            // Absent only once unmapped: a page still mapped must stay in the policy.
            if let Err(e) = self.map.discard_pages(&clean) {
                clean.iter().for_each(|&page| core.eviction.inserted(page));
                return Err(PagerError::Mapping(e));
            }
            clean.iter().for_each(|&page| core.pages.evict_clean(page));
            Counters::add(&self.counters.evictions_clean, clean.len() as u64);
        }
        saved.map(|()| clean.len() + dirty)
    }

    /// Evicts up to `count` pages like [`RegionShared::evict_batch`], but makes the expensive
    /// calls (write-protect, copy, drop; each a TLB flush on other CPUs) with the lock
    /// released, so that faults never wait behind them. The victims are EVICTING meanwhile.
    pub fn evict_batch_unlocked(&self, core: &mut CoreGuard<'_>, count: usize) -> Result<usize, PagerError> {
        let mut victims: Vec<Victim> = Vec::with_capacity(count);
        let mut dirty = 0;
        // Dirty victims are bounded apart ([`ReclaimBatch`]), and so is the write-back room
        // they take.
        while victims.len() < count
            && dirty < self.tuning.reclaim_batch.dirty
            && core.wb_pending + dirty < self.tuning.writeback_buffer_pages
        {
            let Some(victim) = core.eviction.pick_victim() else { break };
            match core.pages.kind(victim) {
                Kind::Clean | Kind::Dirty => {
                    let v = core.pages.start_evicting(victim);
                    dirty += usize::from(v.dirty());
                    victims.push(v);
                }
                other => {
                    debug_assert!(false, "policy named page {victim} in state {other:?}");
                    tracing::error!("eviction policy named page {victim} in state {other:?}; skipped");
                }
            }
        }
        if victims.is_empty() {
            return Ok(0);
        }
        // Reserve write-back room for the dirty ones before letting go of the lock.
        core.wb_pending += dirty;
        let dropped = MutexGuard::unlocked(core, || self.drop_victims(&victims));
        let (copies, failed) = match dropped {
            Dropped::All(copies) => (copies, None),
            Dropped::SavedOnly(copies, e) => (copies, Some(e)),
            Dropped::Nothing(e) => {
                // Nothing was dropped: put every victim back as it was.
                for v in victims {
                    core.pages.cancel_evicting(v);
                    core.eviction.inserted(v.page);
                }
                core.wb_pending -= dirty;
                self.wake_evict_waiters(core);
                return Err(e);
            }
        };
        // Every dirty victim's bytes are saved: staged, they are safe whether or not its
        // mapping went (a page left mapped faults on its write protection and is served
        // from them).
        let mut copies = copies.into_iter();
        for &v in &victims {
            let bytes = v.dirty().then(|| copies.next().expect("one copy per dirty victim").into());
            if let Some(bytes) = &bytes {
                core.wb_queue.push_back((v.page, Arc::clone(bytes)));
            }
            core.pages.finish_evicting(v, bytes);
        }
        Counters::add(&self.counters.evictions_dirty, dirty as u64);
        Counters::add(&self.counters.evictions_clean, (victims.len() - dirty) as u64);
        if dirty > 0 {
            self.wb_wake.notify_one();
        }
        self.wake_evict_waiters(core);
        failed.map_or(Ok(victims.len()), Err)
    }

    /// Wakes the faults that waited for EVICTING pages to settle.
    fn wake_evict_waiters(&self, core: &mut Core) {
        for page in std::mem::take(&mut core.evict_waiters) {
            let _ = self.uffd.wake(self.addr(page), PAGE_SIZE);
        }
        self.space.notify_all();
    }

    /// Write-protects and copies the dirty victims, then drops every victim with one flush.
    /// Runs without the lock: the victims are EVICTING, so only this thread touches them.
    fn drop_victims(&self, victims: &[Victim]) -> Dropped {
        let mut copies = Vec::new();
        for v in victims.iter().filter(|v| v.dirty()) {
            // EVICTING: no thread lifts its protection or drops it but this one.
            match self.save_dirty(v.page) {
                Ok(bytes) => copies.push(bytes),
                Err(e) => return Dropped::Nothing(e),
            }
        }
        let pages: Vec<usize> = victims.iter().map(|v| v.page).collect();
        if let Err(e) = self.map.discard_pages(&pages) {
            // Some may still be mapped: a clean one is the same as its copy (or zeros), a
            // dirty one is saved; none is lost.
            return Dropped::SavedOnly(copies, PagerError::Mapping(e));
        }
        Dropped::All(copies)
    }

    /// Write-protects a dirty page (a writer now blocks on a fault served after the copy)
    /// and copies it out. The caller guarantees the page is present and that nobody lifts
    /// its protection meanwhile: it holds the core lock, or the page is EVICTING.
    fn save_dirty(&self, page: usize) -> Result<Vec<u8>, PagerError> {
        self.uffd.write_protect(self.addr(page), PAGE_SIZE, true, false).map_err(PagerError::Uffd)?;
        let mut bytes = vec![0u8; PAGE_SIZE];
        // SAFETY: present and write-protected, and protection is lifted only by the holder
        // of the core lock for a CLEAN page, which this one is not (caller's contract).
        unsafe { self.map.copy_page(page, &mut bytes) }.map_err(PagerError::Mapping)?;
        Ok(bytes)
    }

    fn evict_dirty(&self, core: &mut Core, page: usize) -> Result<(), PagerError> {
        let bytes: Arc<[u8]> = self.save_dirty(page)?.into();
        // Staged before the mapping goes: if dropping it fails, the bytes are safe and a
        // fault on the page (still write-protected) is served from them.
        core.pages.stage(page, bytes.clone());
        core.wb_queue.push_back((page, bytes));
        core.wb_pending += 1;
        self.wb_wake.notify_one();
        Counters::add(&self.counters.evictions_dirty, 1);
        self.map.discard(page * PAGE_SIZE, PAGE_SIZE).map_err(PagerError::Mapping)
    }

    /// Installs `bytes` (whole pages) at `first_page` and records them resident. The caller
    /// reserved their frames and holds the core lock. On an error the pages mapped before it
    /// are recorded as installed all the same; the caller gives back the rest.
    pub fn install(&self, core: &mut Core, first_page: usize, bytes: &[u8], dirty: bool) -> Result<(), PagerError> {
        let addr = self.addr(first_page);
        let mut done = 0;
        let mut again = 0;
        let mut already_present = Vec::new();
        let mut result = Ok(());
        // One page at a time after a window ran past the end of a mapping (the program's
        // mprotect splits the region's mapping), until that page is in.
        let mut single = false;
        while done < bytes.len() {
            let end = if single { done + PAGE_SIZE } else { bytes.len() };
            match self.uffd.copy(addr + done, &bytes[done..end], !dirty, true) {
                Ok(n) => {
                    done += n;
                    single = false;
                }
                Err(CopyError::OutsideMapping { .. }) if end - done > PAGE_SIZE => single = true,
                Err(CopyError::OutsideMapping { .. }) if done > 0 => {
                    result = Err(InstallError::EndOfMapping { copied: done }.into());
                    break;
                }
                Err(CopyError::OutsideMapping { start, len }) => {
                    result = Err(InstallError::OutsideMapping { start, len }.into());
                    break;
                }
                Err(CopyError::Again { copied }) if again < 8 => {
                    done += copied;
                    again += 1;
                }
                Err(CopyError::Exists) => {
                    // Someone mapped it behind our back: wake waiters, and keep it as dirty so
                    // that whatever is there is never dropped unwritten.
                    tracing::warn!("page at {:#x} already present while being installed", addr + done);
                    let _ = self.uffd.wake(addr + done, PAGE_SIZE);
                    already_present.push(first_page + done / PAGE_SIZE);
                    done += PAGE_SIZE;
                }
                Err(CopyError::Again { copied }) => {
                    done += copied;
                    result = Err(InstallError::MappingUnstable { copied: done }.into());
                    break;
                }
                Err(CopyError::Other(e)) => {
                    result = Err(PagerError::Uffd(e));
                    break;
                }
            }
        }
        for page in first_page..first_page + done / PAGE_SIZE {
            core.pages.installed(page, dirty || already_present.contains(&page));
            core.eviction.inserted(page);
        }
        // Every page mapped had its frame covered by a `make_room` that returned: mapped
        // pages never exceed the budget (during a shrink, the one being left), unless the
        // rack had no room for them.
        let mapped = core.pages.mapped();
        debug_assert!(
            mapped <= core.budget_pages.max(core.shrinking_from.unwrap_or(0)) || core.over_budget,
            "{mapped} pages mapped over a budget of {}",
            core.budget_pages
        );
        self.peak_resident.fetch_max(mapped, Ordering::Relaxed);
        // Self-serving threads waiting for this page to land wait on `space`.
        self.space.notify_all();
        result
    }
}

/// What [`RegionShared::drop_victims`] got done.
enum Dropped {
    /// Every victim unmapped; the dirty ones' bytes, in victim order.
    All(Vec<Vec<u8>>),
    /// The dirty ones' bytes saved, but some victims may still be mapped.
    SavedOnly(Vec<Vec<u8>>, PagerError),
    /// Nothing dropped, nothing saved.
    Nothing(PagerError),
}
