//! Self-serving faults: with `FaultMode::Sigbus` a fault raises SIGBUS in the faulting
//! thread, which fetches and installs its own page and returns, so that no thread sleeps or
//! is woken on the fault path (on a virtual machine each wake-up costs tens of microseconds).
//!
//! A process-wide registry maps addresses to regions; each thread keeps its own connections
//! to the servers of each region it has faulted on.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crate::state::lock_order::{level, RwLock};
use krak_uffd::sigbus::{self, Verdict};
use krak_uffd::PAGE_SIZE;

use crate::error::{InstallError, PagerError};
use crate::fault::handler::{Handler, Parts};
use crate::state::core::RegionShared;
use crate::state::stats::Counters;

struct Entry {
    id: u64,
    start: usize,
    end: usize,
    target: Target,
}

/// Who serves the faults of a registered range.
enum Target {
    Region(Weak<RegionShared>),
    /// The floor measurement of `limits.rs`: every fault installs this page from local
    /// memory, as a region installs a fetched one, minus the fetch.
    Probe(Arc<Probe>),
}

pub(crate) struct Probe {
    pub uffd: krak_uffd::Uffd,
    pub page: Vec<u8>,
}

static REGIONS: RwLock<Vec<Entry>, { level::REGIONS }> = RwLock::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's connections and buffers, per region id.
    static PARTS: RefCell<Vec<(u64, Parts)>> = const { RefCell::new(Vec::new()) };
}

/// Routes faults of `shared`'s region to the threads that take them; returns its id.
pub(crate) fn register(shared: &Arc<RegionShared>) -> Result<u64, PagerError> {
    sigbus::install(on_fault).map_err(PagerError::Mapping)?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let start = shared.map.base();
    REGIONS.write().push(Entry {
        id,
        start,
        end: start + shared.map.len(),
        target: Target::Region(Arc::downgrade(shared)),
    });
    Ok(id)
}

/// Routes faults of `start..start + len` to `probe` (see `limits.rs`); returns its id.
pub(crate) fn register_probe(start: usize, len: usize, probe: Arc<Probe>) -> Result<u64, PagerError> {
    sigbus::install(on_fault).map_err(PagerError::Mapping)?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    REGIONS.write().push(Entry { id, start, end: start + len, target: Target::Probe(probe) });
    Ok(id)
}

pub(crate) fn unregister(id: u64) {
    REGIONS.write().retain(|e| e.id != id);
}

fn on_fault(addr: usize, write: bool) -> Verdict {
    let found = {
        let regions = REGIONS.read();
        regions.iter().find(|e| addr >= e.start && addr < e.end).and_then(|e| match &e.target {
            Target::Region(shared) => Some(Ok((e.id, shared.upgrade()?))),
            Target::Probe(probe) => Some(Err(probe.clone())),
        })
    };
    let (id, shared) = match found {
        Some(Ok(region)) => region,
        Some(Err(probe)) => return serve_probe(&probe, addr),
        None => return Verdict::NotOurs,
    };
    let page = (addr - shared.map.base()) / PAGE_SIZE;
    let served = PARTS.with(|cell| {
        // A fault while this thread is already serving one would be a pager bug: refuse it
        // rather than alias the connections.
        let Ok(mut all) = cell.try_borrow_mut() else {
            return Err(InstallError::FaultInHandler.into());
        };
        // Drop the connections of regions that are gone.
        {
            let live = REGIONS.read();
            all.retain(|(rid, _)| live.iter().any(|e| e.id == *rid));
        }
        let i = match all.iter().position(|(rid, _)| *rid == id) {
            Some(i) => i,
            None => {
                all.push((id, Parts::new(shared.layout.server_count())));
                all.len() - 1
            }
        };
        let (_, parts) = all.swap_remove(i);
        let mut handler = Handler::new(shared.clone(), true, parts);
        let result = handler.serve(page, write, write);
        all.push((id, handler.into_parts()));
        result
    });
    match served {
        Ok(()) => Verdict::Resolved,
        Err(e) => {
            Counters::add(&shared.counters.failed_faults, 1);
            tracing::error!("cannot serve page {page} of the region: {e}; the access fails with SIGBUS");
            Verdict::NotOurs
        }
    }
}

fn serve_probe(probe: &Probe, addr: usize) -> Verdict {
    let at = addr & !(PAGE_SIZE - 1);
    match probe.uffd.copy(at, &probe.page, false, true) {
        Ok(_) | Err(krak_uffd::CopyError::Exists) | Err(krak_uffd::CopyError::Again { .. }) => Verdict::Resolved,
        Err(e @ krak_uffd::CopyError::OutsideMapping { .. }) => {
            tracing::error!("floor measurement: cannot install page at {at:#x}: {e}");
            Verdict::NotOurs
        }
        Err(krak_uffd::CopyError::Other(e)) => {
            tracing::error!("floor measurement: cannot install page at {at:#x}: {e}");
            Verdict::NotOurs
        }
    }
}
