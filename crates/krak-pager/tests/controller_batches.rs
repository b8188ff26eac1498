//! A region placed by a real rack controller with more chunks than one place or commit
//! request may carry (4096): the pager asks in batches, and every page reads back.

mod common;

use std::sync::Arc;

use common::*;
use krak_api::Api;
use krak_controller::{Controller, ControllerConfig};
use krak_memserver::membership::{self, Figures, Membership};
use krak_pager::{FarMemory, FaultMode, PagerConfig, PAGE_SIZE};

const CHUNK_BYTES: u64 = 64 << 10;
const CHUNKS: u64 = 4096 + 300;

#[test]
fn a_region_of_more_chunks_than_one_request_carries_is_placed_in_batches() {
    let servers = Arc::new(servers_with(2, CHUNKS * CHUNK_BYTES, |c| c.slab_size_bytes = CHUNK_BYTES));
    let dir = std::env::temp_dir().join(format!("krak-ctl-batches-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(krak_meta_redb::RedbStore::open(&dir).expect("store"));
    let mut config = ControllerConfig::new("127.0.0.1:0".parse().unwrap());
    config.default_chunk_bytes = CHUNK_BYTES;
    config.heartbeat_interval_ms = 100;
    let controller = Controller::start(config, store).expect("controller starts");
    let url = controller.url();
    let members: Vec<_> = (0..servers.len())
        .map(|i| {
            let lenders = servers.clone();
            let m = Membership {
                controller: url.clone(),
                addr: servers[i].addr().to_string(),
                domain: format!("rack1/host{i}"),
                headroom_bytes: 0,
                secret: None,
            };
            let figures = move || Figures { stats: lenders[i].stats(), host_free_bytes: None };
            let member = membership::spawn(m, Box::new(figures)).expect("membership thread");
            member.wait_registered(10_000).expect("server registers");
            member
        })
        .collect();
    let region_bytes = CHUNKS * CHUNK_BYTES;
    let region = FarMemory::new(PagerConfig {
        region_bytes,
        local_budget_bytes: 4 << 20,
        controller: Some(url.clone()),
        fault_mode: FaultMode::Sigbus,
        ..Default::default()
    })
    .expect("a region of more than 4096 chunks is placed");
    let status = krak_api::Client::new(&url).unwrap().status().expect("status");
    assert_eq!(status.regions[0].placed_chunks, CHUNKS, "every chunk placed and committed");
    // one page of every chunk, written past the budget, then read back
    let chunk_pages = (CHUNK_BYTES as usize) / PAGE_SIZE;
    let base = region.as_ptr();
    let stamp = |c: usize| (c as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for c in 0..CHUNKS as usize {
        // SAFETY: inside the region, which lives until the end of the test.
        unsafe { (base.add(c * chunk_pages * PAGE_SIZE) as *mut u64).write_volatile(stamp(c)) };
    }
    for c in 0..CHUNKS as usize {
        // SAFETY: as above.
        let got = unsafe { (base.add(c * chunk_pages * PAGE_SIZE) as *const u64).read_volatile() };
        assert_eq!(got, stamp(c), "chunk {c} reads back as written");
    }
    drop(region);
    drop(members);
    controller.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(servers.iter().all(|s| s.stats().lent_bytes == 0), "every slab freed");
}
