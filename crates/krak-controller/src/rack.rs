//! [`RackState`]: the controller's state (servers, regions, the slab map, epochs, the policy),
//! and the region operations. Every change is written to the store first and applied in
//! memory only once the store took it, so memory never runs ahead of what a restart finds.
//! Membership (servers) is in `membership.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use krak_meta::{MetaError, MetaStore};

use crate::config::{ControllerConfig, MAX_REGIONS};
use crate::model::{
    now_unix_ms, ChunkMap, Counters, Placement, PolicyRecord, RegionId, RegionRecord, ServerId, ServerRecord,
    ServerState,
};
use crate::moves::MovesInFlight;
use crate::persist::{self, LoadError};
use crate::stripe;
use krak_api::limits::{MAX_CHUNKS_PER_REGION, MAX_CHUNKS_PER_REQUEST, MAX_EXCLUDE, MAX_NAME_BYTES, MAX_STRIPE_WIDTH};
use krak_api::messages::{
    ChunkServer, CommitChunk, CreateRegionRequest, MapEntry, MapMove, MapReply, MapServer, MoveStartRequest,
    RegionStatus, RemoteBytes, ServerStatus, StatusReply,
};
use krak_placement::PlacementView;
use krak_placement::{PlacementError, PlacementPolicy};

/// Most moves status lists.
const MAX_LISTED_MOVES: usize = 256;

/// Why an operation was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum RackError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// A commit would put two fragments of one stripe on one server (409).
    #[error(transparent)]
    StripeClash(#[from] stripe::StripeClash),
    #[error("metadata store: {0}")]
    Store(#[from] MetaError),
}

/// A region with its map.
#[derive(Debug)]
pub(crate) struct RegionEntry {
    pub(crate) record: RegionRecord,
    pub(crate) map: ChunkMap,
    /// Last map epoch at which a chunk of it or the state of one of its servers changed.
    pub(crate) epoch: u64,
    /// When its pager was last heard from (monotonic; a restarted controller starts every
    /// region's lease afresh): see `lease.rs`.
    pub(crate) heard: Instant,
}

pub struct RackState {
    pub(crate) store: Arc<dyn MetaStore>,
    pub(crate) config: ControllerConfig,
    pub(crate) servers: BTreeMap<ServerId, ServerRecord>,
    pub(crate) by_addr: HashMap<String, ServerId>,
    /// When each server was last heard from (monotonic; a restart gives every server a fresh
    /// grace period).
    pub(crate) last_seen: HashMap<ServerId, Instant>,
    pub(crate) regions: BTreeMap<RegionId, RegionEntry>,
    pub(crate) view: PlacementView,
    pub(crate) policy: Box<dyn PlacementPolicy>,
    pub(crate) counters: Counters,
    /// Bytes each server asked to shed at its last heartbeat (its host fell below its
    /// headroom); pagers see it in their maps and move chunks away.
    pub(crate) shedding: HashMap<ServerId, u64>,
    /// Moves pagers said they started and have not committed (memory only).
    pub(crate) moves: MovesInFlight,
    /// What each region's pager last reported, and when (memory only, `live.rs`).
    pub(crate) live: HashMap<RegionId, (krak_api::messages::RegionLive, Instant)>,
    /// The memory broker's configuration and last round (`broker.rs`).
    pub(crate) broker: crate::broker::Broker,
}

impl std::fmt::Debug for RackState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RackState")
            .field("servers", &self.servers.len())
            .field("regions", &self.regions.len())
            .field("policy", &self.policy.name())
            .field("counters", &self.counters)
            .finish()
    }
}

pub(crate) fn validate_name(what: &str, s: &str) -> Result<(), RackError> {
    if s.len() > MAX_NAME_BYTES || s.chars().any(char::is_control) {
        return Err(RackError::BadRequest(format!("{what} must be at most {MAX_NAME_BYTES} printable bytes")));
    }
    Ok(())
}

