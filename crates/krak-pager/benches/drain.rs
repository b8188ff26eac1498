//! Drain benchmark (issue 3, "Must reach"): how fast `FarMemory::drain_server` moves a
//! region's chunks off a memory server on loopback, and how much of its undisturbed
//! throughput a verified random read/write workload keeps meanwhile.
//!
//! Per configuration (slab size x fault mode): 4 in-process memory servers, a region on the
//! first 3 with a local budget of 25%, filled page by page; one workload thread does random
//! checked reads and whole-page rewrites against a shadow; its ops/s is measured for ~2 s
//! undisturbed, then while server 0 is drained to the other 3. At the end every word of
//! every page is checked; then server 1 is drained with no workload (the idle rate, the
//! ceiling) and every page is checked again. Any wrong page, or a drained server that still
//! lends anything, exits non-zero.
//!
//! `cargo bench -p krak-pager --bench drain`; `KRAK_DRAIN_REGION_MIB` (default 512) sets the
//! region size, `KRAK_DRAIN_SLABS_MIB` (default `16,64`) the slab sizes to try.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use krak_memserver::{spawn, ServerConfig, ServerHandle};
use krak_pager::{FarMemory, FaultMode, PagerConfig, PAGE_SIZE};
use rand::{Rng, SeedableRng};

const WORDS: usize = PAGE_SIZE / 8;
const UNDISTURBED: Duration = Duration::from_secs(2);
const WARMUP: Duration = Duration::from_millis(500);
/// Width of the windows whose slowest one is reported next to the drain's average.
const WINDOW: Duration = Duration::from_millis(100);

/// Word `w` of a page whose version is `v`: every word differs, so a page swapped, torn or
/// shifted reads wrong.
fn word(v: u64, w: usize) -> u64 {
    let mut z = v ^ (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A region shared with the workload thread.
struct Region(Arc<FarMemory>);

impl Region {
    fn page_ptr(&self, page: usize) -> *mut u64 {
        assert!((page + 1) * PAGE_SIZE <= self.0.len());
        // SAFETY: in bounds (asserted); page-aligned since the region is.
        unsafe { self.0.as_ptr().add(page * PAGE_SIZE) as *mut u64 }
    }

    fn write_page(&self, page: usize, v: u64) {
        let mut buf = [0u64; WORDS];
        for (w, x) in buf.iter_mut().enumerate() {
            *x = word(v, w);
        }
        // SAFETY: one whole page of the region; the pager serves it if it is absent.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), self.page_ptr(page), WORDS) }
    }

    fn read_word(&self, page: usize, w: usize) -> u64 {
        // SAFETY: w < WORDS, so in bounds of the page; aligned.
        unsafe { self.page_ptr(page).add(w).read_volatile() }
    }

    fn page_ok(&self, page: usize, v: u64) -> bool {
        (0..WORDS).all(|w| self.read_word(page, w) == word(v, w))
    }
}

struct Row {
    slab_mib: u64,
    mode: FaultMode,
    region_mib: u64,
    chunks_moved: u64,
    moved_mib: f64,
    elapsed_ms: u64,
    drain_mib_s: f64,
    undisturbed: f64,
    during: f64,
    worst_window: f64,
    max_fault_undisturbed_us: f64,
    p99_fault_undisturbed_us: f64,
    max_fault_us: f64,
    p99_fault_us: f64,
    pages_checked: usize,
    idle_drain_mib_s: f64,
    cores_undisturbed: f64,
    cores_drain: f64,
    host_busy_undisturbed: f64,
    host_busy_drain: f64,
    wb_pages_s_undisturbed: f64,
    wb_pages_s_drain: f64,
    wb_pages_per_step: f64,
}

/// CPU time this process (every thread: workload, pager, memory servers) has used.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// (busy, total) jiffies of the whole host, from /proc/stat.
fn host_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Cores this process kept busy, and the host's busy share, over a span.
struct CpuSpan {
    start: (Instant, Duration, (u64, u64)),
}

impl CpuSpan {
    fn start() -> CpuSpan {
        CpuSpan { start: (Instant::now(), process_cpu(), host_jiffies()) }
    }

    fn end(&self) -> (f64, f64) {
        let (t, cpu, (busy, total)) = self.start;
        let cores = (process_cpu() - cpu).as_secs_f64() / t.elapsed().as_secs_f64();
        let (b, tot) = host_jiffies();
        (cores, (b - busy) as f64 / (tot - total).max(1) as f64)
    }
}

fn servers(slab_bytes: u64) -> Vec<ServerHandle> {
    (0..4)
        .map(|_| {
            let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), 1 << 30);
            cfg.slab_size_bytes = slab_bytes;
            spawn(cfg).expect("memory server starts")
        })
        .collect()
}

fn fail(what: String) -> ! {
    eprintln!("FAILED: {what}");
    std::process::exit(1);
}

