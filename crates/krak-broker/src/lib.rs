//! The memory broker's policies: how one host's local memory for krak workloads is divided
//! among the regions running there.
//!
//! The controller runs a round every second for each host it brokers: it feeds the policy
//! what the host's pagers last reported ([`RegionDemand`]) and the host's share
//! ([`HostShare`]), and sets the budgets that come back; the pagers follow within a map
//! round. A policy sees no clock and does no I/O, so a round is a pure function, tested on
//! its own, and policies can be switched while the rack runs (as placement's can).

mod demand;

pub use demand::Demand;

/// Names of the policies [`by_name`] knows, the default first.
pub const POLICY_NAMES: [&str; 2] = ["static", "demand"];

/// Budgets are whole pages.
pub const PAGE_BYTES: u64 = 4096;

/// Fault rates below this are noise (first touches, a timer), not demand.
pub const NOISE_FAULTS_PER_S: f64 = 20.0;

/// What the broker knows of one region on the host, from its pager's last report.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionDemand {
    pub id: u64,
    /// The budget in the region's record.
    pub budget_bytes: u64,
    /// Bytes of data the region holds (resident plus remote): more budget than this (and a
    /// little room to grow) saves nothing.
    pub footprint_bytes: u64,
    /// Faults per second over the pager's last report.
    pub faults_per_s: f64,
    /// Whether that report was measured wholly under `budget_bytes` (no change since the
    /// budget was last set, and the pager had taken it). Only settled regions give or
    /// receive budget: a fault rate measured under another budget says nothing of this one.
    pub settled: bool,
    /// The largest budget under which the region was measured faulting lately (the
    /// controller remembers a few seconds): a region quiet now is not cut below it, since
    /// that is where it faulted.
    pub faulted_at_bytes: Option<u64>,
}

/// One host's memory for krak workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostShare {
    /// What the host's regions may hold locally in all.
    pub total_bytes: u64,
    /// No region is given less than this (unless the total cannot give every region as
    /// much: then an equal share).
    pub floor_bytes: u64,
}

impl HostShare {
    /// The floor that holds with `regions` regions on the host, in whole pages.
    pub fn floor_for(&self, regions: usize) -> u64 {
        let share = self.total_bytes / regions.max(1) as u64;
        pages(self.floor_bytes.min(share))
    }
}

/// A budget a policy wants changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetChange {
    pub id: u64,
    pub budget_bytes: u64,
}

/// A budget policy.
pub trait BudgetPolicy: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;

    /// The budgets to change this round (none: keep them all). The budgets after the
    /// changes sum to at most `host.total_bytes` (when the floors allow it) and none is below
    /// the floor unless it was already.
    fn divide(&self, host: &HostShare, regions: &[RegionDemand]) -> Vec<BudgetChange>;
}

/// Fixed budgets: each region keeps the one it was given (at creation or by `krak budget`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Static;

impl BudgetPolicy for Static {
    fn name(&self) -> &'static str {
        "static"
    }

    fn divide(&self, _host: &HostShare, _regions: &[RegionDemand]) -> Vec<BudgetChange> {
        Vec::new()
    }
}

/// The policy called `name`, if there is one.
pub fn by_name(name: &str) -> Option<Box<dyn BudgetPolicy>> {
    match name {
        "static" => Some(Box::new(Static)),
        "demand" => Some(Box::new(Demand::default())),
        _ => None,
    }
}

/// `bytes` rounded down to whole pages.
pub fn pages(bytes: u64) -> u64 {
    bytes / PAGE_BYTES * PAGE_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_known_and_static_changes_nothing() {
        for name in POLICY_NAMES {
            assert_eq!(by_name(name).unwrap().name(), name);
        }
        assert!(by_name("greedy").is_none());
        let regions = [RegionDemand {
            id: 1,
            budget_bytes: 1 << 20,
            footprint_bytes: 1 << 30,
            faults_per_s: 1e6,
            settled: true,
            faulted_at_bytes: None,
        }];
        assert!(Static.divide(&HostShare { total_bytes: 1 << 30, floor_bytes: 0 }, &regions).is_empty());
    }

    #[test]
    fn the_floor_is_an_equal_share_when_the_total_cannot_give_every_region_its_floor() {
        let host = HostShare { total_bytes: 100 << 20, floor_bytes: 40 << 20 };
        assert_eq!(host.floor_for(2), 40 << 20);
        assert_eq!(host.floor_for(3), pages((100 << 20) / 3));
        assert_eq!(host.floor_for(0), 40 << 20);
    }
}
