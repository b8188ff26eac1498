//! A region placed by a real rack controller follows a drain: while application threads
//! keep reading and writing it against shadow copies, the operator drains a memory server
//! through the controller's API; the pager moves its chunks off, commits the new homes,
//! and every page reads back as written.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use krak_controller::messages::{HeartbeatRequest, RegisterReply, RegisterRequest, StatusReply};
use krak_controller::{Client, Controller, ControllerConfig};
use krak_pager::{FarMemory, FaultMode, PagerConfig, PAGE_SIZE};
use rand::{Rng, SeedableRng};

const REGION_BYTES: u64 = 16 << 20;

#[test]
fn a_controller_drain_moves_the_region_off_the_server_under_load() {
    let servers = Arc::new(servers(3, 64 << 20));
    let dir = std::env::temp_dir().join(format!("krak-ctl-drain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(krak_meta_file::FileStore::open(&dir).expect("file store"));
    let mut config = ControllerConfig::new("127.0.0.1:0".parse().unwrap());
    config.default_chunk_bytes = SLAB_BYTES;
    let controller = Controller::start(config, store).expect("controller starts");
    let url = controller.url();
    let client = Client::new(&url).unwrap();

    // The memory servers register and heartbeat, as `krak memserver --controller` does.
    let mut ids = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let reply: RegisterReply = client
            .call(
                "POST",
                "/v1/servers",
                Some(&RegisterRequest {
                    addr: s.addr().to_string(),
                    capacity_bytes: 64 << 20,
                    slab_size_bytes: SLAB_BYTES,
                    domain: format!("rack1/host{i}"),
                    headroom_bytes: 0,
                }),
            )
            .unwrap();
        ids.push(reply.id);
    }
    let beating = Arc::new(AtomicBool::new(true));
    let heart = {
        let (beating, ids, url, servers) = (beating.clone(), ids.clone(), url.clone(), servers.clone());
        std::thread::spawn(move || {
            let client = Client::new(&url).unwrap();
            while beating.load(Ordering::Relaxed) {
                for (id, server) in ids.iter().zip(servers.iter()) {
                    let stats = server.stats();
                    let beat = HeartbeatRequest {
                        lent_bytes: stats.lent_bytes,
                        free_bytes: stats.capacity_bytes - stats.lent_bytes,
                        slabs: stats.slabs,
                        host_free_bytes: None,
                    };
                    let _: Result<serde_json::Value, _> =
                        client.call("POST", &format!("/v1/servers/{}/heartbeat", id.0), Some(&beat));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    let region = Arc::new(
        FarMemory::new(PagerConfig {
            region_bytes: REGION_BYTES,
            local_budget_bytes: REGION_BYTES / 4,
            controller: Some(url.clone()),
            fault_mode: FaultMode::Sigbus,
            ..Default::default()
        })
        .expect("region placed by the controller"),
    );
    let drained = servers[0].addr();
    assert!(region.chunk_servers().contains(&drained), "spread placement used every server");

    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (region, stop) = (region.clone(), stop.clone());
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
    };
    std::thread::sleep(Duration::from_millis(300));

    let _: serde_json::Value =
        client.call::<(), _>("POST", &format!("/v1/servers/{}/drain", ids[0].0), None).expect("drain accepted");
    let deadline = Instant::now() + Duration::from_secs(30);
    while region.chunk_servers().contains(&drained) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let bad = worker.join().unwrap();
    assert!(!region.chunk_servers().contains(&drained), "the pager followed the drain");
    assert_eq!(bad, 0, "a page read back wrong during or after the drain");
    assert_eq!(servers[0].stats().lent_bytes, 0, "the drained server ends with nothing lent");

    // The controller's map agrees: nothing placed on the drained server.
    let status: StatusReply = client.call::<(), _>("GET", "/v1/status", None).unwrap();
    let drained_status = status.servers.iter().find(|s| s.record.id == ids[0]).expect("drained server listed");
    assert_eq!(drained_status.mapped_slabs, 0, "{status:?}");
    assert_eq!(region.stats().failed_faults, 0);

    drop(region);
    let status: StatusReply = client.call::<(), _>("GET", "/v1/status", None).unwrap();
    assert!(status.regions.is_empty(), "dropping the region removes it from the controller");
    for s in servers.iter() {
        assert_eq!(s.stats().lent_bytes, 0);
    }
    beating.store(false, Ordering::Relaxed);
    heart.join().unwrap();
    controller.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
