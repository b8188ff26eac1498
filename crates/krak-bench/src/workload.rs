//! Access patterns run over a raw memory region, with every read verified.
//!
//! # Data layout
//!
//! The region is split into 4 KiB pages of 512 little-endian `u64` words. The fill phase
//! writes every word of every page; the timed phase touches one word per operation. A word
//! is self-describing, so a read can be checked without keeping a copy of the region:
//!
//! ```text
//!  bits 63..48  generation (0 = written by the fill, n = n-th write to this page, mod 2^16)
//!  bits 47..24  hash24(page, seed)               -- the same for every word of a page
//!  bits 23..0   hash24(page, word, seed, gen)
//! ```
//!
//! A zeroed page, a page read from the wrong place, a word at the wrong offset, or any
//! random bit flip fails the check with probability about 1 - 2^-24. A page is therefore
//! roughly 1.5–2:1 compressible (5 of every 8 bytes repeat within the page) — neither the
//! all-zero best case for zram nor incompressible noise.
//!
//! `rand_rw` keeps one `u64` of shadow per page (8 bytes/page, 0.2 % of the region): the
//! number of writes to the page (48 bits) and the word index of the last write (16 bits).
//! A read of the last-written word must carry exactly the latest generation; any other
//! word's generation must not exceed it. After the timed phase, [`final_check`] reads every
//! word of every page and checks the same, so a lost write-back (a stale page brought
//! back) is caught for every page that was written.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::BenchError;

/// The unit of access: every operation touches one word inside one page of this size.
pub const PAGE_SIZE_BYTES: usize = 4096;
const WORDS_PER_PAGE: usize = PAGE_SIZE_BYTES / 8;
const GEN_BITS: u32 = 16;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;
const SHADOW_WORD_BITS: u32 = 16;

/// A contiguous, page-aligned, readable and writable memory region.
///
/// Implementors guarantee that `[as_mut_ptr(), as_mut_ptr() + len())` stays mapped,
/// readable and writable for as long as the value lives, that `len()` is a multiple of
/// [`PAGE_SIZE_BYTES`], and that nothing else accesses it concurrently.
pub trait Region {
    /// First byte of the region (page-aligned).
    fn as_mut_ptr(&self) -> *mut u8;
    /// Length of the region in bytes (a multiple of [`PAGE_SIZE_BYTES`]).
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Faults the backend has served so far (for the pager: missing-page faults), when it
    /// counts them; otherwise kernel major faults stand in.
    fn faults_served(&self) -> Option<u64> {
        None
    }
    /// Pages the backend has written back to remote memory so far, when it counts them.
    fn writebacks(&self) -> Option<u64> {
        None
    }
}

/// The access patterns `krak bench` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Workload {
    /// Read one `u64` at a random offset inside a uniformly random page.
    RandRead,
    /// Uniformly random page; 50 % read, 50 % write of one `u64` at a random offset.
    RandRw,
    /// Scan pages in order, reading one `u64` per page, wrapping around.
    SeqRead,
    /// Uniformly random page, read and checked, then rewritten: every page touched turns
    /// dirty, so every eviction is a write-back. At 25 % local the region is 4x the budget:
    /// the cliff of a program thrashing its memory, in one run.
    Thrash,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 4] = [Workload::RandRead, Workload::RandRw, Workload::SeqRead, Workload::Thrash];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::RandRead => "rand_read",
            Workload::RandRw => "rand_rw",
            Workload::SeqRead => "seq_read",
            Workload::Thrash => "thrash",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = BenchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| BenchError::Invalid(format!("unknown workload {s:?}")))
    }
}

/// Bounds of one timed run: it stops at whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct RunLength {
    /// Stop after this many operations (`None`: no bound).
    pub max_ops: Option<u64>,
    /// Stop after this long.
    pub duration_ms: u64,
}

