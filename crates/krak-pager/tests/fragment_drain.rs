//! Draining a server under a redundant region: every fragment (or copy) it holds moves to
//! another server while threads keep reading and rewriting the region against an oracle,
//! the chunk's redundancy never drops, no two fragments of a chunk ever share a server,
//! and the drained server ends with nothing lent, whether the servers push the fragments
//! to each other or the pager relays them. A drain whose source dies half way loses
//! no page either: re-protection finishes what the drain left. Every page is checked during
//! the workload and at the end.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::oracle::*;
use common::*;
use krak_memserver::ServerHandle;
use krak_pager::{FarMemory, FaultMode, PagerConfig, Redundancy, PAGE_SIZE};

const REGION_BYTES: u64 = 16 << 20;
const BUDGET_BYTES: u64 = 2 << 20;
const THREADS: usize = 3;

/// A region over the first `width` servers only, so the others are free to take fragments.
fn region_over(servers: &[Option<ServerHandle>], scheme: &str, mode: FaultMode) -> Arc<FarMemory> {
    let scheme: Redundancy = scheme.parse().unwrap();
    Arc::new(
        FarMemory::new(PagerConfig {
            region_bytes: REGION_BYTES,
            local_budget_bytes: BUDGET_BYTES,
            servers: servers[..scheme.width()].iter().flatten().map(|s| s.addr()).collect(),
            fault_mode: mode,
            redundancy: scheme,
            ..Default::default()
        })
        .expect("region"),
    )
}

