//! A region placed by the controller, managed while it runs: it follows the local budget
//! an operator sets (`krak budget`, stored with the region's record, seen in each map) and
//! reports what it is doing every second from a thread of its own (`krak status`,
//! `/metrics`; the reports keep the region's lease).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use krak_api::messages::RegionLive;
use krak_api::Api;
use krak_uffd::PAGE_SIZE;

use crate::follow::link::ControllerLink;
use crate::state::core::RegionShared;
use crate::state::memory::RegionMemory;

/// How often a region reports (status promises a figure at most 2 s old).
const REPORT_MS: u64 = 1_000;

/// How often the reporter looks whether the region is being dropped.
const STOP_CHECK_MS: u64 = 100;

/// The budget the region follows: the one in its record at the controller.
#[derive(Debug)]
pub(crate) struct Budget {
    /// The budget last taken from the region's record (the one it was made with, first).
    applied_budget_bytes: u64,
}

impl Budget {
    pub(crate) fn new(budget_bytes: u64) -> Budget {
        Budget { applied_budget_bytes: budget_bytes }
    }

    /// Takes up the budget of the region's record if it changed since it was last taken.
    pub(crate) fn follow(&mut self, shared: &RegionShared, record_budget_bytes: u64) {
        if record_budget_bytes == self.applied_budget_bytes || record_budget_bytes == 0 {
            return;
        }
        let from = self.applied_budget_bytes;
        self.applied_budget_bytes = record_budget_bytes;
        let pages = crate::region::budget_pages(record_budget_bytes);
        match shared.set_local_budget(pages) {
            Ok(()) => tracing::info!("local budget {from} -> {record_budget_bytes} bytes, as the controller says"),
            Err(e) => tracing::error!("taking the local budget of {record_budget_bytes} bytes: {e}"),
        }
    }
}

/// The reporter thread: the region's figures every second until it is dropped. Its own
/// thread, since the reports also keep the region's lease at the controller (`lease.rs`
/// there): the follower may be busy for long (a shrink waiting for write-backs, a drain's
/// copies) and the region must not be reclaimed meanwhile.
pub(crate) fn report_loop(shared: Arc<RegionShared>, link: Arc<ControllerLink>) {
    let mut last: Option<(Instant, u64)> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if last.is_none_or(|(at, _)| now.duration_since(at) >= Duration::from_millis(REPORT_MS)) {
            let faults = shared.counters.missing_faults.load(Ordering::Relaxed);
            let faults_per_s = last.map_or(0.0, |(at, before)| {
                faults.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64()
            });
            last = Some((now, faults));
            let live = figures(&shared, faults_per_s);
            match link.client.lock().report_live(link.region, &live) {
                Ok(_) => {}
                // The follower says why (the region is gone from the controller).
                Err(krak_api::ApiError::Status { status: 404, .. }) => return,
                Err(e) => tracing::debug!("reporting the region's figures: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(STOP_CHECK_MS));
    }
}

/// What the region is doing now.
fn figures(shared: &RegionShared, faults_per_s: f64) -> RegionLive {
    let (budget_pages, resident_pages, remote_pages, held_pages) = {
        let core = shared.core.lock();
        let budget = core.shrinking_from.unwrap_or(core.budget_pages);
        (budget, core.pages.mapped(), core.pages.remote_pages(), core.pages.held_pages())
    };
    let pid = match &shared.map {
        RegionMemory::OtherProcess { pid, .. } => u32::try_from(*pid).ok(),
        _ => Some(std::process::id()),
    };
    RegionLive {
        pid,
        host: host_name(),
        local_budget_bytes: (budget_pages * PAGE_SIZE) as u64,
        resident_bytes: (resident_pages * PAGE_SIZE) as u64,
        reserved_bytes: shared.layout.bytes_per_server().iter().map(|(_, b)| b).sum(),
        used_bytes: (remote_pages * PAGE_SIZE) as u64,
        data_bytes: Some((held_pages * PAGE_SIZE) as u64),
        faults_per_s,
        host_available_bytes: host_available_bytes(),
    }
}

/// This host's `MemAvailable`, in bytes, or None.
fn host_available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// This host's name (the kernel's), or empty.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}
