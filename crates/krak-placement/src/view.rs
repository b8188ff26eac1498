//! [`PlacementView`]: the aggregates placement decides on, kept up to date incrementally.
//!
//! A decision never walks the slab map: it reads per-server figures (state, free bytes, slabs
//! held), per-domain figures (servers, free bytes of the placeable ones) and per-region
//! counts (slabs per server and per domain), each updated by the change that moves it.

use std::collections::HashMap;

use krak_api::{RegionId, ServerId, ServerState};

/// One server, as placement sees it.
#[derive(Debug, Clone)]
pub struct ServerStat {
    pub id: ServerId,
    pub state: ServerState,
    /// Index into [`PlacementView::domains`].
    pub domain: u32,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub slab_size_bytes: u64,
    /// Slabs the map places on it.
    pub slabs: u64,
}

impl ServerStat {
    /// Alive: the only state placement may choose.
    pub fn placeable(&self) -> bool {
        self.state == ServerState::Alive
    }

    /// Bytes in use (capacity less free).
    pub fn used_bytes(&self) -> u64 {
        self.capacity_bytes.saturating_sub(self.free_bytes)
    }
}

/// One failure domain.
#[derive(Debug, Clone)]
pub struct DomainStat {
    pub name: String,
    /// Indices into [`PlacementView::servers`].
    pub servers: Vec<u32>,
    /// Free bytes of its placeable servers.
    pub free_bytes: u64,
}

/// What one slab of a region needs of a server: slabs of `slab_bytes` (the region's chunk
/// size), and `cost_bytes` of its free memory (less than a chunk for a fragment of an
/// erasure-coded chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotSize {
    pub slab_bytes: u64,
    pub cost_bytes: u64,
}

impl SlotSize {
    /// A whole chunk per slot.
    pub fn whole(chunk_bytes: u64) -> SlotSize {
        SlotSize { slab_bytes: chunk_bytes, cost_bytes: chunk_bytes }
    }

    /// What one of `region`'s slots needs of a server.
    pub fn of(region: &krak_api::RegionRecord) -> SlotSize {
        SlotSize { slab_bytes: region.chunk_bytes, cost_bytes: region.slot_cost_bytes() }
    }
}

/// One region, as placement sees it.
#[derive(Debug, Clone, Default)]
pub struct RegionStat {
    pub chunk_bytes: u64,
    /// Bytes of free memory one of its slabs takes (`chunk_bytes`, or a fragment's share).
    pub slot_bytes: u64,
    pub slabs: u64,
    /// Slabs of this region per server index.
    pub per_server: HashMap<u32, u32>,
    /// Slabs of this region per domain index.
    pub per_domain: HashMap<u32, u32>,
}

impl RegionStat {
    pub fn on_server(&self, index: u32) -> u32 {
        self.per_server.get(&index).copied().unwrap_or(0)
    }

    pub fn slot(&self) -> SlotSize {
        SlotSize { slab_bytes: self.chunk_bytes, cost_bytes: self.slot_bytes }
    }
    pub fn in_domain(&self, domain: u32) -> u32 {
        self.per_domain.get(&domain).copied().unwrap_or(0)
    }
}

/// The rack's aggregates.
#[derive(Debug, Clone, Default)]
pub struct PlacementView {
    servers: Vec<ServerStat>,
    index: HashMap<ServerId, u32>,
    domains: Vec<DomainStat>,
    domain_index: HashMap<String, u32>,
    regions: HashMap<RegionId, RegionStat>,
}

impl PlacementView {
    pub fn servers(&self) -> &[ServerStat] {
        &self.servers
    }
    pub fn domains(&self) -> &[DomainStat] {
        &self.domains
    }
    pub fn index_of(&self, id: ServerId) -> Option<u32> {
        self.index.get(&id).copied()
    }
    pub fn server(&self, id: ServerId) -> Option<&ServerStat> {
        self.index_of(id).map(|i| &self.servers[i as usize])
    }
    pub fn region(&self, id: RegionId) -> Option<&RegionStat> {
        self.regions.get(&id)
    }
    pub fn regions(&self) -> impl Iterator<Item = (&RegionId, &RegionStat)> {
        self.regions.iter()
    }

    /// Whether server `index` can take one more slab of `slot` on top of `extra_bytes`
    /// already planned for it, and is not excluded.
    pub fn fits(&self, index: u32, slot: SlotSize, extra_bytes: u64, exclude: &[ServerId]) -> bool {
        let s = &self.servers[index as usize];
        s.placeable()
            && s.slab_size_bytes == slot.slab_bytes
            && s.free_bytes.saturating_sub(extra_bytes) >= slot.cost_bytes
            && !exclude.contains(&s.id)
    }

    /// Adds a server or updates its identity and capacity (a re-registration).
    pub fn upsert_server(
        &mut self,
        id: ServerId,
        domain: &str,
        state: ServerState,
        capacity_bytes: u64,
        free_bytes: u64,
        slab_size_bytes: u64,
    ) {
        let domain = self.domain_of(domain);
        match self.index_of(id) {
            Some(i) => {
                self.leave_domain_free(i);
                let old_domain = self.servers[i as usize].domain;
                if old_domain != domain {
                    self.domains[old_domain as usize].servers.retain(|&x| x != i);
                    self.domains[domain as usize].servers.push(i);
                }
                let s = &mut self.servers[i as usize];
                s.domain = domain;
                s.state = state;
                s.capacity_bytes = capacity_bytes;
                s.free_bytes = free_bytes;
                s.slab_size_bytes = slab_size_bytes;
                self.join_domain_free(i);
            }
            None => {
                let i = self.servers.len() as u32;
                self.servers.push(ServerStat {
                    id,
                    state,
                    domain,
                    capacity_bytes,
                    free_bytes,
                    slab_size_bytes,
                    slabs: 0,
                });
                self.index.insert(id, i);
                self.domains[domain as usize].servers.push(i);
                self.join_domain_free(i);
            }
        }
    }

