//! The moves a region's follower carries out for the controller (`follow/mod.rs`):
//! fragments (whole chunks without redundancy) off a draining server or a host short of
//! memory, and consolidation moves.
//! Each move is announced to the controller (so status lists it), carried out while the
//! region is in use, and committed; a failed one withdraws its announcement.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use krak_api::messages::{ChunkServer, MapMove, MapServer};
use krak_api::{ApiError, ServerId};
use krak_proto::SlabId;

use crate::error::{BadAnswer, PagerError};
use crate::follow::link::{abandon_move, announce_move, commit_slot, parse_addr, place_one, ControllerLink};
use crate::state::core::RegionShared;

/// Where the controller places `slot` (off `exclude`): its address and id.
fn place_target(
    link: &ControllerLink,
    slot: u64,
    exclude: Vec<ServerId>,
) -> Result<(SocketAddr, ServerId), PagerError> {
    let placed = place_one(link, slot, exclude)?;
    let Some(ChunkServer { server, addr, .. }) = placed else {
        return Err(BadAnswer::NoTarget { slot }.into());
    };
    Ok((parse_addr(&addr)?, server))
}

/// Announces the move of `slot` from `from` to `to`, runs it (`go` answers the slot's new
/// slab), and commits it; withdraws the announcement if either fails.
fn carry_out(
    shared: &RegionShared,
    link: &ControllerLink,
    slot: u64,
    (from, to): (ServerId, ServerId),
    go: impl FnOnce() -> Result<SlabId, PagerError>,
) -> Result<(), PagerError> {
    announce_move(link, slot, from, to);
    go().and_then(|slab| commit_slot(shared, link, slot, to, slab)).inspect_err(|_| abandon_move(link, slot))
}

/// Moves up to `limit` fragments on `server`, each to the server the controller places its
/// slot on (off `avoid`, the servers the region lost and, by the controller's own rule,
/// the servers of the chunk's other fragments).
pub(crate) fn move_fragments_off(
    shared: &RegionShared,
    link: &ControllerLink,
    server: &MapServer,
    avoid: &[ServerId],
    limit: usize,
) -> Result<(), PagerError> {
    let layout = &shared.layout;
    let Some(from) = layout.find_server(parse_addr(&server.addr)?) else { return Ok(()) };
    let width = layout.redundancy().width();
    for (chunk, frag) in layout.stripes.fragments_on(from, limit) {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let slot = (chunk * width + frag) as u64;
        let exclude = avoid.iter().copied().chain(link.lost_ids(layout)).collect();
        let (to, to_id) = place_target(link, slot, exclude)?;
        carry_out(shared, link, slot, (server.id, to_id), || {
            let moved = shared.move_fragment(chunk, frag, to)?;
            link.ids.lock().insert(to, to_id);
            Ok(moved.slab)
        })?;
    }
    Ok(())
}

/// Carries out one consolidation move: up to `mv.slabs` fragments
/// from `from` to `mv.to`, or, for a fragment whose chunk already has one on `mv.to`, to
/// where the controller places its slot now (off `from` and the servers the region lost),
/// if that server already holds some of the region. Returns the fragments moved; one that
/// has nowhere to go stays.
pub(crate) fn consolidate_fragments(
    shared: &RegionShared,
    link: &ControllerLink,
    from: &MapServer,
    mv: &MapMove,
) -> Result<usize, PagerError> {
    let layout = &shared.layout;
    let Some(from_idx) = layout.find_server(parse_addr(&from.addr)?) else { return Ok(0) };
    let to_addr = parse_addr(&mv.to_addr)?;
    let width = layout.redundancy().width();
    let mut moved = 0;
    for (chunk, frag) in layout.stripes.fragments_on(from_idx, mv.slabs as usize) {
        let slot = (chunk * width + frag) as u64;
        let to_idx = layout.find_server(to_addr);
        let clash = to_idx.is_some_and(|t| layout.stripes.with(chunk, |s| s.iter().any(|f| f.uses(t))));
        let (to, to_id) = if clash {
            let mut exclude = vec![from.id];
            exclude.extend(link.lost_ids(layout));
            let target = match place_one(link, slot, exclude) {
                Ok(Some(p)) => (parse_addr(&p.addr)?, p.server),
                // no other server qualifies: this fragment stays
                Ok(None) | Err(ApiError::Status { status: 507, .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            // Consolidating onto a server that holds none of the region would refill one
            // that an earlier round emptied: the fragment stays instead.
            let holds_some = layout
                .find_server(target.0)
                .is_some_and(|t| layout.stripes.all().iter().flatten().any(|f| f.server == t && f.is_live()));
            if !holds_some {
                continue;
            }
            target
        } else {
            (to_addr, mv.to)
        };
        carry_out(shared, link, slot, (from.id, to_id), || {
            let m = shared.move_fragment(chunk, frag, to)?;
            link.ids.lock().insert(to, to_id);
            Ok(m.slab)
        })?;
        moved += 1;
    }
    Ok(moved)
}
