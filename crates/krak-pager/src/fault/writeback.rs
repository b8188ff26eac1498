//! The write-back thread: sends evicted dirty pages to their memory servers in batches, off
//! the fault path, and only then lets their pages count as remote.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use krak_uffd::PAGE_SIZE;

use crate::remote::Links;
use crate::state::core::*;
use crate::state::stats::Counters;

/// Pause after a batch failed every retry, before its pages are tried again.
const FAILURE_PAUSE: Duration = Duration::from_millis(500);
/// Most pages with a corrupt fragment rewritten in one step.
const REPAIR_BATCH_PAGES: usize = 64;

/// One piece of the write-back thread's work, picked under the core lock.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WbJob {
    /// The region stops and nothing is queued.
    Exit,
    /// Tell the servers to forget these ranges of pages: before any batch taken after
    /// them, so a page rewritten after its discard is written after it, and the discard
    /// never drops the newer write.
    Discard(Vec<std::ops::Range<usize>>),
    /// Re-read pages a read found a corrupt fragment of and rewrite them: here, so that
    /// the repair is ordered with every write-back of the same pages.
    Repair(Vec<usize>),
    /// One step of the move at the head of the move queue (run with the core lock held):
    /// on this thread, so every write to a new home comes after the writes queued before.
    MoveStep,
    /// Write the pages taken into the batch.
    Batch,
}

/// Which kinds of work went last: under a write-heavy load the queue is never empty, and
/// batches alternate with repairs and move steps so that neither starves.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    moved_last: bool,
    repaired_last: bool,
}

/// The next job, or `None` when there is nothing to do yet. A `Batch` moves up to
/// `batch_pages` pages from the queue into `batch`.
pub(crate) fn pick(
    core: &mut Core,
    turns: &mut Turns,
    batch: &mut Vec<(usize, Arc<[u8]>)>,
    batch_pages: usize,
    stopping: bool,
) -> Option<WbJob> {
    // A stopping region drops what is not written yet: its slabs go with it.
    if stopping && core.wb_queue.is_empty() {
        return Some(WbJob::Exit);
    }
    if !core.discards.is_empty() {
        return Some(WbJob::Discard(core.discards.drain(..).collect()));
    }
    if !core.repairs.is_empty() && (core.wb_queue.is_empty() || !turns.repaired_last) {
        turns.repaired_last = true;
        let n = core.repairs.len().min(REPAIR_BATCH_PAGES);
        return Some(WbJob::Repair(core.repairs.drain(..n).collect()));
    }
    turns.repaired_last = false;
    if !core.moves.is_empty() && (core.wb_queue.is_empty() || !turns.moved_last) {
        turns.moved_last = true;
        return Some(WbJob::MoveStep);
    }
    turns.moved_last = false;
    if core.wb_queue.is_empty() {
        return None;
    }
    let n = core.wb_queue.len().min(batch_pages);
    batch.extend(core.wb_queue.drain(..n));
    core.wb_batches_taken += 1;
    Some(WbJob::Batch)
}

pub(crate) fn run(shared: Arc<RegionShared>) {
    let mut links = Links::new(shared.layout.server_count());
    let mut batch: Vec<(usize, Arc<[u8]>)> = Vec::with_capacity(shared.tuning.writeback_batch_pages);
    let mut turns = Turns::default();
    loop {
        let mut core = shared.core.lock();
        unpark_due(&mut core);
        let job = loop {
            let stopping = shared.stop.load(Ordering::Relaxed);
            if let Some(job) = pick(&mut core, &mut turns, &mut batch, shared.tuning.writeback_batch_pages, stopping) {
                break job;
            }
            let wait = match core.wb_parked_since {
                Some(t) => (t + FAILURE_PAUSE).saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
                None => Duration::from_millis(100),
            };
            shared.wb_wake.wait_for(&mut core, wait.min(Duration::from_millis(100)));
            unpark_due(&mut core);
        };
        match job {
            WbJob::Exit => return,
            WbJob::Discard(ranges) => {
                drop(core);
                let emptied = shared.tuning.reserve_on_demand.then(|| ranges.clone());
                let units = links.discard_remote(&shared.layout, ranges);
                if let Some(ranges) = emptied {
                    crate::fault::reserve::release_emptied(&shared, &ranges);
                }
                // Counted once the job is whole (the chunks it emptied given back).
                Counters::add(&shared.counters.remote_discards, units);
            }
            WbJob::Repair(pages) => {
                drop(core);
                repair(&shared, &mut links, &pages);
            }
            WbJob::MoveStep => crate::moves::reprotect::step(&shared, &mut links, core),
            WbJob::Batch => {
                drop(core);
                write_batch(&shared, &mut links, &mut batch);
            }
        }
    }
}

