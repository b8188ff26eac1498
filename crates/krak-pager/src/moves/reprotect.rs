//! Re-protection: once a redundant region has lost a server, each fragment it held gets a
//! replacement slab on a surviving server not already in the chunk's stripe, filled with
//! the fragment rebuilt from the survivors, while the region stays in use.
//!
//! A background thread finds lost fragments (and probes the region's servers, so a loss is
//! noticed even when no fault touches it), allocates the replacement and queues its
//! rebuild on the write-back thread, like a live fragment move (`moves/fragment.rs`): write-backs
//! reach the replacement from the moment it is placed, and copy steps between write-back
//! batches fill in every remote page; being on the thread that writes, each copy is ordered
//! with the writes of the same page. Past the last page the replacement is read like any
//! other fragment.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use krak_client::ClientError;
use krak_proto::PageRef;
use krak_uffd::PAGE_SIZE;

use crate::error::MoveFailure;
use crate::follow::link::ControllerLink;
use crate::moves::queue::{finish, NEXT_MOVE_ID};
use crate::moves::rebuild_error::{NoSpare, Rebuild, RebuildFailure};
use crate::remote::admin_conn;
use crate::remote::health::{self, Health};
use crate::remote::list_placement::{self, NotPlaced};
use crate::remote::redundancy::Coder;
use crate::remote::stripe::{Frag, FragState};
use crate::remote::{free_quietly, Links};
use crate::state::core::{ChunkMove, Core, CoreGuard, MoveKind, RegionShared};
use crate::state::stats::Counters;
use crate::PagerError;

/// How often the thread looks for lost fragments.
const POLL_MS: u64 = 100;
/// How often it checks that the region's servers still answer.
const PROBE_MS: u64 = 500;
/// Pause after a round that rebuilt nothing.
const RETRY_PAUSE_MS: u64 = 1_000;
/// Failed rebuilds of one fragment before it is left degraded (and logged).
const MAX_REBUILD_ATTEMPTS: u32 = 3;
/// Pages rebuilt per copy step.
const STEP_PAGES: usize = krak_proto::MAX_BATCH_PAGES;

/// `link` is set when a rack controller placed the region: it then places (and records)
/// each replacement; otherwise the pager chooses among the servers it was given.
pub(crate) fn run(shared: Arc<RegionShared>, link: Option<Arc<ControllerLink>>) {
    let layout = &shared.layout;
    let mut last_probe = Instant::now();
    let mut last_scrub = Instant::now();
    let mut failures: HashMap<(usize, usize), u32> = HashMap::new();
    // Lost servers when "no spare server" was last said, so it is said once per loss.
    let mut no_spare_told = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        nap(&shared, POLL_MS);
        if last_probe.elapsed() >= Duration::from_millis(PROBE_MS) {
            probe(&shared);
            last_probe = Instant::now();
        }
        let lost = layout.stripes.lost_fragments();
        if lost.is_empty() {
            let every = shared.tuning.scrub_interval_ms;
            if every > 0 && last_scrub.elapsed() >= Duration::from_millis(every) {
                match scrub(&shared) {
                    Ok(0) => tracing::debug!("scheduled scrub: every fragment checked, none corrupt"),
                    Ok(n) => tracing::warn!("scheduled scrub: {n} corrupt fragments found; rewriting their pages"),
                    Err(e) => tracing::warn!("scheduled scrub: {e}"),
                }
                last_scrub = Instant::now();
            }
            continue;
        }
        let mut rebuilt_any = false;
        for (chunk, frag) in lost {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            let tries = failures.entry((chunk, frag)).or_default();
            if *tries >= MAX_REBUILD_ATTEMPTS {
                continue;
            }
            match rebuild_fragment(&shared, link.as_deref(), chunk, frag) {
                Ok(()) => rebuilt_any = true,
                Err(Rebuild::NoSpare(why)) => {
                    let lost = layout.stripes.lost_servers().len();
                    if no_spare_told != lost {
                        no_spare_told = lost;
                        tracing::warn!("the region stays degraded: {why}");
                    }
                }
                Err(Rebuild::Failed(why)) => {
                    *tries += 1;
                    if *tries == MAX_REBUILD_ATTEMPTS {
                        tracing::error!(
                            "chunk {chunk} stays without fragment {frag} after {tries} failed rebuilds: {why}"
                        );
                    } else {
                        tracing::warn!("rebuilding fragment {frag} of chunk {chunk} failed: {why}; will retry");
                    }
                }
            }
        }
        if layout.stripes.lost_fragments().is_empty() {
            failures.clear();
            if let Some(since) = layout.stripes.degraded_since.lock().take() {
                let ms = since.elapsed().as_millis() as u64;
                shared.counters.reprotect_ms.store(ms, Ordering::Relaxed);
                tracing::info!("full redundancy ({}) is back {ms} ms after the first loss", layout.redundancy());
            }
        } else if !rebuilt_any {
            nap(&shared, RETRY_PAUSE_MS);
        }
    }
}

