//! Moves in flight: a pager tells the controller when it starts moving a slot (a chunk, or a
//! fragment of a striped region) from one server to another; the slot's commit ends the
//! move, and so does the pager giving up. Status and `/metrics` show them. They live in
//! memory only: a move is seconds of work whose outcome the commit records, and a
//! controller that restarts (or a standby taking over) starts with none listed. An entry
//! no one ends (its pager died) expires after `STALE_AFTER`, longer than a pager waits for
//! one move.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::model::{RegionId, ServerId};
use krak_placement::Move;

/// Most moves recorded at once; past it a start is refused (the move itself goes on).
pub const MAX_MOVES_IN_FLIGHT: usize = 65_536;
/// A move not ended by then is dropped from the list (a pager gives up after 600 s).
const STALE_AFTER: Duration = Duration::from_secs(900);

#[derive(Debug, Clone, Copy)]
struct InFlight {
    from: ServerId,
    to: ServerId,
    since: Instant,
}

/// What happened to moves since the controller started (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoveTotals {
    pub started: u64,
    pub committed: u64,
    pub abandoned: u64,
    pub expired: u64,
}

#[derive(Debug)]
pub struct MovesInFlight {
    moves: HashMap<(RegionId, u64), InFlight>,
    pub totals: MoveTotals,
    /// How long committed moves took from start to commit (shared with `/metrics`).
    pub durations: prometheus_client::metrics::histogram::Histogram,
    /// When stale entries were last dropped: a pass over the list at most once a second,
    /// or when it is full.
    expired_at: Option<Instant>,
}

impl Default for MovesInFlight {
    fn default() -> Self {
        MovesInFlight {
            moves: HashMap::new(),
            totals: MoveTotals::default(),
            durations: prometheus_client::metrics::histogram::Histogram::new(crate::metrics::MOVE_BUCKETS_S),
            expired_at: None,
        }
    }
}

impl MovesInFlight {
    /// Records that `slot` of `region` is moving from `from` to `to`; false when the list
    /// is full. A second start of the same slot replaces the first.
    pub fn start(&mut self, region: RegionId, slot: u64, from: ServerId, to: ServerId, now: Instant) -> bool {
        let full = self.moves.len() >= MAX_MOVES_IN_FLIGHT;
        if full || self.expired_at.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1)) {
            self.expire(now);
        }
        if self.moves.len() >= MAX_MOVES_IN_FLIGHT && !self.moves.contains_key(&(region, slot)) {
            return false;
        }
        self.moves.insert((region, slot), InFlight { from, to, since: now });
        self.totals.started += 1;
        true
    }

    /// The slot was committed: its move, if any, is done.
    pub fn committed(&mut self, region: RegionId, slot: u64) {
        if let Some(m) = self.moves.remove(&(region, slot)) {
            self.totals.committed += 1;
            self.durations.observe(m.since.elapsed().as_secs_f64());
        }
    }

    /// The pager gave up moving the slot; true if it was listed.
    pub fn abandon(&mut self, region: RegionId, slot: u64) -> bool {
        let listed = self.moves.remove(&(region, slot)).is_some();
        if listed {
            self.totals.abandoned += 1;
        }
        listed
    }

    /// The region is gone, and its moves with it.
    pub fn region_deleted(&mut self, region: RegionId) {
        self.moves.retain(|(r, _), _| *r != region);
    }

    pub fn len(&self) -> usize {
        self.moves.len()
    }

    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    /// The moves, one entry per region and pair of servers with its slot count, oldest
    /// pairs first; at most `limit`.
    pub fn listed(&self, limit: usize) -> Vec<Move> {
        let mut pairs: HashMap<(RegionId, ServerId, ServerId), (u32, Instant)> = HashMap::new();
        for ((region, _), m) in &self.moves {
            let e = pairs.entry((*region, m.from, m.to)).or_insert((0, m.since));
            e.0 += 1;
            e.1 = e.1.min(m.since);
        }
        let mut out: Vec<(Instant, Move)> = pairs
            .into_iter()
            .map(|((region, from, to), (slabs, since))| (since, Move { region, from, to, slabs }))
            .collect();
        out.sort_by_key(|(since, m)| (*since, m.region, m.from, m.to));
        out.into_iter().take(limit).map(|(_, m)| m).collect()
    }

    fn expire(&mut self, now: Instant) {
        self.expired_at = Some(now);
        let before = self.moves.len();
        self.moves.retain(|_, m| now.saturating_duration_since(m.since) < STALE_AFTER);
        self.totals.expired += (before - self.moves.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_or_an_abandon_ends_a_move_and_status_groups_them() {
        let mut m = MovesInFlight::default();
        let now = Instant::now();
        let (r, a, b, c) = (RegionId(1), ServerId(1), ServerId(2), ServerId(3));
        assert!(m.start(r, 0, a, b, now));
        assert!(m.start(r, 1, a, b, now + Duration::from_millis(1)));
        assert!(m.start(r, 2, a, c, now + Duration::from_millis(2)));
        assert_eq!(
            m.listed(10),
            vec![Move { region: r, from: a, to: b, slabs: 2 }, Move { region: r, from: a, to: c, slabs: 1 }]
        );
        m.committed(r, 0);
        m.committed(r, 7);
        assert!(m.abandon(r, 2));
        assert!(!m.abandon(r, 2));
        assert_eq!(m.listed(10), vec![Move { region: r, from: a, to: b, slabs: 1 }]);
        assert_eq!(m.totals, MoveTotals { started: 3, committed: 1, abandoned: 1, expired: 0 });
        m.region_deleted(r);
        assert!(m.is_empty());
    }

    #[test]
    fn moves_no_one_ends_expire_and_the_list_is_bounded() {
        let mut m = MovesInFlight::default();
        let now = Instant::now();
        for slot in 0..MAX_MOVES_IN_FLIGHT as u64 {
            assert!(m.start(RegionId(1), slot, ServerId(1), ServerId(2), now));
        }
        assert!(!m.start(RegionId(2), 0, ServerId(1), ServerId(2), now), "full");
        assert!(m.start(RegionId(1), 0, ServerId(1), ServerId(3), now), "a slot listed may be started again");
        let later = now + STALE_AFTER + Duration::from_secs(1);
        assert!(m.start(RegionId(2), 0, ServerId(1), ServerId(2), later));
        assert_eq!(m.len(), 1);
        assert_eq!(m.totals.expired, MAX_MOVES_IN_FLIGHT as u64);
    }
}
