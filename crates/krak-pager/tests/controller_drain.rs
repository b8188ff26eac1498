//! Regions placed by a real rack controller follow the rack while in use: a drain moves
//! every chunk off a server, and a server whose host runs short of memory (below its
//! headroom) gets chunks moved away instead of dropped. Application threads keep reading
//! and writing against shadow copies meanwhile, and every page reads back as written.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use krak_api::messages::StatusReply;
use krak_api::{Api, Client};
use krak_controller::{Controller, ControllerConfig, ControllerHandle, ServerId};
use krak_memserver::membership::{self, Figures, MemberHandle, Membership};
use krak_memserver::ServerHandle;
use krak_pager::{FarMemory, FaultMode, PagerConfig, PAGE_SIZE};
use rand::{Rng, SeedableRng};

const REGION_BYTES: u64 = 16 << 20;
const HEADROOM_BYTES: u64 = 1 << 30;

/// A controller (its default store in a temp dir) and three memory servers that join it with the
/// membership agent of `krak memserver --controller`; server 0 reports a host short of
/// `host_short_bytes` below its headroom, less what it has given back since it lent
/// `lent_when_short`.
struct Rack {
    servers: Arc<Vec<ServerHandle>>,
    ids: Vec<ServerId>,
    controller: Option<ControllerHandle>,
    url: String,
    members: Vec<MemberHandle>,
    dir: std::path::PathBuf,
    host_short_bytes: Arc<AtomicU64>,
    lent_when_short: Arc<AtomicU64>,
}

