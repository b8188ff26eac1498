//! [`FarMemory`]: the region, its threads and its life cycle.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::state::lock_order::{Condvar, Mutex, RwLock};
use krak_client::ConnectOptions;
use krak_uffd::{AnonMapping, MemfdView, Uffd, PAGE_SIZE};

use crate::error::ConfigError;
use crate::fault::handler::{Handler, Parts};
use crate::moves::fragment::DrainReport;
use crate::policy::eviction::{Clock, EvictionPolicy};
use crate::policy::prefetch::{PrefetchPolicy, StrideDetector};
use crate::remote::RemoteLayout;
use crate::state::core::*;
use crate::state::memory::RegionMemory;
use crate::state::stats::{Counters, PagerStats};
use crate::{PagerError, Redundancy, UffdMode};

/// Who serves a region's faults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FaultMode {
    /// Handler threads read userfaultfd events and wake the faulting thread once its page is
    /// in. Works for every access, including the kernel's own (a syscall reading the region).
    #[default]
    Threads,
    /// The faulting thread gets SIGBUS and fetches its page itself: no sleep and no wake-up
    /// on the fault path. A syscall that touches a missing page of the region fails with
    /// EFAULT instead of waiting, so use it for memory the program touches itself.
    Sigbus,
}

/// One look at how much of a region is local.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ResidencySample {
    /// Pages of the region mapped, per the kernel's page tables.
    pub kernel_resident_bytes: u64,
    /// Pages the pager counts as resident or being fetched.
    pub counted_resident_bytes: u64,
    pub budget_bytes: u64,
}

/// Default busy-wait of the fault path; see [`PagerConfig::spin_us`]. On a 2-vCPU virtual
/// machine a loopback round trip falls from ~70 us to ~12 us when both ends spin this long.
pub const DEFAULT_SPIN_US: u64 = 50;

/// Default time between scrubs of a redundant region; see [`PagerConfig::scrub_interval_ms`].
pub const DEFAULT_SCRUB_INTERVAL_MS: u64 = 600_000;

/// The smallest local budget a region runs with, in pages.
pub const MIN_BUDGET_PAGES: usize = 16;

/// What a region is made of. `Default` gives sane values for everything but the sizes and
/// the servers.
#[derive(Debug, Clone)]
pub struct PagerConfig {
    /// Size of the region; rounded up to whole pages.
    pub region_bytes: u64,
    /// Most bytes of the region resident locally at any moment.
    pub local_budget_bytes: u64,
    /// Memory servers that back the region; its slabs are spread over all of them. Ignored
    /// when `controller` is set.
    pub servers: Vec<SocketAddr>,
    /// A rack controller (`http://HOST:PORT`) that places the region's slabs instead of a
    /// fixed list of servers, and whose drains the region follows while in use.
    pub controller: Option<String>,
    /// Who owns the region, as the controller shows it.
    pub owner: String,
    /// Threads serving faults (more allow more fetches in flight).
    pub handler_threads: usize,
    /// Most pages fetched ahead of one fault.
    pub max_prefetch_pages: usize,
    /// Most pages in one write-back batch.
    pub writeback_batch_pages: usize,
    /// Most evicted dirty pages waiting to be written back (local memory outside the budget).
    pub writeback_buffer_pages: usize,
    /// Bound on connecting to a server and on any one answer.
    pub io_timeout_ms: u64,
    /// Identity towards the servers; random when `None`.
    pub client_id: Option<u64>,
    /// Use FIFO instead of CLOCK eviction.
    pub fifo_eviction: bool,
    /// Disable prefetching.
    pub no_prefetch: bool,
    /// Who serves a fault: handler threads, or the faulting thread itself.
    pub fault_mode: FaultMode,
    /// How long fault handlers busy-wait for the next fault or a server's answer before
    /// sleeping (0: always sleep). Trades CPU for latency.
    pub spin_us: u64,
    /// The rack secret, proved to memory servers (and the controller); `None` for racks
    /// run without one (`--insecure`, library tests).
    pub secret: Option<krak_proto::RackSecret>,
    /// How the region survives lost memory servers: `none` (default), `replicate:N` or
    /// `ec:K+M`; needs at least `width()` servers (with `controller`, the controller places
    /// each fragment and its replacements).
    pub redundancy: Redundancy,
    /// Failure domain of each of `servers` (same order; e.g. `rack1/host3`), or empty when
    /// unknown. A redundant region puts the fragments of a chunk in distinct domains where
    /// it can (and on distinct servers always).
    pub server_domains: Vec<String>,
    /// The placement policy that chooses among `servers` for each slab (when the region is
    /// made, for a lost fragment's replacement, for a drained fragment): a name of
    /// `krak_placement::POLICY_NAMES`. Ignored with `controller`, whose policy decides.
    pub placement_policy: String,
    /// How often a redundant region scrubs itself in the background (every fragment read
    /// and checked, corrupt ones rewritten: [`FarMemory::scrub`]); 0 never. Not while the
    /// region is degraded.
    pub scrub_interval_ms: u64,
    /// Reserve rack memory as the region is used instead of all of it up front: a chunk's
    /// slabs are placed and allocated when its first page is written back (on the
    /// write-back thread, so faults do not wait for the controller). The region's size is
    /// then address space only; a rack with no room at that point keeps the pages buffered
    /// locally and tries again (see `docs/design.md`).
    pub reserve_on_demand: bool,
}

