//! What the controller knows: servers, regions and the slab map, as stored (JSON) and as
//! kept in memory.
//!
//! The slab map is compact: per region, a `Vec` indexed by chunk of 24-byte [`Slot`]s, grown
//! only up to the highest chunk ever committed, so a rack of 1,000,000 placed slabs costs
//! about 24 MB.

use serde::{Deserialize, Serialize};

pub use krak_api::{RegionId, RegionRecord, ServerId, ServerRecord, ServerState};

/// Where one chunk lives (stored under `/krak/slabs/<region>/<chunk>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub server: ServerId,
    /// The slab id the memory server gave the pager.
    pub slab: u64,
    /// The map epoch of this chunk's last change.
    pub epoch: u64,
}

/// One chunk's slot in memory: server 0 means "not placed".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    server: u32,
    slab: u64,
    epoch: u64,
}

/// A region's chunk → placement map.
#[derive(Debug, Clone, Default)]
pub struct ChunkMap {
    slots: Vec<Slot>,
    placed: u64,
}

impl ChunkMap {
    pub fn get(&self, chunk: u64) -> Option<Placement> {
        let slot = self.slots.get(usize::try_from(chunk).ok()?)?;
        (slot.server != 0).then_some(Placement { server: ServerId(slot.server), slab: slot.slab, epoch: slot.epoch })
    }

    /// Sets a chunk's placement; returns the one it replaces. `server` must not be 0.
    pub fn set(&mut self, chunk: u64, placement: Placement) -> Option<Placement> {
        let index = usize::try_from(chunk).unwrap_or(usize::MAX);
        if index == usize::MAX {
            return None;
        }
        if index >= self.slots.len() {
            self.slots.resize(index + 1, Slot::default());
        }
        let old = self.get(chunk);
        if old.is_none() {
            self.placed += 1;
        }
        self.slots[index] = Slot { server: placement.server.0, slab: placement.slab, epoch: placement.epoch };
        old
    }

    /// Takes a chunk's placement out of the map (the chunk is unplaced again).
    pub fn remove(&mut self, chunk: u64) -> Option<Placement> {
        let old = self.get(chunk)?;
        self.slots[chunk as usize] = Slot::default();
        self.placed -= 1;
        Some(old)
    }

    /// Chunks placed.
    pub fn placed(&self) -> u64 {
        self.placed
    }

    /// Every placed chunk, in chunk order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Placement)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.server != 0)
            .map(|(i, s)| (i as u64, Placement { server: ServerId(s.server), slab: s.slab, epoch: s.epoch }))
    }

    /// Bytes this map holds in memory.
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
    }
}

/// The persisted counters (`/krak/counters`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// The global map epoch: bumped by every change of any chunk or of a server's state.
    pub map_epoch: u64,
    pub next_server_id: u32,
    pub next_region_id: u64,
}

/// The persisted placement policy (`/krak/policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub name: String,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_map_sets_replaces_and_counts() {
        let mut map = ChunkMap::default();
        assert_eq!(map.get(5), None);
        let p = Placement { server: ServerId(2), slab: 9, epoch: 1 };
        assert_eq!(map.set(5, p), None);
        assert_eq!(map.get(5), Some(p));
        assert_eq!(map.placed(), 1);
        let q = Placement { server: ServerId(3), slab: 1, epoch: 2 };
        assert_eq!(map.set(5, q), Some(p));
        assert_eq!(map.placed(), 1);
        assert_eq!(map.iter().collect::<Vec<_>>(), vec![(5, q)]);
        assert_eq!(map.remove(5), Some(q));
        assert_eq!((map.remove(5), map.remove(1 << 40), map.get(5), map.placed()), (None, None, None, 0));
        assert_eq!(std::mem::size_of::<Slot>(), 24);
    }
}