fn run(slab_mib: u64, mode: FaultMode, region_mib: u64) -> Row {
    let servers = servers(slab_mib << 20);
    let region_bytes = region_mib << 20;
    let first_three: Vec<SocketAddr> = servers[..3].iter().map(|s| s.addr()).collect();
    let region = Arc::new(
        FarMemory::new(PagerConfig {
            region_bytes,
            local_budget_bytes: region_bytes / 4,
            servers: first_three,
            fault_mode: mode,
            ..Default::default()
        })
        .unwrap_or_else(|e| fail(format!("region: {e}"))),
    );
    let pages = region_bytes as usize / PAGE_SIZE;

    let t = Instant::now();
    let mut shadow: Vec<u64> = (0..pages as u64).map(|p| p << 20 | 1).collect();
    {
        let r = Region(region.clone());
        for (p, v) in shadow.iter().enumerate() {
            r.write_page(p, *v);
        }
    }
    eprintln!("  filled {region_mib} MiB in {:.1} s", t.elapsed().as_secs_f64());

    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let worker = {
        let (r, stop, ops) = (Region(region.clone()), stop.clone(), ops.clone());
        std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b72616b);
            let mut bad = 0u64;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let p = rng.gen_range(0..shadow.len());
                if rng.gen_bool(0.5) {
                    shadow[p] = rng.gen::<u64>() | 1;
                    r.write_page(p, shadow[p]);
                } else {
                    let w = rng.gen_range(0..WORDS);
                    if r.read_word(p, w) != word(shadow[p], w) {
                        bad += 1;
                    }
                }
                n += 1;
                if n.is_multiple_of(64) {
                    ops.fetch_add(64, Ordering::Relaxed);
                }
            }
            (shadow, bad)
        })
    };

    std::thread::sleep(WARMUP);
    region.reset_fault_latency();
    let before = ops.load(Ordering::Relaxed);
    let t = Instant::now();
    let cpu = CpuSpan::start();
    let wb_before = region.stats().remote_writes;
    std::thread::sleep(UNDISTURBED);
    let wb_pages_s_undisturbed = (region.stats().remote_writes - wb_before) as f64 / t.elapsed().as_secs_f64();
    let (cores_undisturbed, host_busy_undisturbed) = cpu.end();
    let undisturbed = (ops.load(Ordering::Relaxed) - before) as f64 / t.elapsed().as_secs_f64();
    let (max_fault_undisturbed_us, p99_fault_undisturbed_us) = {
        let s = region.stats();
        (s.fault_max_us, s.fault_p99_us)
    };

    // Drain server 0 while a sampler records the workload's ops in WINDOW-wide windows.
    let drained = servers[0].addr();
    let targets: Vec<SocketAddr> = servers[1..].iter().map(|s| s.addr()).collect();
    region.reset_fault_latency();
    let sampling = Arc::new(AtomicBool::new(true));
    let windows = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (ops, sampling, windows) = (ops.clone(), sampling.clone(), windows.clone());
        std::thread::spawn(move || {
            let start = (Instant::now(), ops.load(Ordering::Relaxed));
            let mut last = start;
            while sampling.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(2));
                if last.0.elapsed() >= WINDOW {
                    let now = (Instant::now(), ops.load(Ordering::Relaxed));
                    windows.lock().unwrap().push((now.1 - last.1) as f64 / (now.0 - last.0).as_secs_f64());
                    last = now;
                }
            }
            (ops.load(Ordering::Relaxed) - start.1) as f64 / start.0.elapsed().as_secs_f64()
        })
    };
    let cpu = CpuSpan::start();
    let before = region.stats();
    let report = region.drain_server(drained, &targets).unwrap_or_else(|e| fail(format!("drain: {e}")));
    let (cores_drain, host_busy_drain) = cpu.end();
    sampling.store(false, Ordering::Relaxed);
    let during = sampler.join().unwrap();
    let stats = region.stats();
    let wb_drain = (stats.remote_writes - before.remote_writes) as f64;
    // MiB copied (256 pages each), so the last column reads write-back pages per MiB moved.
    let steps = ((stats.moved_pages - before.moved_pages) as f64 / 256.0).max(1.0);
    stop.store(true, Ordering::Relaxed);
    let (shadow, bad) = worker.join().unwrap();
    let worst_window = windows.lock().unwrap().iter().copied().fold(during, f64::min);

    if bad != 0 {
        fail(format!("{bad} checked reads returned a wrong word during the workload"));
    }
    let r = Region(region.clone());
    let wrong: Vec<usize> = (0..pages).filter(|p| !r.page_ok(*p, shadow[*p])).collect();
    if !wrong.is_empty() {
        fail(format!("{} of {pages} pages read back wrong (first: {:?})", wrong.len(), &wrong[..wrong.len().min(8)]));
    }
    if region.chunk_servers().contains(&drained) {
        fail("a chunk still lives on the drained server".into());
    }
    if servers[0].stats().lent_bytes != 0 {
        fail(format!("the drained server still lends {} bytes", servers[0].stats().lent_bytes));
    }
    if stats.failed_faults != 0 {
        fail(format!("{} faults failed", stats.failed_faults));
    }
    if report.chunks_moved == 0 {
        fail(format!("the drain moved nothing: {report:?}"));
    }

    // The same drain with no workload: server 1 to the others (server 0 takes chunks again).
    // Its rate is the ceiling the loaded drain is measured against.
    let idle_targets: Vec<SocketAddr> = [0, 2, 3].iter().map(|i| servers[*i].addr()).collect();
    let idle =
        region.drain_server(servers[1].addr(), &idle_targets).unwrap_or_else(|e| fail(format!("idle drain: {e}")));
    let wrong = (0..pages).filter(|p| !r.page_ok(*p, shadow[*p])).count();
    if wrong != 0 || servers[1].stats().lent_bytes != 0 {
        fail(format!(
            "after the idle drain: {wrong} pages wrong, server 1 lends {} bytes",
            servers[1].stats().lent_bytes
        ));
    }
    let mib_s = |rep: &krak_pager::DrainReport| {
        rep.bytes_copied as f64 / (1 << 20) as f64 / (rep.elapsed_ms.max(1) as f64 / 1000.0)
    };

    let moved_mib = report.bytes_copied as f64 / (1 << 20) as f64;
    Row {
        slab_mib,
        mode,
        region_mib,
        chunks_moved: report.chunks_moved,
        moved_mib,
        elapsed_ms: report.elapsed_ms,
        drain_mib_s: mib_s(&report),
        undisturbed,
        during,
        worst_window,
        max_fault_undisturbed_us,
        p99_fault_undisturbed_us,
        max_fault_us: stats.fault_max_us,
        p99_fault_us: stats.fault_p99_us,
        pages_checked: pages,
        idle_drain_mib_s: mib_s(&idle),
        cores_undisturbed,
        cores_drain,
        host_busy_undisturbed,
        host_busy_drain,
        wb_pages_s_undisturbed,
        wb_pages_s_drain: wb_drain / (report.elapsed_ms.max(1) as f64 / 1000.0),
        wb_pages_per_step: wb_drain / steps,
    }
}