/// Outcome of one timed run (plus the untimed fill and final check around it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The workload that ran.
    pub workload: Workload,
    /// Operations completed in the timed phase.
    pub ops: u64,
    /// Wall time of the timed phase.
    pub elapsed_ns: u64,
    /// `ops` per second of `elapsed_ns`.
    pub ops_per_s: f64,
    /// Median per-operation latency.
    pub p50_us: f64,
    /// 99th percentile per-operation latency.
    pub p99_us: f64,
    /// 99.9th percentile per-operation latency.
    pub p999_us: f64,
    /// Slowest operation.
    pub max_us: f64,
    /// Reads whose value did not match the expected pattern, timed phase and final check
    /// together. Anything but 0 is a correctness bug in the backend.
    pub mismatches: u64,
    /// Reads checked against the expected pattern (timed phase and final check).
    pub verified_ops: u64,
    /// Wall time of the fill phase.
    pub fill_ms: u64,
    /// Wall time of the final whole-region check (0 if skipped).
    pub final_check_ms: u64,
    /// Major page faults taken by the process during the timed phase (kernel swap-ins).
    #[serde(default)]
    pub major_faults: u64,
    /// The process's swapped-out memory (`VmSwap`) at the end of the timed phase.
    #[serde(default)]
    pub vm_swap_bytes: u64,
    /// Size of the region.
    #[serde(default)]
    pub region_bytes: u64,
    /// Faults served during the timed phase (pager faults, or kernel major faults).
    #[serde(default)]
    pub faults: u64,
    /// Latency of the operations that faulted, as the application saw it: the slowest
    /// `faults` operations of the timed phase, at their median.
    #[serde(default)]
    pub fault_p50_us: Option<f64>,
    /// The same at the 99th percentile.
    #[serde(default)]
    pub fault_p99_us: Option<f64>,
    /// Pages written back in the timed phase (the pager's), when the backend counts them.
    #[serde(default)]
    pub writebacks: Option<u64>,
    /// CPU time of the timed phase, and where it went.
    #[serde(default)]
    pub cpu: Option<crate::cpu::PhaseCpu>,
}

/// Percentiles of the faulting operations: with `faults` of `ops` operations faulting,
/// they are the slowest ones, so their quantile q sits at `1 - (1 - q) * faults / ops`.
fn fault_quantiles(hist: &Histogram<u64>, ops: u64, faults: u64) -> (Option<f64>, Option<f64>) {
    if faults == 0 || ops == 0 {
        return (None, None);
    }
    let share = (faults as f64 / ops as f64).min(1.0);
    let at = |q: f64| Some(hist.value_at_quantile(1.0 - (1.0 - q) * share) as f64 / 1000.0);
    (at(0.5), at(0.99))
}

/// splitmix64 finaliser: a cheap, well-mixed 64-bit hash.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The value word `word` of page `page` holds after its generation-`generation` write.
#[inline]
pub fn expected_word(seed: u64, page: u64, word: u64, generation: u64) -> u64 {
    let generation = generation & GEN_MASK;
    let page_part = mix64(seed ^ page.wrapping_mul(0xA24B_AED4_963E_E407)) & 0xFF_FFFF;
    let word_part = mix64(seed ^ (page << 9 | word).wrapping_mul(0x9FB2_1C65_1E98_DF25) ^ generation << 40) & 0xFF_FFFF;
    generation << 48 | page_part << 24 | word_part
}

/// Checks a value read from `word` of `page`, given the page's shadow (0 if never written).
#[inline]
fn check_word(seed: u64, page: u64, word: u64, value: u64, shadow: u64) -> bool {
    let generation = value >> 48;
    if value != expected_word(seed, page, word, generation) {
        return false;
    }
    let writes = shadow >> SHADOW_WORD_BITS;
    let last_word = shadow & ((1 << SHADOW_WORD_BITS) - 1);
    if writes == 0 {
        generation == 0
    } else if word == last_word {
        generation == writes & GEN_MASK
    } else {
        // Past 2^16 writes the generation wraps and only the exact check above holds.
        writes > GEN_MASK || generation <= writes
    }
}

/// A small, fast, seedable PRNG (xorshift64*).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(mix64(seed) | 1)
    }
    #[inline]
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is negligible here).
    #[inline]
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Runs workloads over one region; holds the `rand_rw` shadow between phases. Several
/// threads may run one workload at once, each on its own part of the pages.
#[derive(Debug)]
pub struct Runner {
    base: *mut u64,
    pages: u64,
    seed: u64,
    /// Per page; a part's thread only touches its own pages' entries, so `Relaxed` does.
    shadow: Vec<AtomicU64>,
}

