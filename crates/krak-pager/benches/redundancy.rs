//! Redundancy benchmark (issue 4, "Must reach"): remote fault latency of `none`,
//! `replicate:2` and `ec:4+2` side by side in one run, while healthy and while degraded
//! (one server killed), and the time to re-protect a region after one crash.
//!
//! Per scheme: 7 in-process memory servers on loopback (one per fragment of `ec:4+2` plus
//! a spare; `none` and `replicate:2` spread over the same 7), a region with a 25% local
//! budget in self-serving (SIGBUS) fault mode, every page written, then one thread does
//! random checked reads for a few seconds (fault p50/p99 healthy); a server is shut down
//! (connections closed, slabs gone), the reads go on (fault p50/p99 degraded, which
//! includes re-protection running beside them), and every page is checked at the end.
//! Then, with no workload, a region of `KRAK_REPROTECT_MIB` (default 1024) under `ec:4+2`
//! loses one server and the time until every stripe is whole again is measured, and every
//! page is checked. Any wrong page or failed fault exits non-zero.
//!
//! `cargo bench -p krak-pager --bench redundancy`; `KRAK_REDUNDANCY_REGION_MIB` (default
//! 256) sets the latency runs' region, `KRAK_REDUNDANCY_SECONDS` (default 4) each phase.

use std::sync::Arc;
use std::time::{Duration, Instant};

use krak_memserver::{spawn, ServerConfig, ServerHandle};
use krak_pager::{FarMemory, FaultMode, PagerConfig, Redundancy, PAGE_SIZE};

const SERVERS: usize = 7;
const SLAB_BYTES: u64 = 16 << 20;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn fail(what: String) -> ! {
    eprintln!("FAILED: {what}");
    std::process::exit(1);
}

fn servers() -> Vec<Option<ServerHandle>> {
    (0..SERVERS)
        .map(|_| {
            let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), 4 << 30);
            cfg.slab_size_bytes = SLAB_BYTES;
            Some(spawn(cfg).expect("memory server starts"))
        })
        .collect()
}

fn region(servers: &[Option<ServerHandle>], scheme: Redundancy, region_bytes: u64) -> Arc<FarMemory> {
    Arc::new(
        FarMemory::new(PagerConfig {
            region_bytes,
            local_budget_bytes: region_bytes / 4,
            servers: servers.iter().flatten().map(|s| s.addr()).collect(),
            fault_mode: FaultMode::Sigbus,
            redundancy: scheme,
            ..Default::default()
        })
        .unwrap_or_else(|e| fail(format!("region: {e}"))),
    )
}

/// The first word of each page tells the page and its version; the rest follow from it.
fn word(page: usize, w: usize) -> u64 {
    ((page as u64) << 20 ^ w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn fill(region: &FarMemory) {
    let mut buf = vec![0u64; PAGE_SIZE / 8];
    for page in 0..region.len() / PAGE_SIZE {
        for (w, x) in buf.iter_mut().enumerate() {
            *x = word(page, w);
        }
        // SAFETY: one whole page inside the region; the pager serves it if it is absent.
        unsafe {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), region.as_ptr().add(page * PAGE_SIZE) as *mut u64, buf.len())
        }
    }
}

fn page_ok(region: &FarMemory, page: usize) -> bool {
    let mut buf = vec![0u64; PAGE_SIZE / 8];
    // SAFETY: one whole page inside the region; the pager serves it if it is absent.
    unsafe {
        std::ptr::copy_nonoverlapping(region.as_ptr().add(page * PAGE_SIZE) as *const u64, buf.as_mut_ptr(), buf.len())
    }
    buf.iter().enumerate().all(|(w, x)| *x == word(page, w))
}

fn verify_all(region: &FarMemory, what: &str) {
    let bad = (0..region.len() / PAGE_SIZE).filter(|p| !page_ok(region, *p)).count();
    if bad > 0 {
        fail(format!("{what}: {bad} pages read back wrong"));
    }
}

/// Random checked page reads for `d`; returns (reads, fault p50 us, fault p99 us).
fn random_reads(region: &FarMemory, d: Duration, seed: u64) -> (u64, f64, f64) {
    region.reset_fault_latency();
    let pages = region.len() / PAGE_SIZE;
    let mut x = seed | 1;
    let (until, mut n) = (Instant::now() + d, 0u64);
    while Instant::now() < until {
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let page = (x >> 11) as usize % pages;
            if !page_ok(region, page) {
                fail(format!("page {page} read back wrong"));
            }
            n += 1;
        }
    }
    let s = region.stats();
    (n, s.fault_p50_us, s.fault_p99_us)
}

