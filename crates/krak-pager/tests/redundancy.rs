//! Lose a memory server, lose no page: regions under `ec:4+2`, `replicate:2` and
//! `replicate:3` over six in-process memory servers on loopback, with threads running a
//! verified workload while servers are shut down under them (their connections closed,
//! their slabs gone). Every page is checked against an oracle of what was last written to
//! it: during the workload, and all of them at the end. Beyond what the scheme tolerates a
//! fault must die of SIGBUS, never see a wrong page (child processes, as in
//! `server_loss.rs`). A corrupted server's fragments are rebuilt from the others and
//! rewritten.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::oracle::*;
use common::*;
use krak_memserver::ServerHandle;
use krak_pager::{FarMemory, FaultMode, PagerConfig, Redundancy, PAGE_SIZE};

const REGION_BYTES: u64 = 8 << 20;
const BUDGET_BYTES: u64 = 1 << 20;
const THREADS: usize = 3;

fn redundant_region(servers: &[Option<ServerHandle>], scheme: &str, mode: FaultMode) -> FarMemory {
    FarMemory::new(PagerConfig {
        region_bytes: REGION_BYTES,
        local_budget_bytes: BUDGET_BYTES,
        servers: servers.iter().flatten().map(|s| s.addr()).collect(),
        fault_mode: mode,
        redundancy: scheme.parse::<Redundancy>().unwrap(),
        ..Default::default()
    })
    .expect("region")
}

fn six_servers() -> Vec<Option<ServerHandle>> {
    servers(6, 64 << 20).into_iter().map(Some).collect()
}

fn fill_all(region: &FarMemory, oracle: &Oracle) {
    for p in 0..oracle.0.len() {
        fill_page(region, p, 1);
        oracle.0[p].store(1, Ordering::Relaxed);
    }
}

