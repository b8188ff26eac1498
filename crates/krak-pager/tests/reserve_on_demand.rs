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
    eprintln!("{redundancy}: {chunks} chunks reserved for {used} bytes used; lent {}", lent(&servers));
    // Only chunks that hold written-back pages, and at most one reserved ahead of need.
    assert!(chunks >= 1 && chunks <= used as u64 / SLAB_BYTES + 1, "{chunks} chunks reserved for {used} bytes");
    assert_eq!(stats.chunks_reserved, chunks);
    // Written in order: the next chunk was found reserved ahead at least once.
    assert!(stats.chunks_reserved_ahead >= 1, "{stats:?}");
    assert_eq!(lent(&servers), chunks * lent_per_chunk(redundancy), "the servers lend exactly the reserved slabs");
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

/// Discards `[offset, offset + len)` and waits until the write-back thread has told the
/// servers (and given back the chunks it emptied).
fn discard(region: &FarMemory, shadow: &mut [u64], offset: usize, len: usize) {
    let before = region.stats().remote_discards;
    region.discard(offset, len).unwrap();
    shadow[offset / 8..(offset + len) / 8].fill(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while region.stats().remote_discards == before {
        assert!(std::time::Instant::now() < deadline, "the discard was never sent");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn reserved(region: &FarMemory, chunks: std::ops::Range<usize>) -> Vec<usize> {
    let servers = region.fragment_servers();
    chunks.filter(|&c| !servers[c].is_empty()).collect()
}

fn discards_give_back(redundancy: Redundancy) {
    let servers = common::servers(3, 64 << 20);
    let (width, chunk) = (redundancy.width() as u64, SLAB_BYTES as usize);
    let slab_bytes = lent_per_chunk(redundancy) / width;
    let region_bytes = 64u64 << 20;
    let region = on_demand(&servers, region_bytes, 2 << 20, redundancy);
    let mut shadow = vec![0u64; region_bytes as usize / 8];
    write_and_check(&region, &mut shadow, 12 * chunk, 4);
    let held = reserved(&region, 0..12);
    assert!(held.len() >= 8, "most of the 12 chunks written are reserved: {held:?}");

    // Half of chunk 0, then of chunk 1: neither is given back while its other half holds data.
    discard(&region, &mut shadow, 0, chunk / 2);
    discard(&region, &mut shadow, chunk + chunk / 2, chunk / 2);
    assert_eq!(region.stats().chunks_released, 0);
    assert_eq!(reserved(&region, 0..12), held);

    // The rest of chunks 0 to 3 (a range across four chunks): those four go back.
    discard(&region, &mut shadow, chunk / 2, 4 * chunk - chunk / 2);
    let released: Vec<usize> = held.iter().copied().filter(|&c| c < 4).collect();
    assert_eq!(region.stats().chunks_released, released.len() as u64);
    let now: Vec<usize> = held.iter().copied().filter(|&c| c >= 4).collect();
    assert_eq!(reserved(&region, 0..12), now, "chunks 0 to 3 are unreserved, the others kept");
    // Besides those, at most the one chunk reserved ahead (past the 12 written).
    let all = region.reserved_chunks() as u64;
    assert!(all <= now.len() as u64 + 1, "{all} chunks reserved, {} of the 12 written", now.len());
    assert_eq!(lent(&servers), all * width * slab_bytes, "the servers lend only what is reserved");
    assert_eq!(verify_all(&region, &shadow), 0, "discarded pages read zero, the others their data");

    // Used again: reserved again, and every page right.
    write_and_check(&region, &mut shadow, 12 * chunk, 5);
    assert!(reserved(&region, 0..4).len() >= 2, "chunks used again are reserved again");
    assert_eq!(lent(&servers), region.reserved_chunks() as u64 * width * slab_bytes);
    drop(region);
    assert_eq!(lent(&servers), 0);
}

/// Bytes the servers lend for one reserved chunk.
fn lent_per_chunk(redundancy: Redundancy) -> u64 {
    let width = redundancy.width() as u64;
    let ec = redundancy.width() > 1 && redundancy.to_string().starts_with("ec");
    width * SLAB_BYTES / if ec { 2 } else { 1 }
}

#[test]
fn discarded_chunks_give_their_slabs_back_without_redundancy() {
    discards_give_back(Redundancy::None);
}

#[test]
fn discarded_chunks_give_their_slabs_back_under_erasure_coding() {
    discards_give_back("ec:2+1".parse().unwrap());
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
