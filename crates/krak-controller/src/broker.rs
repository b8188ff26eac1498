//! The memory broker: every second, each brokered host's local memory is divided among the
//! regions running there by the policy in force (`krak-broker`), from what their pagers
//! last reported; the budgets that change are stored in the regions' records, which their
//! pagers follow within a map round.
//!
//! A host is brokered when its total is given in the configuration, or derived (its
//! pagers' `MemAvailable` plus what its regions' budgets hold, minus the headroom). The
//! configuration is stored with the rack; the per-round figures are memory only.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use krak_api::broker::{BrokerConfig, BrokerHost, BrokerRegion, BrokerStatus};
use krak_broker::{BudgetPolicy, HostShare, RegionDemand};

use crate::live::MIN_BUDGET_BYTES;
use crate::model::RegionId;
use crate::persist;
use crate::rack::{RackError, RackState};

/// How often a round runs.
pub const ROUND_MS: u64 = 1_000;
/// Reports older than this make a region unsettled (its pager may be gone); its budget
/// still counts against its host's total.
const FRESH_REPORT_MS: u64 = 3_000;
/// A report received this long after the pager was first seen under a new budget was
/// measured wholly under it (the pagers report every second the second before).
const SETTLE_MS: u64 = 900;
/// How long the budget a region was seen faulting under protects it from cuts.
const FAULT_MEMORY_MS: u64 = 6_000;
/// Most hosts one configuration names.
pub const MAX_HOSTS: usize = 4_096;
/// Largest floor or host total a configuration gives (1 PiB).
pub const MAX_BYTES: u64 = 1 << 50;

/// What the broker remembers of one region between rounds.
#[derive(Debug, Default, Clone, Copy)]
struct Tracked {
    /// When its pager was first seen under the budget last set (None: not yet).
    taken_at: Option<Instant>,
    /// The largest budget it was lately measured faulting under, and when.
    faulted: Option<(u64, Instant)>,
    /// Reports in a row (settled, each counted once) that showed it faulting.
    faulting_reports: u32,
    /// The last report counted.
    counted: Option<Instant>,
}

/// The broker's state in the rack.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    policy: Box<dyn BudgetPolicy>,
    tracked: HashMap<RegionId, Tracked>,
    /// The hosts as the last round saw them.
    hosts: Vec<BrokerHost>,
    last_round: Option<Instant>,
    changes: u64,
}

impl Broker {
    /// The broker of `config`, which must name a known policy.
    pub fn new(config: BrokerConfig) -> Result<Broker, RackError> {
        let policy = krak_broker::by_name(&config.policy).ok_or_else(|| {
            RackError::BadRequest(format!(
                "unknown broker policy {:?}; known: {}",
                config.policy,
                krak_broker::POLICY_NAMES.join(", ")
            ))
        })?;
        if !(MIN_BUDGET_BYTES..=MAX_BYTES).contains(&config.floor_bytes) {
            return Err(RackError::BadRequest(format!(
                "the broker's floor is at least {MIN_BUDGET_BYTES} bytes (a pager needs room to serve a fault) \
                 and at most {MAX_BYTES}"
            )));
        }
        if config.hosts.len() > MAX_HOSTS {
            return Err(RackError::BadRequest(format!("a broker configuration names at most {MAX_HOSTS} hosts")));
        }
        if config.headroom_bytes.is_some_and(|h| h > MAX_BYTES) {
            return Err(RackError::BadRequest(format!("a headroom is at most {MAX_BYTES} bytes")));
        }
        for (host, &total) in &config.hosts {
            crate::rack::validate_name("host", host)?;
            if host.is_empty() || !(MIN_BUDGET_BYTES..=MAX_BYTES).contains(&total) {
                return Err(RackError::BadRequest(format!(
                    "host {host:?}: a named host with a total of at least {MIN_BUDGET_BYTES} bytes and at most \
                     {MAX_BYTES}"
                )));
            }
        }
        Ok(Broker { config, policy, tracked: HashMap::new(), hosts: Vec::new(), last_round: None, changes: 0 })
    }

    /// Notes that region `id`'s budget was set (by the broker or an operator).
    pub fn budget_set(&mut self, id: RegionId) {
        let t = self.tracked.entry(id).or_default();
        t.taken_at = None;
        t.faulting_reports = 0;
    }

    /// Notes a report of region `id` at `at`: `taken` when it shows the budget of the record.
    pub fn report_seen(&mut self, id: RegionId, taken: bool, at: Instant) {
        let t = self.tracked.entry(id).or_default();
        if !taken {
            t.taken_at = None;
            t.faulting_reports = 0;
        } else if t.taken_at.is_none() {
            t.taken_at = Some(at);
        }
    }
}

impl RackState {
    /// The name of the broker's policy in force.
    pub fn broker_policy(&self) -> &str {
        self.broker.policy.name()
    }

    /// The broker's configuration and its last round.
    pub fn broker_status(&self) -> BrokerStatus {
        BrokerStatus {
            config: self.broker.config.clone(),
            available: krak_broker::POLICY_NAMES.iter().map(|s| s.to_string()).collect(),
            hosts: self.broker.hosts.clone(),
            budget_changes: self.broker.changes,
        }
    }

    /// Replaces the broker's configuration (stored); the next round uses it.
    pub fn set_broker(&mut self, config: BrokerConfig) -> Result<BrokerStatus, RackError> {
        let mut broker = Broker::new(config)?;
        persist::write(&*self.store, vec![persist::put(persist::BROKER_KEY.into(), &broker.config)], &self.counters)?;
        broker.tracked = std::mem::take(&mut self.broker.tracked);
        broker.changes = self.broker.changes;
        self.broker = broker;
        Ok(self.broker_status())
    }

