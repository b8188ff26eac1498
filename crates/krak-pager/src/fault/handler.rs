//! The fault loop: each handler thread reads fault events and resolves them.
//!
//! A missing page is served from (in order of cost) the zero page, the write-back buffer,
//! or its memory server, with prefetched neighbours fetched in a second pipelined request
//! so that the faulting thread is woken as soon as its own page arrives.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use krak_uffd::{Event, PAGE_SIZE};

use crate::error::InstallError;
use crate::remote::Links;
use crate::state::core::{Core, RegionShared};
use crate::state::page_table::{Kind, PageState};
use crate::state::stats::Counters;
use crate::PagerError;

/// Bound on a self-serving thread's wait for another thread's fetch of the same page.
const FETCH_WAIT_MS: u64 = 30_000;
/// Most never-written pages installed by one fault (the faulting one included).
const ZERO_WINDOW_PAGES: usize = 16;
static ZERO_WINDOW: [u8; ZERO_WINDOW_PAGES * PAGE_SIZE] = [0; ZERO_WINDOW_PAGES * PAGE_SIZE];

/// How long a handler sleeps in poll before it checks for shutdown.
const POLL_TIMEOUT_MS: i32 = 50;

/// A handler's own connections and buffers. A self-serving thread keeps one per region in
/// thread-local storage, so that its connections outlive each fault.
pub(crate) struct Parts {
    links: Links,
    page_buf: Vec<u8>,
    prefetch_buf: Vec<u8>,
    candidates: Vec<usize>,
    /// Prefetched pages of the fault being served.
    prefetch: Vec<usize>,
}

impl Parts {
    pub fn new(servers: usize) -> Parts {
        Parts {
            links: Links::new(servers),
            page_buf: vec![0; PAGE_SIZE],
            prefetch_buf: Vec::new(),
            candidates: Vec::new(),
            prefetch: Vec::new(),
        }
    }
}

/// Serves faults of one region: run as a handler thread reading userfaultfd events, or
/// called on the faulting thread itself from the SIGBUS handler (`self_serving`).
pub(crate) struct Handler {
    shared: Arc<RegionShared>,
    /// The faulting thread serves its own faults, so nobody else will wake it: when another
    /// thread is fetching the page, wait here until it lands.
    self_serving: bool,
    p: Parts,
}

/// How long one page's faults fail, with no success between, before the program is stopped:
/// a SIGBUS does not end an access the kernel makes (a system call's, KVM's), which would
/// fault for ever. Well above the write-back's pause after a failure and a reconnection.
const STOP_AFTER_FAILING: Duration = Duration::from_secs(20);
/// Failures of one page at most this far apart belong to one stretch (the kernel and a
/// program's SIGBUS handler retry at once; a program that gave up does not come back).
const FAILING_GAP: Duration = Duration::from_secs(5);
/// Pages tracked as failing at most (more are failed, not timed).
const MAX_FAILING_PAGES: usize = 4096;

impl Handler {
    pub fn new(shared: Arc<RegionShared>, self_serving: bool, parts: Parts) -> Handler {
        Handler { shared, self_serving, p: parts }
    }

    pub fn into_parts(self) -> Parts {
        self.p
    }

