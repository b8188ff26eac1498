//! A region placed by the controller, managed while it runs: it follows the local budget
//! an operator sets (`krak budget`, stored with the region's record, seen in each map) and
//! reports what it is doing every second (`krak status`, `/metrics`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use krak_api::messages::RegionLive;
use krak_api::Api;
use krak_uffd::PAGE_SIZE;

use crate::follow::link::ControllerLink;
use crate::state::core::RegionShared;
use crate::state::memory::RegionMemory;

/// How often a region reports (status promises a figure at most 2 s old).
const REPORT_MS: u64 = 1_000;

#[derive(Debug)]
pub(crate) struct Live {
    /// The budget last taken from the region's record (the one it was made with, first).
    applied_budget_bytes: u64,
    last_report: Option<(Instant, u64)>,
}

impl Live {
    pub(crate) fn new(budget_bytes: u64) -> Live {
        Live { applied_budget_bytes: budget_bytes, last_report: None }
    }

    /// Takes up the budget of the region's record if it changed since it was last taken.
    pub(crate) fn follow_budget(&mut self, shared: &RegionShared, record_budget_bytes: u64) {
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

    /// Reports the region's figures if the last report is a second old.
    pub(crate) fn report(&mut self, shared: &RegionShared, link: &ControllerLink) {
        let now = Instant::now();
        let faults = shared.counters.missing_faults.load(Ordering::Relaxed);
        let faults_per_s = match self.last_report {
            Some((at, _)) if now.duration_since(at) < Duration::from_millis(REPORT_MS) => return,
            Some((at, before)) => faults.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64(),
            None => 0.0,
        };
        self.last_report = Some((now, faults));
        let live = figures(shared, faults_per_s);
        if let Err(e) = link.client.lock().report_live(link.region, &live) {
            tracing::debug!("reporting the region's figures: {e}");
        }
    }
}

/// What the region is doing now.
fn figures(shared: &RegionShared, faults_per_s: f64) -> RegionLive {
    let (budget_pages, resident_pages, remote_pages) = {
        let core = shared.core.lock();
        (core.shrinking_from.unwrap_or(core.budget_pages), core.pages.mapped(), core.pages.remote_pages())
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
        faults_per_s,
    }
}

/// This host's name (the kernel's), or empty.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}