/// Sleeps `ms`, waking early when the region is dropped.
fn nap(shared: &RegionShared, ms: u64) {
    let until = Instant::now() + Duration::from_millis(ms);
    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())));
    }
}

/// Asks each server the region uses for its stats: one that refuses connections, or whose
/// process restarted (new server id: its slabs are gone), is lost.
fn probe(shared: &RegionShared) {
    let layout = &shared.layout;
    // Stripes first: a server is in the table before any stripe names it.
    let stripes = layout.stripes.all();
    let mut in_use = vec![false; layout.server_count()];
    for f in stripes.iter().flatten().filter(|f| f.is_written()) {
        in_use[f.server] = true;
    }
    for (server, _) in in_use.iter().enumerate().filter(|(_, used)| **used) {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        match health::check(shared, server) {
            Health::Restarted => {
                crate::remote::stripe::lose(layout, server, "the server restarted (its slabs are gone)");
            }
            Health::Unreachable(e) => {
                crate::remote::stripe::lose(layout, server, &format!("health check: {e}"));
            }
            Health::Serving | Health::NoAnswer(_) => {}
        }
    }
}

impl RegionShared {}

pub(crate) fn scrub(shared: &RegionShared) -> Result<u64, PagerError> {
    let layout = &shared.layout;
    // One fragment per page: a CRC failure there cannot be read around or repaired.
    if layout.redundancy().tolerated_losses() == 0 {
        return Ok(0);
    }
    let mut links = Links::new(layout.server_count());
    let mut found = 0;
    let mut buf = vec![0u8; STEP_PAGES * PAGE_SIZE];
    let mut next = 0;
    while next < shared.region_pages() {
        let pages: Vec<usize> = {
            let core = shared.core.lock();
            let end = (next + STEP_PAGES).min(shared.region_pages());
            let remote = core.pages.remote_in(next..end).collect();
            next = end;
            remote
        };
        if pages.is_empty() {
            continue;
        }
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let _gate = shared.scrub_gate.read();
        let read = links.start_stripe_read_with(layout, &pages, true);
        // A page read while it is rewritten may rebuild wrong (fragments of two
        // versions): only the checksums matter here.
        let _ = links.finish_stripe_read(layout, read, &mut buf[..pages.len() * PAGE_SIZE]);
        found += links.found.corrupt_fragments;
        links.found.degraded_pages = 0;
        shared.take_found(&mut links);
    }
    Counters::add(&shared.counters.scrubs, 1);
    Ok(found)
}

