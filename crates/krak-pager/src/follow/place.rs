//! Placing a region through the rack controller: registering it, having the controller
//! choose a server for every fragment (slot = chunk × width + fragment; width one, slot =
//! chunk, without redundancy; distinct servers and, while there are enough, distinct
//! failure domains per chunk), allocating each slab on the named server and committing
//! them all. A
//! lost fragment's replacement is also placed here (`place` on its slot, excluding the lost
//! servers) and committed once re-protection has filled it.

use std::net::SocketAddr;

use krak_api::limits::MAX_CHUNKS_PER_REQUEST;
use krak_api::messages::{ChunkServer, CommitChunk, CommitRequest, CreateRegionRequest, PlaceRequest};
use krak_api::{Api, ApiError, ControllerClient, RegionRecord, ServerId};
use krak_client::{ConnectOptions, Connection};
use krak_proto::PAGE_SIZE;

use crate::error::BadAnswer;
use crate::follow::link::{parse_addr, place_one, release, ControllerLink, CALL_TIMEOUT};
use crate::moves::rebuild_error::{NoSpare, Rebuild, RebuildFailure};
use crate::remote::redundancy::Redundancy;
use crate::remote::stripe::{Frag, FragState, Stripe};
use crate::remote::{free_quietly, RemoteLayout};
use crate::state::lock_order::Mutex;
use crate::PagerError;
use std::sync::atomic::Ordering;

/// HTTP status of a placement the rack has no room for.
const NO_CAPACITY: u16 = 507;

/// Places, allocates and commits every fragment of `region` (created `width()` wide);
/// frees every slab allocated on failure (the caller deletes the region).
pub(crate) fn place_stripes_and_commit(
    link: &ControllerLink,
    region: &RegionRecord,
    connect: ConnectOptions,
    scheme: Redundancy,
) -> Result<(RemoteLayout, Vec<Option<Connection>>, u64), PagerError> {
    let width = scheme.width();
    if region.stripe_width as usize != width {
        return Err(BadAnswer::WrongWidth { got: region.stripe_width, want: width as u32 }.into());
    }
    let chunk_pages = (region.chunk_bytes / PAGE_SIZE as u64) as usize;
    let chunks = region.chunks() as usize;
    let mut placed = Placed { servers: Vec::new(), admin: Vec::new(), frags: vec![None; chunks * width] };
    let result = place_all(link, region, connect, scheme, chunk_pages, &mut placed);
    let stripes = match result.and_then(|()| placed.stripes(width)) {
        Ok(stripes) => stripes,
        Err(e) => {
            placed.free_all();
            return Err(e);
        }
    };
    let commits: Vec<CommitChunk> = placed.commits(link);
    let mut epoch = 0;
    for batch in commits.chunks(MAX_CHUNKS_PER_REQUEST) {
        let committed = link.client.lock().commit(region.id, &CommitRequest { chunks: batch.to_vec() });
        match committed {
            Ok(reply) => epoch = epoch.max(reply.epoch),
            Err(e) => {
                placed.free_all();
                return Err(e.into());
            }
        }
    }
    let layout = RemoteLayout::from_stripes(connect, chunk_pages, placed.servers, &[], scheme, stripes);
    Ok((layout, placed.admin, epoch))
}

/// What has been allocated so far.
struct Placed {
    servers: Vec<SocketAddr>,
    admin: Vec<Option<Connection>>,
    /// Fragment of each slot, with the controller's id of its server.
    frags: Vec<Option<(Frag, ServerId)>>,
}

impl Placed {
    fn free_all(&mut self) {
        for (f, _) in self.frags.iter().flatten() {
            if let Some(conn) = self.admin[f.server].as_mut() {
                free_quietly(conn, f.slab);
            }
        }
        self.frags.clear();
    }

