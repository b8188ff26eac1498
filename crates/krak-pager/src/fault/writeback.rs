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

pub(crate) fn run(shared: Arc<Shared>) {
    let mut links = Links::new(shared.layout.server_count());
    let mut batch: Vec<(usize, Arc<[u8]>)> = Vec::with_capacity(shared.limits.writeback_batch_pages);
    // Under a write-heavy load the queue is never empty: alternate batches and move steps so
    // that neither starves.
    let mut moved_last = false;
    let mut repaired_last = false;
    loop {
        {
            let mut core = shared.core.lock();
            unpark_due(&mut core);
            while core.wb_queue.is_empty() {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                if !core.moves.is_empty() || !core.repairs.is_empty() || !core.discards.is_empty() {
                    break;
                }
                let wait = match core.wb_parked_since {
                    Some(t) => {
                        (t + FAILURE_PAUSE).saturating_duration_since(Instant::now()).max(Duration::from_millis(1))
                    }
                    None => Duration::from_millis(100),
                };
                shared.wb_wake.wait_for(&mut core, wait.min(Duration::from_millis(100)));
                unpark_due(&mut core);
            }
            if !core.discards.is_empty() {
                // Before any batch taken after them: a page rewritten after its discard is
                // written after it, so the discard never drops the newer write.
                let ranges: Vec<std::ops::Range<usize>> = core.discards.drain(..).collect();
                drop(core);
                let units = links.discard_remote(&shared.layout, ranges);
                Counters::add(&shared.counters.remote_discards, units);
                continue;
            }
            if !core.repairs.is_empty() && (core.wb_queue.is_empty() || !repaired_last) {
                // Rewriting here orders the repair with every write-back of the same pages.
                repaired_last = true;
                let n = core.repairs.len().min(REPAIR_BATCH_PAGES);
                let pages: Vec<usize> = core.repairs.drain(..n).collect();
                drop(core);
                repair(&shared, &mut links, &pages);
                continue;
            }
            repaired_last = false;
            if !core.moves.is_empty() && (core.wb_queue.is_empty() || !moved_last) {
                // Copy the next piece of a moving chunk. Doing it on this thread orders every
                // write to the new home after the writes queued before it.
                moved_last = true;
                crate::moves::chunk::step(&shared, &mut links, core);
                continue;
            }
            moved_last = false;
            let n = core.wb_queue.len().min(shared.limits.writeback_batch_pages);
            batch.extend(core.wb_queue.drain(..n));
            core.wb_batches_taken += 1;
        }
        let pages: Vec<(usize, &[u8])> = batch.iter().map(|(p, b)| (*p, &b[..])).collect();
        let result = links.write(&shared.layout, &pages);
        let written = pages.len();
        drop(pages);
        let mut core = shared.core.lock();
        core.wb_batches_done = core.wb_batches_taken;
        Counters::add(&shared.counters.retries, std::mem::take(&mut links.retries));
        // Pages whose write did not land: none, some (a redundant region's chunks beyond
        // what their scheme tolerates), or all of them.
        let failed: Option<(Vec<usize>, String)> = match result {
            Ok(()) => None,
            Err(crate::PagerError::Unwritable { pages, detail }) => Some((pages, detail)),
            Err(e) => Some((batch.iter().map(|(p, _)| *p).collect(), e.to_string())),
        };
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
fn repair(shared: &Shared, links: &mut Links, pages: &[usize]) {
    let layout = &shared.layout;
    let mut buf = vec![0u8; pages.len() * PAGE_SIZE];
    let started = crate::remote::Started::Stripe(Box::new(links.start_stripe_read_with(layout, pages, true)));
    let read = links.finish_read(layout, 0, started, pages, &mut buf);
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