fn main() {
    let region_mib: u64 = std::env::var("KRAK_DRAIN_REGION_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(512);
    let slabs: Vec<u64> = std::env::var("KRAK_DRAIN_SLABS_MIB")
        .unwrap_or_else(|_| "16,64".into())
        .split(',')
        .map(|s| s.trim().parse().expect("KRAK_DRAIN_SLABS_MIB: comma-separated MiB"))
        .collect();
    let mut rows = Vec::new();
    for &slab_mib in &slabs {
        for mode in [FaultMode::Sigbus, FaultMode::Threads] {
            eprintln!("slab {slab_mib} MiB, {mode:?}, region {region_mib} MiB");
            rows.push(run(slab_mib, mode, region_mib));
        }
    }
    println!();
    println!(
        "| slab | fault mode | region | chunks moved | MiB moved | drain ms | drain MiB/s | undisturbed ops/s | during drain ops/s | ratio | worst {} ms window | max fault us undisturbed / drain | p99 fault us undisturbed / drain | pages verified | idle drain MiB/s | cores used undisturbed / drain | host busy undisturbed / drain | write-back pages/s undisturbed / drain | write-back pages per MiB copied |",
        WINDOW.as_millis()
    );
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} MiB | {:?} | {} MiB | {} | {:.0} | {} | {:.0} | {:.1}k | {:.1}k | {:.2} | {:.2} | {:.0} / {:.0} | {:.0} / {:.0} | {} | {:.0} | {:.2} / {:.2} | {:.0}% / {:.0}% | {:.1}k / {:.1}k | {:.0} |",
            r.slab_mib,
            r.mode,
            r.region_mib,
            r.chunks_moved,
            r.moved_mib,
            r.elapsed_ms,
            r.drain_mib_s,
            r.undisturbed / 1000.0,
            r.during / 1000.0,
            r.during / r.undisturbed,
            r.worst_window / r.undisturbed,
            r.max_fault_undisturbed_us,
            r.max_fault_us,
            r.p99_fault_undisturbed_us,
            r.p99_fault_us,
            r.pages_checked,
            r.idle_drain_mib_s,
            r.cores_undisturbed,
            r.cores_drain,
            r.host_busy_undisturbed * 100.0,
            r.host_busy_drain * 100.0,
            r.wb_pages_s_undisturbed / 1000.0,
            r.wb_pages_s_drain / 1000.0,
            r.wb_pages_per_step,
        );
    }
    let met = rows.iter().filter(|r| r.drain_mib_s >= 500.0 && r.during / r.undisturbed >= 0.5).count();
    println!();
    println!("goal (>= 500 MiB/s with the workload at >= 50%): met by {met} of {} configurations", rows.len());
}
