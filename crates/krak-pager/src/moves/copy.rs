//! The copy of a moving fragment's units (whole pages without redundancy) to its new slab
//! (`moves/fragment.rs`), run by the thread that asked for the move, several steps in flight.
//!
//! First choice: the old server pushes the pages straight to the new one (`PushPages`),
//! so the data never passes through this host. If the old server cannot reach the new one,
//! the pages are relayed: read here, then sent as `CopyPages` (and later moves between the
//! same two servers relay at once). Both store a page on the new
//! slab only where no write-back landed since it was allocated, so either may run beside
//! the write-backs, and a relay after a failed push may copy a page twice.

use std::collections::VecDeque;

use krak_client::{ClientError, Connection};
use krak_proto::{ErrorCode, PageRef, SlabId};

use crate::state::core::RegionShared;

/// Pages per step: small enough that the CPU one step takes in a burst (MACs, checksums,
/// copies) does not hold up the faults sharing a host for long.
const STEP_PAGES: usize = 64;
/// Steps in flight (reads and copies each, when relaying): the next step is already
/// waiting at the old server when it finishes one.
const DEPTH: usize = 2;
/// Connections a push uses to the old server, each served by a thread of its own there.
const PUSH_CONNECTIONS: usize = 2;

/// What to copy: the units of `chunk`'s remote pages, from one slab to another.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CopySpec {
    pub chunk: usize,
    pub from: (usize, SlabId),
    pub to: (usize, SlabId),
    /// A page, or a fragment of one.
    pub unit_bytes: usize,
}

/// The pages of one step: the `REMOTE` pages of `[from, from + STEP_PAGES)` below `end`.
struct Steps {
    next: usize,
    end: usize,
    chunk_pages: usize,
}

impl Steps {
    fn next(&mut self, shared: &RegionShared) -> Option<Vec<usize>> {
        while self.next < self.end {
            let stop = (self.next + STEP_PAGES).min(self.end);
            let pages: Vec<usize> = {
                let core = shared.core.lock();
                core.pages.remote_in(self.next..stop).collect()
            };
            self.next = stop;
            if !pages.is_empty() {
                return Some(pages);
            }
        }
        None
    }

    fn unit(&self, page: usize) -> u32 {
        (page % self.chunk_pages) as u32
    }
}

/// Copies what `spec` names (write-backs already reach both slabs); returns the units
/// copied.
pub(crate) fn copy_units(shared: &RegionShared, spec: CopySpec) -> Result<u64, ClientError> {
    let (from, to) = (spec.from.0, spec.to.0);
    let refused_before = shared.push_refused.lock().contains(&(from, to));
    let pushed = if refused_before { None } else { Some(push_units(shared, spec)) };
    match pushed {
        Some(Err(ClientError::Refused { code, message, .. })) if code == ErrorCode::PushFailed as u16 => {
            let to_addr = shared.layout.server_addr(to);
            let chunk = spec.chunk;
            tracing::warn!("the old server of chunk {chunk} cannot copy to {to_addr} itself ({message}); relaying");
            shared.push_refused.lock().push((from, to));
            relay_units(shared, spec)
        }
        Some(other) => other,
        None => relay_units(shared, spec),
    }
}

fn steps(shared: &RegionShared, chunk: usize) -> Steps {
    let chunk_pages = shared.layout.chunk_pages;
    let end = ((chunk + 1) * chunk_pages).min(shared.region_pages());
    Steps { next: chunk * chunk_pages, end, chunk_pages }
}

/// The old server sends each step to the new one, `DEPTH` steps in flight on each of
/// `PUSH_CONNECTIONS` connections (each served by one thread there, one step at a time).
fn push_units(shared: &RegionShared, spec: CopySpec) -> Result<u64, ClientError> {
    let layout = &shared.layout;
    let ((from, from_slab), (to, to_slab)) = (spec.from, spec.to);
    let to_addr = layout.server_addr(to);
    let mut links: Vec<(Connection, VecDeque<(u64, usize)>)> = Vec::with_capacity(PUSH_CONNECTIONS);
    for _ in 0..PUSH_CONNECTIONS {
        links.push((Connection::connect(layout.server_addr(from), layout.connect)?, VecDeque::new()));
    }
    let mut steps = steps(shared, spec.chunk);
    let mut units = Vec::with_capacity(STEP_PAGES);
    let mut copied = 0u64;
    let mut turn = 0;
    loop {
        for (src, in_flight) in links.iter_mut() {
            while in_flight.len() < DEPTH {
                let Some(pages) = steps.next(shared) else { break };
                units.clear();
                units.extend(pages.iter().map(|&p| steps.unit(p)));
                let id = src.send_push_pages(to_addr, from_slab, to_slab, spec.unit_bytes as u32, &units)?;
                in_flight.push_back((id, pages.len()));
            }
        }
        // The oldest answer of the next connection in turn that waits for one.
        let n_links = links.len();
        let Some(i) = (0..n_links).map(|k| (turn + k) % n_links).find(|&k| !links[k].1.is_empty()) else {
            return Ok(copied);
        };
        turn = (i + 1) % n_links;
        let (src, in_flight) = &mut links[i];
        let (id, n) = in_flight.pop_front().expect("found waiting");
        src.recv_pushed(id)?;
        copied += n as u64;
    }
}

/// Each step is read from the old server and sent to the new one as `CopyPages`, `DEPTH`
/// reads and as many copies in flight.
fn relay_units(shared: &RegionShared, spec: CopySpec) -> Result<u64, ClientError> {
    let layout = &shared.layout;
    let ((from, from_slab), (to, to_slab)) = (spec.from, spec.to);
    let unit = spec.unit_bytes;
    let mut src = Connection::connect(layout.server_addr(from), layout.connect)?;
    let mut dst = Connection::connect(layout.server_addr(to), layout.connect)?;
    let mut steps = steps(shared, spec.chunk);
    let at = |slab, unit| PageRef { slab, page: unit };
    let mut reads: VecDeque<(u64, Vec<usize>, Vec<PageRef>)> = VecDeque::with_capacity(DEPTH);
    let mut copies: VecDeque<u64> = VecDeque::with_capacity(DEPTH);
    let mut buf = vec![0u8; STEP_PAGES * unit];
    let mut copied = 0u64;
    loop {
        while reads.len() < DEPTH {
            let Some(pages) = steps.next(shared) else { break };
            let refs: Vec<PageRef> = pages.iter().map(|&p| at(from_slab, steps.unit(p))).collect();
            reads.push_back((src.send_read_units(unit as u32, &refs)?, pages, refs));
        }
        let Some((id, pages, refs)) = reads.pop_front() else { break };
        let bytes = &mut buf[..pages.len() * unit];
        src.recv_pages(id, &refs, bytes)?;
        if copies.len() >= DEPTH {
            dst.recv_copied(copies.pop_front().expect("not empty"))?;
        }
        let writes: Vec<(PageRef, &[u8])> =
            pages.iter().zip(bytes.chunks_exact(unit)).map(|(&p, d)| (at(to_slab, steps.unit(p)), d)).collect();
        copies.push_back(dst.send_copy_pages(&writes)?);
        copied += pages.len() as u64;
    }
    while let Some(id) = copies.pop_front() {
        dst.recv_copied(id)?;
    }
    Ok(copied)
}