    pub fn run(mut self) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            match self.shared.uffd.wait_readable(POLL_TIMEOUT_MS) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!("fault handler stops: {e}");
                    return;
                }
            }
            // After a fault, the same application thread often faults again within
            // microseconds: look for it for a while before sleeping in poll again.
            let spin = Duration::from_micros(self.shared.tuning.spin_us);
            let mut idle_since = Instant::now();
            loop {
                match self.shared.uffd.read_event() {
                    Ok(Some(Event::Pagefault { addr, write, wp, thread_id })) => {
                        self.on_fault(addr, write, wp, thread_id);
                        idle_since = Instant::now();
                    }
                    Ok(Some(other)) => tracing::warn!("ignoring userfaultfd event {other:?}"),
                    Ok(None) if idle_since.elapsed() < spin => std::thread::yield_now(),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!("fault handler stops: {e}");
                        return;
                    }
                }
            }
        }
    }

    fn on_fault(&mut self, addr: usize, write: bool, wp: bool, thread_id: Option<u32>) {
        let base = self.shared.map.base();
        if addr < base || addr >= base + self.shared.map.len() {
            tracing::error!("fault at {addr:#x} outside the region");
            return;
        }
        let page = (addr - base) / PAGE_SIZE;
        let shared = self.shared.clone();
        let Err(e) = self.serve(page, write || wp, wp) else { return };
        Counters::add(&shared.counters.failed_faults, 1);
        let now = Instant::now();
        // Failures of one page less than FAILING_GAP apart are one stretch of failing.
        let since = {
            let mut failing = shared.failing.lock();
            if failing.len() >= MAX_FAILING_PAGES {
                failing.retain(|_, (_, last)| now.duration_since(*last) < FAILING_GAP);
            }
            let full = failing.len() >= MAX_FAILING_PAGES;
            match failing.get_mut(&page) {
                Some((first, last)) if now.duration_since(*last) < FAILING_GAP => {
                    *last = now;
                    *first
                }
                _ if full => now,
                _ => {
                    failing.insert(page, (now, now));
                    now
                }
            }
        };
        if since == now {
            tracing::error!("cannot serve page {page} of the region: {e}; failing the access with SIGBUS");
        }
        if now.duration_since(since) >= STOP_AFTER_FAILING {
            tracing::error!(
                "page {page} of the region has not been served for {} s ({e}) and its access is retried \
                 (the kernel's, which a SIGBUS does not end): stopping the program",
                STOP_AFTER_FAILING.as_secs()
            );
            match shared.map.stop_program() {
                Ok(()) => return,
                Err(err) => tracing::error!("could not stop the program: {err}"),
            }
        }
        if let Some(tid) = thread_id {
            if let Err(err) = shared.map.fail_thread(tid) {
                tracing::error!("could not signal thread {tid}: {err}");
            }
        }
        let _ = shared.uffd.wake(shared.addr(page), PAGE_SIZE);
    }

    pub fn serve(&mut self, page: usize, write: bool, wp: bool) -> Result<(), PagerError> {
        let shared = self.shared.clone();
        let addr = shared.addr(page);
        let started = Instant::now();
        let mut core = shared.core.lock();
        let state = core.pages.get(page);
        match state.kind() {
            // A fault on a present, clean page can only be a write, whatever the fault said
            // (a self-serving thread may not know which it was).
            Kind::Clean if write || self.self_serving => {
                // First write to a clean page: from now on it must be written back.
                core.pages.mark_dirty(page);
                core.eviction.touched(page);
                Counters::add(&shared.counters.write_protect_faults, 1);
                shared.uffd.write_protect(addr, PAGE_SIZE, false, true).map_err(PagerError::Uffd)
            }
            Kind::Clean | Kind::Dirty => {
                // Served meanwhile by another handler; a stale write-protect fault on a dirty
                // page only needs its protection (already off) and a wake.
                if wp && state.kind() == Kind::Dirty {
                    shared.uffd.write_protect(addr, PAGE_SIZE, false, true).map_err(PagerError::Uffd)
                } else {
                    shared.uffd.wake(addr, PAGE_SIZE).map_err(PagerError::Uffd)
                }
            }
            // Another handler is fetching it; its UFFDIO_COPY wakes every waiter.
            Kind::Fetching if !self.self_serving => Ok(()),
            // The reclaimer is dropping it outside the lock; it wakes this address when done.
            Kind::Evicting if !self.self_serving => {
                core.evict_waiters.push(page);
                Ok(())
            }
            Kind::Fetching | Kind::Evicting => {
                // Nobody wakes a self-serving thread: wait for the fetch or eviction to finish
                // (the retried access then faults again if the page is still missing).
                let busy = state.kind();
                let deadline = Instant::now() + Duration::from_millis(FETCH_WAIT_MS);
                while core.pages.kind(page) == busy && Instant::now() < deadline {
                    shared.space.wait_until(&mut core, deadline);
                }
                Ok(())
            }
            Kind::Staged => {
                Counters::add(&shared.counters.missing_faults, 1);
                // Claim the bytes and the frame before making room: making room may wait, and
                // meanwhile neither the write-back nor another handler may touch this page.
                let bytes = core.pages.take_staged(page);
                let installed = shared.make_room(&mut core, 0).and_then(|()| {
                    // Dirty, since its write-back may not have landed yet.
                    shared.install(&mut core, page, &bytes, true)
                });
                if let Err(e) = installed {
                    // the only current copy: back to the write-back buffer
                    core.pages.restage(page, bytes);
                    shared.space.notify_all();
                    return Err(e);
                }
                Counters::add(&shared.counters.staged_hits, 1);
                Ok(())
            }
            Kind::Absent if !state.remote() => {
                Counters::add(&shared.counters.missing_faults, 1);
                // The never-written pages right after it come in with it (one copy): a
                // program filling fresh memory in order takes one fault per window, not per
                // page. Installed like the faulting page: writable after a write fault.
                let cap = shared.prefetch_cap(&core).min(ZERO_WINDOW_PAGES - 1);
                let mut n = 1;
                while n <= cap && page + n < shared.region_pages() && core.pages.get(page + n) == PageState::Absent {
                    n += 1;
                }
                (page..page + n).for_each(|q| core.pages.reserve_zero(q));
                let installed = shared
                    .make_room(&mut core, 0)
                    .and_then(|()| shared.install(&mut core, page, &ZERO_WINDOW[..n * PAGE_SIZE], write));
                let filled = match installed {
                    Ok(()) => n,
                    // The window ran into memory mapped otherwise; the faulting page is in.
                    Err(PagerError::Install(InstallError::EndOfMapping { copied })) => copied / PAGE_SIZE,
                    Err(e) => {
                        let window: Vec<usize> = (page..page + n).collect();
                        self.abandon(&mut core, &window);
                        return Err(e);
                    }
                };
                let rest: Vec<usize> = (page + filled..page + n).collect();
                self.abandon(&mut core, &rest);
                Counters::add(&shared.counters.zero_fills, filled as u64);
                Ok(())
            }
            Kind::Absent => {
                Counters::add(&shared.counters.missing_faults, 1);
                let reserved = core.pages.try_reserve_remote(page);
                debug_assert!(reserved, "an absent remote page is reserved");
                self.p.candidates.clear();
                let cap = shared.prefetch_cap(&core);
                if cap > 0 {
                    let region_pages = shared.region_pages();
                    core.prefetch.on_fault(page, region_pages, cap, &mut self.p.candidates);
                }
                self.p.prefetch.clear();
                for &q in &self.p.candidates {
                    if core.pages.try_reserve_remote(q) {
                        self.p.prefetch.push(q);
                    }
                }
                if let Err(e) = shared.make_room(&mut core, 0) {
                    self.abandon(&mut core, &[page]);
                    let prefetch = std::mem::take(&mut self.p.prefetch);
                    self.abandon(&mut core, &prefetch);
                    self.p.prefetch = prefetch;
                    return Err(e);
                }
                drop(core);
                self.fetch(page, write, started)
            }
        }
    }

    /// Fetches the faulting page, installs it, then the prefetched ones.
    fn fetch(&mut self, page: usize, write: bool, started: Instant) -> Result<(), PagerError> {
        let shared = self.shared.clone();
        let layout = &shared.layout;
        let first = self.p.links.start_read(layout, &[page]);
        let prefetch = std::mem::take(&mut self.p.prefetch);
        let prefetch_sent = (!prefetch.is_empty()).then(|| self.p.links.start_read(layout, &prefetch));
        Counters::add(&shared.counters.remote_read_requests, 1 + u64::from(prefetch_sent.is_some()));
        let got = self.p.links.finish_read(layout, first, &mut self.p.page_buf);
        let mut core = shared.core.lock();
        let served = got.and_then(|()| shared.install(&mut core, page, &self.p.page_buf, write));
        if served.is_err() {
            self.abandon(&mut core, &[page]);
        } else {
            Counters::add(&shared.counters.remote_reads, 1);
            shared.counters.record_fault_ns(started.elapsed().as_nanos() as u64);
        }
        shared.space.notify_all();
        drop(core);

        if let Some(sent) = prefetch_sent {
            self.p.prefetch_buf.resize(prefetch.len() * PAGE_SIZE, 0);
            let buf = &mut self.p.prefetch_buf[..prefetch.len() * PAGE_SIZE];
            let got = self.p.links.finish_read(layout, sent, buf);
            let mut core = shared.core.lock();
            let installed = got.and_then(|()| {
                let mut i = 0;
                while i < prefetch.len() {
                    // Install each run of consecutive pages with a single copy; after a write
                    // fault writable, as a stream writing in order writes them next (no
                    // write-protect fault each).
                    let mut j = i + 1;
                    while j < prefetch.len() && prefetch[j] == prefetch[j - 1] + 1 {
                        j += 1;
                    }
                    shared.install(&mut core, prefetch[i], &buf[i * PAGE_SIZE..j * PAGE_SIZE], write)?;
                    i = j;
                }
                Ok(())
            });
            match installed {
                Ok(()) => {
                    Counters::add(&shared.counters.remote_reads, prefetch.len() as u64);
                    Counters::add(&shared.counters.prefetched, prefetch.len() as u64);
                }
                Err(e) => {
                    if !matches!(e, PagerError::Install(InstallError::EndOfMapping { .. })) {
                        tracing::warn!("prefetch of {} pages failed: {e}", prefetch.len());
                    }
                    // those installed before the error stay; the rest give their frames back
                    self.abandon(&mut core, &prefetch);
                }
            }
            shared.space.notify_all();
        }
        self.p.prefetch = prefetch;
        Counters::add(&shared.counters.retries, std::mem::take(&mut self.p.links.retries));
        shared.take_found(&mut self.p.links);
        served
    }

    /// Gives back the frames of pages whose fetch failed; their waiters retry and fault again.
    fn abandon(&self, core: &mut Core, pages: &[usize]) {
        for &q in pages {
            if core.pages.abandon(q) {
                let _ = self.shared.uffd.wake(self.shared.addr(q), PAGE_SIZE);
            }
        }
        self.shared.space.notify_all();
    }
}