impl Default for PagerConfig {
    fn default() -> Self {
        PagerConfig {
            region_bytes: 0,
            local_budget_bytes: 0,
            servers: Vec::new(),
            controller: None,
            owner: default_owner(),
            handler_threads: 2,
            max_prefetch_pages: 256,
            writeback_batch_pages: 64,
            writeback_buffer_pages: 1024,
            io_timeout_ms: 5_000,
            client_id: None,
            fifo_eviction: false,
            no_prefetch: false,
            spin_us: DEFAULT_SPIN_US,
            fault_mode: FaultMode::default(),
            secret: None,
            redundancy: Redundancy::None,
            server_domains: Vec::new(),
            placement_policy: crate::remote::list_placement::DEFAULT_LIST_POLICY.to_string(),
            scrub_interval_ms: DEFAULT_SCRUB_INTERVAL_MS,
            reserve_on_demand: false,
        }
    }
}

/// A far-memory region. Its memory is reached through [`FarMemory::as_ptr`]; dropping it
/// stops its threads and gives back every local and remote byte. The owner must make sure
/// no thread touches the region once it is dropped.
pub struct FarMemory {
    pub(crate) shared: Arc<RegionShared>,
    threads: Vec<JoinHandle<()>>,
    /// Set when the region's faults are served by the faulting threads.
    self_serving_id: Option<u64>,
    /// Set when a rack controller placed the region.
    rack: Option<Arc<crate::follow::link::ControllerLink>>,
}

impl std::fmt::Debug for FarMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FarMemory").field("ptr", &self.as_ptr()).field("len", &self.len()).finish()
    }
}

impl FarMemory {
    pub fn new(config: PagerConfig) -> Result<FarMemory, PagerError> {
        let region_pages = check_config(&config)?;
        let map = AnonMapping::new(region_pages * PAGE_SIZE).map_err(PagerError::Mapping)?;
        let uffd = Uffd::open_with(config.fault_mode == FaultMode::Sigbus)?;
        uffd.register(map.as_ptr() as usize, map.len())?;
        FarMemory::start(config, RegionMemory::Own(map), uffd)
    }

    /// Serves the arena of another process (`pid`), mapped there from `map`'s memfd and
    /// registered with `uffd`, both received from it: the pager installs pages through
    /// `uffd` and reads and drops them through the memfd. Faults are served by handler
    /// threads (`FaultMode::Threads` only); `region_bytes` is the arena's length. Dropping
    /// the region leaves the program's registration in place: a fault nobody serves then
    /// waits, never reads a zero page.
    pub fn serve_other_process(
        mut config: PagerConfig,
        map: MemfdView,
        uffd: Uffd,
        pid: i32,
    ) -> Result<FarMemory, PagerError> {
        if config.fault_mode != FaultMode::Threads {
            return Err(ConfigError::OtherProcessNeedsThreads.into());
        }
        config.region_bytes = map.len() as u64;
        check_config(&config)?;
        FarMemory::start(config, RegionMemory::OtherProcess { map, pid }, uffd)
    }