// SAFETY: the runner only reads and writes the region through `base` within bounds, and
// threads running parts at once touch disjoint pages (and their own shadow entries, which
// are atomics); the region outlives the runner (`Runner::new`'s contract).
unsafe impl Sync for Runner {}

/// The pages of a region one thread works on: those `p` with `p % of == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub index: u64,
    pub of: u64,
}

impl Part {
    /// The whole region.
    pub const WHOLE: Part = Part { index: 0, of: 1 };

    /// Pages of this part in a region of `pages`.
    fn len(self, pages: u64) -> u64 {
        (pages + self.of - 1 - self.index) / self.of
    }

    /// The `k`th page of this part.
    fn page(self, k: u64) -> u64 {
        self.index + k * self.of
    }
}

impl Runner {
    /// Prepares a runner over `region`, which must stay alive (and untouched by anything
    /// else) for as long as the runner is used.
    pub fn new(region: &dyn Region, seed: u64) -> Result<Self, BenchError> {
        let len = region.len();
        let base = region.as_mut_ptr();
        if len == 0 || len % PAGE_SIZE_BYTES != 0 || (base as usize) % PAGE_SIZE_BYTES != 0 {
            return Err(BenchError::Invalid(format!(
                "region must be non-empty and page-aligned (ptr {base:p}, {len} bytes)"
            )));
        }
        let pages = (len / PAGE_SIZE_BYTES) as u64;
        Ok(Runner { base: base.cast(), pages, seed, shadow: (0..pages).map(|_| AtomicU64::new(0)).collect() })
    }

    /// Number of 4 KiB pages in the region.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    #[inline]
    fn word_ptr(&self, page: u64, word: u64) -> *mut u64 {
        debug_assert!(page < self.pages && word < WORDS_PER_PAGE as u64);
        // SAFETY: `page < pages` and `word < 512`, so the offset stays inside the region
        // that `Runner::new` was given, whose length is `pages * 4096` bytes.
        unsafe { self.base.add(page as usize * WORDS_PER_PAGE + word as usize) }
    }

    #[inline]
    fn read(&self, page: u64, word: u64) -> u64 {
        let ptr = self.word_ptr(page, word);
        // SAFETY: `ptr` is in bounds and 8-aligned (page-aligned base, whole words); the
        // region is mapped and readable while the runner is used (`Region` contract).
        unsafe { ptr.read_volatile() }
    }

    #[inline]
    fn write(&self, page: u64, word: u64, value: u64) {
        let ptr = self.word_ptr(page, word);
        // SAFETY: as in `read`; the region is writable and nothing else accesses it.
        unsafe { ptr.write_volatile(value) }
    }

    /// Writes every word of every page with its generation-0 pattern and resets the shadow.
    pub fn fill(&mut self) {
        for page in 0..self.pages {
            for word in 0..WORDS_PER_PAGE as u64 {
                self.write(page, word, expected_word(self.seed, page, word, 0));
            }
        }
        self.shadow.iter_mut().for_each(|s| *s.get_mut() = 0);
    }

    fn shadow(&self, page: u64) -> u64 {
        self.shadow[page as usize].load(Ordering::Relaxed)
    }

    /// Runs `workload` over the whole region until either limit is reached.
    pub fn run(&self, workload: Workload, limits: RunLength) -> Result<(RunResult, Histogram<u64>), BenchError> {
        self.run_part(workload, limits, Part::WHOLE)
    }

