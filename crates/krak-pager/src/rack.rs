//! Regions placed by the rack controller, and following its map while the region lives.
//!
//! With a controller URL instead of a list of servers, the region is registered with the
//! controller, which chooses a server for each chunk (its placement policy); the pager
//! allocates the slabs itself (it holds their capabilities) and commits them to the map. A
//! follower thread then long-polls the region's map: when a server is draining, it moves
//! each of the region's chunks off that server to one the controller places it on, while
//! the region stays in use, and commits the new home. A redundant region's fragments are
//! placed in `rack_stripes.rs`; its follower loses servers the map calls dead (for
//! re-protection to replace) and moves fragments, one at a time, off servers that drain or
//! whose host is short of memory (`frag_move.rs`), each to a server the controller places
//! that slot on.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use krak_api::messages::{CommitChunk, CommitRequest, CreateRegionRequest, MapReply, PlaceRequest};
use krak_api::{Api, RackClient, RegionId, ServerId, ServerState};
use krak_client::{ConnectOptions, Connection};
use krak_proto::PAGE_SIZE;

use crate::core::Shared;
use crate::lock_order::{level, Mutex};
use crate::rack_moves::{consolidate_fragments, move_fragments_off, move_off, move_to};
use crate::remote::{free_quietly, ChunkHome, RemoteLayout};
use crate::{PagerError, Redundancy};

/// How long one map long-poll may wait; also bounds how long dropping a region waits for
/// the follower.
const MAP_POLL_MS: u64 = 1_000;
/// Bound on one call to the controller (a long-poll adds its wait).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Most consolidation moves carried out per map round.
const MAX_MOVES_PER_ROUND: usize = 8;
/// Pause after the controller could not be reached.
pub(crate) const RETRY_PAUSE_MS: u64 = 1_000;

pub(crate) fn controller_error(e: impl std::fmt::Display) -> PagerError {
    PagerError::Controller(e.to_string())
}

pub(crate) fn parse_addr(addr: &str) -> Result<SocketAddr, PagerError> {
    addr.parse().map_err(|_| controller_error(format!("bad address {addr:?}")))
}

/// The region's registration with the controller.
#[derive(Debug)]
pub(crate) struct RackLink {
    /// Every URL the rack's controller may answer on (leader and standbys).
    pub client: Mutex<RackClient, { level::CONTROLLER_CLIENT }>,
    pub region: RegionId,
    /// Map epoch the pager has caught up with.
    pub epoch: std::sync::atomic::AtomicU64,
    /// The controller's id of each server the region was placed on.
    pub ids: Mutex<HashMap<SocketAddr, ServerId>, { level::SERVER_IDS }>,
}

impl RackLink {
    /// The controller's ids of the servers the region has lost (those it knows).
    pub(crate) fn lost_ids(&self, layout: &RemoteLayout) -> Vec<ServerId> {
        let ids = self.ids.lock();
        layout.stripes.lost_servers().iter().filter_map(|s| ids.get(&layout.server_addr(*s)).copied()).collect()
    }
}

/// Registers a region of `region_pages` with the controller at `url`, has it placed, and
/// allocates and commits every chunk's slab.
pub(crate) fn allocate(
    url: &str,
    owner: &str,
    region_pages: usize,
    local_budget_bytes: u64,
    connect: ConnectOptions,
    redundancy: Redundancy,
) -> Result<(RemoteLayout, Vec<Option<Connection>>, RackLink), PagerError> {
    let mut client = RackClient::new(url, CALL_TIMEOUT).map_err(controller_error)?.with_secret(connect.secret);
    let request = CreateRegionRequest {
        owner: owner.to_string(),
        size_bytes: (region_pages * PAGE_SIZE) as u64,
        local_budget_bytes,
        chunk_bytes: None,
        stripe_width: (!redundancy.is_none()).then_some(redundancy.width() as u32),
        redundancy: (!redundancy.is_none()).then(|| redundancy.to_string()),
        // a fragment's slab holds a K-th of the chunk under ec:K+M
        slot_divisor: Some((PAGE_SIZE / redundancy.unit_bytes()) as u32),
    };
    let created = client.create_region(&request).map_err(controller_error)?;
    let region = created.region;
    let link =
        RackLink { client: Mutex::new(client), region: region.id, epoch: Default::default(), ids: Default::default() };
    let placed = if redundancy.is_none() {
        place_and_commit(&link, &region, connect)
    } else {
        crate::rack_stripes::place_and_commit(&link, &region, connect, redundancy)
    };
    match placed {
        Ok((layout, admin, epoch)) => {
            link.epoch.store(epoch, Ordering::Relaxed);
            Ok((layout, admin, link))
        }
        Err(e) => {
            release(&link);
            Err(e)
        }
    }
}

