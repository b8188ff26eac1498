//! The write-back thread's queue of moves: chunk moves, fragment moves and rebuilds are
//! queued here by id, stepped by the write-back thread (which alone switches a chunk's home,
//! between two batches), and their outcome waited for by whoever queued them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::MoveFailure;
use crate::state::core::{Core, RegionShared};

/// Most time one move may take before its caller gives up waiting.
const MOVE_TIMEOUT: Duration = Duration::from_secs(600);

pub(crate) static NEXT_MOVE_ID: AtomicU64 = AtomicU64::new(1);

/// Waits until every write-back batch taken off the queue before now has been answered.
pub(crate) fn wait_for_writeback_in_flight(shared: &RegionShared) {
    let mut core = shared.core.lock();
    let taken = core.wb_batches_taken;
    while core.wb_batches_done < taken && !shared.stop.load(Ordering::Relaxed) {
        shared.space.wait_for(&mut core, Duration::from_millis(10));
    }
}

pub(crate) fn finish(shared: &RegionShared, core: &mut Core, id: u64, result: Result<u64, MoveFailure>) {
    core.moves.retain(|m| m.id != id);
    core.moves_finished.insert(id, result);
    shared.moved.notify_all();
}

impl RegionShared {
    /// Waits for the move (or rebuild) `id` queued for the write-back thread.
    pub(crate) fn wait_move(&self, id: u64) -> Result<u64, MoveFailure> {
        let deadline = Instant::now() + MOVE_TIMEOUT;
        let mut core = self.core.lock();
        loop {
            if let Some(r) = core.moves_finished.remove(&id) {
                return r;
            }
            if Instant::now() > deadline || self.stop.load(Ordering::Relaxed) {
                return Err(MoveFailure::TimedOut { secs: MOVE_TIMEOUT.as_secs() });
            }
            self.moved.wait_for(&mut core, Duration::from_millis(100));
        }
    }
}
