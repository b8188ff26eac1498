//! Reserving rack memory as a region is used ([`crate::PagerConfig::reserve_on_demand`]): a
//! chunk gets its slabs when its first page is written back. The write-back thread reserves
//! before it writes a batch, so a fault never waits for the controller (only for write-back
//! space, as with any slow write); and a thread of its own reserves the chunk after the last
//! one written ahead of need ([`ahead_loop`]), while the write-back thread goes on, so that a
//! program filling its memory in order finds its next chunk reserved. At most one chunk is
//! reserved ahead at a time, so the region holds at most one chunk more than it uses. A
//! reservation and a release hold `RegionShared::reserving` whole: one chunk is never
//! reserved twice, nor released while it is reserved again. Where the controller places the region, it places the
//! chunk's fragments (one request, so they land on distinct servers), the slabs are
//! allocated and the placement committed; over a list of servers, the region's list policy
//! chooses. A chunk whose reservation fails stays unreserved: the pages bound for it stay
//! buffered and are tried again (`writeback.rs`), never written nowhere.
//!
//! A chunk is given back ([`release_emptied`]) once a discard leaves none of its pages with
//! data on the servers: its stripe is taken out of the table, the controller takes its slots
//! out of the map (asked again at the next release if it did not confirm), and its slabs
//! are freed. Also on the write-back thread, between batches,
//! so no write of the chunk is in flight, and no page of it can become remote meanwhile.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::Ordering;

use krak_api::limits::MAX_CHUNKS_PER_REQUEST;
use krak_api::messages::{CommitChunk, CommitRequest, PlaceRequest, ReleaseRequest};
use krak_api::{Api, ServerId};

use crate::error::BadAnswer;
use crate::follow::link::{parse_addr, ControllerLink, MAX_UNRELEASED_SLOTS};
use crate::remote::list_placement::{self, NotPlaced};
use crate::remote::stripe::{Frag, FragState, Stripe};
use crate::remote::{admin_conn, free_quietly};
use crate::state::core::RegionShared;
use crate::state::stats::Counters;
use crate::PagerError;

/// HTTP status of a placement the rack has no room for.
const NO_CAPACITY: u16 = 507;

/// Reserves every unreserved chunk among `pages`' chunks. Returns the chunks that could not
/// be reserved, and the first reason.
pub(crate) fn reserve_for(shared: &RegionShared, pages: &[usize]) -> (Vec<usize>, Option<PagerError>) {
    let layout = &shared.layout;
    let mut chunks: Vec<usize> = pages.iter().map(|p| p / layout.chunk_pages).collect();
    chunks.sort_unstable();
    chunks.dedup();
    let mut failed = Vec::new();
    let mut why = None;
    // Only a batch with a chunk to reserve waits for the lock (and for a reservation ahead
    // in progress); the filter looks again under it.
    let reserving = chunks.iter().any(|&c| !layout.stripes.is_reserved(c)).then(|| shared.reserving.lock());
    if reserving.is_some() {
        for chunk in chunks.iter().copied().filter(|&c| !layout.stripes.is_reserved(c)) {
            // After one failure (a full rack, a controller away) the others would fail alike.
            if why.is_some() {
                failed.push(chunk);
                continue;
            }
            match reserve(shared, chunk) {
                Ok(()) => Counters::add(&shared.counters.chunks_reserved, 1),
                Err(e) => {
                    failed.push(chunk);
                    why = Some(e);
                }
            }
        }
    }
    drop(reserving);
    // After the chunks were seen reserved: the reservation thread marks its chunk before it
    // installs the stripe, so a batch that found it reserved sees the mark too.
    if chunks.contains(&shared.ahead.load(Ordering::SeqCst)) {
        // The chunk reserved ahead is written now: the next one may be.
        shared.ahead.store(NO_CHUNK, Ordering::SeqCst);
    }
    if let (Some(tx), Some(&last)) = (&shared.ahead_tx, chunks.last()) {
        // Never waits: a request already waiting is enough.
        let _ = tx.try_send(last + 1);
    }
    (failed, why)
}

/// No chunk reserved ahead.
const NO_CHUNK: usize = usize::MAX;

/// The reservation thread: reserves the chunk the write-back thread names ahead of its first
/// write-back, when no chunk reserved ahead is still waiting for its data. Ends with the
/// region.
pub(crate) fn ahead_loop(shared: std::sync::Arc<RegionShared>, requests: std::sync::mpsc::Receiver<usize>) {
    let layout = &shared.layout;
    // After a failure (a full rack, a controller away), no try for a while: the write-back
    // thread must not wait behind reservations that fail.
    let mut quiet_until = std::time::Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok(chunk) = requests.recv_timeout(std::time::Duration::from_millis(100)) else { continue };
        if std::time::Instant::now() < quiet_until {
            continue;
        }
        let _reserving = shared.reserving.lock();
        let ahead = shared.ahead.load(Ordering::SeqCst);
        if (ahead != NO_CHUNK && layout.stripes.is_reserved(ahead))
            || chunk >= layout.stripes.len()
            || layout.stripes.is_reserved(chunk)
        {
            continue;
        }
        // Marked before the stripe is installed (`reserve_for` reads the mark after it sees
        // the chunk reserved).
        shared.ahead.store(chunk, Ordering::SeqCst);
        match reserve(&shared, chunk) {
            Ok(()) => {
                Counters::add(&shared.counters.chunks_reserved, 1);
                Counters::add(&shared.counters.chunks_reserved_ahead, 1);
            }
            Err(e) => {
                // The write-back reserves it when the chunk's first page comes.
                let _ = shared.ahead.compare_exchange(chunk, NO_CHUNK, Ordering::SeqCst, Ordering::SeqCst);
                tracing::debug!("reserving chunk {chunk} ahead: {e}");
                quiet_until = std::time::Instant::now() + AHEAD_QUIET_AFTER_FAILURE;
            }
        }
    }
}

