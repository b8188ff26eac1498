//! Placement policies: which memory servers get a region's next slabs.
//!
//! A policy only reads a [`PlacementView`] (aggregates kept incrementally), so a decision costs
//! at most a pass over the servers, never one over the slab map. Policies are chosen by name
//! and can be switched while the rack runs. The controller decides with them for the whole
//! rack; a pager given a list of servers fills a view of its own from the servers' stats and
//! decides with the same policies, so both paths place alike. No I/O here.

mod domain_spread;
mod pack;
mod spread;
pub mod stripe;
pub mod view;

pub use domain_spread::DomainSpread;
pub use pack::Pack;
pub use spread::Spread;

pub use krak_api::Move;

use krak_api::{RegionId, ServerId};

pub use view::{DomainStat, PlacementView, RegionStat, ServerStat, SlotSize};

/// Names of the policies [`by_name`] knows, the default first.
pub const POLICY_NAMES: [&str; 3] = ["spread", "pack", "domain-spread"];

/// Why no placement could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("unknown region {0}")]
    UnknownRegion(RegionId),
    /// Not enough room on placeable servers of the region's slab size.
    #[error("no capacity: {placed} of {wanted} chunks placed before the rack ran out of room")]
    NoCapacity { wanted: usize, placed: usize },
}

/// A placement policy.
pub trait PlacementPolicy: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;

    /// Servers for `count` new chunks of `region` (one entry per chunk, repeats allowed),
    /// avoiding `exclude` and servers that are not alive. All or nothing.
    fn choose(
        &self,
        view: &PlacementView,
        region: RegionId,
        count: usize,
        exclude: &[ServerId],
    ) -> Result<Vec<ServerId>, PlacementError>;

    /// Moves this policy would like made on its own (consolidation); none by default.
    fn consolidation_moves(&self, _view: &PlacementView) -> Vec<Move> {
        Vec::new()
    }
}

/// The policy called `name`, if there is one.
pub fn by_name(name: &str) -> Option<Box<dyn PlacementPolicy>> {
    match name {
        "spread" => Some(Box::new(Spread)),
        "pack" => Some(Box::new(Pack::default())),
        "domain-spread" => Some(Box::new(DomainSpread)),
        _ => None,
    }
}

/// Bytes planned per server during one multi-chunk decision (a short list: a decision
/// touches few servers).
#[derive(Debug, Default)]
pub(crate) struct Planned {
    entries: Vec<(u32, u64)>,
}

impl Planned {
    pub(crate) fn bytes(&self, index: u32) -> u64 {
        self.entries.iter().find(|(i, _)| *i == index).map_or(0, |(_, b)| *b)
    }
    pub(crate) fn add(&mut self, index: u32, bytes: u64) {
        match self.entries.iter_mut().find(|(i, _)| *i == index) {
            Some((_, b)) => *b += bytes,
            None => self.entries.push((index, bytes)),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use crate::view::PlacementView;
    use krak_api::{RegionId, ServerId, ServerState};

    pub(crate) const CHUNK: u64 = 1 << 20;

    /// Servers `(domain, capacity_chunks, free_chunks)` numbered from 1, and region 1.
    pub(crate) fn rack(servers: &[(&str, u64, u64)]) -> PlacementView {
        let mut v = PlacementView::default();
        for (i, (domain, cap, free)) in servers.iter().enumerate() {
            v.upsert_server(ServerId(i as u32 + 1), domain, ServerState::Alive, cap * CHUNK, free * CHUNK, CHUNK);
        }
        v.add_region(RegionId(1), crate::view::SlotSize::whole(CHUNK));
        v
    }

    /// Places `chunks` one at a time with `policy`, committing each to the view.
    pub(crate) fn place_all(
        v: &mut PlacementView,
        policy: &dyn super::PlacementPolicy,
        chunks: usize,
    ) -> Vec<ServerId> {
        let mut out = Vec::new();
        for _ in 0..chunks {
            let s = policy.choose(v, RegionId(1), 1, &[]).unwrap()[0];
            v.add_slab(RegionId(1), s);
            out.push(s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_resolves() {
        for name in POLICY_NAMES {
            assert_eq!(by_name(name).unwrap().name(), name);
        }
        assert!(by_name("nope").is_none());
    }

    #[test]
    fn unknown_region_and_full_rack_are_errors() {
        let v = testing::rack(&[("a", 2, 1)]);
        for name in POLICY_NAMES {
            let p = by_name(name).unwrap();
            assert_eq!(p.choose(&v, RegionId(9), 1, &[]), Err(PlacementError::UnknownRegion(RegionId(9))));
            assert_eq!(p.choose(&v, RegionId(1), 2, &[]), Err(PlacementError::NoCapacity { wanted: 2, placed: 1 }));
            assert_eq!(p.choose(&v, RegionId(1), 1, &[]).unwrap(), vec![ServerId(1)]);
            assert_eq!(p.choose(&v, RegionId(1), 0, &[]).unwrap(), vec![]);
        }
    }
}
