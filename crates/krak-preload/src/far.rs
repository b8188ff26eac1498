//! The far-memory arena of this process: one `FarMemory` region, started at the first large
//! allocation, and the page runs the program holds in it.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

use krak_arena::contract::{AllocatorChoice, RunConfig, EXIT_PAGER_FAILED};
use krak_arena::program::Separate;
use krak_pager::{FarMemory, FaultMode, UffdMode, PAGE_SIZE};
use parking_lot::Mutex;

use crate::fallback::{fell_back, Reason};
use crate::protect::Held;
use crate::retained::Retained;
use crate::runs::Runs;
use crate::small::{Small, SPAN_BYTES};

/// What `krak run` asked for (`krak_arena::contract`).
static CONFIG: OnceLock<RunConfig> = OnceLock::new();
/// Allocations of at least this many bytes go to the arena (none until configured).
pub static THRESHOLD: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Anonymous mappings of at least this many bytes go to the arena (none until configured).
pub static MAP_THRESHOLD: AtomicUsize = AtomicUsize::new(usize::MAX);
static ARENA_START: AtomicUsize = AtomicUsize::new(0);
static ARENA_END: AtomicUsize = AtomicUsize::new(0);
/// Set in a child made by fork(2): no pager serves it, so the arena is fenced off there.
static FORKED_CHILD: AtomicBool = AtomicBool::new(false);
static FAR: OnceLock<Far> = OnceLock::new();
/// `krak run --allocator far`: small blocks are far memory too (`small.rs`).
static SMALL_BLOCKS: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set while this thread runs pager code from an interposed call (or starts the pager),
    /// so that allocations the pager itself makes never land in the arena.
    static BUSY: Cell<bool> = const { Cell::new(false) };
    /// Set for good in the pager's own threads (`threads.rs`): their C-level allocations
    /// (thread bookkeeping in glibc) must not land in far memory either.
    static PAGER_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Where the arena's pager runs.
pub(crate) enum Arena {
    /// In this process's threads, over a private anonymous mapping.
    InProcess(FarMemory),
    /// In a pager process, over a memfd mapped shared (`krak_arena::program`).
    Separate(Separate),
}

impl Arena {
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        match self {
            Arena::InProcess(r) => r.as_ptr(),
            Arena::Separate(s) => s.as_ptr(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Arena::InProcess(r) => r.len(),
            Arena::Separate(s) => s.len(),
        }
    }
}

pub struct Far {
    pub(crate) region: Arena,
    pub(crate) runs: Mutex<Held>,
    far_allocations: AtomicU64,
    /// `malloc`s served by a run kept from an earlier `free` (`retained.rs`).
    reused_allocations: AtomicU64,
    /// Small blocks' classes, with `--allocator far`.
    small: Option<Small>,
}

/// Prints why the pager cannot run and ends the process: never a silent fallback.
pub fn die(why: &str) -> ! {
    eprintln!("krak: {why}");
    // SAFETY: _exit ends the process at once; no Rust state needs to survive it.
    unsafe { libc::_exit(EXIT_PAGER_FAILED) }
}

/// Reads the configuration; run once, from the library's constructor. Returns the
/// allocator choice, for `forward::resolve`.
pub fn load_config() -> AllocatorChoice {
    let config = RunConfig::from_env().unwrap_or_else(|e| die(&e.to_string()));
    let allocator = config.allocator;
    THRESHOLD.store(config.threshold_bytes as usize, Relaxed);
    MAP_THRESHOLD.store(config.map_threshold_bytes as usize, Relaxed);
    SMALL_BLOCKS.store(allocator == AllocatorChoice::Far, Relaxed);
    let wants_stats = config.stats_file.is_some();
    let _ = CONFIG.set(config);
    // SAFETY: registers plain extern "C" functions of this library, which stays loaded.
    unsafe {
        libc::pthread_atfork(None, None, Some(in_fork_child));
        if wants_stats {
            libc::atexit(write_stats);
        }
    }
    allocator
}

extern "C" fn in_fork_child() {
    FORKED_CHILD.store(true, Relaxed);
    if let Some(far) = FAR.get() {
        // Only an mmap (and a close): allowed between fork and exec. Failing leaves the
        // range unmapped, which faults loudly too.
        match &far.region {
            Arena::InProcess(r) => drop(r.fence_in_child()),
            Arena::Separate(s) => s.in_fork_child(),
        }
    }
}