    fn start(config: PagerConfig, map: RegionMemory, uffd: Uffd) -> Result<FarMemory, PagerError> {
        let region_pages = map.len() / PAGE_SIZE;
        let placement = crate::remote::list_placement::policy_by_name(&config.placement_policy)?;
        let connect = ConnectOptions {
            client_id: config.client_id.unwrap_or_else(rand::random),
            timeout_ms: config.io_timeout_ms,
            spin_us: config.spin_us,
            secret: config.secret,
        };
        let (layout, admin, rack) = match &config.controller {
            Some(url) => {
                let (layout, admin, link) = crate::follow::place::allocate(
                    url,
                    &config.owner,
                    region_pages,
                    config.local_budget_bytes,
                    connect,
                    config.redundancy,
                    config.reserve_on_demand,
                )?;
                (layout, admin, Some(Arc::new(link)))
            }
            None => {
                let (layout, admin) = RemoteLayout::allocate(
                    &*placement,
                    &config.servers,
                    &config.server_domains,
                    region_pages,
                    connect,
                    config.redundancy,
                    config.reserve_on_demand,
                )?;
                (layout, admin.into_iter().map(Some).collect(), None)
            }
        };

        let server_ids: std::collections::HashMap<usize, u64> =
            admin.iter().enumerate().filter_map(|(i, c)| c.as_ref().map(|c| (i, c.hello().server_id))).collect();
        let eviction: Box<dyn EvictionPolicy> =
            if config.fifo_eviction { Box::<crate::Fifo>::default() } else { Box::new(Clock::new(region_pages)) };
        let prefetch: Box<dyn PrefetchPolicy> =
            if config.no_prefetch { Box::new(crate::NoPrefetch) } else { Box::<StrideDetector>::default() };
        let core = Core::new(region_pages, budget_pages(config.local_budget_bytes), eviction, prefetch);
        // One request waiting at most: the reservation thread is never far behind.
        let (ahead_tx, ahead_rx) = std::sync::mpsc::sync_channel(1);
        let shared = Arc::new(RegionShared {
            core: Mutex::new(core),
            wb_wake: Condvar::new(),
            space: Condvar::new(),
            reclaim_wake: Condvar::new(),
            moved: Condvar::new(),
            uffd,
            map,
            layout,
            admin: Mutex::new(admin),
            counters: Counters::new(),
            tuning: Tuning {
                handler_threads: config.handler_threads,
                max_prefetch_pages: config.max_prefetch_pages,
                writeback_batch_pages: config.writeback_batch_pages,
                writeback_buffer_pages: config.writeback_buffer_pages,
                spin_us: config.spin_us,
                scrub_interval_ms: config.scrub_interval_ms,
                reserve_on_demand: config.reserve_on_demand,
                reclaim_batch: crate::state::core::ReclaimBatch::for_mode(config.fault_mode),
            },
            stop: AtomicBool::new(false),
            peak_resident: AtomicUsize::new(0),
            push_refused: Mutex::new(Vec::new()),
            scrub_gate: RwLock::new(()),
            placement: Mutex::new(placement),
            server_ids: Mutex::new(server_ids),
            rack: rack.clone(),
            failing: Mutex::new(std::collections::HashMap::new()),
            reserving: Mutex::new(()),
            ahead: AtomicUsize::new(usize::MAX),
            ahead_tx: config.reserve_on_demand.then_some(ahead_tx),
        });
        let mut region =
            FarMemory { shared: shared.clone(), threads: Vec::new(), self_serving_id: None, rack: rack.clone() };
        if config.fault_mode == FaultMode::Sigbus {
            region.self_serving_id = Some(crate::fault::self_serving::register(&shared)?);
        }
        let handler_threads = if config.fault_mode == FaultMode::Sigbus { 0 } else { config.handler_threads };
        for i in 0..handler_threads {
            let handler = Handler::new(shared.clone(), false, Parts::new(config.servers.len()));
            let t = std::thread::Builder::new().name(format!("krak-fault-{i}")).spawn(move || handler.run());
            region.threads.push(t.map_err(PagerError::Thread)?);
        }
        let s = shared.clone();
        let t =
            std::thread::Builder::new().name("krak-writeback".into()).spawn(move || crate::fault::writeback::run(s));
        region.threads.push(t.map_err(PagerError::Thread)?);
        let s = shared.clone();
        let t = std::thread::Builder::new().name("krak-reclaim".into()).spawn(move || crate::fault::reclaim::run(s));
        region.threads.push(t.map_err(PagerError::Thread)?);
        if config.reserve_on_demand {
            let s = shared.clone();
            let t = std::thread::Builder::new()
                .name("krak-reserve".into())
                .spawn(move || crate::fault::reserve::ahead_loop(s, ahead_rx));
            region.threads.push(t.map_err(PagerError::Thread)?);
        }
        // Re-protection (and its scrubs) where a lost server can be survived.
        if config.redundancy.tolerated_losses() > 0 {
            let (s, link) = (shared.clone(), rack.clone());
            let t = std::thread::Builder::new()
                .name("krak-reprotect".into())
                .spawn(move || crate::moves::reprotect::run(s, link));
            region.threads.push(t.map_err(PagerError::Thread)?);
        }
        if let Some(link) = rack {
            let (s, budget) = (shared.clone(), config.local_budget_bytes);
            let follower_link = link.clone();
            let t = std::thread::Builder::new()
                .name("krak-follow".into())
                .spawn(move || crate::follow::follow(s, follower_link, budget));
            region.threads.push(t.map_err(PagerError::Thread)?);
            let s = shared.clone();
            let t = std::thread::Builder::new()
                .name("krak-report".into())
                .spawn(move || crate::follow::live::report_loop(s, link));
            region.threads.push(t.map_err(PagerError::Thread)?);
        }
        Ok(region)
    }