fn place_and_commit(
    link: &RackLink,
    region: &krak_api::RegionRecord,
    connect: ConnectOptions,
) -> Result<(RemoteLayout, Vec<Option<Connection>>, u64), PagerError> {
    let chunk_pages = (region.chunk_bytes / PAGE_SIZE as u64) as usize;
    let chunks = region.chunks();
    let placed = link
        .client
        .lock()
        .place(region.id, &PlaceRequest { chunks: (0..chunks).collect(), exclude: vec![] })
        .map_err(controller_error)?;
    let mut servers: Vec<SocketAddr> = Vec::new();
    let mut admin: Vec<Option<Connection>> = Vec::new();
    let mut homes: Vec<Option<ChunkHome>> = vec![None; chunks as usize];
    let mut commits = Vec::with_capacity(chunks as usize);
    let result = (|| {
        for p in &placed.placements {
            let addr = parse_addr(&p.addr)?;
            let idx = match servers.iter().position(|a| *a == addr) {
                Some(i) => i,
                None => {
                    admin.push(Some(Connection::connect(addr, connect)?));
                    servers.push(addr);
                    servers.len() - 1
                }
            };
            let conn = admin[idx].as_mut().expect("connected above");
            if (conn.slab_pages() as usize) < chunk_pages {
                return Err(controller_error(format!("{addr} lends slabs smaller than the region's chunks")));
            }
            let slab = conn.alloc_slab()?;
            let chunk = p.chunk as usize;
            if chunk >= homes.len() {
                return Err(controller_error(format!("placement named chunk {chunk} of {chunks}")));
            }
            homes[chunk] = Some(ChunkHome { server: idx, slab, moving_to: None });
            commits.push(CommitChunk { chunk: p.chunk, server: p.server, slab: slab.0 });
        }
        Ok(())
    })();
    let free_all = |admin: &mut Vec<Option<Connection>>, homes: &[Option<ChunkHome>]| {
        for home in homes.iter().flatten() {
            if let Some(conn) = admin[home.server].as_mut() {
                free_quietly(conn, home.slab);
            }
        }
    };
    if let Err(e) = result {
        free_all(&mut admin, &homes);
        return Err(e);
    }
    let Some(homes) = homes.iter().copied().collect::<Option<Vec<ChunkHome>>>() else {
        free_all(&mut admin, &homes);
        return Err(controller_error("the controller left chunks unplaced"));
    };
    let committed = link.client.lock().commit(region.id, &CommitRequest { chunks: commits });
    match committed {
        Ok(reply) => Ok((RemoteLayout::from_parts(connect, chunk_pages, servers, homes), admin, reply.epoch)),
        Err(e) => {
            free_all(&mut admin, &homes.into_iter().map(Some).collect::<Vec<_>>());
            Err(controller_error(e))
        }
    }
}