    /// Every chunk's stripe, checked whole and on distinct servers (what the pager's reads
    /// and writes assume, whatever the controller answered).
    fn stripes(&self, width: usize) -> Result<Vec<Stripe>, PagerError> {
        let mut out = Vec::with_capacity(self.frags.len() / width);
        for (c, slots) in self.frags.chunks(width).enumerate() {
            let stripe: Option<Stripe> = slots.iter().map(|s| s.map(|(f, _)| f)).collect();
            let Some(stripe) = stripe else { return Err(BadAnswer::Unplaced { chunk: c as u64 }.into()) };
            if (1..width).any(|i| stripe[..i].iter().any(|f| f.server == stripe[i].server)) {
                return Err(BadAnswer::SameServer { chunk: c as u64 }.into());
            }
            out.push(stripe);
        }
        Ok(out)
    }

    fn commits(&self, link: &ControllerLink) -> Vec<CommitChunk> {
        let mut ids = link.ids.lock();
        let mut out = Vec::with_capacity(self.frags.len());
        for (slot, (f, id)) in self.frags.iter().enumerate().filter_map(|(s, f)| f.map(|f| (s, f))) {
            ids.insert(self.servers[f.server], id);
            out.push(CommitChunk { chunk: slot as u64, server: id, slab: f.slab.0 });
        }
        out
    }
}

fn place_all(
    link: &ControllerLink,
    region: &RegionRecord,
    connect: ConnectOptions,
    scheme: Redundancy,
    chunk_pages: usize,
    placed: &mut Placed,
) -> Result<(), PagerError> {
    let width = scheme.width();
    let slots = placed.frags.len();
    // Whole stripes per request: the controller keeps a chunk's fragments apart only among
    // those in the map and those chosen in the same request.
    let per_request = (MAX_CHUNKS_PER_REQUEST / width).max(1) * width;
    for first in (0..slots).step_by(per_request) {
        let batch: Vec<u64> = (first..(first + per_request).min(slots)).map(|s| s as u64).collect();
        let reply = link
            .client
            .lock()
            .place(region.id, &PlaceRequest { chunks: batch, exclude: vec![] })
            .map_err(|e| placement_error(e, (slots * chunk_pages * scheme.unit_bytes()) as u64))?;
        for p in &reply.placements {
            let slot = p.chunk as usize;
            if slot >= slots {
                return Err(BadAnswer::OutOfRange { what: "slot", index: slot as u64, count: slots as u64 }.into());
            }
            let addr = parse_addr(&p.addr)?;
            let server = match placed.servers.iter().position(|a| *a == addr) {
                Some(i) => i,
                None => {
                    placed.admin.push(Some(Connection::connect(addr, connect)?));
                    placed.servers.push(addr);
                    placed.servers.len() - 1
                }
            };
            let conn = placed.admin[server].as_mut().expect("connected above");
            if (conn.slab_pages() as usize) < chunk_pages {
                return Err(BadAnswer::SlabTooSmall { addr }.into());
            }
            let slab = conn.alloc_slab_units(scheme.unit_bytes() as u32)?;
            if let Some((old, _)) = placed.frags[slot].replace((Frag::new(server, slab, FragState::Live), p.server)) {
                free_quietly(placed.admin[old.server].as_mut().expect("allocated there"), old.slab);
            }
        }
    }
    Ok(())
}

fn placement_error(e: ApiError, needed_bytes: u64) -> PagerError {
    match e {
        e @ ApiError::Status { status: NO_CAPACITY, .. } => {
            PagerError::RackFullAtController { needed_bytes, source: e }
        }
        e => e.into(),
    }
}