    /// Runs `workload` from `threads` threads at once, each over its own part of the pages
    /// and stopping at its share of `max_ops`; one result for all (operations and checks
    /// summed, latencies merged, the longest thread's time).
    pub fn run_threads(
        &self,
        workload: Workload,
        limits: RunLength,
        threads: usize,
    ) -> Result<(RunResult, Histogram<u64>), BenchError> {
        let of = threads.clamp(1, self.pages as usize) as u64;
        if of == 1 {
            return self.run(workload, limits);
        }
        let share = RunLength { max_ops: limits.max_ops.map(|n| n.div_ceil(of)), ..limits };
        let results: Vec<_> = std::thread::scope(|scope| {
            let runs: Vec<_> = (0..of)
                .map(|index| {
                    let part = Part { index, of };
                    let spawned = std::thread::Builder::new()
                        .name(format!("bench-{index}"))
                        .spawn_scoped(scope, move || self.run_part(workload, share, part));
                    spawned.map_err(|e| BenchError::io("start a workload thread", e))
                })
                .collect();
            runs.into_iter()
                .map(|r| {
                    r.and_then(|h| {
                        h.join().unwrap_or_else(|_| Err(BenchError::Invalid("a workload thread panicked".into())))
                    })
                })
                .collect()
        });
        let mut merged: Option<(RunResult, Histogram<u64>)> = None;
        for r in results {
            let (r, h) = r?;
            merged = Some(match merged {
                None => (r, h),
                Some((mut m, mut mh)) => {
                    m.ops += r.ops;
                    m.mismatches += r.mismatches;
                    m.verified_ops += r.verified_ops;
                    m.elapsed_ns = m.elapsed_ns.max(r.elapsed_ns);
                    mh.add(&h).map_err(|e| BenchError::Invalid(format!("histogram: {e}")))?;
                    (m, mh)
                }
            });
        }
        let (mut m, hist) = merged.ok_or_else(|| BenchError::Invalid("no workload thread ran".into()))?;
        let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        m.ops_per_s = m.ops as f64 * 1e9 / m.elapsed_ns as f64;
        (m.p50_us, m.p99_us, m.p999_us, m.max_us) = (us(0.5), us(0.99), us(0.999), hist.max() as f64 / 1000.0);
        Ok((m, hist))
    }

    /// Runs `workload` over the pages of `part` until either limit is reached.
    /// Per-operation latency is measured with one `Instant::now()` per operation (about
    /// 20 ns of overhead, included).
    pub fn run_part(
        &self,
        workload: Workload,
        limits: RunLength,
        part: Part,
    ) -> Result<(RunResult, Histogram<u64>), BenchError> {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
            .map_err(|e| BenchError::Invalid(format!("histogram: {e}")))?;
        let mut rng = Rng::new(self.seed ^ 0x5EED_0F0F ^ part.index.wrapping_mul(0x9E37_79B9));
        let part_pages = part.len(self.pages);
        let max_ops = limits.max_ops.unwrap_or(u64::MAX);
        let deadline = Duration::from_millis(limits.duration_ms);
        let (mut ops, mut mismatches, mut verified) = (0u64, 0u64, 0u64);
        let mut seq_page = 0u64;
        let start = Instant::now();
        let mut prev = start;
        while ops < max_ops {
            let page = part.page(match workload {
                Workload::SeqRead => {
                    let k = seq_page;
                    seq_page = if k + 1 == part_pages { 0 } else { k + 1 };
                    k
                }
                Workload::RandRead | Workload::RandRw | Workload::Thrash => rng.below(part_pages),
            });
            let word = rng.below(WORDS_PER_PAGE as u64);
            let write = match workload {
                Workload::RandRw => rng.next_u64() & 1 == 1,
                Workload::Thrash => {
                    let read_word = rng.below(WORDS_PER_PAGE as u64);
                    verified += 1;
                    if !check_word(self.seed, page, read_word, self.read(page, read_word), self.shadow(page)) {
                        mismatches += 1;
                    }
                    true
                }
                Workload::RandRead | Workload::SeqRead => false,
            };
            if write {
                let writes = (self.shadow(page) >> SHADOW_WORD_BITS) + 1;
                self.shadow[page as usize].store(writes << SHADOW_WORD_BITS | word, Ordering::Relaxed);
                self.write(page, word, expected_word(self.seed, page, word, writes));
            } else {
                let value = self.read(page, word);
                verified += 1;
                if !check_word(self.seed, page, word, value, self.shadow(page)) {
                    mismatches += 1;
                }
            }
            ops += 1;
            let now = Instant::now();
            let op_ns = now.duration_since(prev).as_nanos() as u64;
            hist.saturating_record(op_ns.max(1));
            prev = now;
            if now.duration_since(start) >= deadline {
                break;
            }
        }
        let elapsed_ns = prev.duration_since(start).as_nanos().max(1) as u64;
        let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        let result = RunResult {
            workload,
            ops,
            elapsed_ns,
            ops_per_s: ops as f64 * 1e9 / elapsed_ns as f64,
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: hist.max() as f64 / 1000.0,
            mismatches,
            verified_ops: verified,
            fill_ms: 0,
            final_check_ms: 0,
            major_faults: 0,
            vm_swap_bytes: 0,
            region_bytes: self.pages * PAGE_SIZE_BYTES as u64,
            faults: 0,
            fault_p50_us: None,
            fault_p99_us: None,
            writebacks: None,
            cpu: None,
        };
        Ok((result, hist))
    }

