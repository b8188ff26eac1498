//! Live leases, in memory on the monotonic clock: a lease dies with the process, so its
//! keys are dropped at the next open (see the crate docs).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Most live leases at once; more grants are refused.
pub const MAX_LEASES: usize = 65_536;
/// Longest lease TTL accepted: 7 days.
pub const MAX_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    deadline: Instant,
    /// Keys last written with this lease (a key rewritten without it leaves the set).
    keys: BTreeSet<String>,
}

/// Every live lease and the keys attached to each.
#[derive(Debug)]
pub(crate) struct LeaseBook {
    leases: HashMap<u64, Lease>,
    next_id: u64,
    /// No lease expires before this instant (a lower bound; `None`: no lease).
    next_expiry: Option<Instant>,
}

impl LeaseBook {
    pub(crate) fn new(seed: u64) -> Self {
        LeaseBook { leases: HashMap::new(), next_id: (seed & (u64::MAX >> 2)) | 1, next_expiry: None }
    }

    pub(crate) fn is_live(&self, id: u64) -> bool {
        self.leases.contains_key(&id)
    }

    /// A new lease, or `None` when [`MAX_LEASES`] are live.
    pub(crate) fn grant(&mut self, ttl: Duration, now: Instant) -> Option<u64> {
        if self.leases.len() >= MAX_LEASES {
            return None;
        }
        let id = loop {
            let id = self.next_id;
            self.next_id = (self.next_id + 1) & (u64::MAX >> 1);
            if id != 0 && !self.leases.contains_key(&id) {
                break id;
            }
        };
        let deadline = now + ttl;
        self.leases.insert(id, Lease { ttl, deadline, keys: BTreeSet::new() });
        self.next_expiry = Some(self.next_expiry.map_or(deadline, |t| t.min(deadline)));
        Some(id)
    }

    /// Renews `id`; false when it is not live.
    pub(crate) fn renew(&mut self, id: u64, now: Instant) -> bool {
        match self.leases.get_mut(&id) {
            Some(l) => {
                l.deadline = now + l.ttl;
                true
            }
            None => false,
        }
    }

    /// Records that `key` was rewritten: it leaves `old` (its lease before, 0: none) and
    /// joins `new` (0: none).
    pub(crate) fn moved(&mut self, key: &str, old: u64, new: u64) {
        if old != 0 && old != new {
            if let Some(l) = self.leases.get_mut(&old) {
                l.keys.remove(key);
            }
        }
        if new != 0 {
            if let Some(l) = self.leases.get_mut(&new) {
                l.keys.insert(key.to_string());
            }
        }
    }

    /// Ends lease `id`: the keys it held, or `None` when it was not live.
    pub(crate) fn end(&mut self, id: u64) -> Option<BTreeSet<String>> {
        self.leases.remove(&id).map(|l| l.keys)
    }

    /// Whether some lease may have expired by `now` (cheap; checked before every call).
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.next_expiry.is_some_and(|t| now >= t)
    }

    /// Ends every lease whose deadline passed by `now`: their ids and keys.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<(u64, BTreeSet<String>)> {
        let dead: Vec<u64> = self.leases.iter().filter(|(_, l)| l.deadline <= now).map(|(&id, _)| id).collect();
        let ended = dead.into_iter().filter_map(|id| self.end(id).map(|keys| (id, keys))).collect();
        self.next_expiry = self.leases.values().map(|l| l.deadline).min();
        ended
    }
}
