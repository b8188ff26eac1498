//! Counters and the fault-latency histogram of a region.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::state::lock_order::{level, Mutex};

/// Live counters, updated by the fault handlers and the write-back thread.
#[derive(Debug)]
pub(crate) struct Counters {
    pub missing_faults: AtomicU64,
    pub write_protect_faults: AtomicU64,
    pub zero_fills: AtomicU64,
    pub remote_reads: AtomicU64,
    pub remote_read_requests: AtomicU64,
    pub remote_writes: AtomicU64,
    pub evictions_clean: AtomicU64,
    pub evictions_dirty: AtomicU64,
    pub staged_hits: AtomicU64,
    pub prefetched: AtomicU64,
    pub retries: AtomicU64,
    pub failed_faults: AtomicU64,
    pub moved_pages: AtomicU64,
    pub chunks_moved: AtomicU64,
    pub fragments_moved: AtomicU64,
    pub scrubs: AtomicU64,
    pub remote_discards: AtomicU64,
    pub chunks_reserved: AtomicU64,
    pub chunks_reserved_ahead: AtomicU64,
    pub chunks_released: AtomicU64,
    pub over_budget_faults: AtomicU64,
    pub degraded_reads: AtomicU64,
    pub corrupt_fragments: AtomicU64,
    pub corrupt_fragments_repaired: AtomicU64,
    pub reprotected_pages: AtomicU64,
    /// Time from the first loss to full redundancy, of the last re-protection.
    pub reprotect_ms: AtomicU64,
    pub discarded_pages: AtomicU64,
    latency_ns: Mutex<hdrhistogram::Histogram<u64>, { level::LATENCY }>,
}

impl Counters {
    pub fn new() -> Counters {
        let z = || AtomicU64::new(0);
        Counters {
            missing_faults: z(),
            write_protect_faults: z(),
            zero_fills: z(),
            remote_reads: z(),
            remote_read_requests: z(),
            remote_writes: z(),
            evictions_clean: z(),
            evictions_dirty: z(),
            staged_hits: z(),
            prefetched: z(),
            retries: z(),
            failed_faults: z(),
            moved_pages: z(),
            chunks_moved: z(),
            fragments_moved: z(),
            scrubs: z(),
            remote_discards: z(),
            chunks_reserved: z(),
            chunks_reserved_ahead: z(),
            chunks_released: z(),
            over_budget_faults: z(),
            degraded_reads: z(),
            corrupt_fragments: z(),
            corrupt_fragments_repaired: z(),
            reprotected_pages: z(),
            reprotect_ms: z(),
            discarded_pages: z(),
            latency_ns: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds"),
            ),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn record_fault_ns(&self, ns: u64) {
        self.latency_ns.lock().saturating_record(ns.max(1));
    }

    pub fn reset_latency(&self) {
        self.latency_ns.lock().reset();
    }

    pub fn snapshot(&self, prefetch_hits: u64) -> PagerStats {
        let h = self.latency_ns.lock();
        let us = |q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1000.0 };
        let g = |c: &AtomicU64| c.load(Relaxed);
        PagerStats {
            missing_faults: g(&self.missing_faults),
            write_protect_faults: g(&self.write_protect_faults),
            zero_fills: g(&self.zero_fills),
            remote_reads: g(&self.remote_reads),
            remote_read_requests: g(&self.remote_read_requests),
            remote_writes: g(&self.remote_writes),
            evictions_clean: g(&self.evictions_clean),
            evictions_dirty: g(&self.evictions_dirty),
            staged_hits: g(&self.staged_hits),
            prefetched: g(&self.prefetched),
            prefetch_hits,
            retries: g(&self.retries),
            failed_faults: g(&self.failed_faults),
            moved_pages: g(&self.moved_pages),
            chunks_moved: g(&self.chunks_moved),
            fragments_moved: g(&self.fragments_moved),
            scrubs: g(&self.scrubs),
            remote_discards: g(&self.remote_discards),
            chunks_reserved: g(&self.chunks_reserved),
            chunks_reserved_ahead: g(&self.chunks_reserved_ahead),
            chunks_released: g(&self.chunks_released),
            over_budget_faults: g(&self.over_budget_faults),
            redundancy: crate::Redundancy::None,
            lost_servers: 0,
            degraded_reads: g(&self.degraded_reads),
            corrupt_fragments: g(&self.corrupt_fragments),
            corrupt_fragments_repaired: g(&self.corrupt_fragments_repaired),
            reprotected_pages: g(&self.reprotected_pages),
            reprotect_ms: g(&self.reprotect_ms),
            discarded_pages: g(&self.discarded_pages),
            faults_timed: h.len(),
            fault_p50_us: us(0.5),
            fault_p99_us: us(0.99),
            fault_max_us: h.max() as f64 / 1000.0,
        }
    }
}