    /// Reads and checks every word of every page; returns `(verified, mismatches)`.
    ///
    /// Besides each word's own check, a page that was written must still hold its latest
    /// write (the shadow's last word at the shadow's generation).
    pub fn final_check(&self) -> (u64, u64) {
        let (mut verified, mut mismatches) = (0u64, 0u64);
        for page in 0..self.pages {
            let shadow = self.shadow(page);
            for word in 0..WORDS_PER_PAGE as u64 {
                verified += 1;
                if !check_word(self.seed, page, word, self.read(page, word), shadow) {
                    mismatches += 1;
                }
            }
        }
        (verified, mismatches)
    }
}

/// Fill, timed run and final check in one call: what a worker process does. The CPU of
/// the timed phase is measured on this thread, the pager's threads and `server_pids`.
pub fn run_workload(
    region: &dyn Region,
    workload: Workload,
    seed: u64,
    limits: RunLength,
    final_check: bool,
    server_pids: &[u32],
    threads: usize,
) -> Result<RunResult, BenchError> {
    let mut runner = Runner::new(region, seed)?;
    let fill_start = Instant::now();
    runner.fill();
    let fill_ms = fill_start.elapsed().as_millis() as u64;
    let faults_before = crate::sys::major_faults();
    let served = || region.faults_served().unwrap_or_else(crate::sys::major_faults);
    let served_before = served();
    let written_before = region.writebacks();
    let cpu = crate::cpu::CpuProbe::start(server_pids);
    let (mut result, hist) = runner.run_threads(workload, limits, threads)?;
    result.cpu = Some(cpu.finish());
    result.major_faults = crate::sys::major_faults().saturating_sub(faults_before);
    result.faults = served().saturating_sub(served_before);
    result.writebacks = region.writebacks().zip(written_before).map(|(a, b)| a.saturating_sub(b));
    (result.fault_p50_us, result.fault_p99_us) = fault_quantiles(&hist, result.ops, result.faults);
    result.vm_swap_bytes = crate::sys::vm_swap_bytes().unwrap_or(0);
    result.fill_ms = fill_ms;
    if final_check {
        let check_start = Instant::now();
        let (verified, mismatches) = runner.final_check();
        result.final_check_ms = check_start.elapsed().as_millis() as u64;
        result.verified_ops += verified;
        result.mismatches += mismatches;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_accepts_fill_and_latest_write() {
        let seed = 7;
        assert!(check_word(seed, 3, 5, expected_word(seed, 3, 5, 0), 0));
        let shadow = 4 << SHADOW_WORD_BITS | 9;
        assert!(check_word(seed, 3, 9, expected_word(seed, 3, 9, 4), shadow));
        assert!(!check_word(seed, 3, 9, expected_word(seed, 3, 9, 3), shadow), "stale");
        assert!(check_word(seed, 3, 8, expected_word(seed, 3, 8, 2), shadow));
        assert!(!check_word(seed, 3, 8, expected_word(seed, 3, 8, 5), shadow), "future");
        assert!(!check_word(seed, 3, 5, 0, 0), "zero page");
        assert!(!check_word(seed, 4, 5, expected_word(seed, 3, 5, 0), 0), "wrong page");
        assert!(!check_word(seed, 3, 6, expected_word(seed, 3, 5, 0), 0), "wrong word");
    }

    #[test]
    fn workload_names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(w.name().parse::<Workload>().unwrap(), w);
            assert_eq!(serde_json::to_string(&w).unwrap(), format!("\"{}\"", w.name()));
        }
    }
}
