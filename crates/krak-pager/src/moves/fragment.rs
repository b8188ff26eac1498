//! Live moves: one fragment of a chunk's stripe (a copy under `replicate:N`, the whole
//! chunk in a region without redundancy, whose stripes are one wide) moves to another
//! server while the region is in use, without ever lowering the chunk's redundancy; a drain
//! moves every fragment off a server this way.
//!
//! The old slab stays live, read and written, until the switch. From the moment the move
//! starts, every write-back of the chunk's pages also writes the fragment to the new slab.
//! The mover then copies the fragment's units as a chunk move copies pages (`moves/copy.rs`:
//! the old server pushes them to the new one, else the mover relays them), with `CopyPages`
//! semantics, so a copy never undoes a newer write-back. If that copy fails (the old server
//! cannot push or be read for a while, or is lost), the write-back thread fills the new slab instead, between its batches, as
//! re-protection fills a replacement (`moves/reprotect.rs`): each step reads the next remote pages
//! from the stripe, encodes them and writes the moving fragment. Either way the write-back
//! thread then switches the fragment to the new slab at a moment when no fetch of the chunk
//! is in flight, and the mover frees the old slab. If the new server is lost meanwhile, the
//! move fails and the fragment stays where it was.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::error::{ConfigError, MoveFailure, MoveRefused};
use crate::moves::copy::{copy_units, CopySpec};
use crate::moves::queue::{wait_for_writeback_in_flight, NEXT_MOVE_ID};
use crate::remote::admin_conn;
use crate::remote::free_quietly;
use crate::remote::list_placement;
use crate::state::core::{ChunkMove, MoveKind, RegionShared};
use crate::state::stats::Counters;
use crate::PagerError;
use krak_proto::SlabId;

/// What a drain did.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct DrainReport {
    /// Slabs moved: whole chunks, or fragments of a redundant region's chunks.
    pub chunks_moved: u64,
    pub pages_copied: u64,
    pub bytes_copied: u64,
    pub elapsed_ms: u64,
}

/// Where a fragment moved to and what it took.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FragmentMoved {
    pub slab: SlabId,
    pub pages: u64,
}

impl RegionShared {
    /// The memory server of each fragment of each chunk, in chunk and fragment order.
    pub(crate) fn fragment_servers(&self) -> Vec<Vec<SocketAddr>> {
        let layout = &self.layout;
        layout.stripes.all().iter().map(|s| s.iter().map(|f| layout.server_addr(f.server)).collect()).collect()
    }

    /// The memory server of each reserved chunk's first fragment (its one slab without
    /// redundancy), in chunk order.
    pub(crate) fn chunk_servers(&self) -> Vec<SocketAddr> {
        let layout = &self.layout;
        layout.stripes.all().iter().filter_map(|s| s.first().map(|f| layout.server_addr(f.server))).collect()
    }

    /// Moves every fragment on `from` to one of `targets`, where the region's list policy
    /// puts one more fragment of its stripe (a server holding none of it, of a failure
    /// domain the stripe does not use yet first).
    pub(crate) fn drain_server(&self, from: SocketAddr, targets: &[SocketAddr]) -> Result<DrainReport, PagerError> {
        let started = Instant::now();
        let layout = &self.layout;
        let targets: Vec<SocketAddr> = targets.iter().copied().filter(|t| *t != from).collect();
        if targets.is_empty() {
            return Err(PagerError::NoServers);
        }
        let mut report = DrainReport::default();
        let Some(server) = layout.find_server(from) else { return Ok(report) };
        let targets: Vec<usize> = targets.iter().map(|t| layout.server_index(*t)).collect();
        let others: Vec<usize> = (0..layout.server_count()).filter(|s| !targets.contains(s)).collect();
        let policy = self.placement_policy();
        let mut view = list_placement::current_view(&mut self.admin.lock(), layout);
        while let Some(&(chunk, frag)) = layout.stripes.fragments_on(server, 1).first() {
            let taken = layout.stripes.servers_of_others(chunk, frag);
            let to = list_placement::choose_server(&*policy, &view, &taken, &others)
                .ok_or(PagerError::NoDrainTarget { chunk, frag, scheme: layout.redundancy() })?;
            let moved = self.move_fragment(chunk, frag, layout.server_addr(to))?;
            list_placement::moved(&mut view, server, to);
            report.pages_copied += moved.pages;
            report.chunks_moved += 1;
        }
        report.bytes_copied = report.pages_copied * layout.redundancy().unit_bytes() as u64;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }
}