    /// Runs a round if one is due; returns the budgets changed, `(region, from, to)`.
    pub fn broker_round(&mut self, now: Instant) -> Vec<(RegionId, u64, u64)> {
        if self.broker.last_round.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_millis(ROUND_MS)) {
            return Vec::new();
        }
        self.broker.last_round = Some(now);
        let regions = &self.regions;
        self.broker.tracked.retain(|id, _| regions.contains_key(id));
        let mut by_host: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
        for (id, entry) in &self.regions {
            let Some((live, at)) = self.live.get(id) else { continue };
            if live.host.is_empty() {
                continue;
            }
            let tracked = self.broker.tracked.entry(*id).or_default();
            let fresh = now.saturating_duration_since(*at) <= Duration::from_millis(FRESH_REPORT_MS);
            let settled = fresh
                && live.local_budget_bytes == krak_broker::pages(entry.record.local_budget_bytes)
                && tracked
                    .taken_at
                    .is_some_and(|t| at.saturating_duration_since(t) >= Duration::from_millis(SETTLE_MS));
            let budget = entry.record.local_budget_bytes;
            // Older pagers report no data_bytes: resident plus remote (clean pages twice).
            let footprint = live.data_bytes.unwrap_or(live.resident_bytes.saturating_add(live.used_bytes));
            let memory = Duration::from_millis(FAULT_MEMORY_MS);
            tracked.faulted = tracked.faulted.filter(|(_, when)| now.saturating_duration_since(*when) <= memory);
            // Faults with all its data local are first touches or a warm-up, not a lack;
            // and it takes two reports in a row to count as faulting (a hot set coming back
            // in after a phase change faults for a moment only).
            let faulting = settled && live.faults_per_s >= krak_broker::NOISE_FAULTS_PER_S && footprint > budget;
            if tracked.counted != Some(*at) {
                tracked.counted = Some(*at);
                tracked.faulting_reports = if faulting { tracked.faulting_reports.saturating_add(1) } else { 0 };
            }
            if tracked.faulting_reports >= 2 && tracked.faulted.is_none_or(|(b, _)| b <= budget) {
                tracked.faulted = Some((budget, now));
            }
            let demand = RegionDemand {
                id: id.0,
                budget_bytes: budget,
                footprint_bytes: footprint,
                faults_per_s: live.faults_per_s,
                settled,
                faulted_at_bytes: tracked.faulted.map(|(b, _)| b),
            };
            let seen = Seen { demand, resident_bytes: live.resident_bytes, available_bytes: live.host_available_bytes };
            by_host.entry(live.host.clone()).or_default().push(seen);
        }
        let mut hosts = Vec::new();
        let mut changed = Vec::new();
        for (host, seen) in by_host {
            let Some((total_bytes, total_from)) = self.host_total(&host, &seen) else { continue };
            let share = HostShare { total_bytes, floor_bytes: self.broker.config.floor_bytes };
            let demands: Vec<RegionDemand> = seen.iter().map(|s| s.demand.clone()).collect();
            let mut budgets: HashMap<u64, u64> = demands.iter().map(|d| (d.id, d.budget_bytes)).collect();
            let mut changes: Vec<_> = self
                .broker
                .policy
                .divide(&share, &demands)
                .into_iter()
                .filter_map(|c| {
                    budgets.get(&c.id).map(|&from| (RegionId(c.id), from, c.budget_bytes.max(MIN_BUDGET_BYTES)))
                })
                .filter(|(_, from, to)| from != to)
                .collect();
            // Shrinks first: a failure part way leaves the host under its total, never over.
            changes.sort_by_key(|&(_, from, to)| to > from);
            for (id, from, to) in changes {
                if let Err(e) = self.set_budget(id, to) {
                    tracing::warn!("broker: setting region {id}'s budget to {to} bytes: {e}; the rest waits a round");
                    break;
                }
                budgets.insert(id.0, to);
                changed.push((id, from, to));
                self.broker.changes += 1;
            }
            let regions = seen
                .iter()
                .map(|s| BrokerRegion {
                    id: RegionId(s.demand.id),
                    local_budget_bytes: budgets.get(&s.demand.id).copied().unwrap_or(s.demand.budget_bytes),
                    resident_bytes: s.resident_bytes,
                    faults_per_s: s.demand.faults_per_s,
                    settled: s.demand.settled,
                })
                .collect();
            hosts.push(BrokerHost { host, total_bytes, total_from: total_from.into(), regions });
        }
        self.broker.hosts = hosts;
        changed
    }

    /// Host `host`'s total for its regions `seen`, and whether it was given or derived;
    /// None when the host is not brokered. A derived total is what the regions hold
    /// resident plus what the host has available, minus the headroom (budget not yet
    /// resident is still in the available memory, so it is not counted twice).
    fn host_total(&self, host: &str, seen: &[Seen]) -> Option<(u64, &'static str)> {
        if let Some(&total) = self.broker.config.hosts.get(host) {
            return Some((total, "given"));
        }
        let headroom = self.broker.config.headroom_bytes?;
        let available = seen.iter().filter_map(|s| s.available_bytes).min()?;
        let resident = seen.iter().fold(0u64, |a, s| a.saturating_add(s.resident_bytes));
        Some((resident.saturating_add(available).saturating_sub(headroom), "derived"))
    }
}

/// One region as a round sees it.
#[derive(Debug)]
struct Seen {
    demand: RegionDemand,
    resident_bytes: u64,
    available_bytes: Option<u64>,
}