/// A point-in-time copy of a region's counters.
///
/// Fault latency is the pager's service time for a missing-page fault: from reading the
/// fault event to installing the page (and so waking the faulting thread).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PagerStats {
    /// Faults on pages that were not resident.
    pub missing_faults: u64,
    /// First writes to clean resident pages (dirty tracking).
    pub write_protect_faults: u64,
    /// Pages never written before, served as zeros without a network trip.
    pub zero_fills: u64,
    /// Pages read from memory servers (including prefetched ones).
    pub remote_reads: u64,
    pub remote_read_requests: u64,
    /// Pages written back to memory servers.
    pub remote_writes: u64,
    /// Clean pages dropped without write-back.
    pub evictions_clean: u64,
    /// Dirty pages evicted through the write-back buffer.
    pub evictions_dirty: u64,
    /// Faults served from the write-back buffer before the write completed.
    pub staged_hits: u64,
    /// Pages fetched ahead of a fault.
    pub prefetched: u64,
    /// Prefetched pages consumed by a stream without faulting.
    pub prefetch_hits: u64,
    /// Requests retried after a network error.
    pub retries: u64,
    /// Faults that could not be served (the thread got SIGBUS).
    pub failed_faults: u64,
    /// Pages (a fragment of each, in a redundant region) copied to a new slab by live moves
    /// that completed.
    pub moved_pages: u64,
    /// Chunks (one-wide stripes: a region without redundancy) moved to another server
    /// while the region was in use.
    pub chunks_moved: u64,
    /// Fragments (or copies) of a redundant region's chunks moved to another server while
    /// the region was in use.
    pub fragments_moved: u64,
    /// Scrubs of a redundant region completed (scheduled or asked for).
    pub scrubs: u64,
    /// Units (pages, or fragments) the servers were told to forget after a discard.
    pub remote_discards: u64,
    /// Chunks reserved as they were first written back (a region reserving on demand).
    pub chunks_reserved: u64,
    /// Of those, chunks reserved ahead of their first write-back, by the reservation thread
    /// (the chunk after the last one written, while the write-back thread goes on).
    pub chunks_reserved_ahead: u64,
    /// Chunks whose slabs were given back once every page of them that held data was
    /// discarded (a region reserving on demand).
    pub chunks_released: u64,
    /// Faults served over the local budget because the rack had no room to write back to.
    pub over_budget_faults: u64,
    /// The region's redundancy scheme.
    pub redundancy: crate::Redundancy,
    /// Memory servers lost for this region (their fragments are no longer used).
    pub lost_servers: u64,
    /// Pages read without their first copy or without all their data fragments (rebuilt
    /// from parity or read from another copy).
    pub degraded_reads: u64,
    /// Fragments that failed their checksum on a read (the page was rebuilt from others).
    pub corrupt_fragments: u64,
    /// Corrupt fragments rewritten with the right bytes.
    pub corrupt_fragments_repaired: u64,
    /// Pages whose lost fragment was rebuilt onto a replacement slab (re-protection).
    pub reprotected_pages: u64,
    /// Milliseconds from the first server lost to full redundancy back, for the last
    /// re-protection (0: none finished).
    pub reprotect_ms: u64,
    /// Pages forgotten by `discard` (freed or `MADV_DONTNEED` by the program).
    pub discarded_pages: u64,
    pub faults_timed: u64,
    pub fault_p50_us: f64,
    pub fault_p99_us: f64,
    pub fault_max_us: f64,
}