    /// Start of the region. Pages are faulted in on first touch. For a region served for
    /// another process ([`FarMemory::serve_other_process`]), its address there, not usable here.
    pub fn as_ptr(&self) -> *mut u8 {
        self.shared.map.base() as *mut u8
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> usize {
        self.shared.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How the userfaultfd was opened (privileged, user-mode-only or device).
    pub fn uffd_mode(&self) -> UffdMode {
        self.shared.uffd.mode()
    }

    /// Switches the policy that places this region's replacements and drained fragments
    /// over its list of servers (a name of `krak_placement::POLICY_NAMES`). Refused for a
    /// region the controller places: its policy is the rack's (`krak policy`).
    pub fn set_placement_policy(&self, name: &str) -> Result<(), PagerError> {
        if self.rack.is_some() {
            return Err(PagerError::PlacedByController);
        }
        *self.shared.placement.lock() = crate::remote::list_placement::policy_by_name(name)?;
        Ok(())
    }

    /// The name of the policy placing over the region's list of servers.
    pub fn placement_policy(&self) -> &'static str {
        self.shared.placement_policy().name()
    }

    /// Changes the local budget while the region is in use; shrinking evicts at once.
    pub fn set_local_budget(&self, bytes: u64) -> Result<(), PagerError> {
        self.shared.set_local_budget(budget_pages(bytes))
    }

    /// The budget in force: during a shrink, the old one until eviction reached the new.
    pub fn local_budget_bytes(&self) -> u64 {
        let core = self.shared.core.lock();
        (core.shrinking_from.unwrap_or(core.budget_pages) * PAGE_SIZE) as u64
    }

    /// Bytes of the region resident (or being fetched), as the pager counts them.
    pub fn resident_bytes(&self) -> u64 {
        (self.shared.core.lock().pages.resident() * PAGE_SIZE) as u64
    }

    /// Most pages the pager has had mapped at once (never above the budget).
    pub fn peak_resident_bytes(&self) -> u64 {
        (self.shared.peak_resident.load(Ordering::Relaxed) * PAGE_SIZE) as u64
    }

    /// The region's resident set as the kernel sees it (mincore(2)), next to the budget in
    /// force. Taken under the pager's lock, where every install and eviction happens, so the
    /// page-table walk sees one consistent moment.
    pub fn sample_residency(&self) -> std::io::Result<ResidencySample> {
        let mut scratch = Vec::new();
        let core = self.shared.core.lock();
        #[cfg(debug_assertions)]
        core.pages.validate();
        let kernel = self.shared.map.resident_pages(&mut scratch)?;
        Ok(ResidencySample {
            kernel_resident_bytes: (kernel * PAGE_SIZE) as u64,
            counted_resident_bytes: (core.pages.resident() * PAGE_SIZE) as u64,
            budget_bytes: (core.shrinking_from.unwrap_or(core.budget_pages) * PAGE_SIZE) as u64,
        })
    }

    pub fn stats(&self) -> PagerStats {
        let hits = self.shared.core.lock().prefetch.hits();
        let layout = &self.shared.layout;
        PagerStats {
            redundancy: layout.redundancy(),
            lost_servers: layout.stripes.lost_servers().len() as u64,
            ..self.shared.counters.snapshot(hits)
        }
    }

    /// The region's redundancy scheme.
    pub fn redundancy(&self) -> Redundancy {
        self.shared.layout.redundancy()
    }

    /// Memory servers this region has lost (a redundant region reads around them), in the
    /// order they were lost.
    pub fn lost_servers(&self) -> Vec<SocketAddr> {
        let layout = &self.shared.layout;
        layout.stripes.lost_servers().into_iter().map(|s| layout.server_addr(s)).collect()
    }

    /// Fewest live fragments (or copies) any chunk has left; the scheme's width when
    /// nothing is lost, and always 1 for a region without redundancy (which loses no server).
    pub fn min_live_fragments(&self) -> usize {
        self.shared.layout.stripes.min_live()
    }

    /// Clears the fault-latency histogram (e.g. after a warm-up phase).
    pub fn reset_fault_latency(&self) {
        self.shared.counters.reset_latency();
    }

    /// Chunks that hold their slabs (all of them unless [`PagerConfig::reserve_on_demand`]).
    pub fn reserved_chunks(&self) -> usize {
        self.shared.layout.stripes.reserved_chunks()
    }

    /// Remote bytes reserved for this region on each server.
    pub fn placement(&self) -> Vec<(SocketAddr, u64)> {
        self.shared.layout.bytes_per_server()
    }

    /// Pages whose only current copy is remote (or on its way there), per server.
    pub fn remote_pages_per_server(&self) -> Vec<(SocketAddr, u64)> {
        let layout = &self.shared.layout;
        let mut out: Vec<(SocketAddr, u64)> = layout.servers().into_iter().map(|a| (a, 0)).collect();
        let core = self.shared.core.lock();
        let mut servers = Vec::new();
        for page in 0..core.pages.len() {
            if core.pages.only_remote(page) {
                layout.page_servers(page, &mut servers);
                for s in &servers {
                    // a replacement may have just landed on a server new to the region
                    if *s >= out.len() {
                        out.extend(layout.servers()[out.len()..].iter().map(|a| (*a, 0)));
                    }
                    out[*s].1 += 1;
                }
            }
        }
        out
    }

    /// Replaces the eviction policy; it starts out knowing every resident page.
    pub fn set_eviction_policy(&self, mut policy: Box<dyn EvictionPolicy>) {
        let mut core = self.shared.core.lock();
        while let Some(page) = core.eviction.pick_victim() {
            policy.inserted(page);
        }
        core.eviction = policy;
    }

    pub fn set_prefetch_policy(&self, policy: Box<dyn PrefetchPolicy>) {
        self.shared.core.lock().prefetch = policy;
    }

    pub fn eviction_policy_name(&self) -> &'static str {
        self.shared.core.lock().eviction.name()
    }