/// Asks the controller for a server for fragment `frag` of `chunk`, off every server the
/// region has lost; returns its index in the layout's server table and its id.
pub(crate) fn place_replacement(
    link: &ControllerLink,
    layout: &RemoteLayout,
    chunk: usize,
    frag: usize,
) -> Result<(usize, ServerId), Rebuild> {
    let width = layout.redundancy().width();
    let exclude = link.lost_ids(layout);
    let slot = (chunk * width + frag) as u64;
    let reply = match place_one(link, slot, exclude) {
        Ok(r) => r,
        Err(e @ ApiError::Status { status: NO_CAPACITY, .. }) => return Err(NoSpare::ControllerFull(e).into()),
        // Not the fragment's fault: asked again each round, without using up its attempts.
        Err(e) if e.is_transient() => return Err(NoSpare::ControllerUnreachable(e).into()),
        Err(e) => return Err(RebuildFailure::AskController(e).into()),
    };
    let Some(ChunkServer { server: id, addr, .. }) = reply else {
        return Err(RebuildFailure::NonePlaced.into());
    };
    let addr = parse_addr(&addr).map_err(|e| RebuildFailure::Answer(Box::new(e)))?;
    let server = layout.server_index(addr);
    if layout.stripes.is_lost(server) || layout.stripes.with(chunk, |s| s.iter().any(|f| f.uses(server))) {
        return Err(RebuildFailure::ChoseTaken { addr, chunk }.into());
    }
    link.ids.lock().insert(addr, id);
    Ok((server, id))
}

/// Registers a region of `region_pages` with the controller at `url`, has it placed, and
/// allocates and commits every chunk's slab (none yet when `on_demand`).
pub(crate) fn allocate(
    url: &str,
    owner: &str,
    region_pages: usize,
    local_budget_bytes: u64,
    connect: ConnectOptions,
    redundancy: Redundancy,
    on_demand: bool,
) -> Result<(RemoteLayout, Vec<Option<Connection>>, ControllerLink), PagerError> {
    let mut client = ControllerClient::new(url, CALL_TIMEOUT)?.with_secret(connect.secret);
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
    let created = client.create_region(&request)?;
    let region = created.region;
    let link = ControllerLink {
        client: Mutex::new(client),
        region: region.id,
        epoch: Default::default(),
        ids: Default::default(),
        unreleased: Default::default(),
    };
    if on_demand {
        // Chunks are placed as they are first written back (`fault/reserve.rs`).
        let width = redundancy.width();
        if region.stripe_width as usize != width {
            release(&link);
            return Err(BadAnswer::WrongWidth { got: region.stripe_width, want: width as u32 }.into());
        }
        let chunk_pages = (region.chunk_bytes / PAGE_SIZE as u64) as usize;
        let stripes = vec![Vec::new(); region.chunks() as usize];
        let layout = RemoteLayout::from_stripes(connect, chunk_pages, Vec::new(), &[], redundancy, stripes);
        return Ok((layout, Vec::new(), link));
    }
    match place_stripes_and_commit(&link, &region, connect, redundancy) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use krak_proto::SlabId;

    fn placed(servers: &[Option<usize>]) -> Placed {
        let frags = servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.map(|server| (Frag::new(server, SlabId(i as u64, 0), FragState::Live), ServerId(server as u32 + 1)))
            })
            .collect();
        Placed { servers: Vec::new(), admin: Vec::new(), frags }
    }

    #[test]
    fn stripes_must_be_whole_and_on_distinct_servers() {
        let ok = placed(&[Some(0), Some(1), Some(2), Some(1), Some(2), Some(0)]);
        let stripes = ok.stripes(3).unwrap();
        assert_eq!(stripes.len(), 2);
        assert_eq!(stripes[1].iter().map(|f| f.server).collect::<Vec<_>>(), vec![1, 2, 0]);
        let shared = placed(&[Some(0), Some(1), Some(2), Some(1), Some(2), Some(1)]);
        assert!(shared.stripes(3).unwrap_err().to_string().contains("two fragments of chunk 1"));
        let missing = placed(&[Some(0), None, Some(2)]);
        assert!(missing.stripes(3).unwrap_err().to_string().contains("chunk 0 was left unplaced"));
    }
}