/// Places a replacement for fragment `frag` of `chunk` and has the write-back thread fill
/// it; waits until it is live (or failed), then records it with the controller if any.
fn rebuild_fragment(
    shared: &RegionShared,
    link: Option<&ControllerLink>,
    chunk: usize,
    frag: usize,
) -> Result<(), Rebuild> {
    let layout = &shared.layout;
    let (server, slab, id) = match link {
        Some(link) => {
            let (server, id) = crate::follow::place::place_replacement(link, layout, chunk, frag)?;
            let unit = layout.redundancy().unit_bytes() as u32;
            let slab = admin_conn(&mut shared.admin.lock(), layout, server)
                .and_then(|c| c.alloc_slab_units(unit))
                .map_err(|source| RebuildFailure::Lend { server: layout.server_addr(server), source })?;
            (server, slab, Some(id))
        }
        None => {
            let (server, slab) = choose_replacement(shared, chunk, frag)?;
            (server, slab, None)
        }
    };
    let free = |shared: &RegionShared| {
        if let Ok(conn) = admin_conn(&mut shared.admin.lock(), layout, server) {
            free_quietly(conn, slab);
        }
    };
    if !layout.stripes.replace_lost(chunk, frag, Frag::new(server, slab, FragState::Rebuilding)) {
        free(shared);
        return Ok(());
    }
    let id_move = NEXT_MOVE_ID.fetch_add(1, Ordering::Relaxed);
    {
        let mut core = shared.core.lock();
        let next_page = chunk * layout.chunk_pages;
        core.moves.push_back(ChunkMove {
            id: id_move,
            chunk,
            next_page,
            pages_copied: 0,
            kind: MoveKind::Rebuild(frag),
        });
        shared.wb_wake.notify_one();
    }
    match shared.wait_move(id_move) {
        Ok(pages) => {
            tracing::info!(
                "fragment {frag} of chunk {chunk} rebuilt on {} ({pages} pages)",
                layout.server_addr(server)
            );
            if let (Some(link), Some(id)) = (link, id) {
                let slot = (chunk * layout.redundancy().width() + frag) as u64;
                // The fragment is live either way; a failed commit leaves the map stale.
                if let Err(e) = crate::follow::link::commit_slot(shared, link, slot, id, slab) {
                    tracing::error!("recording fragment {frag} of chunk {chunk} with the controller: {e}");
                }
            }
            Ok(())
        }
        Err(why) => {
            layout.stripes.transition(chunk, frag, FragState::Rebuilding, FragState::Lost);
            free(shared);
            Err(RebuildFailure::Fill(why).into())
        }
    }
}

/// The pager's own choice of a replacement for a region given a list of servers, and its
/// slab there: where the region's list policy puts one more fragment of the stripe, among
/// the survivors that answer and hold none of it.
fn choose_replacement(
    shared: &RegionShared,
    chunk: usize,
    frag: usize,
) -> Result<(usize, krak_proto::SlabId), Rebuild> {
    let layout = &shared.layout;
    let unit = layout.redundancy().unit_bytes() as u32;
    let policy = shared.placement_policy();
    let taken = layout.stripes.servers_of_others(chunk, frag);
    let mut exclude = vec![layout.stripes.with(chunk, |s| s[frag].server)];
    let mut why: Option<(usize, ClientError)> = None;
    let mut admin = shared.admin.lock();
    let mut view = list_placement::current_view(&mut admin, layout);
    // Each failure excludes its server, so this ends.
    loop {
        let lend = |s: usize| admin_conn(&mut admin, layout, s).and_then(|c| c.alloc_slab_units(unit));
        match list_placement::place_fragment(&*policy, &mut view, lend, &taken, &exclude) {
            Ok(placed) => return Ok(placed),
            Err(NotPlaced::Failed { server, source }) => {
                why = Some((server, source));
                exclude.push(server);
            }
            Err(NotPlaced::NoRoom { refused }) => {
                return Err(match why.or(refused) {
                    Some((server, source)) => {
                        RebuildFailure::Lend { server: layout.server_addr(server), source }.into()
                    }
                    None => NoSpare::NoSurvivor {
                        servers: layout.server_count(),
                        lost: layout.stripes.lost_servers().len(),
                        scheme: layout.redundancy(),
                    }
                    .into(),
                });
            }
        }
    }
}