/// Whether `addr` lies in the arena (false before the pager started).
pub fn in_arena(addr: usize) -> bool {
    let start = ARENA_START.load(Relaxed);
    start != 0 && addr >= start && addr < ARENA_END.load(Relaxed)
}

/// Whether blocks below the threshold are far memory too.
pub fn small_blocks() -> bool {
    SMALL_BLOCKS.load(Relaxed)
}

pub fn forked_child() -> bool {
    FORKED_CHILD.load(Relaxed)
}

/// Runs `f` with the re-entrancy guard set (restored after, so that guards nest).
pub fn guarded<T>(f: impl FnOnce() -> T) -> T {
    let was = BUSY.with(|b| b.replace(true));
    let out = f();
    BUSY.with(|b| b.set(was));
    out
}

/// Whether this thread runs pager code: inside `guarded`, or a thread of the pager's.
pub fn pager_context() -> bool {
    BUSY.with(|b| b.get()) || PAGER_THREAD.with(|t| t.get())
}

/// Marks this thread as one of the pager's, for its lifetime.
pub fn mark_pager_thread() {
    PAGER_THREAD.with(|t| t.set(true));
}

/// The arena, started on first use; None where it must not be used (a fork child, or from
/// pager code).
pub fn far() -> Option<&'static Far> {
    if forked_child() || pager_context() {
        return None;
    }
    Some(FAR.get_or_init(|| guarded(start)))
}

/// The arena if it has started, for calls on addresses in it.
pub fn started() -> &'static Far {
    FAR.get().expect("an arena address implies a started arena")
}

fn start() -> Far {
    let config = CONFIG.get().unwrap_or_else(|| die("libkrak_preload.so was not configured"));
    if let Some(path) = &config.log_file {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| die(&format!("log file {}: {e}", path.display())));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .try_init();
    }
    if let Some(socket) = &config.pager_socket {
        let sep = Separate::start(config.max_far_bytes as usize, socket, die)
            .unwrap_or_else(|e| die(&format!("cannot start the arena: {e}")));
        tracing::info!("krak arena served by the pager process (pid {})", sep.pager_pid());
        return far_over(Arena::Separate(sep), config);
    }
    // Programs hand heap buffers to system calls: faults must be served for the kernel too.
    let pager = config.pager_config(FaultMode::Threads).unwrap_or_else(|e| die(&e.to_string()));
    let region = FarMemory::new(pager).unwrap_or_else(|e| die(&format!("cannot start the pager: {e}")));
    if region.uffd_mode() == UffdMode::UserModeOnly {
        die("userfaultfd here serves user-mode faults only (not root, vm.unprivileged_userfaultfd = 0): \
             system calls on far memory would fail with EFAULT; run as root or set vm.unprivileged_userfaultfd = 1");
    }
    region.exclude_from_fork().unwrap_or_else(|e| die(&format!("MADV_DONTFORK on the arena: {e}")));
    far_over(Arena::InProcess(region), config)
}

fn far_over(region: Arena, config: &RunConfig) -> Far {
    let start = region.as_ptr() as usize;
    let runs = Runs::new(start / PAGE_SIZE, region.len() / PAGE_SIZE);
    ARENA_END.store(start + region.len(), Relaxed);
    ARENA_START.store(start, Relaxed);
    tracing::info!("krak arena: {} bytes at {start:#x}, local budget {} bytes", region.len(), config.local_bytes);
    let small = (config.allocator == AllocatorChoice::Far).then(|| Small::new(start, region.len()));
    let retained = Retained::new(config.local_bytes as usize / PAGE_SIZE / 16);
    Far {
        region,
        runs: Mutex::new(Held::new(runs, retained)),
        far_allocations: AtomicU64::new(0),
        reused_allocations: AtomicU64::new(0),
        small,
    }
}

fn pages(bytes: usize) -> usize {
    bytes.div_ceil(PAGE_SIZE).max(1)
}

