//! The region's link to the rack controller: its registration, and the calls every part of
//! the pager makes through it (place one slot, commit it, announce or abandon a move,
//! release the region), with what a failed call becomes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use krak_api::messages::{ChunkServer, CommitChunk, CommitRequest, MoveStartRequest, PlaceRequest};
use krak_api::{Api, ApiError, ControllerClient, RegionId, ServerId};
use krak_proto::SlabId;

use crate::error::{BadAnswer, PagerError};
use crate::remote::RemoteLayout;
use crate::state::core::RegionShared;
use crate::state::lock_order::{level, Mutex};

/// Bound on one call to the controller (a long-poll adds its wait).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after the controller could not be reached.
pub(crate) const RETRY_PAUSE_MS: u64 = 1_000;

/// A server address in one of the controller's answers.
pub(crate) fn parse_addr(addr: &str) -> Result<SocketAddr, PagerError> {
    addr.parse().map_err(|source| BadAnswer::Address { addr: addr.to_string(), source }.into())
}

/// The region's registration with the controller.
#[derive(Debug)]
pub(crate) struct ControllerLink {
    /// Every URL the rack's controller may answer on (leader and standbys).
    pub client: Mutex<ControllerClient, { level::CONTROLLER_CLIENT }>,
    pub region: RegionId,
    /// Map epoch the pager has caught up with.
    pub epoch: std::sync::atomic::AtomicU64,
    /// The controller's id of each server the region was placed on.
    pub ids: Mutex<HashMap<SocketAddr, ServerId>, { level::SERVER_IDS }>,
    /// Slots given back (their slabs freed) that the controller has not confirmed taking
    /// out of its map: sent again with the next release, dropped when reserved again (both
    /// only on the write-back thread). At most [`MAX_UNRELEASED_SLOTS`].
    pub unreleased: Mutex<Vec<u64>, { level::UNRELEASED }>,
}

/// Bound on [`ControllerLink::unreleased`]: past it the oldest are forgotten (the controller
/// maps them until the region is deleted, which removes every slot).
pub(crate) const MAX_UNRELEASED_SLOTS: usize = 1 << 16;

impl ControllerLink {
    /// The controller's ids of the servers the region has lost (those it knows).
    pub(crate) fn lost_ids(&self, layout: &RemoteLayout) -> Vec<ServerId> {
        let ids = self.ids.lock();
        layout.stripes.lost_servers().iter().filter_map(|s| ids.get(&layout.server_addr(*s)).copied()).collect()
    }
}

/// Tells the controller the region is gone (after its slabs were freed).
pub(crate) fn release(link: &ControllerLink) {
    if let Err(e) = link.client.lock().delete_region(link.region) {
        tracing::warn!("removing the region from the controller: {e}");
    }
}

/// The server the controller places `slot` on (off `exclude`), if it names one.
pub(crate) fn place_one(
    link: &ControllerLink,
    slot: u64,
    exclude: Vec<ServerId>,
) -> Result<Option<ChunkServer>, ApiError> {
    let placed = link.client.lock().place(link.region, &PlaceRequest { chunks: vec![slot], exclude })?;
    Ok(placed.placements.into_iter().find(|p| p.chunk == slot))
}

/// Records that map slot `slot` (a chunk, or a fragment of a redundant region) now lives in
/// `slab` on `server`. The data already lives there (the old slab is freed), so a failed
/// commit is retried a few times: until it lands, only the controller's map is stale.
pub(crate) fn commit_slot(
    shared: &RegionShared,
    link: &ControllerLink,
    slot: u64,
    server: ServerId,
    slab: SlabId,
) -> Result<(), PagerError> {
    const ATTEMPTS: u32 = 5;
    let request = CommitRequest { chunks: vec![CommitChunk { chunk: slot, server, slab: slab.0 }] };
    let mut attempt = 1;
    loop {
        match link.client.lock().commit(link.region, &request) {
            Ok(reply) => {
                link.epoch.fetch_max(reply.epoch, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) if attempt < ATTEMPTS && !shared.stop.load(Ordering::Relaxed) => {
                tracing::warn!("committing slot {slot}'s new home failed ({e}); retrying");
                attempt += 1;
                std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS / 4));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Tells the controller that a move of `slot` from `from` to `to` starts, so that status
/// lists it until the slot's commit. For status only: a refusal is logged and the move
/// goes on.
pub(crate) fn announce_move(link: &ControllerLink, slot: u64, from: ServerId, to: ServerId) {
    if let Err(e) = link.client.lock().start_move(link.region, &MoveStartRequest { slot, from, to }) {
        tracing::warn!("telling the controller that slot {slot} moves: {e}");
    }
}

/// Tells the controller that the move of `slot` was given up.
pub(crate) fn abandon_move(link: &ControllerLink, slot: u64) {
    if let Err(e) = link.client.lock().abandon_move(link.region, slot) {
        tracing::warn!("telling the controller that slot {slot}'s move was given up: {e}");
    }
}
