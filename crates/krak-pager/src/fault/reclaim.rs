//! The reclaimer: evicts ahead of need, in small batches, so that a fault rarely has to
//! evict before it can install its page (kernel swap's p99 comes from direct reclaim).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::state::core::RegionShared;

pub(crate) fn run(shared: Arc<RegionShared>) {
    let mut core = shared.core.lock();
    while !shared.stop.load(Ordering::Relaxed) {
        let low = shared.low_watermark(&core);
        if core.pages.resident() + low <= core.budget_pages {
            shared.reclaim_wake.wait_for(&mut core, Duration::from_millis(100));
            continue;
        }
        // Evict until twice the low watermark is free, a batch per lock hold.
        let target_free = 2 * low;
        let excess = core.pages.resident() + target_free - core.budget_pages;
        match shared.evict_batch_unlocked(&mut core, excess.min(shared.tuning.reclaim_batch.pages)) {
            Ok(0) => {
                shared.space.wait_for(&mut core, Duration::from_millis(10));
            }
            Ok(_) => {
                shared.space.notify_all();
                crate::state::lock_order::MutexGuard::bump(&mut core);
            }
            Err(e) => {
                tracing::error!("reclaimer: {e}");
                shared.space.wait_for(&mut core, Duration::from_millis(100));
            }
        }
    }
}