/// One copy step of the rebuild or fragment move at the head of the move queue, run by the
/// write-back thread with the core lock held: rebuilds the fragment of the next remote
/// pages of the chunk from the stripe and writes it to the replacement (or to the slab the
/// fragment moves to). Past the last page a replacement becomes live; a moved fragment
/// switches to its new slab once no fetch of the chunk is in flight, since the mover then
/// frees the old one.
pub(crate) fn step(shared: &RegionShared, links: &mut Links, mut core: CoreGuard<'_>) {
    let Some(mv) = core.moves.front() else { return };
    let (id, chunk, from) = (mv.id, mv.chunk, mv.next_page);
    let (frag, moving) = match mv.kind {
        MoveKind::Rebuild(frag) => (frag, false),
        MoveKind::Fragment(frag) => (frag, true),
    };
    let layout = &shared.layout;
    let target = layout.stripes.with(chunk, |s| match moving {
        true => s[frag].moving_to.map(|(server, slab)| Frag::new(server, slab, FragState::Rebuilding)),
        false => Some(s[frag]).filter(|f| f.state == FragState::Rebuilding),
    });
    let Some(target) = target else {
        finish(shared, &mut core, id, Err(MoveFailure::TargetLost));
        return;
    };
    let chunk_pages = layout.chunk_pages;
    let (start, end) = (chunk * chunk_pages, ((chunk + 1) * chunk_pages).min(shared.region_pages()));
    let pages = next_step_pages(&mut core, from, end);
    if pages.is_empty() {
        if moving && core.pages.any_fetching(start..end) {
            // A fetch may be reading the old slab: switch once it has landed.
            drop(core);
            std::thread::sleep(Duration::from_millis(1));
            return;
        }
        let copied = core.moves.front().map_or(0, |m| m.pages_copied);
        let done = match moving {
            true => layout.stripes.finish_move(chunk, frag, (target.server, target.slab)).is_some(),
            false => layout.stripes.transition(chunk, frag, FragState::Rebuilding, FragState::Live),
        };
        let result = if done { Ok(copied) } else { Err(MoveFailure::TargetLost) };
        finish(shared, &mut core, id, result);
        return;
    }
    drop(core);
    let result = rebuild_pages(shared, links, &pages, frag, target);
    // What these reads found is re-protection's business, not the workload's.
    links.found = Default::default();
    let mut core = shared.core.lock();
    match result {
        Ok(()) => {
            if let Some(mv) = core.moves.front_mut() {
                mv.pages_copied += pages.len() as u64;
            }
            if !moving {
                Counters::add(&shared.counters.reprotected_pages, pages.len() as u64);
            }
        }
        Err(e) => finish(shared, &mut core, id, Err(MoveFailure::Step(Box::new(e)))),
    }
}

fn rebuild_pages(
    shared: &RegionShared,
    links: &mut Links,
    pages: &[usize],
    frag: usize,
    target: Frag,
) -> Result<(), PagerError> {
    let layout = &shared.layout;
    let scheme = layout.redundancy();
    let (width, unit) = (scheme.width(), scheme.unit_bytes());
    let mut buf = vec![0u8; pages.len() * PAGE_SIZE];
    let started = links.start_read(layout, pages);
    links.finish_read(layout, started, &mut buf)?;
    let coder = links.coder.get_or_insert_with(|| Coder::new(scheme));
    let mut all = vec![0u8; width * unit];
    let mut units = vec![0u8; pages.len() * unit];
    for (page, dst) in buf.chunks_exact(PAGE_SIZE).zip(units.chunks_exact_mut(unit)) {
        coder.encode(page, &mut all).map_err(PagerError::Coding)?;
        dst.copy_from_slice(&all[frag * unit..(frag + 1) * unit]);
    }
    let at = |p: usize| PageRef { slab: target.slab, page: (p % layout.chunk_pages) as u32 };
    let writes: Vec<(PageRef, &[u8])> = pages.iter().zip(units.chunks_exact(unit)).map(|(p, u)| (at(*p), u)).collect();
    links.write_to(layout, target.server, &writes).map_err(PagerError::Remote)
}

/// The `REMOTE` pages of the next step of the rebuild at the head of the move queue: at
/// most `STEP_PAGES` of `[from, end)`; records where the step after starts.
pub(crate) fn next_step_pages(core: &mut Core, from: usize, end: usize) -> Vec<usize> {
    let mut pages = Vec::with_capacity(STEP_PAGES);
    let mut next = from;
    while next < end && pages.len() < STEP_PAGES {
        if core.pages.is_remote(next) {
            pages.push(next);
        }
        next += 1;
    }
    if let Some(mv) = core.moves.front_mut() {
        mv.next_page = next;
    }
    pages
}