/// Writes the batch taken off the queue, and records what landed.
fn write_batch(shared: &RegionShared, links: &mut Links, batch: &mut Vec<(usize, Arc<[u8]>)>) {
    {
        // A region reserving on demand gets the slabs of chunks written back for the first
        // time now; pages of chunks that got none are kept, not written.
        let chunk_pages = shared.layout.chunk_pages;
        let (unreserved, unreserved_why) = if shared.tuning.reserve_on_demand {
            let pages: Vec<usize> = batch.iter().map(|(p, _)| *p).collect();
            crate::fault::reserve::reserve_for(shared, &pages)
        } else {
            (Vec::new(), None)
        };
        let pages: Vec<(usize, &[u8])> =
            batch.iter().filter(|(p, _)| !unreserved.contains(&(p / chunk_pages))).map(|(p, b)| (*p, &b[..])).collect();
        let result = if pages.is_empty() { Ok(()) } else { links.write(&shared.layout, &pages) };
        let written = batch.len();
        let mut failed_pages: Vec<usize> =
            batch.iter().map(|(p, _)| *p).filter(|p| unreserved.contains(&(p / chunk_pages))).collect();
        drop(pages);
        let mut core = shared.core.lock();
        core.wb_batches_done = core.wb_batches_taken;
        Counters::add(&shared.counters.retries, std::mem::take(&mut links.retries));
        // Pages whose write did not land: none, some (those written to fewer fragments
        // than a read needs, or missing a moving fragment's new slab, or of chunks that
        // could not be reserved), or all of them.
        let mut why = unreserved_why.map(Arc::new);
        if let Err(e) = result {
            match &e {
                crate::PagerError::Unwritable { pages, .. } => failed_pages.extend(pages),
                _ => failed_pages
                    .extend(batch.iter().map(|(p, _)| *p).filter(|p| !unreserved.contains(&(p / chunk_pages)))),
            }
            why = Some(Arc::new(e));
        }
        let failed: Option<(Vec<usize>, Arc<crate::PagerError>)> =
            why.filter(|_| !failed_pages.is_empty()).map(|why| (failed_pages, why));
        let mut retry = Vec::new();
        let mut landed = 0;
        for (page, bytes) in batch.drain(..) {
            if failed.as_ref().is_some_and(|(pages, _)| pages.contains(&page)) {
                retry.push((page, bytes));
                continue;
            }
            // Only the newest staged copy turns the page remote; an older write that
            // completes after the page was faulted back in changes nothing.
            core.pages.landed(page, &bytes);
            core.wb_pending -= 1;
            landed += 1;
        }
        Counters::add(&shared.counters.remote_writes, landed);
        shared.space.notify_all();
        match failed {
            None if core.wb_parked.is_empty() => core.failure = None,
            None => {}
            Some((_, why)) => {
                tracing::error!(
                    "write-back of {} of {written} pages failed: {why}; they stay buffered and are retried in {} ms",
                    retry.len(),
                    FAILURE_PAUSE.as_millis()
                );
                core.failure = Some(why);
                // Park them, so that pages no server can take do not hold up the others.
                for (page, bytes) in retry {
                    park(&mut core, page, bytes);
                }
                core.wb_parked_since.get_or_insert_with(Instant::now);
            }
        }
    }
}

/// Keeps a failed write-back for a later try, if it is still its page's newest copy (an
/// older copy written after a newer one would overwrite it); drops it otherwise.
fn park(core: &mut Core, page: usize, bytes: Arc<[u8]>) {
    if core.pages.is_newest(page, &bytes) {
        core.wb_parked.push((page, bytes));
    } else {
        core.wb_pending -= 1;
    }
}

/// Puts parked write-backs back at the head of the queue once their pause is over.
fn unpark_due(core: &mut Core) {
    let due = matches!(core.wb_parked_since, Some(t) if t.elapsed() >= FAILURE_PAUSE);
    if !due {
        return;
    }
    core.wb_parked_since = None;
    for (page, bytes) in std::mem::take(&mut core.wb_parked).into_iter().rev() {
        if core.pages.is_newest(page, &bytes) {
            core.wb_queue.push_front((page, bytes));
        } else {
            core.wb_pending -= 1;
        }
    }
}