/// The follower thread: keeps the region off draining servers until the region is dropped.
pub(crate) fn follow(shared: Arc<Shared>, link: Arc<RackLink>) {
    let mut reported_dead = HashSet::new();
    let redundant = !shared.layout.redundancy().is_none();
    // Map epoch at which a redundant region's consolidation last moved nothing: not tried
    // again until the map changes.
    let mut stuck_at_epoch = None;
    // Its own client for the long-poll, so that re-protection's and moves' calls do not
    // wait behind it.
    let mut poller = link.client.lock().clone();
    while !shared.stop.load(Ordering::Relaxed) {
        let since = link.epoch.load(Ordering::Relaxed);
        let map = match poller.map_since(link.region, since, Duration::from_millis(MAP_POLL_MS)) {
            Ok(map) => map,
            Err(e) => {
                tracing::warn!("controller unreachable ({e}); the region keeps its current placement");
                std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
                continue;
            }
        };
        let avoid: Vec<ServerId> = map.servers.iter().filter(|s| s.state != ServerState::Alive).map(|s| s.id).collect();
        if redundant {
            follow_redundant(&shared, &link, &map, &avoid);
            consolidate_redundant(&shared, &link, &map, &mut stuck_at_epoch);
            link.epoch.fetch_max(map.epoch, Ordering::Relaxed);
            continue;
        }
        for server in &map.servers {
            match server.state {
                ServerState::Draining => {
                    if let Err(e) = move_off(&shared, &link, server, &avoid, usize::MAX) {
                        tracing::error!("moving the region off {}: {e}", server.addr);
                    }
                }
                // Its host needs memory back: move one chunk now; the server's next heartbeat
                // says whether it needs more, and that new epoch wakes this loop again.
                ServerState::Alive if server.shed_bytes > 0 => {
                    let mut avoid = avoid.clone();
                    avoid.push(server.id);
                    if let Err(e) = move_off(&shared, &link, server, &avoid, 1) {
                        tracing::error!("moving a chunk off {} (its host is short of memory): {e}", server.addr);
                    }
                }
                ServerState::Dead if reported_dead.insert(server.id) => {
                    tracing::error!(
                        "memory server {} is dead; pages of this region that lived only there are lost",
                        server.addr
                    );
                }
                _ => {}
            }
        }
        // Consolidation the policy asks for (`pack`): a bounded number per round, since each
        // commit brings a new epoch and the next round sees what is still asked.
        for mv in map.moves.iter().take(MAX_MOVES_PER_ROUND) {
            let Some(from) = map.servers.iter().find(|s| s.id == mv.from) else { continue };
            if let Err(e) = move_to(&shared, &link, from, mv) {
                tracing::error!("consolidating {} into {}: {e}", from.addr, mv.to_addr);
            }
        }
        link.epoch.fetch_max(map.epoch, Ordering::Relaxed);
    }
}

/// The consolidation moves (`pack`) a map asks of a redundant region, a bounded number per
/// round; a round that moved nothing is not tried again until the map changes (every
/// fragment left may share its chunk with every other server).
fn consolidate_redundant(shared: &Shared, link: &RackLink, map: &MapReply, stuck_at_epoch: &mut Option<u64>) {
    if map.moves.is_empty() || *stuck_at_epoch == Some(map.epoch) {
        return;
    }
    let mut moved = 0;
    for mv in map.moves.iter().take(MAX_MOVES_PER_ROUND) {
        let Some(from) = map.servers.iter().find(|s| s.id == mv.from) else { continue };
        match consolidate_fragments(shared, link, from, mv) {
            Ok(n) => moved += n,
            Err(e) => tracing::error!("consolidating fragments of {} into {}: {e}", from.addr, mv.to_addr),
        }
    }
    if moved == 0 {
        tracing::debug!("no fragment could be consolidated at map epoch {}", map.epoch);
        *stuck_at_epoch = Some(map.epoch);
    }
}

/// What a redundant region takes from a map: a server the controller calls dead is lost
/// for the region (re-protection replaces its fragments); the fragments on a draining
/// server move off it, and one fragment moves off a server whose host is short of memory
/// (its next heartbeat says whether it needs more).
fn follow_redundant(shared: &Shared, link: &RackLink, map: &MapReply, avoid: &[ServerId]) {
    let layout = &shared.layout;
    for server in &map.servers {
        match server.state {
            ServerState::Dead => {
                let addr = server.addr.parse::<SocketAddr>().ok();
                if let Some(i) = addr.and_then(|a| layout.find_server(a)).filter(|i| !layout.stripes.is_lost(*i)) {
                    crate::stripe::lose(layout, i, "the rack controller reports it dead");
                }
            }
            ServerState::Draining => {
                if let Err(e) = move_fragments_off(shared, link, server, avoid, usize::MAX) {
                    tracing::error!("moving the region's fragments off {}: {e}", server.addr);
                }
            }
            ServerState::Alive if server.shed_bytes > 0 => {
                let mut avoid = avoid.to_vec();
                avoid.push(server.id);
                if let Err(e) = move_fragments_off(shared, link, server, &avoid, 1) {
                    tracing::error!("moving a fragment off {} (its host is short of memory): {e}", server.addr);
                }
            }
            _ => {}
        }
    }
}

/// Tells the controller the region is gone (after its slabs were freed).
pub(crate) fn release(link: &RackLink) {
    if let Err(e) = link.client.lock().delete_region(link.region) {
        tracing::warn!("removing the region from the controller: {e}");
    }
}
