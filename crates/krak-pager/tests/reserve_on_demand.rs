//! A region that reserves rack memory as it is used (`PagerConfig::reserve_on_demand`): its
//! size is address space, its slabs follow what is written back, and a rack with no room
//! keeps pages local over the budget instead of failing the program. Every page checked
//! against a shadow copy, with real memory servers on loopback.

mod common;

use std::sync::Arc;

use common::*;
use krak_memserver::ServerHandle;
use krak_pager::{FarMemory, FaultMode, PagerConfig, Redundancy, PAGE_SIZE};
use rand::{Rng, SeedableRng};

fn on_demand(servers: &[ServerHandle], region_bytes: u64, budget_bytes: u64, redundancy: Redundancy) -> FarMemory {
    FarMemory::new(PagerConfig {
        region_bytes,
        local_budget_bytes: budget_bytes,
        servers: addrs(servers),
        fault_mode: FaultMode::Threads,
        redundancy,
        reserve_on_demand: true,
        ..Default::default()
    })
    .expect("region")
}

fn lent(servers: &[ServerHandle]) -> u64 {
    servers.iter().map(|s| s.stats().lent_bytes).sum()
}

/// Writes every page of `[0, bytes)` (a word per page, and random words) and rereads them.
fn write_and_check(region: &FarMemory, shadow: &mut [u64], bytes: usize, seed: u64) {
    let words_per_page = PAGE_SIZE / 8;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for page in 0..bytes / PAGE_SIZE {
        let v = rng.gen();
        write_u64(region, page * PAGE_SIZE, v);
        shadow[page * words_per_page] = v;
    }
    for _ in 0..bytes / PAGE_SIZE {
        let i = rng.gen_range(0..bytes / 8);
        let v = rng.gen();
        write_u64(region, i * 8, v);
        shadow[i] = v;
    }
    assert_eq!(verify_all(region, shadow), 0, "pages differ from the shadow");
}

fn reservation_follows_use(redundancy: Redundancy, servers: usize) {
    let servers = common::servers(servers, 64 << 20);
    let width = redundancy.width() as u64;
    // More address space than the rack holds: only what is used is reserved.
    let region_bytes = 512u64 << 20;
    let region = Arc::new(on_demand(&servers, region_bytes, 2 << 20, redundancy));
    assert_eq!(region.reserved_chunks(), 0, "nothing reserved before anything is written");
    assert_eq!(lent(&servers), 0);
    let mut shadow = vec![0u64; region_bytes as usize / 8];
    let used = 12 << 20;
    write_and_check(&region, &mut shadow, used, 1);
    let stats = region.stats();
    assert!(stats.remote_writes > 0 && stats.remote_reads > 0, "pages went remote and came back: {stats:?}");
    assert_eq!(stats.failed_faults, 0);
    let chunks = region.reserved_chunks() as u64;
    let slab_bytes =
        SLAB_BYTES / if redundancy.width() > 1 && redundancy.to_string().starts_with("ec") { 2 } else { 1 };
    eprintln!("{redundancy}: {chunks} chunks reserved for {used} bytes used; lent {}", lent(&servers));
    // Only chunks that hold written-back pages: at most the used ones.
    assert!(chunks >= 1 && chunks <= used as u64 / SLAB_BYTES, "{chunks} chunks reserved for {used} bytes");
    assert_eq!(stats.chunks_reserved, chunks);
    assert_eq!(lent(&servers), chunks * width * slab_bytes, "the servers lend exactly the reserved slabs");
    // Another area, far off: reserved as it is used, the first pages still right.
    let far = 400 << 20;
    for page in 0..256 {
        let v = 0xfeed_0000 + page as u64;
        write_u64(&region, far + page * PAGE_SIZE, v);
        shadow[(far + page * PAGE_SIZE) / 8] = v;
    }
    write_and_check(&region, &mut shadow, used, 2);
    assert_eq!(verify_all(&region, &shadow), 0);
    drop(region);
    assert_eq!(lent(&servers), 0, "dropping the region gives back every reserved slab");
}

#[test]
fn reservation_grows_with_use_without_redundancy() {
    reservation_follows_use(Redundancy::None, 3);
}

#[test]
fn reservation_grows_with_use_under_replication() {
    reservation_follows_use("replicate:2".parse().unwrap(), 3);
}

#[test]
fn reservation_grows_with_use_under_erasure_coding() {
    reservation_follows_use("ec:2+1".parse().unwrap(), 3);
}

#[test]
fn a_full_rack_keeps_pages_local_over_budget_and_loses_none() {
    // Two servers of 6 MiB; 20 MiB of data at a budget of 2 MiB.
    let servers = common::servers(2, 6 << 20);
    let region_bytes = 64u64 << 20;
    let budget = 2 << 20;
    let region = on_demand(&servers, region_bytes, budget, Redundancy::None);
    let mut shadow = vec![0u64; region_bytes as usize / 8];
    let used = 20 << 20;
    write_and_check(&region, &mut shadow, used, 3);
    let stats = region.stats();
    eprintln!("full rack: {stats:?}; resident {} of budget {budget}", region.resident_bytes());
    assert_eq!(stats.failed_faults, 0, "no fault failed for lack of rack memory");
    assert!(stats.over_budget_faults > 0, "faults went on over the budget");
    assert!(region.resident_bytes() > budget, "pages the rack has no room for stay local");
    assert_eq!(lent(&servers), 12 << 20, "the rack lent all it had");
    assert_eq!(verify_all(&region, &shadow), 0, "every page reads back, local or remote");
}