fn wait_written_back(region: &FarMemory, pages: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while region.stats().remote_writes < pages && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every page of the region against the oracle; returns the pages that differ.
fn verify_every_page(region: &FarMemory, oracle: &Oracle) -> Vec<usize> {
    (0..oracle.0.len()).filter(|p| !page_is(region, *p, oracle.0[*p].load(Ordering::Relaxed))).collect()
}

/// Runs the verified workload, shutting down `kills` servers one after the other while it
/// runs; then checks every page and the counters.
fn survive(scheme: &str, mode: FaultMode, kills: &[usize]) {
    let mut servers = six_servers();
    let region = Arc::new(redundant_region(&servers, scheme, mode));
    let pages = region.len() / PAGE_SIZE;
    let oracle = Arc::new(Oracle::new(pages));
    fill_all(&region, &oracle);
    wait_written_back(&region, (pages / 2) as u64);
    let stop = Arc::new(AtomicBool::new(false));
    let threads = workload(region.clone(), oracle.clone(), stop.clone(), THREADS);
    let mut ops_at_kill = Vec::new();
    for &k in kills {
        std::thread::sleep(Duration::from_millis(700));
        ops_at_kill.push(region.stats().missing_faults);
        servers[k].take().expect("server runs").shutdown().expect("server stops");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let faults_before_stop = region.stats().missing_faults;
    stop.store(true, Ordering::Relaxed);
    let (mut ops, mut wrong) = (0, 0);
    for t in threads {
        let (o, w) = t.join().expect("worker");
        ops += o;
        wrong += w;
    }
    assert_eq!(wrong, 0, "{scheme}: the workload saw wrong pages");
    assert!(
        faults_before_stop > *ops_at_kill.last().unwrap(),
        "{scheme}: the workload kept faulting after the last kill"
    );
    let bad = verify_every_page(&region, &oracle);
    assert!(bad.is_empty(), "{scheme}: {} pages wrong after the kills, e.g. {:?}", bad.len(), &bad[..bad.len().min(8)]);
    let stats = region.stats();
    eprintln!("{scheme} {mode:?}: {ops} ops, {stats:?}");
    assert_eq!(stats.failed_faults, 0, "{scheme}: no fault may fail within tolerance");
    assert_eq!(stats.lost_servers, kills.len() as u64, "{scheme}: {:?}", region.lost_servers());
    assert!(stats.degraded_reads > 0, "{scheme}: reads went around the lost servers");
    // With spare servers (replication over six) re-protection may already have rebuilt some.
    assert!(region.min_live_fragments() >= region.redundancy().width() - kills.len());
}

#[test]
fn ec_4_2_survives_one_then_two_servers_killed_mid_workload() {
    survive("ec:4+2", FaultMode::Threads, &[2, 5]);
}

#[test]
fn ec_4_2_survives_two_kills_with_self_serving_faults() {
    survive("ec:4+2", FaultMode::Sigbus, &[0, 3]);
}

#[test]
fn replicate_2_survives_one_server_killed_mid_workload() {
    survive("replicate:2", FaultMode::Threads, &[1]);
}

#[test]
fn replicate_3_survives_two_servers_killed_mid_workload() {
    // Three copies of every chunk on distinct servers: each keeps one.
    survive("replicate:3", FaultMode::Sigbus, &[2, 1]);
}

/// Kills `first` under the verified workload, waits for re-protection to bring every stripe
/// back to full width on the survivors, then kills `then` (as many as the scheme
/// tolerates) and checks every page.
fn reprotect_then_survive(scheme: &str, servers_n: usize, first: usize, then: &[usize]) {
    let mut servers: Vec<Option<ServerHandle>> = servers(servers_n, 64 << 20).into_iter().map(Some).collect();
    let region = Arc::new(redundant_region(&servers, scheme, FaultMode::Threads));
    let width = region.redundancy().width();
    let pages = region.len() / PAGE_SIZE;
    let oracle = Arc::new(Oracle::new(pages));
    fill_all(&region, &oracle);
    wait_written_back(&region, (pages / 2) as u64);
    let stop = Arc::new(AtomicBool::new(false));
    let threads = workload(region.clone(), oracle.clone(), stop.clone(), THREADS);
    std::thread::sleep(Duration::from_millis(500));
    servers[first].take().unwrap().shutdown().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (region.min_live_fragments() < width || region.stats().reprotect_ms == 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after_first = region.stats();
    eprintln!("{scheme}: re-protected: {after_first:?}");
    assert_eq!(region.min_live_fragments(), width, "{scheme}: full redundancy is back");
    assert!(after_first.reprotected_pages > 0 && after_first.reprotect_ms > 0);
    assert_eq!(after_first.lost_servers, 1);
    for &k in then {
        servers[k].take().unwrap().shutdown().unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let wrong: u64 = threads.into_iter().map(|t| t.join().expect("worker").1).sum();
    assert_eq!(wrong, 0, "{scheme}: the workload saw wrong pages");
    let bad = verify_every_page(&region, &oracle);
    assert!(bad.is_empty(), "{scheme}: {} pages wrong after re-protection and more kills", bad.len());
    let stats = region.stats();
    assert_eq!(stats.failed_faults, 0, "{scheme}: {stats:?}");
    assert_eq!(stats.lost_servers, 1 + then.len() as u64);
}

#[test]
fn ec_4_2_re_protects_onto_the_spare_server_then_survives_two_more_losses() {
    reprotect_then_survive("ec:4+2", 7, 0, &[3, 5]);
}

#[test]
fn replicate_2_re_protects_then_survives_another_loss() {
    reprotect_then_survive("replicate:2", 6, 2, &[3]);
}

#[test]
fn ec_memory_overhead_is_one_and_a_half() {
    let servers = six_servers();
    let region = redundant_region(&servers, "ec:4+2", FaultMode::Threads);
    let lent: u64 = servers.iter().flatten().map(|s| s.stats().lent_bytes).sum();
    assert_eq!(lent, REGION_BYTES * 3 / 2, "six 1 KiB fragments per 4 KiB page");
    let placed: u64 = region.placement().iter().map(|(_, b)| b).sum();
    assert_eq!(placed, lent);
}

#[test]
fn too_few_servers_for_the_scheme_is_a_clear_error() {
    let servers: Vec<Option<ServerHandle>> = servers(3, 64 << 20).into_iter().map(Some).collect();
    let err = FarMemory::new(PagerConfig {
        region_bytes: REGION_BYTES,
        local_budget_bytes: BUDGET_BYTES,
        servers: servers.iter().flatten().map(|s| s.addr()).collect(),
        redundancy: Redundancy::Ec { k: 4, m: 2 },
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("6 distinct memory servers; 3 given"), "{err}");
    let twice: Vec<_> = servers.iter().flatten().map(|s| s.addr()).cycle().take(6).collect();
    let err = FarMemory::new(PagerConfig {
        region_bytes: REGION_BYTES,
        local_budget_bytes: BUDGET_BYTES,
        servers: twice,
        redundancy: Redundancy::Ec { k: 4, m: 2 },
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("listed twice"), "{err}");
    // Nothing stays allocated.
    assert!(servers.iter().flatten().all(|s| s.stats().slabs == 0));
}

#[test]
fn corrupt_fragments_are_rebuilt_rewritten_and_counted() {
    let mut servers = six_servers();
    let region = redundant_region(&servers, "ec:4+2", FaultMode::Threads);
    let pages = region.len() / PAGE_SIZE;
    let oracle = Oracle::new(pages);
    fill_all(&region, &oracle);
    wait_written_back(&region, (pages - pages / 4) as u64);
    let damaged = servers[1].as_ref().unwrap().corrupt_stored_units();
    assert!(damaged > 0);
    // Reads find the corrupt fragments they ask for (data fragments)...
    let bad = verify_every_page(&region, &oracle);
    assert!(bad.is_empty(), "{} pages wrong with a corrupt server", bad.len());
    let read_found = region.stats().corrupt_fragments;
    assert!(read_found > 0);
    // ...a scrub every other one (parity included).
    let scrubbed = region.scrub().expect("scrub");
    assert!(scrubbed > 0, "the scrub finds the parity fragments reads never asked for");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = (u64::MAX, Instant::now());
    while Instant::now() < deadline {
        let repaired = region.stats().corrupt_fragments_repaired;
        if repaired != last.0 {
            last = (repaired, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(500) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = region.stats();
    eprintln!("after corruption: {stats:?}");
    assert!(stats.corrupt_fragments_repaired > 0, "{stats:?}");
    assert!(stats.corrupt_fragments_repaired <= stats.corrupt_fragments, "{stats:?}");
    assert_eq!((stats.failed_faults, stats.lost_servers), (0, 0), "a checksum failure loses no server");
    assert_eq!(region.scrub().expect("scrub"), 0, "nothing corrupt is left");
    // The rewritten fragments are now needed: with two other servers gone, server 1's
    // fragments are among the only four left of every stripe.
    for k in [3, 4] {
        servers[k].take().unwrap().shutdown().unwrap();
    }
    for pass in 0..2 {
        let bad = verify_every_page(&region, &oracle);
        assert!(bad.is_empty(), "after the kills, pass {pass}: {} pages wrong", bad.len());
    }
    assert_eq!(region.stats().failed_faults, 0);
}

#[test]
fn a_scheduled_scrub_finds_and_rewrites_corruption_no_read_asked_for() {
    let mut servers = six_servers();
    let region = FarMemory::new(PagerConfig {
        region_bytes: REGION_BYTES,
        local_budget_bytes: BUDGET_BYTES,
        servers: servers.iter().flatten().map(|s| s.addr()).collect(),
        redundancy: "ec:4+2".parse::<Redundancy>().unwrap(),
        scrub_interval_ms: 300,
        ..Default::default()
    })
    .expect("region");
    let pages = region.len() / PAGE_SIZE;
    let oracle = Oracle::new(pages);
    fill_all(&region, &oracle);
    wait_written_back(&region, (pages - pages / 4) as u64);
    // Nothing reads the region meanwhile: only a scrub can find it.
    let damaged = servers[5].as_ref().unwrap().corrupt_stored_units();
    assert!(damaged > 0);
    let scrubs_before = region.stats().scrubs;
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = |s: &krak_pager::PagerStats| s.scrubs > scrubs_before && s.corrupt_fragments_repaired > 0;
    while !done(&region.stats()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = region.stats();
    assert!(stats.scrubs > scrubs_before, "the region scrubbed itself: {stats:?}");
    assert!(stats.corrupt_fragments > 0 && stats.corrupt_fragments_repaired > 0, "{stats:?}");
    assert_eq!((stats.failed_faults, stats.lost_servers), (0, 0));
    // Repairs are queued (a bounded queue) and written back by another thread, so a pass
    // may still meet fragments not rewritten yet: wait for a whole pass that finds none,
    // then make the repaired parity needed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut left = region.scrub().expect("scrub");
    while left > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = region.scrub().expect("scrub");
    }
    assert_eq!(left, 0, "nothing corrupt is left once the repairs are written: {:?}", region.stats());
    for k in [0, 1] {
        servers[k].take().unwrap().shutdown().unwrap();
    }
    let bad = verify_every_page(&region, &oracle);
    assert!(bad.is_empty(), "{} pages wrong once the rewritten parity was needed", bad.len());
    assert_eq!(region.stats().failed_faults, 0);
}

// ---- beyond tolerance: SIGBUS, never a wrong page (child processes) ----

const CHILD_ENV: &str = "KRAK_REDUNDANCY_CHILD";
const READY: &str = "krak-redundancy: servers stopped, touching a lost page";

/// The child: fill, write back, stop `kills`, read a page that is still recoverable (it
/// must be right), then touch one that is not: the process must die of SIGBUS there.
fn child_body(scheme: &str, mode: FaultMode, kills: &[usize], readable_page: usize, lost_page: usize) {
    let mut servers = six_servers();
    let region = redundant_region(&servers, scheme, mode);
    let pages = region.len() / PAGE_SIZE;
    let oracle = Oracle::new(pages);
    fill_all(&region, &oracle);
    wait_written_back(&region, (pages - pages / 4) as u64);
    // Touch the end of the region so that both pages below were evicted.
    for p in pages - 300..pages {
        assert!(page_is(&region, p, 1));
    }
    for &k in kills {
        servers[k].take().unwrap().shutdown().unwrap();
    }
    assert!(page_is(&region, readable_page, 1), "a page with enough fragments left reads back right");
    println!("{READY}");
    let right = page_is(&region, lost_page, 1);
    // Reaching this line means a page was made up: the parent fails the test.
    println!("krak-redundancy: read page {lost_page} (right: {right}) with too few fragments");
}

fn run_child(name: &str) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains(READY), "child did not reach the touch:\n{stdout}\n{stderr}");
    assert!(!stdout.contains("krak-redundancy: read page"), "a page was served without enough fragments:\n{stdout}");
    assert_eq!(out.status.signal(), Some(libc::SIGBUS), "child must die by SIGBUS: {:?}\n{stderr}", out.status);
    let log = format!("{stdout}{stderr}");
    assert!(log.contains("cannot be read") && log.contains("lost for this region"), "the reason is logged:\n{log}");
}

#[test]
fn ec_4_2_with_three_servers_lost_fails_with_sigbus() {
    run_child("child_ec_three_lost");
}

#[test]
fn replicate_2_with_both_replicas_lost_fails_with_sigbus() {
    run_child("child_replicate_both_lost");
}

#[test]
fn child_ec_three_lost() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // Every stripe spans all six servers; reading a page fails once three are lost.
        // The "readable" page is read after two kills only: kill the third right before.
        let mut servers = six_servers();
        let region = redundant_region(&servers, "ec:4+2", FaultMode::Threads);
        let pages = region.len() / PAGE_SIZE;
        let oracle = Oracle::new(pages);
        fill_all(&region, &oracle);
        wait_written_back(&region, (pages - pages / 4) as u64);
        for p in pages - 300..pages {
            assert!(page_is(&region, p, 1));
        }
        for k in [0, 2] {
            servers[k].take().unwrap().shutdown().unwrap();
        }
        assert!(page_is(&region, 5, 1), "two lost of six: still readable");
        servers[4].take().unwrap().shutdown().unwrap();
        println!("{READY}");
        let right = page_is(&region, 700, 1);
        println!("krak-redundancy: read page 700 (right: {right}) with too few fragments");
    }
}

#[test]
fn child_replicate_both_lost() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // Chunk c (256 pages) lives on servers c % 6 and (c + 1) % 6: killing 0 and 1 loses
        // chunk 0 whole, while chunk 2 (servers 2, 3) is untouched.
        child_body("replicate:2", FaultMode::Sigbus, &[0, 1], 2 * 256 + 3, 7);
    }
}

#[test]
fn replicas_go_to_distinct_failure_domains_when_servers_declare_them() {
    // Two servers per domain. In server order, chunk c's copies would land on servers c and
    // c + 1, both in domain "a" for chunk 0; with the domains known they never share one,
    // so losing a whole domain loses no page.
    let mut servers: Vec<Option<ServerHandle>> = servers(8, 64 << 20).into_iter().map(Some).collect();
    let domains: Vec<String> = ["a", "a", "b", "b", "c", "c", "d", "d"].iter().map(|d| format!("rack1/{d}")).collect();
    let region = FarMemory::new(PagerConfig {
        region_bytes: REGION_BYTES,
        local_budget_bytes: BUDGET_BYTES,
        servers: servers.iter().flatten().map(|s| s.addr()).collect(),
        server_domains: domains,
        redundancy: Redundancy::Replicate { n: 2 },
        ..Default::default()
    })
    .expect("region");
    let pages = region.len() / PAGE_SIZE;
    let oracle = Oracle::new(pages);
    fill_all(&region, &oracle);
    wait_written_back(&region, (pages - pages / 4) as u64);
    for k in [0, 1] {
        servers[k].take().unwrap().shutdown().unwrap();
    }
    let bad = verify_every_page(&region, &oracle);
    assert!(bad.is_empty(), "{} pages lost with one domain", bad.len());
    let stats = region.stats();
    assert_eq!((stats.failed_faults, stats.lost_servers), (0, 2), "{stats:?}");
}

#[test]
fn write_back_beyond_tolerance_keeps_only_the_lost_chunks_pages_buffered() {
    // replicate:2 over 6 servers. Killing 0 and 1 puts the chunks with both copies there
    // (chunk 0 among them) beyond tolerance while every other chunk keeps a copy. Chunk 0's
    // dirty pages cannot be written back; the pages of other chunks sharing their
    // write-back batches must still land, or they would fill the write-back buffer and
    // fail every fault.
    let mut servers = six_servers();
    let region = redundant_region(&servers, "replicate:2", FaultMode::Threads);
    let pages = region.len() / PAGE_SIZE;
    let chunk_pages = SLAB_BYTES as usize / PAGE_SIZE;
    let oracle = Oracle::new(pages);
    fill_all(&region, &oracle);
    wait_written_back(&region, (pages - pages / 4) as u64);
    // Chunk 0 resident and dirty (the budget is one chunk), then its servers go.
    for p in 0..chunk_pages - 16 {
        fill_page(&region, p, 2);
        oracle.0[p].store(2, Ordering::Relaxed);
    }
    let killed: Vec<_> = [0, 1].iter().map(|k| servers[*k].as_ref().unwrap().addr()).collect();
    let lost: Vec<bool> =
        region.fragment_servers().iter().map(|copies| copies.iter().all(|s| killed.contains(s))).collect();
    assert!(lost[0] && lost.iter().filter(|l| !**l).count() > lost.len() / 2, "{lost:?}");
    for k in [0, 1] {
        servers[k].take().unwrap().shutdown().unwrap();
    }
    // Rewrite every page of the healthy chunks (more than the write-back buffer holds):
    // chunk 0's pages are evicted among them.
    let healthy: Vec<usize> = (chunk_pages..pages).filter(|p| !lost[p / chunk_pages]).collect();
    for round in 3..5 {
        for &p in &healthy {
            fill_page(&region, p, round);
            oracle.0[p].store(round, Ordering::Relaxed);
        }
    }
    let bad: Vec<usize> =
        healthy.iter().copied().filter(|p| !page_is(&region, *p, oracle.0[*p].load(Ordering::Relaxed))).collect();
    assert!(bad.is_empty(), "{} pages of healthy chunks wrong", bad.len());
    let stats = region.stats();
    assert_eq!(stats.failed_faults, 0, "{stats:?}");
    assert!(stats.lost_servers >= 2, "{stats:?}");
}