impl RegionShared {
    /// Moves chunk `chunk` of a region without redundancy (fragment 0 of its one-wide
    /// stripe); returns the pages copied.
    pub(crate) fn move_chunk(&self, chunk: usize, to: SocketAddr) -> Result<u64, PagerError> {
        let scheme = self.layout.redundancy();
        if scheme.width() > 1 {
            return Err(PagerError::MoveChunk { chunk, to, source: MoveFailure::Redundant { scheme } });
        }
        self.move_fragment(chunk, 0, to).map(|m| m.pages)
    }

    pub(crate) fn move_fragment(&self, chunk: usize, frag: usize, to: SocketAddr) -> Result<FragmentMoved, PagerError> {
        let layout = &self.layout;
        let scheme = layout.redundancy();
        if chunk >= layout.chunk_count() || frag >= scheme.width() {
            let (chunks, width) = (layout.chunk_count(), scheme.width());
            return Err(ConfigError::NoSuchFragment { chunk, frag, chunks, width }.into());
        }
        let to_idx = layout.server_index(to);
        let Some(current) = layout.stripes.with(chunk, |s| s.get(frag).copied()) else {
            return Err(PagerError::MoveChunk { chunk, to, source: MoveRefused::Unreserved { chunk }.into() });
        };
        if current.server == to_idx {
            return Ok(FragmentMoved { slab: current.slab, pages: 0 });
        }
        let slab = {
            let mut admin = self.admin.lock();
            let conn = admin_conn(&mut admin, layout, to_idx)?;
            if (conn.slab_pages() as usize) < layout.chunk_pages {
                return Err(ConfigError::SlabsTooSmall { server: to }.into());
            }
            conn.alloc_slab_units(scheme.unit_bytes() as u32)?
        };
        let free_new = |shared: &RegionShared| {
            if let Ok(conn) = admin_conn(&mut shared.admin.lock(), layout, to_idx) {
                free_quietly(conn, slab);
            }
        };
        let old = match layout.stripes.start_move(chunk, frag, (to_idx, slab)) {
            Ok(old) => old,
            Err(why) => {
                free_new(self);
                return Err(PagerError::MoveFragment { chunk, frag, to, source: why.into() });
            }
        };
        // A batch taken before the move may still write this fragment to the old slab alone.
        wait_for_writeback_in_flight(self);
        let spec =
            CopySpec { chunk, from: (old.server, old.slab), to: (to_idx, slab), unit_bytes: scheme.unit_bytes() };
        let (start, end) = (chunk * layout.chunk_pages, ((chunk + 1) * layout.chunk_pages).min(self.region_pages()));
        // Where the write-back thread's steps begin: past the end once the copy is whole.
        let (next_page, pages_copied) = match copy_units(self, spec) {
            Ok(units) => (end, units),
            Err(e) => {
                tracing::warn!(
                    "copying fragment {frag} of chunk {chunk} from {} failed ({e}); rebuilding it from the stripe",
                    layout.server_addr(old.server)
                );
                (start, 0)
            }
        };
        let id = NEXT_MOVE_ID.fetch_add(1, Ordering::Relaxed);
        {
            let mut core = self.core.lock();
            core.moves.push_back(ChunkMove { id, chunk, next_page, pages_copied, kind: MoveKind::Fragment(frag) });
            self.wb_wake.notify_one();
        }
        let result = self.wait_move(id);
        // A wait that gave up (timed out, or the region stops) may have raced the switch:
        // once the move is cancelled nothing switches any more, so the stripe says which.
        let result = match result {
            Err(why) => {
                layout.stripes.cancel_move(chunk, frag, (to_idx, slab));
                // An empty stripe: the move switched and the chunk was given back since (its
                // new slab freed with it; the old one is this move's to free).
                let switched =
                    layout.stripes.with(chunk, |s| s.get(frag).is_none_or(|f| f.server == to_idx && f.slab == slab));
                if switched {
                    self.core.lock().moves_finished.remove(&id);
                    Ok(0)
                } else {
                    Err(why)
                }
            }
            ok => ok,
        };
        match result {
            Ok(pages) => {
                // A scrub step that read the old stripe finishes first.
                let _gate = self.scrub_gate.write();
                // A lost server may not answer at all: its slab is left to its grace period.
                if !layout.stripes.is_lost(old.server) {
                    if let Ok(conn) = admin_conn(&mut self.admin.lock(), layout, old.server) {
                        free_quietly(conn, old.slab);
                    }
                }
                // A width-one stripe's fragment is its whole chunk.
                let moved =
                    if scheme.width() == 1 { &self.counters.chunks_moved } else { &self.counters.fragments_moved };
                Counters::add(moved, 1);
                Counters::add(&self.counters.moved_pages, pages);
                tracing::info!(
                    "moved fragment {frag} of chunk {chunk} ({pages} pages, {} KiB) from {} to {to}",
                    pages * scheme.unit_bytes() as u64 / 1024,
                    layout.server_addr(old.server)
                );
                Ok(FragmentMoved { slab, pages })
            }
            Err(why) => {
                // cancelled above; a batch taken before the cancel may still be writing to the new slab
                wait_for_writeback_in_flight(self);
                free_new(self);
                Err(PagerError::MoveFragment { chunk, frag, to, source: why })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::remote::redundancy::Redundancy;
    use crate::remote::stripe::{Frag, FragState, StripeTable};
    use krak_proto::SlabId;

    /// Two chunks of `replicate:2` over servers 0..4: chunk c on servers c and c + 1.
    fn table() -> StripeTable {
        let frag = |server: usize, slab: u64| Frag::new(server, SlabId(slab, 0), FragState::Live);
        let stripes = vec![vec![frag(0, 1), frag(1, 2)], vec![frag(1, 3), frag(2, 4)]];
        StripeTable::new("replicate:2".parse::<Redundancy>().unwrap(), stripes, 4)
    }

    #[test]
    fn a_move_switches_the_fragment_and_hands_back_the_old_slab() {
        let t = table();
        let to = (3, SlabId(9, 0));
        let old = t.start_move(0, 1, to).unwrap();
        assert_eq!((old.server, old.slab), (1, SlabId(2, 0)));
        assert!(t.with(0, |s| s[1].uses(3) && s[1].uses(1) && s[1].is_live()), "old slab serves meanwhile");
        assert_eq!(t.fragments_on(1, 9), vec![(1, 0)], "a moving fragment is not offered again");
        assert!(t.start_move(0, 1, (2, SlabId(10, 0))).is_err(), "one move at a time");
        let finished = t.finish_move(0, 1, to).unwrap();
        assert_eq!(finished.slab, SlabId(2, 0));
        assert_eq!(t.with(0, |s| s[1]), Frag::new(3, SlabId(9, 0), FragState::Live));
        assert!(t.finish_move(0, 1, to).is_none(), "finished once");
    }

    #[test]
    fn a_region_without_redundancy_is_one_wide_and_never_loses_a_server() {
        let frag = |server: usize, slab: u64| Frag::new(server, SlabId(slab, 0), FragState::Live);
        let t = StripeTable::new(Redundancy::None, vec![vec![frag(0, 1)], vec![frag(1, 2)]], 2);
        assert!(!t.mark_lost(0, "test"), "its one fragment is all there is to read");
        assert!(!t.is_lost(0) && t.lost_fragments().is_empty() && t.min_live() == 1);
        // it moves like any fragment, and its server is never lost under it
        let to = (1, SlabId(9, 0));
        assert!(t.start_move(0, 0, to).is_ok());
        assert!(!t.mark_lost(1, "test"));
        assert_eq!(t.with(0, |s| s[0].moving_to), Some(to));
        assert_eq!(t.finish_move(0, 0, to).map(|f| f.slab), Some(SlabId(1, 0)));
        assert_eq!(t.fragments_on(1, 9), vec![(0, 0), (1, 0)]);
    }

    #[test]
    fn a_move_never_puts_two_fragments_of_a_chunk_on_one_server() {
        let t = table();
        let err = t.start_move(0, 1, (0, SlabId(9, 0))).unwrap_err().to_string();
        assert!(err.contains("already holds fragment 0"), "{err}");
        t.start_move(0, 1, (3, SlabId(9, 0))).unwrap();
        // a replacement of the chunk's other fragment may not land where this one moves
        t.mark_lost(0, "test");
        assert_eq!(t.lost_fragments(), vec![(0, 0)]);
        assert!(!t.replace_lost(0, 0, Frag::new(3, SlabId(11, 0), FragState::Rebuilding)));
        assert!(t.replace_lost(0, 0, Frag::new(2, SlabId(11, 0), FragState::Rebuilding)));
    }

    #[test]
    fn losing_the_target_cancels_the_move_and_losing_the_source_leaves_it_to_the_move() {
        let t = table();
        let to = (3, SlabId(9, 0));
        t.start_move(1, 0, to).unwrap();
        t.mark_lost(3, "test");
        assert_eq!(t.with(1, |s| s[0].moving_to), None);
        assert!(t.finish_move(1, 0, to).is_none());
        assert!(t.start_move(1, 0, (3, SlabId(12, 0))).unwrap_err().to_string().contains("lost"));

        let t = table();
        t.start_move(1, 0, to).unwrap();
        t.mark_lost(1, "test");
        assert!(t.lost_fragments().iter().all(|f| *f != (1, 0)), "the move rebuilds it, not re-protection");
        t.finish_move(1, 0, to).unwrap();
        assert!(t.with(1, |s| s[0].is_live() && s[0].server == 3));
        t.cancel_move(1, 0, to);
        assert!(t.with(1, |s| s[0].is_live()), "a cancel after the switch changes nothing");
    }
}