impl Far {
    /// Forgets pages `[first, first+count)` (absolute page numbers) in the pager.
    pub(crate) fn discard(&self, first: usize, count: usize) {
        let offset = first * PAGE_SIZE - self.region.as_ptr() as usize;
        let done = guarded(|| match &self.region {
            Arena::InProcess(r) => r.discard(offset, count * PAGE_SIZE).map_err(|e| e.to_string()),
            Arena::Separate(s) => s.discard(offset, count * PAGE_SIZE).map_err(|e| e.to_string()),
        });
        if let Err(e) = done {
            die(&format!("discarding far memory: {e}"));
        }
    }

    /// A run of at least `bytes`, aligned to `align` (a power of two). `growable` reserves
    /// address space for `realloc` to grow into. None when the arena is full.
    pub fn alloc(&self, bytes: usize, align: usize, growable: bool) -> Option<*mut libc::c_void> {
        self.alloc_run(bytes, align, growable, false)
    }

    /// A run for `malloc` (contents undefined): a kept one of the same size if there is
    /// one (`retained.rs`), else a fresh one like [`Far::alloc`].
    pub fn alloc_reusing(&self, bytes: usize, align: usize, growable: bool) -> Option<*mut libc::c_void> {
        self.alloc_run(bytes, align, growable, true)
    }

    /// [`Far::alloc`], trying the kept runs first when `reuse` (one lock hold either way).
    fn alloc_run(&self, bytes: usize, align: usize, growable: bool, reuse: bool) -> Option<*mut libc::c_void> {
        let n = pages(bytes);
        let align_pages = (align / PAGE_SIZE).max(1);
        let reserved = if growable { n.next_power_of_two() } else { n };
        let mut runs = self.runs.lock();
        if let Some(first) = reuse.then(|| runs.take_retained(n, reserved, align_pages)).flatten() {
            drop(runs);
            self.reused_allocations.fetch_add(1, Relaxed);
            return Some((first * PAGE_SIZE) as *mut libc::c_void);
        }
        let first = runs.alloc(n, reserved, align_pages).or_else(|| runs.alloc(n, n, align_pages));
        drop(runs);
        match first {
            Some(first) => {
                self.far_allocations.fetch_add(1, Relaxed);
                Some((first * PAGE_SIZE) as *mut libc::c_void)
            }
            None => {
                fell_back(Reason::ArenaFull, bytes);
                None
            }
        }
    }

    /// A block of any size below the threshold (`--allocator far`): from a size class, or
    /// a page run above the largest. None when the arena is full.
    pub fn small_alloc(&self, bytes: usize, align: usize) -> Option<*mut libc::c_void> {
        let small = self.small.as_ref()?;
        let span = || self.alloc(SPAN_BYTES, SPAN_BYTES, false).map(|p| p as usize);
        match small.alloc(bytes, align, span) {
            Some(block) => Some(block as *mut libc::c_void),
            None if bytes > crate::small::MAX_SMALL || align > crate::small::MAX_SMALL => {
                self.alloc(bytes, align.max(PAGE_SIZE), true)
            }
            None => None,
        }
    }

    /// The size of the small block at `addr`, if it is one.
    fn small_block(&self, addr: usize) -> Option<(&Small, usize)> {
        let small = self.small.as_ref()?;
        Some((small, small.block_size(addr)?))
    }

    /// `free` of a block: a small one, or a run's first address.
    pub fn free(&self, addr: usize) {
        if let Some((small, size)) = self.small_block(addr) {
            return small.free(addr, size);
        }
        let mut runs = self.runs.lock();
        let first = addr / PAGE_SIZE;
        let run = match runs.get(first) {
            Some(run) if addr.is_multiple_of(PAGE_SIZE) => run,
            _ => die(&format!("free({addr:#x}): not an allocation of the far-memory arena")),
        };
        if runs.retained.contains(first) {
            // Kept from an earlier free: keeping it twice would hand it out twice.
            die(&format!("free({addr:#x}): double free of far memory"));
        }
        if runs.retained.may_keep(run.pages) && !runs.marked(first, run.reserved) {
            while let Some(oldest) = runs.retained.must_give_up(run.pages) {
                self.give_up(&mut runs, oldest);
            }
            runs.retained.keep(first, run.pages);
            return;
        }
        self.give_up(&mut runs, first);
    }