fn wait_written_back(region: &FarMemory, pages: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while region.stats().remote_writes < pages && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Row {
    scheme: Redundancy,
    lent_bytes: u64,
    healthy: (u64, f64, f64),
    degraded: Option<(u64, f64, f64)>,
    reprotect_ms: u64,
}

fn latency_run(scheme: Redundancy, region_bytes: u64, phase: Duration) -> Row {
    let mut servers = servers();
    let region = region(&servers, scheme, region_bytes);
    fill(&region);
    let pages = (region.len() / PAGE_SIZE) as u64;
    wait_written_back(&region, pages * 3 / 4);
    let lent_bytes = servers.iter().flatten().map(|s| s.stats().lent_bytes).sum();
    let healthy = random_reads(&region, phase, 7);
    let degraded = (!scheme.is_none()).then(|| {
        servers[0].take().expect("server").shutdown().expect("server stops");
        random_reads(&region, phase, 11)
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while !scheme.is_none() && region.stats().reprotect_ms == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    verify_all(&region, &scheme.to_string());
    let stats = region.stats();
    if stats.failed_faults > 0 {
        fail(format!("{scheme}: {} faults failed", stats.failed_faults));
    }
    Row { scheme, lent_bytes, healthy, degraded, reprotect_ms: stats.reprotect_ms }
}

/// Time to re-protect an idle region of `region_bytes` under ec:4+2 after one crash.
fn reprotect_run(region_bytes: u64) -> (u64, u64, f64) {
    let mut servers = servers();
    let region = region(&servers, Redundancy::Ec { k: 4, m: 2 }, region_bytes);
    fill(&region);
    let pages = (region.len() / PAGE_SIZE) as u64;
    wait_written_back(&region, pages * 3 / 4);
    let before = region.stats().reprotected_pages;
    servers[3].take().expect("server").shutdown().expect("server stops");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    while region.stats().reprotect_ms == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let wall = started.elapsed().as_secs_f64();
    let stats = region.stats();
    if stats.reprotect_ms == 0 {
        fail("re-protection did not finish in 600 s".into());
    }
    verify_all(&region, "after re-protection");
    (stats.reprotect_ms, stats.reprotected_pages - before, wall)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benches; nothing to list here
    }
    let region_bytes = env_u64("KRAK_REDUNDANCY_REGION_MIB", 256) << 20;
    let phase = Duration::from_secs(env_u64("KRAK_REDUNDANCY_SECONDS", 4));
    let reprotect_bytes = env_u64("KRAK_REPROTECT_MIB", 1024) << 20;
    eprintln!(
        "redundancy bench: {} MiB regions, 25% local, {} s per phase, {SERVERS} servers on loopback, sigbus faults",
        region_bytes >> 20,
        phase.as_secs()
    );
    let schemes = [Redundancy::None, Redundancy::Replicate { n: 2 }, Redundancy::Ec { k: 4, m: 2 }];
    let rows: Vec<Row> = schemes.iter().map(|s| latency_run(*s, region_bytes, phase)).collect();
    let none_p50 = rows[0].healthy.1;
    println!("| scheme | remote bytes / region | fault p50 us | p99 us | p50 vs none | degraded p50 us | degraded p99 us | re-protect ms |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        let (deg50, deg99) =
            r.degraded.map_or(("-".into(), "-".into()), |d| (format!("{:.1}", d.1), format!("{:.1}", d.2)));
        println!(
            "| {} | {:.2}x | {:.1} | {:.1} | {:.2}x | {deg50} | {deg99} | {} |",
            r.scheme,
            r.lent_bytes as f64 / region_bytes as f64,
            r.healthy.1,
            r.healthy.2,
            r.healthy.1 / none_p50.max(1e-9),
            if r.scheme.is_none() { "-".to_string() } else { r.reprotect_ms.to_string() }
        );
    }
    let (ms, pages, wall) = reprotect_run(reprotect_bytes);
    println!(
        "re-protect {} MiB under ec:4+2 after one crash (idle): {ms} ms from the loss to full redundancy \
         ({pages} pages rebuilt, {:.1} s wall from the kill); every page verified",
        reprotect_bytes >> 20,
        wall
    );
}