impl RackState {
    /// The rack as stored in `store` (empty if nothing is).
    pub fn load(store: Arc<dyn MetaStore>, config: ControllerConfig) -> Result<RackState, LoadError> {
        let loaded = persist::load(&*store)?;
        let policy_name = loaded.policy.unwrap_or_else(|| config.default_policy.clone());
        let policy = krak_placement::by_name(&policy_name)
            .ok_or_else(|| LoadError::UnknownPolicy { key: persist::POLICY_KEY.into(), name: policy_name.clone() })?;
        let broker_config = loaded.broker.unwrap_or_default();
        let broker = crate::broker::Broker::new(broker_config)
            .map_err(|e| LoadError::Broker { key: persist::BROKER_KEY.into(), reason: e.to_string() })?;
        let mut counters = loaded.counters;
        counters.next_server_id = counters.next_server_id.max(1);
        counters.next_region_id = counters.next_region_id.max(1);
        let mut rack = RackState {
            store,
            config,
            servers: BTreeMap::new(),
            by_addr: HashMap::new(),
            last_seen: HashMap::new(),
            regions: BTreeMap::new(),
            view: PlacementView::default(),
            policy,
            counters,
            shedding: HashMap::new(),
            moves: MovesInFlight::default(),
            live: HashMap::new(),
            broker,
        };
        let now = Instant::now();
        for s in loaded.servers {
            rack.view.upsert_server(s.id, &s.domain, s.state, s.capacity_bytes, s.free_bytes, s.slab_size_bytes);
            rack.by_addr.insert(s.addr.clone(), s.id);
            rack.last_seen.insert(s.id, now);
            rack.servers.insert(s.id, s);
        }
        for (record, chunks) in loaded.regions {
            rack.view.add_region(record.id, krak_placement::SlotSize::of(&record));
            let mut map = ChunkMap::default();
            let mut epoch = 0;
            for (chunk, p) in chunks {
                let key = || persist::slab_key(record.id, chunk);
                if chunk >= record.slots() {
                    return Err(LoadError::ChunkOutOfRange { key: key(), chunk, slots: record.slots() });
                }
                if !rack.servers.contains_key(&p.server) {
                    return Err(LoadError::UnknownServer { key: key(), server: p.server });
                }
                epoch = epoch.max(p.epoch);
                map.set(chunk, p);
                // the servers' free bytes were saved after these slabs were counted
                let free = rack.view.server(p.server).map_or(0, |s| s.free_bytes);
                rack.view.add_slab(record.id, p.server);
                rack.view.set_free(p.server, free);
            }
            // region epochs are not stored: after a restart each is the global epoch, which is
            // at least any epoch a pager saw, so no long-poll waits on a number gone backwards
            let epoch = epoch.max(rack.counters.map_epoch);
            rack.regions.insert(record.id, RegionEntry { record, map, epoch, heard: now });
        }
        Ok(rack)
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    pub fn map_epoch(&self) -> u64 {
        self.counters.map_epoch
    }

    pub fn view(&self) -> &PlacementView {
        &self.view
    }

    /// Switches the placement policy (stored).
    pub fn set_policy(&mut self, name: &str) -> Result<(), RackError> {
        let policy = krak_placement::by_name(name).ok_or_else(|| {
            RackError::BadRequest(format!(
                "unknown policy {name:?}; known: {}",
                krak_placement::POLICY_NAMES.join(", ")
            ))
        })?;
        let op = persist::put(persist::POLICY_KEY.into(), &PolicyRecord { name: policy.name().into() });
        // A new epoch for every region: pagers wake and pick up what the new policy asks.
        let mut counters = self.counters;
        counters.map_epoch += 1;
        persist::write(&*self.store, vec![op], &counters)?;
        self.counters = counters;
        self.policy = policy;
        for entry in self.regions.values_mut() {
            entry.epoch = counters.map_epoch;
        }
        Ok(())
    }

    /// The slab size most live servers lend (a chunk must fit one slab), or the configured
    /// default when no server is alive.
    fn usual_slab_bytes(&self) -> u64 {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for s in self.servers.values().filter(|s| s.state == ServerState::Alive) {
            *counts.entry(s.slab_size_bytes).or_default() += 1;
        }
        counts.into_iter().max_by_key(|(size, n)| (*n, *size)).map_or(self.config.default_chunk_bytes, |(size, _)| size)
    }

    pub fn create_region(&mut self, req: &CreateRegionRequest) -> Result<RegionRecord, RackError> {
        validate_name("owner", &req.owner)?;
        let chunk_bytes = req.chunk_bytes.unwrap_or_else(|| self.usual_slab_bytes());
        if chunk_bytes == 0 || !chunk_bytes.is_multiple_of(4096) {
            return Err(RackError::BadRequest("chunk_bytes must be a positive multiple of 4096".into()));
        }
        let stripe_width = req.stripe_width.unwrap_or(1);
        if !(1..=MAX_STRIPE_WIDTH).contains(&stripe_width) {
            return Err(RackError::BadRequest(format!("stripe_width must be 1 to {MAX_STRIPE_WIDTH}")));
        }
        let redundancy = req.redundancy.clone().unwrap_or_else(|| "none".into());
        validate_name("redundancy", &redundancy)?;
        let divisor = u64::from(req.slot_divisor.unwrap_or(1));
        if divisor == 0 || divisor > u64::from(MAX_STRIPE_WIDTH) || !chunk_bytes.is_multiple_of(divisor) {
            return Err(RackError::BadRequest(format!(
                "slot_divisor must be 1 to {MAX_STRIPE_WIDTH} and divide chunk_bytes ({chunk_bytes})"
            )));
        }
        let slot_bytes = chunk_bytes / divisor;
        let slots = req.size_bytes.div_ceil(chunk_bytes).saturating_mul(u64::from(stripe_width));
        if req.size_bytes == 0 || slots > MAX_CHUNKS_PER_REGION {
            return Err(RackError::BadRequest(format!(
                "size_bytes must be positive and at most {MAX_CHUNKS_PER_REGION} slabs (chunks times stripe_width)"
            )));
        }
        if self.regions.len() >= MAX_REGIONS {
            return Err(RackError::Conflict(format!("the rack already has {MAX_REGIONS} regions")));
        }
        let record = RegionRecord {
            id: RegionId(self.counters.next_region_id),
            owner: req.owner.clone(),
            size_bytes: req.size_bytes,
            local_budget_bytes: req.local_budget_bytes,
            chunk_bytes,
            created_unix_ms: now_unix_ms(),
            stripe_width,
            redundancy,
            slot_bytes,
        };
        let mut counters = self.counters;
        counters.next_region_id += 1;
        persist::write(&*self.store, vec![persist::put(persist::region_key(record.id), &record)], &counters)?;
        self.counters = counters;
        self.view.add_region(record.id, krak_placement::SlotSize::of(&record));
        self.regions.insert(
            record.id,
            RegionEntry { record: record.clone(), map: ChunkMap::default(), epoch: 0, heard: Instant::now() },
        );
        Ok(record)
    }

    /// Deletes a region and its map (the pager frees the slabs on the servers).
    pub fn delete_region(&mut self, id: RegionId) -> Result<RegionRecord, RackError> {
        let entry = self.regions.get(&id).ok_or_else(|| RackError::NotFound(format!("no region {id}")))?;
        let mut ops: Vec<_> = entry.map.iter().map(|(c, _)| persist::delete(persist::slab_key(id, c))).collect();
        // the region key goes last: a crash half way leaves a region with fewer chunks
        ops.push(persist::delete(persist::region_key(id)));
        let mut counters = self.counters;
        counters.map_epoch += 1;
        persist::write(&*self.store, ops, &counters)?;
        self.counters = counters;
        let entry = self.regions.remove(&id).expect("present above");
        self.moves.region_deleted(id);
        self.live.remove(&id);
        for (_, p) in entry.map.iter() {
            self.view.remove_slab(id, p.server);
        }
        self.view.remove_region(id);
        Ok(entry.record)
    }

    /// Chooses servers for `chunks` (slots, for a region with a stripe width above 1) of
    /// region `id` with the current policy (nothing is recorded: the pager allocates the
    /// slabs, then commits). Fragments of one chunk get distinct servers.
    pub fn place(&self, id: RegionId, chunks: &[u64], exclude: &[ServerId]) -> Result<Vec<ChunkServer>, RackError> {
        let entry = self.regions.get(&id).ok_or_else(|| RackError::NotFound(format!("no region {id}")))?;
        if chunks.len() > MAX_CHUNKS_PER_REQUEST || exclude.len() > MAX_EXCLUDE {
            return Err(RackError::BadRequest(format!(
                "at most {MAX_CHUNKS_PER_REQUEST} chunks and {MAX_EXCLUDE} excluded servers per request"
            )));
        }
        if let Some(c) = chunks.iter().find(|&&c| c >= entry.record.slots()) {
            return Err(RackError::BadRequest(format!("chunk {c} is past the region's {}", entry.record.slots())));
        }
        let servers = stripe::place_slots(&*self.policy, &self.view, &entry.record, &entry.map, chunks, exclude)?;
        Ok(chunks
            .iter()
            .zip(servers)
            .map(|(&chunk, server)| ChunkServer {
                chunk,
                server,
                addr: self.servers.get(&server).map(|s| s.addr.clone()).unwrap_or_default(),
            })
            .collect())
    }

    /// Records where chunks now live; every changed chunk gets the new map epoch.
    pub fn commit(&mut self, id: RegionId, chunks: &[CommitChunk]) -> Result<u64, RackError> {
        let entry = self.regions.get(&id).ok_or_else(|| RackError::NotFound(format!("no region {id}")))?;
        if chunks.len() > MAX_CHUNKS_PER_REQUEST {
            return Err(RackError::BadRequest(format!("at most {MAX_CHUNKS_PER_REQUEST} chunks per request")));
        }
        for c in chunks {
            if c.chunk >= entry.record.slots() {
                return Err(RackError::BadRequest(format!("chunk {} is past the region's end", c.chunk)));
            }
            match self.servers.get(&c.server) {
                None => return Err(RackError::BadRequest(format!("no server {}", c.server))),
                Some(s) if s.state == ServerState::Dead => {
                    return Err(RackError::Conflict(format!("server {} is dead", c.server)))
                }
                Some(s) if s.slab_size_bytes != entry.record.chunk_bytes => {
                    return Err(RackError::BadRequest(format!("server {}'s slabs are not chunk-sized", c.server)))
                }
                Some(_) => {}
            }
        }
        stripe::check_distinct(&entry.record, &entry.map, chunks)?;
        let mut counters = self.counters;
        counters.map_epoch += 1;
        let epoch = counters.map_epoch;
        let ops = chunks
            .iter()
            .map(|c| persist::put(persist::slab_key(id, c.chunk), &Placement { server: c.server, slab: c.slab, epoch }))
            .collect();
        persist::write(&*self.store, ops, &counters)?;
        self.counters = counters;
        let entry = self.regions.get_mut(&id).expect("checked above");
        entry.epoch = epoch;
        for c in chunks {
            self.moves.committed(id, c.chunk);
            if let Some(old) = entry.map.set(c.chunk, Placement { server: c.server, slab: c.slab, epoch }) {
                self.view.remove_slab(id, old.server);
            }
            self.view.add_slab(id, c.server);
            if let Some(s) = self.servers.get_mut(&c.server) {
                s.free_bytes = self.view.server(c.server).map_or(s.free_bytes, |v| v.free_bytes);
            }
        }
        Ok(epoch)
    }

    /// Takes slots out of region `id`'s map: the pager gave their slabs back (a region
    /// reserving on demand whose chunk's pages were all discarded). Slots not placed are
    /// ignored (the pager gives back only chunks none of whose fragments moves).
    pub fn release(&mut self, id: RegionId, chunks: &[u64]) -> Result<u64, RackError> {
        let entry = self.regions.get(&id).ok_or_else(|| RackError::NotFound(format!("no region {id}")))?;
        if chunks.len() > MAX_CHUNKS_PER_REQUEST {
            return Err(RackError::BadRequest(format!("at most {MAX_CHUNKS_PER_REQUEST} chunks per request")));
        }
        if let Some(c) = chunks.iter().find(|&&c| c >= entry.record.slots()) {
            return Err(RackError::BadRequest(format!("chunk {c} is past the region's {}", entry.record.slots())));
        }
        let placed: Vec<u64> = chunks.iter().copied().filter(|&c| entry.map.get(c).is_some()).collect();
        let mut counters = self.counters;
        counters.map_epoch += 1;
        let epoch = counters.map_epoch;
        let ops = placed.iter().map(|&c| persist::delete(persist::slab_key(id, c))).collect();
        persist::write(&*self.store, ops, &counters)?;
        self.counters = counters;
        let entry = self.regions.get_mut(&id).expect("checked above");
        entry.epoch = epoch;
        for c in placed {
            if let Some(old) = entry.map.remove(c) {
                self.view.remove_slab(id, old.server);
                if let Some(s) = self.servers.get_mut(&old.server) {
                    s.free_bytes = self.view.server(old.server).map_or(s.free_bytes, |v| v.free_bytes);
                }
            }
        }
        Ok(epoch)
    }

    /// Records that a pager started moving a slot of region `id` (see `moves.rs`).
    pub fn start_move(&mut self, id: RegionId, req: &MoveStartRequest) -> Result<(), RackError> {
        let entry = self.regions.get(&id).ok_or_else(|| RackError::NotFound(format!("no region {id}")))?;
        if req.slot >= entry.record.slots() {
            return Err(RackError::BadRequest(format!(
                "slot {} is past the region's {}",
                req.slot,
                entry.record.slots()
            )));
        }
        for server in [req.from, req.to] {
            if !self.servers.contains_key(&server) {
                return Err(RackError::BadRequest(format!("no server {server}")));
            }
        }
        if !self.moves.start(id, req.slot, req.from, req.to, Instant::now()) {
            return Err(RackError::Conflict(format!(
                "{} moves are listed already; this one goes on unlisted",
                crate::moves::MAX_MOVES_IN_FLIGHT
            )));
        }
        Ok(())
    }

    /// Ends the listed move of slot `slot` of region `id` that its pager gave up.
    pub fn abandon_move(&mut self, id: RegionId, slot: u64) -> Result<(), RackError> {
        if !self.regions.contains_key(&id) {
            return Err(RackError::NotFound(format!("no region {id}")));
        }
        if !self.moves.abandon(id, slot) {
            return Err(RackError::NotFound(format!("no move of slot {slot} of region {id} is listed")));
        }
        Ok(())
    }

    /// The region's epoch, if it exists.
    pub fn region_epoch(&self, id: RegionId) -> Option<u64> {
        self.regions.get(&id).map(|e| e.epoch)
    }

    /// The region's map entries changed after `since_epoch`, and its servers.
    pub fn map(&self, id: RegionId, since_epoch: u64) -> Result<MapReply, RackError> {
        let entry = self.regions.get(&id).ok_or_else(|| RackError::NotFound(format!("no region {id}")))?;
        let entries = entry
            .map
            .iter()
            .filter(|(_, p)| p.epoch > since_epoch)
            .map(|(chunk, p)| MapEntry { chunk, server: p.server, slab: p.slab, epoch: p.epoch })
            .collect();
        let servers = self.region_servers(id).into_iter().map(|(s, _)| s).collect();
        // (a striped region's pager moves each fragment whose stripe already uses `to` to
        // where `place` puts that slot instead: fragments of a chunk stay apart)
        let moves = self
            .policy
            .consolidation_moves(&self.view)
            .into_iter()
            .filter(|m| m.region == id)
            .filter_map(|m| {
                let to_addr = self.servers.get(&m.to)?.addr.clone();
                Some(MapMove { from: m.from, to: m.to, to_addr, slabs: m.slabs })
            })
            .collect();
        Ok(MapReply { region: entry.record.clone(), epoch: entry.epoch, since_epoch, entries, servers, moves })
    }

    /// Servers holding slabs of region `id`, with their slab counts.
    fn region_servers(&self, id: RegionId) -> Vec<(MapServer, u32)> {
        let Some(stat) = self.view.region(id) else { return Vec::new() };
        let mut out: Vec<(MapServer, u32)> = stat
            .per_server
            .iter()
            .filter_map(|(&i, &n)| {
                let sid = self.view.servers().get(i as usize)?.id;
                let s = self.servers.get(&sid)?;
                let shed_bytes = self.shedding.get(&sid).copied().unwrap_or(0);
                Some((MapServer { id: sid, addr: s.addr.clone(), state: s.state, shed_bytes }, n))
            })
            .collect();
        out.sort_by_key(|(s, _)| s.id);
        out
    }

    /// Bumps the epoch of every region with slabs on `server` (its state changed), so
    /// long-polling pagers wake up. The caller has bumped and stored the map epoch.
    pub(crate) fn touch_regions_of(&mut self, server: ServerId) {
        let Some(i) = self.view.index_of(server) else { return };
        let epoch = self.counters.map_epoch;
        for (id, entry) in self.regions.iter_mut() {
            if self.view.region(*id).is_some_and(|r| r.on_server(i) > 0) {
                entry.epoch = epoch;
            }
        }
    }

    pub fn server_statuses(&self) -> Vec<ServerStatus> {
        self.servers
            .values()
            .map(|s| {
                let mapped = self.view.server(s.id).map_or(0, |v| v.slabs);
                ServerStatus { record: s.clone(), mapped_slabs: mapped, empty: mapped == 0 }
            })
            .collect()
    }

    pub fn status(&self) -> StatusReply {
        let regions = self
            .regions
            .values()
            .map(|e| RegionStatus {
                record: e.record.clone(),
                epoch: e.epoch,
                placed_chunks: e.map.placed(),
                remote_bytes: self
                    .region_servers(e.record.id)
                    .into_iter()
                    .map(|(s, n)| RemoteBytes { server: s.id, bytes: u64::from(n) * e.record.slot_cost_bytes() })
                    .collect(),
                degraded_slots: self.degraded_slots_of(&e.map),
                live: self.live_of(e.record.id).map(|(l, _)| l),
                live_age_ms: self.live_of(e.record.id).map(|(_, age)| age),
            })
            .collect();
        let mut proposed = self.policy.consolidation_moves(&self.view);
        proposed.truncate(MAX_LISTED_MOVES);
        StatusReply {
            policy: self.policy.name().to_string(),
            map_epoch: self.counters.map_epoch,
            servers: self.server_statuses(),
            regions,
            moves_in_flight: self.moves.listed(MAX_LISTED_MOVES),
            proposed_moves: proposed,
            drains: self.servers.values().filter(|s| s.drain_requested_unix_ms.is_some()).map(|s| s.id).collect(),
        }
    }

    /// Slabs the policy's consolidation proposes to move (for metrics).
    pub fn status_proposed_moves(&self) -> u64 {
        self.policy.consolidation_moves(&self.view).iter().map(|m| u64::from(m.slabs)).sum()
    }

    /// Slots placed on dead servers, in all regions (for metrics).
    pub fn degraded_slots(&self) -> u64 {
        self.regions.values().map(|e| self.degraded_slots_of(&e.map)).sum()
    }

    fn degraded_slots_of(&self, map: &ChunkMap) -> u64 {
        let dead = |s: ServerId| self.servers.get(&s).is_none_or(|r| r.state == ServerState::Dead);
        map.iter().filter(|(_, p)| dead(p.server)).count() as u64
    }

    /// Slabs the map holds in all (for metrics).
    pub fn mapped_slabs(&self) -> u64 {
        self.regions.values().map(|e| e.map.placed()).sum()
    }

    /// Bytes the slab map takes in memory.
    pub fn map_memory_bytes(&self) -> usize {
        self.regions.values().map(|e| e.map.memory_bytes()).sum()
    }
}

#[cfg(test)]
#[path = "rack_tests.rs"]
mod tests;