/// How long the reservation thread keeps quiet after a failed reservation ahead.
const AHEAD_QUIET_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(2);

/// Gives `chunk` its stripe of slabs. The caller holds `reserving`.
fn reserve(shared: &RegionShared, chunk: usize) -> Result<(), PagerError> {
    let stripe = match &shared.rack {
        Some(link) => at_controller(shared, link, chunk)?,
        None => from_list(shared, chunk)?,
    };
    let layout = &shared.layout;
    if !layout.stripes.install(chunk, stripe.clone()) {
        // Only this thread reserves; were it otherwise, the first stripe wins.
        let mut admin = shared.admin.lock();
        for f in &stripe {
            if let Ok(conn) = admin_conn(&mut admin, layout, f.server) {
                free_quietly(conn, f.slab);
            }
        }
    }
    Ok(())
}

/// Bytes of one chunk's slabs (every fragment).
fn chunk_bytes(shared: &RegionShared) -> u64 {
    let scheme = shared.layout.redundancy();
    (shared.layout.chunk_pages * scheme.unit_bytes() * scheme.width()) as u64
}

/// Has the controller place the chunk's fragments, allocates them and commits them.
fn at_controller(shared: &RegionShared, link: &ControllerLink, chunk: usize) -> Result<Stripe, PagerError> {
    let layout = &shared.layout;
    let scheme = layout.redundancy();
    let width = scheme.width();
    let slots: Vec<u64> = (0..width).map(|i| (chunk * width + i) as u64).collect();
    // Reserved again: an unconfirmed release of these slots must not reach the controller
    // after this commit.
    link.unreleased.lock().retain(|s| !slots.contains(s));
    let exclude = link.lost_ids(layout);
    let reply = link.client.lock().place(link.region, &PlaceRequest { chunks: slots.clone(), exclude }).map_err(
        |e| match e {
            e @ krak_api::ApiError::Status { status: NO_CAPACITY, .. } => {
                PagerError::RackFullAtController { needed_bytes: chunk_bytes(shared), source: e }
            }
            e => e.into(),
        },
    )?;
    let mut placed: Vec<Option<(Frag, ServerId, SocketAddr)>> = vec![None; width];
    let mut allocate = || -> Result<(), PagerError> {
        for p in &reply.placements {
            let Some(i) = slots.iter().position(|&s| s == p.chunk) else {
                return Err(BadAnswer::OutOfRange { what: "slot", index: p.chunk, count: slots.len() as u64 }.into());
            };
            let addr = parse_addr(&p.addr)?;
            let server = layout.server_index(addr);
            if placed.iter().flatten().any(|(f, _, _)| f.server == server) || layout.stripes.is_lost(server) {
                return Err(BadAnswer::SameServer { chunk: chunk as u64 }.into());
            }
            let mut admin = shared.admin.lock();
            let conn = admin_conn(&mut admin, layout, server)?;
            if (conn.slab_pages() as usize) < layout.chunk_pages {
                return Err(BadAnswer::SlabTooSmall { addr }.into());
            }
            let slab = conn.alloc_slab_units(scheme.unit_bytes() as u32)?;
            if let Some((old, _, _)) = placed[i].replace((Frag::new(server, slab, FragState::Live), p.server, addr)) {
                free_quietly(conn, old.slab);
            }
        }
        if placed.iter().any(Option::is_none) {
            return Err(BadAnswer::Unplaced { chunk: chunk as u64 }.into());
        }
        let chunks = slots
            .iter()
            .zip(placed.iter().flatten())
            .map(|(&slot, (f, id, _))| CommitChunk { chunk: slot, server: *id, slab: f.slab.0 })
            .collect();
        let reply = link.client.lock().commit(link.region, &CommitRequest { chunks })?;
        link.epoch.fetch_max(reply.epoch, Ordering::Relaxed);
        Ok(())
    };
    match allocate() {
        Ok(()) => {
            let mut ids = link.ids.lock();
            for (_, id, addr) in placed.iter().flatten() {
                ids.insert(*addr, *id);
            }
            drop(ids);
            Ok(placed.into_iter().flatten().map(|(f, _, _)| f).collect())
        }
        Err(e) => {
            free_all(shared, placed.iter().flatten().map(|(f, _, _)| *f));
            Err(e)
        }
    }
}