    /// Frees the run at `first`, given up before its pages can be handed out again (the
    /// lock is held).
    fn give_up(&self, runs: &mut Held, first: usize) {
        let run = runs.get(first).expect("a run being freed");
        self.forget(runs, first, run.reserved);
        runs.free_run(first);
    }

    pub fn usable_size(&self, addr: usize) -> usize {
        if let Some((_, size)) = self.small_block(addr) {
            return size;
        }
        self.runs.lock().get(addr / PAGE_SIZE).map_or(0, |r| r.pages * PAGE_SIZE)
    }

    /// `realloc` of a run to `bytes` (above 0): in place when it can, else moved (in the
    /// arena, or to glibc when the arena is full). Null when no memory could be had.
    pub fn realloc(&self, addr: usize, bytes: usize) -> *mut libc::c_void {
        if let Some((_, size)) = self.small_block(addr) {
            if bytes <= size {
                return addr as *mut libc::c_void;
            }
            let new = match self.small_alloc(bytes, 16) {
                Some(p) => p,
                // SAFETY: a plain allocation from glibc's heap.
                None => unsafe { crate::alloc::__libc_malloc(bytes) },
            };
            if !new.is_null() {
                // SAFETY: the old block is the caller's, `size` bytes; the new one at least
                // `bytes` > `size`; distinct blocks never overlap.
                unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, new.cast::<u8>(), size) };
                self.free(addr);
            }
            return new;
        }
        let first = addr / PAGE_SIZE;
        let n = pages(bytes);
        let mut runs = self.runs.lock();
        let run = match runs.get(first) {
            Some(run) if addr.is_multiple_of(PAGE_SIZE) => run,
            _ => die(&format!("realloc({addr:#x}): not an allocation of the far-memory arena")),
        };
        if n < run.pages {
            self.forget(&mut runs, first + n, run.pages - n);
        }
        if runs.resize_in_place(first, n) {
            return addr as *mut libc::c_void;
        }
        if runs.marked(first, run.pages) {
            // Protected pages or another mapping inside: a copy would read what cannot be read.
            crate::alloc::set_errno(libc::ENOMEM);
            return std::ptr::null_mut();
        }
        drop(runs);
        let new = match self.alloc_reusing(bytes, PAGE_SIZE, true) {
            Some(p) => p,
            // SAFETY: a plain allocation from glibc's heap.
            None => unsafe { crate::alloc::__libc_malloc(bytes) },
        };
        if !new.is_null() {
            // SAFETY: both are live allocations of this caller, at least run.pages pages
            // (old) and `bytes` (new) long; they do not overlap (distinct runs or heaps).
            unsafe {
                std::ptr::copy_nonoverlapping(addr as *const u8, new.cast::<u8>(), (run.pages * PAGE_SIZE).min(bytes))
            };
            self.free(addr);
        }
        new
    }

    /// `munmap` of the arena pages `[addr, addr+len)`.
    pub fn unmap(&self, addr: usize, len: usize) {
        let mut runs = self.runs.lock();
        for (first, count) in runs.release(addr / PAGE_SIZE, pages(len)) {
            // Still under the lock: nobody is given these pages before they are given up.
            self.forget(&mut runs, first, count);
        }
    }

    /// `madvise(MADV_DONTNEED)` (or `MADV_FREE`) on arena pages: they read as zeros next.
    pub fn dont_need(&self, addr: usize, len: usize) {
        let end = (addr + len).min(ARENA_END.load(Relaxed));
        let first = addr.max(ARENA_START.load(Relaxed)) / PAGE_SIZE;
        if end > first * PAGE_SIZE {
            self.discard(first, pages(end - first * PAGE_SIZE));
        }
    }

    /// Whether every page of the range is held by the program.
    #[cfg(test)]
    pub fn in_use(&self, addr: usize, len: usize) -> bool {
        self.runs.lock().all_in_use(addr / PAGE_SIZE, pages(len))
    }

    /// `mremap` of a whole mapping at `addr` from `old_len` to `new_len`; moving it only with
    /// `may_move`. Err(errno) as mremap(2) would fail.
    pub fn remap(&self, addr: usize, old_len: usize, new_len: usize, may_move: bool) -> Result<usize, i32> {
        let first = addr / PAGE_SIZE;
        let (old, new) = (pages(old_len), pages(new_len));
        let mut runs = self.runs.lock();
        if !addr.is_multiple_of(PAGE_SIZE) || old_len == 0 || new_len == 0 || !runs.all_in_use(first, old) {
            return Err(libc::EINVAL);
        }
        if new <= old {
            for (f, count) in runs.release(first + new, old - new) {
                self.forget(&mut runs, f, count);
            }
            return Ok(addr);
        }
        if runs.marked(first, old) {
            // Protected pages or another mapping inside: neither grown nor copied.
            return Err(libc::ENOMEM);
        }
        if runs.get(first).is_some_and(|r| r.pages == old) && runs.resize_in_place(first, new) {
            return Ok(addr);
        }
        if !may_move {
            return Err(libc::ENOMEM);
        }
        drop(runs);
        let Some(to) = self.alloc(new_len, PAGE_SIZE, false) else { return Err(libc::ENOMEM) };
        // SAFETY: the old range is the caller's mapping (checked in use above), the new one
        // a fresh run of at least `new` pages; distinct runs never overlap.
        unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, to.cast::<u8>(), old * PAGE_SIZE) };
        self.unmap(addr, old * PAGE_SIZE);
        Ok(to as usize)
    }

    /// `{spans, blocks}` of small blocks in far memory, or null without `--allocator far`.
    fn small_stats(&self) -> serde_json::Value {
        self.small.as_ref().map_or(
            serde_json::Value::Null,
            |s| serde_json::json!({ "spans": s.spans.load(Relaxed), "blocks": s.blocks.load(Relaxed) }),
        )
    }
}