/// Re-reads pages a read found a corrupt fragment of (every fragment, rebuilding the page
/// from the good ones) and rewrites every fragment of those still corrupt.
fn repair(shared: &RegionShared, links: &mut Links, pages: &[usize]) {
    let layout = &shared.layout;
    let mut buf = vec![0u8; pages.len() * PAGE_SIZE];
    let started = links.start_stripe_read_with(layout, pages, true);
    let read = links.finish_read(layout, started, &mut buf);
    let found = std::mem::take(&mut links.found);
    if let Err(e) = read {
        tracing::warn!("re-reading {} pages with a corrupt fragment failed: {e}", pages.len());
        return;
    }
    let rewrite: Vec<(usize, &[u8])> = pages
        .iter()
        .zip(buf.chunks_exact(PAGE_SIZE))
        .filter(|(p, _)| found.corrupt_pages.contains(p))
        .map(|(p, data)| (*p, data))
        .collect();
    if rewrite.is_empty() {
        return;
    }
    match links.write(layout, &rewrite) {
        Ok(()) => {
            Counters::add(&shared.counters.corrupt_fragments_repaired, found.corrupt_fragments);
            tracing::info!("rewrote {} corrupt fragments of {} pages", found.corrupt_fragments, rewrite.len());
        }
        Err(e) => tracing::warn!("rewriting {} pages with a corrupt fragment failed: {e}", rewrite.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::core::{ChunkMove, MoveKind};

    fn core() -> Core {
        Core::new(64, 16, Box::new(crate::Clock::new(64)), Box::new(crate::NoPrefetch))
    }

    fn queue(core: &mut Core, pages: std::ops::Range<usize>) {
        for p in pages {
            core.wb_queue.push_back((p, vec![0u8; 8].into()));
        }
    }

    #[test]
    fn discards_go_first_and_batches_alternate_with_repairs_and_moves() {
        let (mut c, mut turns, mut batch) = (core(), Turns::default(), Vec::new());
        assert_eq!(pick(&mut c, &mut turns, &mut batch, 4, false), None, "nothing to do: wait");
        queue(&mut c, 0..10);
        c.repairs.extend([3, 4]);
        c.moves.push_back(ChunkMove { id: 1, chunk: 0, next_page: 0, pages_copied: 0, kind: MoveKind::Fragment(0) });
        c.discards.extend([5..6, 9..12]);
        let mut next = |c: &mut Core| pick(c, &mut turns, &mut batch, 4, false);
        assert_eq!(next(&mut c), Some(WbJob::Discard(vec![5..6, 9..12])));
        assert_eq!(next(&mut c), Some(WbJob::Repair(vec![3, 4])));
        assert_eq!(next(&mut c), Some(WbJob::MoveStep));
        assert_eq!(next(&mut c), Some(WbJob::Batch), "a move step is followed by a batch");
        assert_eq!(next(&mut c), Some(WbJob::MoveStep), "and a batch by the next step");
        assert_eq!(next(&mut c), Some(WbJob::Batch));
        c.moves.clear();
        assert_eq!(next(&mut c), Some(WbJob::Batch));
        assert_eq!(c.wb_batches_taken, 3);
        assert!(c.wb_queue.is_empty());
    }

    #[test]
    fn batches_are_bounded_and_a_stopping_region_exits_once_the_queue_is_empty() {
        let (mut c, mut turns, mut batch) = (core(), Turns::default(), Vec::new());
        queue(&mut c, 0..6);
        assert_eq!(pick(&mut c, &mut turns, &mut batch, 4, true), Some(WbJob::Batch));
        assert_eq!(batch.len(), 4);
        batch.clear();
        assert_eq!(pick(&mut c, &mut turns, &mut batch, 4, true), Some(WbJob::Batch));
        assert_eq!(batch.len(), 2);
        c.moves.push_back(ChunkMove { id: 1, chunk: 0, next_page: 0, pages_copied: 0, kind: MoveKind::Fragment(0) });
        assert_eq!(pick(&mut c, &mut turns, &mut batch, 4, true), Some(WbJob::Exit));
    }
}
