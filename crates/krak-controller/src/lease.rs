//! Regions owned by leases: a region lives while its pager is heard from. Every request a
//! pager makes about its region (its live report each second, its map long-poll, placement,
//! commits, moves) renews the lease; a region silent for `region_lease_ms` is reclaimed as
//! if its pager had deleted it. A pager that died (SIGKILL, SIGBUS) or a program that
//! exited without dropping its region (an in-process pager) leaves nothing behind for
//! longer than the lease: the servers free the slabs themselves once the pager's
//! connections have been gone for their grace period.
//!
//! The lease is kept in memory only: a controller that starts (or a standby that takes
//! over) gives every stored region a whole lease, so a restart never reclaims a region
//! whose pager is merely reconnecting.

use std::time::Instant;

use crate::model::{RegionId, RegionRecord};
use crate::rack::RackState;

/// A region reclaimed because its lease ran out.
#[derive(Debug, Clone)]
pub struct Reclaimed {
    pub record: RegionRecord,
    /// How long its pager had been silent.
    pub silent_ms: u64,
}

/// Most regions reclaimed per tick (each a store write under the rack lock), so one tick
/// never holds the lock for long; the rest are reclaimed at the next ticks.
const MAX_RECLAIMED_PER_TICK: usize = 4;

impl RackState {
    /// Region `id`'s pager was heard from now (an unknown id is left to the request's own
    /// answer).
    pub fn renew_lease(&mut self, id: RegionId, now: Instant) {
        if let Some(entry) = self.regions.get_mut(&id) {
            entry.heard = entry.heard.max(now);
        }
    }

    /// Reclaims the regions whose pager has been silent for the lease or longer. A region
    /// whose deletion cannot be stored stays, and is tried again at the next tick.
    pub fn reclaim_expired(&mut self, now: Instant) -> Vec<Reclaimed> {
        let lease_ms = self.config.region_lease_ms;
        let expired: Vec<(RegionId, u64)> = self
            .regions
            .iter()
            .map(|(id, e)| (*id, now.saturating_duration_since(e.heard).as_millis() as u64))
            .filter(|(_, silent_ms)| *silent_ms >= lease_ms)
            .take(MAX_RECLAIMED_PER_TICK)
            .collect();
        let mut out = Vec::with_capacity(expired.len());
        for (id, silent_ms) in expired {
            match self.delete_region(id) {
                Ok(record) => out.push(Reclaimed { record, silent_ms }),
                Err(e) => tracing::warn!("cannot reclaim region {id} (silent for {silent_ms} ms): {e}"),
            }
        }
        out
    }

    /// Milliseconds since region `id`'s pager was last heard from.
    pub fn silent_ms(&self, id: RegionId, now: Instant) -> Option<u64> {
        self.regions.get(&id).map(|e| now.saturating_duration_since(e.heard).as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use krak_api::messages::CreateRegionRequest;

    use crate::config::ControllerConfig;
    use crate::rack::RackState;

    fn rack(lease_ms: u64) -> RackState {
        let mut config = ControllerConfig::new("127.0.0.1:0".parse().unwrap());
        config.region_lease_ms = lease_ms;
        let store: Arc<dyn krak_meta::MetaStore> = Arc::new(crate::memstore::MemStore::default());
        RackState::load(store, config).unwrap()
    }

    fn region(rack: &mut RackState, owner: &str) -> crate::model::RegionId {
        let req = CreateRegionRequest {
            owner: owner.into(),
            size_bytes: 8 << 20,
            local_budget_bytes: 1 << 20,
            chunk_bytes: Some(1 << 20),
            stripe_width: None,
            redundancy: None,
            slot_divisor: None,
        };
        rack.create_region(&req).unwrap().id
    }

    #[test]
    fn a_silent_region_is_reclaimed_after_its_lease_and_a_heard_one_is_kept() {
        let mut rack = rack(5_000);
        let silent = region(&mut rack, "a/pid1");
        let heard = region(&mut rack, "a/pid2");
        let start = std::time::Instant::now();
        assert!(rack.reclaim_expired(start + Duration::from_millis(4_000)).is_empty(), "within the lease");
        rack.renew_lease(heard, start + Duration::from_millis(4_000));
        let gone = rack.reclaim_expired(start + Duration::from_millis(6_000));
        assert_eq!(gone.iter().map(|r| r.record.id).collect::<Vec<_>>(), vec![silent]);
        assert!(gone[0].silent_ms >= 5_000, "{:?}", gone[0]);
        assert!(rack.regions.contains_key(&heard) && !rack.regions.contains_key(&silent));
        // The reclaimed region is gone from the store too: a restart does not bring it back.
        let again = RackState::load(rack.store.clone(), rack.config.clone()).unwrap();
        assert_eq!(again.regions.keys().copied().collect::<Vec<_>>(), vec![heard]);
        // Renewing never moves a lease backwards.
        rack.renew_lease(heard, start);
        assert_eq!(rack.silent_ms(heard, start + Duration::from_millis(5_000)), Some(1_000));
    }
}