    /// Forgets the pages of `[offset, offset + len)` (page-aligned): local copies are
    /// dropped and remote copies forgotten, so the next touch of each reads a zero page, as
    /// after `munmap` and a fresh `mmap`, or `madvise(MADV_DONTNEED)` on private memory.
    /// Waits for fetches and evictions in flight on those pages first.
    pub fn discard(&self, offset: usize, len: usize) -> Result<(), PagerError> {
        self.shared.discard(offset, len)
    }

    /// Keeps the region out of `fork(2)` children (see [`krak_uffd::AnonMapping::exclude_from_fork`]).
    pub fn exclude_from_fork(&self) -> Result<(), PagerError> {
        self.shared.exclude_from_fork()
    }

    /// Called in a `fork(2)` child only: makes the region's addresses inaccessible there.
    /// The region must not be used (nor dropped) in the child afterwards.
    pub fn fence_in_child(&self) -> Result<(), PagerError> {
        self.shared.fence_in_child()
    }

    /// Moves chunk `chunk` of the region to the memory server at `to` while the region is
    /// in use; returns the pages copied. Faults keep being served from the old server until
    /// the switch, and nothing waits on the copy.
    pub fn move_chunk(&self, chunk: usize, to: SocketAddr) -> Result<u64, PagerError> {
        self.shared.move_chunk(chunk, to)
    }

    /// Moves every chunk of the region off the server at `from`, each to the server of
    /// `targets` the region's placement policy chooses (by default the one holding the
    /// fewest of the region's chunks). A redundant region moves its fragments instead, each
    /// to a target that holds none of its chunk's others.
    pub fn drain_server(&self, from: SocketAddr, targets: &[SocketAddr]) -> Result<DrainReport, PagerError> {
        self.shared.drain_server(from, targets)
    }