    pub fn set_state(&mut self, id: ServerId, state: ServerState) {
        if let Some(i) = self.index_of(id) {
            self.leave_domain_free(i);
            self.servers[i as usize].state = state;
            self.join_domain_free(i);
        }
    }

    pub fn set_free(&mut self, id: ServerId, free_bytes: u64) {
        if let Some(i) = self.index_of(id) {
            self.leave_domain_free(i);
            self.servers[i as usize].free_bytes = free_bytes;
            self.join_domain_free(i);
        }
    }

    pub fn add_region(&mut self, id: RegionId, slot: SlotSize) {
        let stat = RegionStat { chunk_bytes: slot.slab_bytes, slot_bytes: slot.cost_bytes, ..RegionStat::default() };
        self.regions.insert(id, stat);
    }

    /// Forgets a region; the caller has removed its slabs first.
    pub fn remove_region(&mut self, id: RegionId) {
        self.regions.remove(&id);
    }

    /// A chunk of `region` now lives on `server`.
    pub fn add_slab(&mut self, region: RegionId, server: ServerId) {
        let Some(i) = self.index_of(server) else { return };
        let Some(r) = self.regions.get_mut(&region) else { return };
        let chunk = r.slot_bytes;
        let domain = self.servers[i as usize].domain;
        r.slabs += 1;
        *r.per_server.entry(i).or_insert(0) += 1;
        *r.per_domain.entry(domain).or_insert(0) += 1;
        self.servers[i as usize].slabs += 1;
        let free = self.servers[i as usize].free_bytes.saturating_sub(chunk);
        self.set_free(server, free);
    }

    /// A chunk of `region` no longer lives on `server`.
    pub fn remove_slab(&mut self, region: RegionId, server: ServerId) {
        let Some(i) = self.index_of(server) else { return };
        let Some(r) = self.regions.get_mut(&region) else { return };
        let chunk = r.slot_bytes;
        let domain = self.servers[i as usize].domain;
        r.slabs = r.slabs.saturating_sub(1);
        decrement(&mut r.per_server, i);
        decrement(&mut r.per_domain, domain);
        let s = &mut self.servers[i as usize];
        s.slabs = s.slabs.saturating_sub(1);
        let free = s.free_bytes.saturating_add(chunk).min(s.capacity_bytes);
        self.set_free(server, free);
    }

    fn domain_of(&mut self, name: &str) -> u32 {
        if let Some(&d) = self.domain_index.get(name) {
            return d;
        }
        let d = self.domains.len() as u32;
        self.domains.push(DomainStat { name: name.to_string(), servers: Vec::new(), free_bytes: 0 });
        self.domain_index.insert(name.to_string(), d);
        d
    }

    fn leave_domain_free(&mut self, i: u32) {
        let s = &self.servers[i as usize];
        if s.placeable() {
            let d = &mut self.domains[s.domain as usize];
            d.free_bytes = d.free_bytes.saturating_sub(s.free_bytes);
        }
    }

    fn join_domain_free(&mut self, i: u32) {
        let s = &self.servers[i as usize];
        if s.placeable() {
            let d = &mut self.domains[s.domain as usize];
            d.free_bytes = d.free_bytes.saturating_add(s.free_bytes);
        }
    }
}

fn decrement(map: &mut HashMap<u32, u32>, key: u32) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_follow_changes() {
        let mut v = PlacementView::default();
        v.upsert_server(ServerId(1), "r1", ServerState::Alive, 100, 100, 10);
        v.upsert_server(ServerId(2), "r1", ServerState::Alive, 100, 100, 10);
        v.upsert_server(ServerId(3), "r2", ServerState::Alive, 100, 100, 10);
        assert_eq!(v.domains().len(), 2);
        assert_eq!(v.domains()[0].free_bytes, 200);
        v.add_region(RegionId(1), SlotSize::whole(10));
        v.add_slab(RegionId(1), ServerId(2));
        v.add_slab(RegionId(1), ServerId(2));
        let r = v.region(RegionId(1)).unwrap();
        assert_eq!((r.slabs, r.on_server(1), r.in_domain(0), r.in_domain(1)), (2, 2, 2, 0));
        assert_eq!(v.server(ServerId(2)).unwrap().free_bytes, 80);
        assert_eq!(v.domains()[0].free_bytes, 180);
        v.set_state(ServerId(1), ServerState::Dead);
        assert_eq!(v.domains()[0].free_bytes, 80);
        v.remove_slab(RegionId(1), ServerId(2));
        assert_eq!(v.server(ServerId(2)).unwrap().free_bytes, 90);
        assert_eq!(v.region(RegionId(1)).unwrap().on_server(1), 1);
        // moving a server to another domain keeps the sums right
        v.upsert_server(ServerId(2), "r2", ServerState::Alive, 100, 90, 10);
        assert_eq!(v.domains()[0].free_bytes, 0);
        assert_eq!(v.domains()[1].free_bytes, 190);
        assert!(v.fits(2, SlotSize::whole(10), 0, &[]));
        assert!(!v.fits(2, SlotSize::whole(10), 0, &[ServerId(3)]));
        assert!(!v.fits(2, SlotSize::whole(20), 0, &[]));
        assert!(!v.fits(0, SlotSize::whole(10), 0, &[]));
    }
}
