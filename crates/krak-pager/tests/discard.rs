//! Discarded pages: the region forgets them (the next touch reads zeros) and tells the
//! memory servers to forget them too (`DiscardPages`), without or with redundancy, also
//! while a drain moves the chunks. A page rewritten after its discard must keep the new
//! contents: the servers' discard never drops a later write. Every page is checked.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::oracle::*;
use common::*;
use krak_memserver::ServerHandle;
use krak_pager::{FarMemory, PagerConfig, Redundancy, PAGE_SIZE};

const REGION_BYTES: u64 = 16 << 20;
const BUDGET_BYTES: u64 = 2 << 20;

fn region_on(servers: &[ServerHandle], scheme: &str) -> Arc<FarMemory> {
    Arc::new(
        FarMemory::new(PagerConfig {
            region_bytes: REGION_BYTES,
            local_budget_bytes: BUDGET_BYTES,
            servers: addrs(servers),
            redundancy: scheme.parse::<Redundancy>().unwrap(),
            ..Default::default()
        })
        .expect("region"),
    )
}

fn is_zero(region: &FarMemory, page: usize) -> bool {
    (0..PAGE_SIZE / 8).all(|w| read_u64(region, page * PAGE_SIZE + w * 8) == 0)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn server_discards(servers: &[ServerHandle]) -> u64 {
    servers.iter().map(|s| s.stats().units_discarded).sum()
}

/// Fills the region, discards its middle half, checks zeros there and the rest intact, and
/// that the servers discarded one unit per remote copy (`width` per page); then rewrites
/// the discarded half and checks it again after it was evicted.
fn discard_and_rewrite(scheme: &str, servers_n: usize) {
    let servers = servers(servers_n, 64 << 20);
    let region = region_on(&servers, scheme);
    let width = region.redundancy().width() as u64;
    let pages = region.len() / PAGE_SIZE;
    for p in 0..pages {
        fill_page(&region, p, 1);
    }
    let budget_pages = (BUDGET_BYTES as usize / PAGE_SIZE) as u64;
    wait_for("write-back", || region.stats().remote_writes >= pages as u64 - budget_pages);
    let (first, end) = (pages / 4, pages * 3 / 4);
    region.discard(first * PAGE_SIZE, (end - first) * PAGE_SIZE).expect("discard");
    wait_for("the servers' discards", || region.stats().remote_discards > 0);
    let told = region.stats().remote_discards;
    assert_eq!(server_discards(&servers), told, "every unit the pager sent was discarded");
    // Pages of the range still resident at the discard had no remote copy to forget only if
    // never written back: with a budget of an eighth, most of them were.
    let remote_pages = told / width;
    assert_eq!(told % width, 0, "{scheme}: whole stripes discarded");
    assert!(remote_pages >= (end - first) as u64 - budget_pages, "{scheme}: {remote_pages} pages discarded remotely");
    for p in 0..pages {
        let ok = if (first..end).contains(&p) { is_zero(&region, p) } else { page_is(&region, p, 1) };
        assert!(ok, "{scheme}: page {p} wrong after the discard");
    }
    for p in first..end {
        fill_page(&region, p, 2);
    }
    // Touch the rest so the rewritten pages are evicted and read back from the servers.
    for pass in 0..2 {
        for p in 0..pages {
            let want = if (first..end).contains(&p) { 2 } else { 1 };
            assert!(page_is(&region, p, want), "{scheme}: page {p} wrong after the rewrite, pass {pass}");
        }
    }
    assert_eq!(region.stats().failed_faults, 0);
    drop(region);
    assert!(servers.iter().all(|s| s.stats().lent_bytes == 0));
}

#[test]
fn discarded_pages_are_forgotten_by_the_servers_and_rewritten_pages_survive() {
    discard_and_rewrite("none", 3);
}

#[test]
fn discarded_pages_of_an_ec_region_are_forgotten_in_every_fragment() {
    discard_and_rewrite("ec:4+2", 6);
}

/// Threads discard and rewrite ranges of their own pages while a server is drained under
/// them; every page is checked against what its thread last did (zeros after a discard).
#[test]
fn discards_and_rewrites_during_a_drain_lose_nothing() {
    const THREADS: usize = 2;
    const RUN: usize = 16;
    let servers = servers(4, 64 << 20);
    let region = region_on(&servers[..3], "none");
    let pages = region.len() / PAGE_SIZE;
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (region, stop, ops) = (region.clone(), stop.clone(), ops.clone());
            std::thread::spawn(move || {
                // Thread t owns runs r with r % THREADS == t; version 0 means discarded.
                let runs: Vec<usize> = (0..pages / RUN).filter(|r| r % THREADS == t).collect();
                let mut version = vec![1u64; runs.len()];
                for r in &runs {
                    for p in r * RUN..(r + 1) * RUN {
                        fill_page(&region, p, 1);
                    }
                }
                let mut rng = 0x9e37_79b9u64 ^ (t as u64) << 33;
                let mut wrong = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let k = (rng >> 11) as usize % runs.len();
                    let (r, v) = (runs[k], version[k]);
                    let ok =
                        (r * RUN..(r + 1) * RUN)
                            .all(|p| if v == 0 { is_zero(&region, p) } else { page_is(&region, p, v) });
                    wrong += u64::from(!ok);
                    if rng.is_multiple_of(3) {
                        region.discard(r * RUN * PAGE_SIZE, RUN * PAGE_SIZE).expect("discard");
                        version[k] = 0;
                    } else {
                        let next = (rng >> 40) % 1000 + 2;
                        for p in r * RUN..(r + 1) * RUN {
                            fill_page(&region, p, next);
                        }
                        version[k] = next;
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                for (k, r) in runs.iter().enumerate() {
                    let v = version[k];
                    let ok =
                        (r * RUN..(r + 1) * RUN)
                            .all(|p| if v == 0 { is_zero(&region, p) } else { page_is(&region, p, v) });
                    wrong += u64::from(!ok);
                }
                wrong
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    let targets: Vec<_> = servers[1..].iter().map(|s| s.addr()).collect();
    let report = region.drain_server(servers[0].addr(), &targets).expect("drain");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let wrong: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let stats = region.stats();
    eprintln!("{report:?}, {} ops; {stats:?}", ops.load(Ordering::Relaxed));
    assert_eq!(wrong, 0, "a run read back wrong (zeros expected after its discard, else its last version)");
    assert!(report.chunks_moved > 0);
    assert!(stats.remote_discards > 0, "discards reached the servers");
    assert_eq!(servers[0].stats().lent_bytes, 0);
    assert_eq!(stats.failed_faults, 0);
}

/// A run discarded and at once rewritten and evicted, while another thread keeps the
/// write-back queue busy: the servers' discard must reach them before the rewrite does.
#[test]
fn a_page_rewritten_right_after_its_discard_keeps_the_rewrite() {
    const RUN: usize = 32;
    let servers = servers(2, 64 << 20);
    let region = region_on(&servers, "none");
    let pages = region.len() / PAGE_SIZE;
    let half = pages / 2;
    for p in 0..pages {
        fill_page(&region, p, 1);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (region, stop) = (region.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut v = 2;
            while !stop.load(Ordering::Relaxed) {
                for p in (half..pages).step_by(7) {
                    fill_page(&region, p, v);
                }
                v += 1;
            }
        })
    };
    let budget_pages = BUDGET_BYTES as usize / PAGE_SIZE;
    let mut wrong = Vec::new();
    for round in 0..100u64 {
        let r = (round as usize * 5) % (half / RUN);
        let run = r * RUN..(r + 1) * RUN;
        region.discard(run.start * PAGE_SIZE, RUN * PAGE_SIZE).expect("discard");
        for p in run.clone() {
            fill_page(&region, p, 100 + round);
        }
        // Read more than the budget elsewhere in the first half, so the run is evicted.
        for k in 0..budget_pages + 64 {
            let p = (run.end + k) % half;
            if !run.contains(&p) {
                let _ = read_u64(&region, p * PAGE_SIZE);
            }
        }
        wrong.extend(run.filter(|p| !page_is(&region, *p, 100 + round)));
    }
    stop.store(true, Ordering::Relaxed);
    busy.join().unwrap();
    assert!(wrong.is_empty(), "{} pages lost their rewrite, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(8)]);
    assert!(region.stats().remote_discards > 0);
}
