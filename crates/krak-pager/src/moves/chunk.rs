//! Live chunk moves: a chunk's slab moves to another server while the region is in use, and
//! no fault waits for it.
//!
//! While a chunk moves, every write-back of its pages goes to both the old and the new slab,
//! and faults keep reading the old one. The thread that asked for the move copies the
//! chunk's remote pages to the new slab itself, several steps in flight at once, with
//! `CopyPages`: the new server stores a copied page only if no write-back stored it since
//! the slab was allocated, so a copy read before a write-back can never undo it, whatever
//! order the two arrive in. (The move first waits for the write-back batch in flight when
//! it began, whose writes may still reach only the old slab.) Once all pages are copied, the
//! write-back thread switches the chunk's home between two batches, at a moment when none of
//! the chunk's pages is being fetched, so no fetch or write straddles the switch; the caller
//! then frees the old slab.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use krak_uffd::PAGE_SIZE;

use crate::error::{MoveFailure, PagerError};
use crate::moves::queue::{finish, wait_for_writeback_in_flight, NEXT_MOVE_ID};
use crate::remote::{admin_conn, free_quietly, ChunkHome, Links};
use crate::state::core::{ChunkMove, CoreGuard, MoveKind, RegionShared};
use crate::state::stats::Counters;

/// What a drain did.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct DrainReport {
    pub chunks_moved: u64,
    pub pages_copied: u64,
    pub bytes_copied: u64,
    pub elapsed_ms: u64,
}

/// One step of the oldest move, run by the write-back thread with the core lock held.
pub(crate) fn step(shared: &RegionShared, links: &mut Links, mut core: CoreGuard<'_>) {
    let Some(mv) = core.moves.front() else { return };
    match mv.kind {
        MoveKind::Chunk => {}
        MoveKind::Rebuild(frag) => return crate::moves::reprotect::step(shared, links, core, frag, false),
        MoveKind::Fragment(frag) => return crate::moves::reprotect::step(shared, links, core, frag, true),
    }
    let (id, chunk, from) = (mv.id, mv.chunk, mv.next_page);
    let home = shared.layout.chunk(chunk);
    let Some((to, to_slab)) = home.moving_to else {
        finish(shared, &mut core, id, Err(MoveFailure::NotMoving));
        return;
    };
    let chunk_pages = shared.layout.chunk_pages;
    let (start, end) = (chunk * chunk_pages, ((chunk + 1) * chunk_pages).min(shared.region_pages()));
    debug_assert_eq!(from, end, "a move is queued once its copy is done");
    if core.pages.any_fetching(start..end) {
        // A fetch from the old home is in flight: switch once it has landed.
        drop(core);
        std::thread::sleep(Duration::from_millis(1));
        return;
    }
    shared.layout.set_chunk(chunk, ChunkHome { server: to, slab: to_slab, moving_to: None });
    let copied = core.moves.front().map_or(0, |m| m.pages_copied);
    Counters::add(&shared.counters.chunks_moved, 1);
    finish(shared, &mut core, id, Ok(copied));
}