impl Rack {
    fn start(tag: &str) -> Rack {
        let servers = Arc::new(servers(3, 64 << 20));
        let dir = std::env::temp_dir().join(format!("krak-ctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(krak_meta_redb::RedbStore::open(&dir).expect("store"));
        let mut config = ControllerConfig::new("127.0.0.1:0".parse().unwrap());
        config.default_chunk_bytes = SLAB_BYTES;
        config.heartbeat_interval_ms = 100;
        let controller = Controller::start(config, store).expect("controller starts");
        let url = controller.url();
        let host_short_bytes = Arc::new(AtomicU64::new(0));
        let lent_when_short = Arc::new(AtomicU64::new(0));
        let members: Vec<MemberHandle> = (0..servers.len())
            .map(|i| {
                let (lenders, short, lent_then) = (servers.clone(), host_short_bytes.clone(), lent_when_short.clone());
                let figures = move || {
                    let stats = lenders[i].stats();
                    // Host 0 is short of memory; what it gave back since makes up for it.
                    let given_back = lent_then.load(Ordering::Relaxed).saturating_sub(stats.lent_bytes);
                    let short = if i == 0 { short.load(Ordering::Relaxed).saturating_sub(given_back) } else { 0 };
                    Figures { stats, host_free_bytes: Some(HEADROOM_BYTES + 4096 - short.min(HEADROOM_BYTES)) }
                };
                let m = Membership {
                    controller: url.clone(),
                    addr: servers[i].addr().to_string(),
                    domain: format!("rack1/host{i}"),
                    headroom_bytes: HEADROOM_BYTES,
                    secret: None,
                };
                membership::spawn(m, Box::new(figures)).expect("membership thread")
            })
            .collect();
        let ids = members.iter().map(|m| m.wait_registered(10_000).expect("server registers")).collect();
        Rack { servers, ids, controller: Some(controller), url, members, dir, host_short_bytes, lent_when_short }
    }

    fn client(&self) -> Client {
        Client::new(&self.url).unwrap()
    }

    fn region(&self) -> Arc<FarMemory> {
        Arc::new(
            FarMemory::new(PagerConfig {
                region_bytes: REGION_BYTES,
                local_budget_bytes: REGION_BYTES / 4,
                controller: Some(self.url.clone()),
                fault_mode: FaultMode::Sigbus,
                ..Default::default()
            })
            .expect("region placed by the controller"),
        )
    }
}

impl Drop for Rack {
    fn drop(&mut self) {
        self.members.clear();
        if let Some(c) = self.controller.take() {
            c.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A verified random workload on the region until `stop`; returns the mismatches.
fn workload(region: Arc<FarMemory>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let pages = REGION_BYTES as usize / PAGE_SIZE;
        let mut shadow = vec![0u64; pages];
        for (p, v) in shadow.iter_mut().enumerate() {
            *v = p as u64 + 1;
            write_u64(&region, p * PAGE_SIZE, *v);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut bad = 0;
        while !stop.load(Ordering::Relaxed) {
            let p = rng.gen_range(0..pages);
            if rng.gen_bool(0.5) {
                shadow[p] = rng.gen::<u64>() | 1;
                write_u64(&region, p * PAGE_SIZE, shadow[p]);
            } else if read_u64(&region, p * PAGE_SIZE) != shadow[p] {
                bad += 1;
            }
        }
        bad + (0..pages).filter(|p| read_u64(&region, p * PAGE_SIZE) != shadow[*p]).count()
    })
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_controller_drain_moves_the_region_off_the_server_under_load() {
    let rack = Rack::start("drain");
    let region = rack.region();
    let drained = rack.servers[0].addr();
    assert!(region.chunk_servers().contains(&drained), "spread placement used every server");
    let stop = Arc::new(AtomicBool::new(false));
    let worker = workload(region.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));

    let client = rack.client();
    client.clone().drain(rack.ids[0]).expect("drain accepted");
    wait_until("the pager to follow the drain", Duration::from_secs(30), || !region.chunk_servers().contains(&drained));
    stop.store(true, Ordering::Relaxed);
    assert_eq!(worker.join().unwrap(), 0, "a page read back wrong during or after the drain");
    assert_eq!(rack.servers[0].stats().lent_bytes, 0, "the drained server ends with nothing lent");

    // The controller's map agrees: nothing placed on the drained server.
    let status: StatusReply = client.clone().status().unwrap();
    let drained_status = status.servers.iter().find(|s| s.record.id == rack.ids[0]).expect("drained server listed");
    assert_eq!(drained_status.mapped_slabs, 0, "{status:?}");
    assert_eq!(region.stats().failed_faults, 0);

    drop(region);
    let status: StatusReply = client.clone().status().unwrap();
    assert!(status.regions.is_empty(), "dropping the region removes it from the controller");
    for s in rack.servers.iter() {
        assert_eq!(s.stats().lent_bytes, 0);
    }
}

#[test]
fn a_host_below_its_headroom_gets_chunks_moved_away_not_dropped() {
    let rack = Rack::start("headroom");
    let region = rack.region();
    let short_host = rack.servers[0].addr();
    let chunks_there = || region.chunk_servers().iter().filter(|a| **a == short_host).count();
    let before = chunks_there();
    assert!(before >= 2, "spread placed several chunks on host 0: {before}");
    let stop = Arc::new(AtomicBool::new(false));
    let worker = workload(region.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));

    // Host 0 now needs `want` slabs' worth of memory back (placement is random: ask for
    // fewer than it holds, so that it keeps some).
    let want = if before >= 3 { 2 } else { 1 };
    rack.lent_when_short.store(rack.servers[0].stats().lent_bytes, Ordering::Relaxed);
    rack.host_short_bytes.store(want as u64 * SLAB_BYTES, Ordering::Relaxed);
    wait_until("chunks moved off the host short of memory", Duration::from_secs(30), || {
        chunks_there() <= before - want
    });
    // Once it got its memory back, nothing more moves.
    std::thread::sleep(Duration::from_millis(600));
    let after = chunks_there();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(worker.join().unwrap(), 0, "a page read back wrong while chunks moved");
    assert!(after + want + 1 >= before, "moved only about what was asked: {before} -> {after}");
    assert_eq!(rack.servers[0].stats().lent_bytes, (after as u64) * SLAB_BYTES, "the host lends only what stayed");
    assert_eq!(region.stats().failed_faults, 0);
}

#[test]
fn switching_to_pack_consolidates_the_region_so_a_server_empties() {
    let rack = Rack::start("pack");
    let region = rack.region();
    let used = || {
        let mut s = region.chunk_servers();
        s.sort();
        s.dedup();
        s.len()
    };
    assert_eq!(used(), 3, "spread placed the region on all three servers");
    let stop = Arc::new(AtomicBool::new(false));
    let worker = workload(region.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));

    let client = rack.client();
    client.clone().set_policy("pack").expect("policy switched");
    wait_until("pack to empty a server", Duration::from_secs(30), || used() < 3);
    // Consolidation settles (pack may empty more than one server) rather than moving chunks
    // back and forth.
    let mut last = region.chunk_servers();
    wait_until("consolidation to settle", Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(700));
        let now = region.chunk_servers();
        std::mem::replace(&mut last, now.clone()) == now
    });
    assert!(used() < 3);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(worker.join().unwrap(), 0, "a page read back wrong while chunks consolidated");

    let status: StatusReply = client.clone().status().unwrap();
    let emptied: Vec<_> = status.servers.iter().filter(|s| s.empty).collect();
    assert!(!emptied.is_empty(), "the controller shows a server holding nothing: {status:?}");
    for s in &emptied {
        let handle = rack.servers.iter().find(|h| h.addr().to_string() == s.record.addr).unwrap();
        assert_eq!(handle.stats().lent_bytes, 0, "an emptied server lends nothing");
    }
    assert_eq!(region.stats().failed_faults, 0);
}
