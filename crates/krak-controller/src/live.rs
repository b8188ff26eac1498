//! Regions managed live: the local budget an operator sets for a running region (stored
//! with its record; the pager follows it within a map round), and what each region's pager
//! reports it is doing (kept in memory only: a restarted controller hears again within a
//! second).

use std::time::Instant;

use krak_api::messages::RegionLive;

use crate::model::{RegionId, RegionRecord};
use crate::persist;
use crate::rack::{RackError, RackState};

/// The smallest budget a region can be given: what a pager needs to serve faults
/// (`krak_pager::MIN_BUDGET_PAGES`).
pub const MIN_BUDGET_BYTES: u64 = 16 * 4096;

impl RackState {
    /// Sets region `id`'s local budget; its pager sees the new record at its next map
    /// round (the region's epoch moves, so a long-poll wakes).
    pub fn set_budget(&mut self, id: RegionId, local_budget_bytes: u64) -> Result<RegionRecord, RackError> {
        let entry = self.regions.get(&id).ok_or_else(|| RackError::NotFound(format!("no region {id}")))?;
        if local_budget_bytes < MIN_BUDGET_BYTES {
            return Err(RackError::BadRequest(format!(
                "a local budget is at least {MIN_BUDGET_BYTES} bytes (the pager needs room to serve a fault)"
            )));
        }
        let mut record = entry.record.clone();
        record.local_budget_bytes = local_budget_bytes;
        let mut counters = self.counters;
        counters.map_epoch += 1;
        persist::write(&*self.store, vec![persist::put(persist::region_key(id), &record)], &counters)?;
        self.counters = counters;
        let entry = self.regions.get_mut(&id).expect("present above");
        entry.record = record.clone();
        entry.epoch = counters.map_epoch;
        self.broker.budget_set(id);
        Ok(record)
    }

    /// Keeps what region `id`'s pager reports.
    pub fn report_live(&mut self, id: RegionId, live: RegionLive) -> Result<(), RackError> {
        if !self.regions.contains_key(&id) {
            return Err(RackError::NotFound(format!("no region {id}")));
        }
        crate::rack::validate_name("host", &live.host)?;
        let record_budget = self.regions[&id].record.local_budget_bytes;
        let now = Instant::now();
        self.broker.report_seen(id, live.local_budget_bytes == krak_broker::pages(record_budget), now);
        self.live.insert(id, (live, now));
        Ok(())
    }

    /// What region `id`'s pager last reported, and how many milliseconds ago.
    pub fn live_of(&self, id: RegionId) -> Option<(RegionLive, u64)> {
        self.live.get(&id).map(|(l, at)| (l.clone(), at.elapsed().as_millis() as u64))
    }
}