    /// The memory server holding each chunk of the region, in chunk order (each reserved
    /// chunk: all of them unless [`PagerConfig::reserve_on_demand`]).
    pub fn chunk_servers(&self) -> Vec<SocketAddr> {
        self.shared.chunk_servers()
    }

    /// Moves fragment `frag` (a copy under `replicate:N`; the whole chunk, fragment 0,
    /// without redundancy) of chunk `chunk` to the memory server at `to` while the region
    /// is in use; returns the pages copied. `to` must hold no other fragment of the chunk.
    pub fn move_fragment(&self, chunk: usize, frag: usize, to: SocketAddr) -> Result<u64, PagerError> {
        self.shared.move_fragment(chunk, frag, to).map(|m| m.pages)
    }

    /// The memory server of each fragment of each chunk (one per chunk without redundancy),
    /// in chunk and fragment order.
    pub fn fragment_servers(&self) -> Vec<Vec<SocketAddr>> {
        self.shared.fragment_servers()
    }

    /// Reads every live fragment (or copy) of every remote page of a redundant region and
    /// checks each CRC, so that corrupt fragments a read never asks for (parity, second
    /// copies) are found too; the pages found are rewritten by the write-back thread, as
    /// corruption a fault finds (`corrupt_fragments`, `corrupt_fragments_repaired`).
    /// Returns the corrupt fragments found. Runs on the caller's thread while the region
    /// is in use; a region without redundancy has nothing to check against. The region
    /// also scrubs itself every `scrub_interval_ms`.
    pub fn scrub(&self) -> Result<u64, PagerError> {
        crate::moves::reprotect::scrub(&self.shared)
    }
}

/// Refuses a configuration no region can run with; returns the region's pages.
fn check_config(config: &PagerConfig) -> Result<usize, PagerError> {
    if config.servers.is_empty() && config.controller.is_none() {
        return Err(PagerError::NoServers);
    }
    if config.region_bytes == 0 {
        return Err(ConfigError::EmptyRegion.into());
    }
    if config.handler_threads == 0 || config.writeback_batch_pages == 0 || config.writeback_buffer_pages == 0 {
        return Err(ConfigError::ZeroCount.into());
    }
    if !config.server_domains.is_empty() && config.server_domains.len() != config.servers.len() {
        return Err(ConfigError::DomainsMismatch {
            domains: config.server_domains.len(),
            servers: config.servers.len(),
        }
        .into());
    }
    if !config.redundancy.is_none() {
        let mut seen = std::collections::HashSet::new();
        if let Some(server) = config.servers.iter().find(|s| !seen.insert(**s)) {
            return Err(ConfigError::ServerListedTwice { scheme: config.redundancy, server: *server }.into());
        }
    }
    let region_pages = config.region_bytes.div_ceil(PAGE_SIZE as u64) as usize;
    if region_pages > u32::MAX as usize {
        return Err(ConfigError::RegionTooLarge { max_pages: u64::from(u32::MAX) }.into());
    }
    Ok(region_pages)
}

fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}/pid{}", host.trim(), std::process::id())
}

pub(crate) fn budget_pages(bytes: u64) -> usize {
    ((bytes / PAGE_SIZE as u64) as usize).max(MIN_BUDGET_PAGES)
}

impl Drop for FarMemory {
    fn drop(&mut self) {
        if let Some(id) = self.self_serving_id {
            crate::fault::self_serving::unregister(id);
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wb_wake.notify_all();
        self.shared.reclaim_wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Every thread is gone: the page table must be whole (a pass over every page, so
        // in debug builds only).
        #[cfg(debug_assertions)]
        self.shared.core.lock().pages.validate();
        if let RegionMemory::Own(map) = &self.shared.map {
            let _ = self.shared.uffd.unregister(map.as_ptr() as usize, map.len());
        }
        let mut admin = self.shared.admin.lock();
        let layout = &self.shared.layout;
        // A lost server's slabs are left to its grace period: it may not answer at all.
        let slabs: Vec<(usize, krak_proto::SlabId)> =
            layout.stripes.all().iter().flatten().filter(|f| f.is_live()).map(|f| (f.server, f.slab)).collect();
        for (server, slab) in slabs {
            if let Ok(conn) = crate::remote::admin_conn(&mut admin, layout, server) {
                crate::remote::free_quietly(conn, slab);
            }
        }
        drop(admin);
        if let Some(link) = &self.rack {
            crate::follow::link::release(link);
        }
    }
}