/// Writes the pager's counters where `krak run` asked; registered with atexit(3).
extern "C" fn write_stats() {
    if forked_child() {
        return;
    }
    let Some(path) = CONFIG.get().and_then(|c| c.stats_file.as_ref()) else { return };
    let json = guarded(|| match FAR.get().map(|far| (far, &far.region)) {
        Some((far, Arena::InProcess(region))) => serde_json::json!({
            "pager_started": true,
            "arena_bytes": region.len(),
            "local_budget_bytes": region.local_budget_bytes(),
            "peak_resident_bytes": region.peak_resident_bytes(),
            "far_allocations": far.far_allocations.load(Relaxed),
            "reused_allocations": far.reused_allocations.load(Relaxed),
            "small": far.small_stats(),
            "fallback_allocations": crate::fallback::total(),
            "fallbacks": crate::fallback::describe(),
            "pager": region.stats(),
            "malloc": crate::forward::describe(),
        }),
        Some((far, Arena::Separate(sep))) => {
            // The pager process's figures for this arena, with the program's own.
            let mut json = sep.stats().unwrap_or_else(|e| serde_json::json!({ "pager_error": e.to_string() }));
            json["pager_started"] = true.into();
            json["far_allocations"] = far.far_allocations.load(Relaxed).into();
            json["reused_allocations"] = far.reused_allocations.load(Relaxed).into();
            json["small"] = far.small_stats();
            json["fallback_allocations"] = crate::fallback::total().into();
            json["fallbacks"] = crate::fallback::describe();
            json["malloc"] = crate::forward::describe();
            json
        }
        None => serde_json::json!({
            "pager_started": false,
            "fallback_allocations": crate::fallback::total(),
            "fallbacks": crate::fallback::describe(),
            "malloc": crate::forward::describe(),
        }),
    });
    // One file per process (children run their own pager): suffix all but krak run's child.
    let _ = std::fs::write(format!("{}.{}", path.display(), std::process::id()), json.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arena's allocation calls over a real region on a memory server: contents move
    /// with realloc and mremap, and freed, unmapped or dropped pages read as zeros after.
    #[test]
    fn allocation_calls_keep_and_forget_contents_as_libc_would() {
        let server = krak_memserver::spawn(krak_memserver::ServerConfig::new("127.0.0.1:0".parse().unwrap(), 64 << 20))
            .expect("memory server");
        let region = FarMemory::new(krak_pager::PagerConfig {
            region_bytes: 32 << 20,
            local_budget_bytes: 1 << 20,
            servers: vec![server.addr()],
            fault_mode: FaultMode::Threads,
            ..Default::default()
        })
        .expect("region");
        let config = RunConfig::from_vars(&|name| {
            let v = match name {
                krak_arena::contract::SERVERS => server.addr().to_string(),
                krak_arena::contract::LOCAL_BYTES => (1u64 << 20).to_string(),
                krak_arena::contract::MAX_FAR_BYTES => (32u64 << 20).to_string(),
                krak_arena::contract::INSECURE => "1".into(),
                _ => return None,
            };
            Some(v.into())
        })
        .unwrap();
        let far = far_over(Arena::InProcess(region), &config);
        let fill = |p: usize, len: usize, seed: u8| {
            // SAFETY: [p, p+len) is a run of the arena this test holds.
            let s = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) };
            s.iter_mut().enumerate().for_each(|(i, b)| *b = seed ^ (i as u8) ^ ((i >> 12) as u8));
        };
        let check = |p: usize, len: usize, seed: Option<u8>| {
            // SAFETY: as above.
            let s = unsafe { std::slice::from_raw_parts(p as *const u8, len) };
            let want = |i: usize| seed.map_or(0, |seed| seed ^ (i as u8) ^ ((i >> 12) as u8));
            assert!(s.iter().enumerate().all(|(i, b)| *b == want(i)), "contents at {p:#x} (+{len})");
        };
        // 8 MiB written (8x the budget), grown by realloc, every byte kept
        let a = far.alloc(8 << 20, PAGE_SIZE, true).expect("room") as usize;
        assert!(in_arena(a));
        fill(a, 8 << 20, 7);
        let b = far.realloc(a, 12 << 20) as usize;
        check(b, 8 << 20, Some(7));
        assert_eq!(far.usable_size(b), 12 << 20);
        // a run freed reads as zeros when handed out again
        far.free(b);
        let c = far.alloc(12 << 20, PAGE_SIZE, false).expect("room") as usize;
        check(c, 12 << 20, None);
        // madvise(DONTNEED) zeroes only its range
        fill(c, 4 << 20, 3);
        far.dont_need(c + (1 << 20), 1 << 20);
        check(c, 1 << 20, Some(3));
        check(c + (1 << 20), 1 << 20, None);
        // mremap: shrink in place, then grow (moved if it must), contents kept
        assert_eq!(far.remap(c, 12 << 20, 1 << 20, false), Ok(c));
        let d = far.remap(c, 1 << 20, 16 << 20, true).expect("room");
        check(d, 1 << 20, Some(3));
        assert_eq!(far.remap(d + 1, 1 << 20, 2 << 20, true), Err(libc::EINVAL));
        far.unmap(d, 16 << 20);
        assert!(!far.in_use(d, PAGE_SIZE));
        // A freed run of 16 pages (the bound here: a sixteenth of the budget) is kept for
        // the next malloc of its size, contents and all; calloc's and mmap's are fresh.
        let run = 64 << 10;
        let e = far.alloc_reusing(run, PAGE_SIZE, false).expect("room") as usize;
        fill(e, run, 9);
        far.free(e);
        assert!(far.in_use(e, run), "kept");
        let f = far.alloc(run, PAGE_SIZE, false).expect("room") as usize;
        assert_ne!(f, e);
        check(f, run, None);
        let g = far.alloc_reusing(run, PAGE_SIZE, false).expect("room") as usize;
        assert_eq!(g, e, "the kept run");
        check(g, run, Some(9));
        assert_eq!(far.reused_allocations.load(Relaxed), 1);
        // One unmapped after its free is no longer kept: once its pages are another live
        // run, malloc must not hand them out a second time.
        far.free(g);
        far.unmap(g, run);
        assert!(!far.in_use(g, run));
        let live = far.alloc(run, PAGE_SIZE, false).expect("room") as usize;
        assert_eq!(live, g, "the lowest free pages again");
        let h = far.alloc_reusing(run, PAGE_SIZE, false).expect("room") as usize;
        assert_ne!(h, live, "a live run handed out twice");
        check(h, run, None);
        assert_eq!(far.reused_allocations.load(Relaxed), 1);
        assert_eq!(crate::fallback::total(), 0);
    }
}