/// Fills every page at version 1 and waits until most of them were written back.
fn fill(region: &FarMemory) -> Arc<Oracle> {
    let pages = region.len() / PAGE_SIZE;
    let oracle = Arc::new(Oracle::new(pages));
    for p in 0..pages {
        fill_page(region, p, 1);
        oracle.0[p].store(1, Ordering::Relaxed);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while region.stats().remote_writes < (pages / 2) as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    oracle
}

/// Stops the workload; returns the wrong pages it saw and those wrong at the end.
fn stop_and_verify(
    region: &FarMemory,
    oracle: &Oracle,
    stop: &AtomicBool,
    threads: Vec<std::thread::JoinHandle<(u64, u64)>>,
) -> (u64, u64, Vec<usize>) {
    stop.store(true, Ordering::Relaxed);
    let (mut ops, mut wrong) = (0, 0);
    for t in threads {
        let (o, w) = t.join().expect("worker");
        ops += o;
        wrong += w;
    }
    let pages = oracle.0.len();
    let bad = (0..pages).filter(|p| !page_is(region, *p, oracle.0[*p].load(Ordering::Relaxed))).collect();
    (ops, wrong, bad)
}

fn assert_stripes_distinct(region: &FarMemory) {
    for (chunk, servers) in region.fragment_servers().iter().enumerate() {
        let distinct: HashSet<&SocketAddr> = servers.iter().collect();
        assert_eq!(distinct.len(), servers.len(), "chunk {chunk} has two fragments on one server: {servers:?}");
    }
}

/// With `push`, the drained server copies each fragment to its new server itself; without,
/// the servers refuse to push and the pager relays the units.
fn drain_under_load(scheme: &str, mode: FaultMode, spares: usize, push: bool) {
    let width = scheme.parse::<Redundancy>().unwrap().width();
    let servers: Vec<Option<ServerHandle>> =
        servers_with(width + spares, 64 << 20, |c| c.push = push).into_iter().map(Some).collect();
    let region = region_over(&servers, scheme, mode);
    let oracle = fill(&region);
    let stop = Arc::new(AtomicBool::new(false));
    let threads = workload(region.clone(), oracle.clone(), stop.clone(), THREADS);
    std::thread::sleep(Duration::from_millis(300));

    let drained = servers[0].as_ref().unwrap().addr();
    let targets: Vec<SocketAddr> = servers[1..].iter().flatten().map(|s| s.addr()).collect();
    let before = region.stats();
    let report = region.drain_server(drained, &targets).expect("drain");
    let after_drain = region.stats();
    std::thread::sleep(Duration::from_millis(300));
    let (ops, wrong, bad) = stop_and_verify(&region, &oracle, &stop, threads);

    let stats = region.stats();
    eprintln!("{scheme} {mode:?}: {report:?}, {ops} ops; {stats:?}");
    assert_eq!(wrong, 0, "{scheme}: the workload saw wrong pages during the drain");
    assert!(bad.is_empty(), "{scheme}: {} pages wrong after the drain, e.g. {:?}", bad.len(), &bad[..bad.len().min(8)]);
    assert!(report.chunks_moved > 0 && report.pages_copied > 0, "{report:?}");
    assert_eq!(stats.fragments_moved, report.chunks_moved);
    assert!(after_drain.missing_faults > before.missing_faults, "the workload kept faulting during the drain");
    assert!(
        region.fragment_servers().iter().flatten().all(|a| *a != drained),
        "a fragment is still on the drained server"
    );
    assert_stripes_distinct(&region);
    assert_eq!(region.min_live_fragments(), width, "the drain never lowered redundancy");
    assert_eq!((stats.failed_faults, stats.lost_servers, stats.reprotected_pages), (0, 0, 0));
    assert_eq!(servers[0].as_ref().unwrap().stats().lent_bytes, 0, "the drained server ends with nothing lent");
    assert!(servers[width..].iter().flatten().all(|s| s.stats().lent_bytes > 0), "the spare servers took fragments");
    let refused = servers[0].as_ref().unwrap().stats().errors;
    assert_eq!(refused > 0, !push, "push {push}: {refused} refusals on the drained server");
    drop(region);
    for s in servers.iter().flatten() {
        assert_eq!(s.stats().lent_bytes, 0, "dropping the region gives every slab back, moved or not");
    }
}

#[test]
fn ec_4_2_drain_moves_every_fragment_off_the_server_under_a_verified_workload() {
    drain_under_load("ec:4+2", FaultMode::Threads, 2, true);
}

#[test]
fn ec_4_2_drain_relays_the_fragments_when_servers_do_not_push() {
    drain_under_load("ec:4+2", FaultMode::Sigbus, 1, false);
}

#[test]
fn replicate_2_drain_moves_every_copy_off_the_server_with_self_serving_faults() {
    drain_under_load("replicate:2", FaultMode::Sigbus, 1, true);
}

/// The drained server dies half way through its drain: moves off it go on from the other
/// fragments or fail, re-protection rebuilds what is left, and no page is lost.
#[test]
fn a_drain_whose_server_dies_half_way_loses_no_page() {
    let mut servers: Vec<Option<ServerHandle>> = servers(8, 64 << 20).into_iter().map(Some).collect();
    let region = region_over(&servers, "ec:4+2", FaultMode::Threads);
    let oracle = fill(&region);
    let stop = Arc::new(AtomicBool::new(false));
    let threads = workload(region.clone(), oracle.clone(), stop.clone(), THREADS);
    let drained = servers[0].as_ref().unwrap().addr();
    let targets: Vec<SocketAddr> = servers[1..].iter().flatten().map(|s| s.addr()).collect();
    let drain = {
        let region = region.clone();
        std::thread::spawn(move || region.drain_server(drained, &targets))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while region.stats().fragments_moved == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    servers[0].take().unwrap().shutdown().unwrap();
    let drained_result = drain.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while region.min_live_fragments() < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (_, wrong, bad) = stop_and_verify(&region, &oracle, &stop, threads);
    let stats = region.stats();
    eprintln!("drain: {drained_result:?}; {stats:?}");
    assert_eq!(wrong, 0, "the workload saw wrong pages");
    assert!(bad.is_empty(), "{} pages wrong after the drain and the loss", bad.len());
    assert_eq!(stats.failed_faults, 0);
    assert!(stats.fragments_moved > 0, "the drain had begun before the server died");
    assert_eq!(region.min_live_fragments(), 6, "full redundancy is back");
    assert!(region.fragment_servers().iter().flatten().all(|a| *a != drained));
    assert_stripes_distinct(&region);
}