/// Places the chunk's fragments over the region's servers with its list policy.
fn from_list(shared: &RegionShared, chunk: usize) -> Result<Stripe, PagerError> {
    let layout = &shared.layout;
    let scheme = layout.redundancy();
    let (width, unit) = (scheme.width(), scheme.unit_bytes() as u32);
    let policy = shared.placement_policy();
    let exclude = layout.stripes.lost_servers();
    let mut admin = shared.admin.lock();
    let mut view = list_placement::current_view(&mut admin, layout);
    let mut slots: Vec<Option<Frag>> = vec![None; width];
    for j in 0..width {
        let taken: Vec<usize> = slots.iter().flatten().map(|f| f.server).collect();
        let lend = |s: usize| admin_conn(&mut admin, layout, s).and_then(|c| c.alloc_slab_units(unit));
        match list_placement::place_fragment(&*policy, &mut view, lend, &taken, &exclude) {
            // The fragment placed first rotates with the chunk, as when reserved up front.
            Ok((server, slab)) => slots[(chunk + j) % width] = Some(Frag::new(server, slab, FragState::Live)),
            Err(e) => {
                drop(admin);
                free_all(shared, slots.iter().flatten().copied());
                return Err(match e {
                    NotPlaced::NoRoom { .. } => PagerError::RackFull {
                        needed_bytes: chunk_bytes(shared),
                        got_bytes: 0,
                        servers: layout.server_count(),
                    },
                    NotPlaced::Failed { source, .. } => PagerError::Remote(source),
                });
            }
        }
    }
    Ok(slots.into_iter().flatten().collect())
}

/// Gives back the slabs of every chunk of `ranges` (just discarded) that no longer holds a
/// page with data on the servers. A chunk whose fragment moves or is being rebuilt keeps
/// them (a later discard tries again).
pub(crate) fn release_emptied(shared: &RegionShared, ranges: &[Range<usize>]) {
    let layout = &shared.layout;
    let chunk_pages = layout.chunk_pages;
    let mut chunks: Vec<usize> = ranges
        .iter()
        .filter(|r| !r.is_empty())
        .flat_map(|r| r.start / chunk_pages..=(r.end - 1) / chunk_pages)
        .collect();
    chunks.sort_unstable();
    chunks.dedup();
    let emptied = |c: &usize| {
        let core = shared.core.lock();
        let span = c * chunk_pages..((c + 1) * chunk_pages).min(core.pages.len());
        layout.stripes.is_reserved(*c) && core.pages.remote_in(span).next().is_none()
    };
    if !chunks.iter().any(emptied) {
        return;
    }
    // Under it until the controller has the release: a reservation of the same chunk waits.
    let _reserving = shared.reserving.lock();
    let mut released: Vec<(usize, Stripe)> = Vec::new();
    {
        let core = shared.core.lock();
        let pages = core.pages.len();
        for chunk in chunks {
            let span = chunk * chunk_pages..((chunk + 1) * chunk_pages).min(pages);
            if core.pages.remote_in(span).next().is_some() {
                continue;
            }
            if let Some(stripe) = layout.stripes.uninstall(chunk) {
                released.push((chunk, stripe));
            }
        }
    }
    if released.is_empty() {
        return;
    }
    if let Some(link) = &shared.rack {
        // The controller's map first; if it does not answer, the slots are sent again with
        // the next release (the slabs go now: the pager no longer uses them).
        let width = layout.redundancy().width();
        let mut slots: Vec<u64> = std::mem::take(&mut *link.unreleased.lock());
        slots.extend(released.iter().flat_map(|(c, _)| (0..width).map(move |i| (c * width + i) as u64)));
        for batch in slots.chunks(MAX_CHUNKS_PER_REQUEST) {
            match link.client.lock().release(link.region, &ReleaseRequest { chunks: batch.to_vec() }) {
                Ok(reply) => {
                    link.epoch.fetch_max(reply.epoch, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(
                        "the controller did not confirm giving back {} slots (sent again later): {e}",
                        batch.len()
                    );
                    let mut unreleased = link.unreleased.lock();
                    unreleased.extend_from_slice(batch);
                    let over = unreleased.len().saturating_sub(MAX_UNRELEASED_SLOTS);
                    unreleased.drain(..over);
                }
            }
        }
    }
    Counters::add(&shared.counters.chunks_released, released.len() as u64);
    // A scrub step that read a stripe before it was taken out finishes first.
    let _gate = shared.scrub_gate.write();
    free_all(shared, released.into_iter().flat_map(|(_, stripe)| stripe));
}

fn free_all(shared: &RegionShared, frags: impl Iterator<Item = Frag>) {
    let layout = &shared.layout;
    let mut admin = shared.admin.lock();
    for f in frags {
        match admin_conn(&mut admin, layout, f.server) {
            Ok(conn) => free_quietly(conn, f.slab),
            Err(e) => tracing::warn!("freeing slab {:#x}: {e}", f.slab.0),
        }
    }
}