impl RegionShared {
    /// Moves every chunk of the region off the server at `from`, each to the server of
    /// `targets` that holds the fewest of the region's chunks. A redundant region moves its
    /// fragments instead, each to a target that holds none of its chunk's others.
    pub(crate) fn drain_server(&self, from: SocketAddr, targets: &[SocketAddr]) -> Result<DrainReport, PagerError> {
        let started = Instant::now();
        let layout = &self.layout;
        let targets: Vec<SocketAddr> = targets.iter().copied().filter(|t| *t != from).collect();
        if targets.is_empty() {
            return Err(PagerError::Config(format!("no server to drain {from} to")));
        }
        if !layout.redundancy().is_none() {
            return self.drain_fragments(from, &targets);
        }
        let mut report = DrainReport::default();
        while let Some(&chunk) = layout.chunks_on(from, 1).first() {
            let homes = layout.chunks();
            let load = |t: &SocketAddr| {
                let i = layout.server_index(*t);
                homes.iter().filter(|h| h.server == i).count()
            };
            let to = *targets.iter().min_by_key(|t| load(t)).expect("targets is not empty");
            report.pages_copied += self.move_chunk(chunk, to)?;
            report.chunks_moved += 1;
        }
        report.bytes_copied = report.pages_copied * PAGE_SIZE as u64;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// The memory server holding each chunk of the region, in chunk order.
    pub(crate) fn chunk_servers(&self) -> Vec<SocketAddr> {
        let layout = &self.layout;
        layout.chunks().iter().map(|h| layout.server_addr(h.server)).collect()
    }
}

impl RegionShared {
    pub(crate) fn move_chunk(&self, chunk: usize, to: SocketAddr) -> Result<u64, PagerError> {
        let shared = self;

        let layout = &shared.layout;
        if !layout.redundancy().is_none() {
            return Err(PagerError::MoveChunk {
                chunk,
                to,
                source: MoveFailure::Redundant { scheme: layout.redundancy() },
            });
        }
        if chunk >= layout.chunk_count() {
            return Err(PagerError::Config(format!("no chunk {chunk}: the region has {}", layout.chunk_count())));
        }
        let to_idx = layout.server_index(to);
        let home = layout.chunk(chunk);
        if home.server == to_idx {
            return Ok(0);
        }
        let new_slab = {
            let mut admin = self.admin.lock();
            let conn = admin_conn(&mut admin, layout, to_idx)?;
            if (conn.slab_pages() as usize) < layout.chunk_pages {
                return Err(PagerError::Config(format!("{to} lends slabs smaller than this region's chunks")));
            }
            conn.alloc_slab()?
        };
        let id = NEXT_MOVE_ID.fetch_add(1, Ordering::Relaxed);
        {
            let core = shared.core.lock();
            let home = layout.chunk(chunk);
            if home.moving_to.is_some() {
                drop(core);
                free_quietly(admin_conn(&mut self.admin.lock(), layout, to_idx)?, new_slab);
                return Err(PagerError::MoveChunk { chunk, to, source: MoveFailure::AlreadyMoving });
            }
            layout.set_chunk(chunk, ChunkHome { moving_to: Some((to_idx, new_slab)), ..home });
        }
        // A batch taken before the move may still write this chunk's pages to the old slab
        // alone: let it land before the copy reads them.
        wait_for_writeback_in_flight(shared);
        let copied = match crate::moves::copy::copy_chunk(shared, chunk, to_idx, new_slab) {
            Ok(pages) => pages,
            Err(e) => {
                // The chunk stays where it was; the old home received every write meanwhile.
                let home = layout.chunk(chunk);
                layout.set_chunk(chunk, ChunkHome { moving_to: None, ..home });
                wait_for_writeback_in_flight(shared);
                free_quietly(admin_conn(&mut self.admin.lock(), layout, to_idx)?, new_slab);
                return Err(PagerError::MoveChunk { chunk, to, source: MoveFailure::Copy(Box::new(e)) });
            }
        };
        {
            // The write-back thread switches the chunk's home between two of its batches.
            let mut core = shared.core.lock();
            let end = ((chunk + 1) * layout.chunk_pages).min(shared.region_pages());
            core.moves.push_back(ChunkMove { id, chunk, next_page: end, pages_copied: copied, kind: MoveKind::Chunk });
            shared.wb_wake.notify_one();
        }
        let result = shared.wait_move(id);
        let mut admin = self.admin.lock();
        match result {
            Ok(pages) => {
                free_quietly(admin_conn(&mut admin, layout, home.server)?, home.slab);
                Ok(pages)
            }
            Err(why) => {
                if layout.chunk(chunk).server != to_idx {
                    free_quietly(admin_conn(&mut admin, layout, to_idx)?, new_slab);
                }
                Err(PagerError::MoveChunk { chunk, to, source: why })
            }
        }
    }
}
