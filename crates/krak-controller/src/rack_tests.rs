//! Unit tests of [`RackState`] over the in-memory store double.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::memstore::MemStore;
use krak_api::messages::RegisterRequest;

const SLAB: u64 = 1 << 20;

fn rack(store: &Arc<MemStore>) -> RackState {
    let config = ControllerConfig::new("127.0.0.1:0".parse().unwrap());
    RackState::load(store.clone() as Arc<dyn MetaStore>, config).unwrap()
}

fn setup(store: &Arc<MemStore>) -> (RackState, RegionId) {
    let mut r = rack(store);
    for i in 0..3 {
        let req = RegisterRequest {
            addr: format!("h{i}:1"),
            capacity_bytes: 1000 * SLAB,
            slab_size_bytes: SLAB,
            domain: format!("d{i}"),
            headroom_bytes: 0,
        };
        r.register(&req).unwrap();
    }
    let req = CreateRegionRequest {
        owner: "o".into(),
        size_bytes: 1000 * SLAB,
        local_budget_bytes: 0,
        chunk_bytes: Some(SLAB),
        stripe_width: None,
        redundancy: None,
        slot_divisor: None,
    };
    let id = r.create_region(&req).unwrap().id;
    (r, id)
}

#[test]
fn large_commits_go_out_in_bounded_transactions_and_reload_whole() {
    let store = Arc::new(MemStore::default());
    let (mut r, id) = setup(&store);
    let chunks: Vec<u64> = (0..450).collect();
    let placed = r.place(id, &chunks, &[]).unwrap();
    let commit: Vec<CommitChunk> =
        placed.iter().map(|p| CommitChunk { chunk: p.chunk, server: p.server, slab: p.chunk * 3 }).collect();
    let before = store.txns.load(Ordering::Relaxed);
    let epoch = r.commit(id, &commit).unwrap();
    // 450 puts + the counters in each: 5 transactions of at most 100 ops (the double refuses > 128)
    assert_eq!(store.txns.load(Ordering::Relaxed) - before, 5);
    let again = rack(&store);
    assert_eq!(again.map(id, 0).unwrap(), r.map(id, 0).unwrap());
    assert_eq!(again.map_epoch(), epoch);
    for s in 1..=3 {
        let sid = ServerId(s);
        assert_eq!(again.view.server(sid).unwrap().slabs, r.view.server(sid).unwrap().slabs);
    }
    assert_eq!(again.view.region(id).unwrap().slabs, 450);
}

#[test]
fn released_slots_leave_the_map_the_view_and_the_store() {
    let store = Arc::new(MemStore::default());
    let (mut r, id) = setup(&store);
    let placed = r.place(id, &[0, 1, 2, 3], &[]).unwrap();
    let commit: Vec<CommitChunk> =
        placed.iter().map(|p| CommitChunk { chunk: p.chunk, server: p.server, slab: p.chunk + 10 }).collect();
    let committed = r.commit(id, &commit).unwrap();
    let free_before: u64 = (1..=3).map(|s| r.view.server(ServerId(s)).unwrap().free_bytes).sum();
    // A slot never placed is ignored; one past the region is refused and changes nothing.
    assert!(matches!(r.release(id, &[1, 5000]), Err(RackError::BadRequest(_))));
    assert_eq!(r.view.region(id).unwrap().slabs, 4);
    let epoch = r.release(id, &[1, 3, 7]).unwrap();
    assert!(epoch > committed);
    let chunks: Vec<u64> = r.map(id, 0).unwrap().entries.iter().map(|e| e.chunk).collect();
    assert_eq!(chunks, vec![0, 2]);
    assert_eq!(r.view.region(id).unwrap().slabs, 2);
    let free_after: u64 = (1..=3).map(|s| r.view.server(ServerId(s)).unwrap().free_bytes).sum();
    assert_eq!(free_after - free_before, 2 * SLAB);
    // The store agrees: a reload sees the same map, and a released slot can be placed again.
    let again = rack(&store);
    assert_eq!(again.map(id, 0).unwrap(), r.map(id, 0).unwrap());
    let placed = r.place(id, &[1], &[]).unwrap();
    r.commit(id, &[CommitChunk { chunk: 1, server: placed[0].server, slab: 99 }]).unwrap();
    assert_eq!(r.view.region(id).unwrap().slabs, 3);
    assert!(matches!(r.release(RegionId(999), &[0]), Err(RackError::NotFound(_))));
}

#[test]
fn a_failing_store_changes_nothing_in_memory() {
    let store = Arc::new(MemStore::default());
    let (mut r, id) = setup(&store);
    store.fail.store(true, Ordering::SeqCst);
    let commit = [CommitChunk { chunk: 0, server: ServerId(1), slab: 1 }];
    assert!(matches!(r.commit(id, &commit), Err(RackError::Store(_))));
    assert!(matches!(r.set_policy("pack"), Err(RackError::Store(_))));
    assert!(matches!(r.drain(ServerId(2)), Err(RackError::Store(_))));
    assert_eq!(r.map(id, 0).unwrap().entries, vec![]);
    assert_eq!(r.policy_name(), "spread");
    assert_eq!(r.servers[&ServerId(2)].state, ServerState::Alive);
    // liveness keeps the old state and tries again later
    let late = std::time::Instant::now() + std::time::Duration::from_secs(3600);
    assert!(r.tick(late).is_empty());
    store.fail.store(false, Ordering::SeqCst);
    assert_eq!(r.tick(late).len(), 3);
    assert!(r.servers.values().all(|s| s.state == ServerState::Dead && s.failures == 1));
}

#[test]
fn moving_a_chunk_bumps_its_epoch_and_moves_the_counts() {
    let store = Arc::new(MemStore::default());
    let (mut r, id) = setup(&store);
    let e1 = r.commit(id, &[CommitChunk { chunk: 5, server: ServerId(1), slab: 1 }]).unwrap();
    let e2 = r.commit(id, &[CommitChunk { chunk: 5, server: ServerId(2), slab: 2 }]).unwrap();
    assert!(e2 > e1);
    let delta = r.map(id, e1).unwrap();
    assert_eq!(delta.entries.len(), 1);
    assert_eq!((delta.entries[0].server, delta.entries[0].epoch), (ServerId(2), e2));
    assert_eq!(r.view.server(ServerId(1)).unwrap().slabs, 0);
    assert_eq!(r.view.server(ServerId(2)).unwrap().slabs, 1);
    // a dead server's state change bumps the epoch of the regions on it
    r.tick(std::time::Instant::now() + std::time::Duration::from_secs(3600));
    assert!(r.region_epoch(id).unwrap() > e2);
    assert!(matches!(
        r.commit(id, &[CommitChunk { chunk: 6, server: ServerId(3), slab: 2 }]),
        Err(RackError::Conflict(_))
    ));
}

#[test]
fn a_striped_region_keeps_fragments_apart_counts_degraded_slots_and_reloads() {
    let store = Arc::new(MemStore::default());
    let mut r = rack(&store);
    let mut ids = Vec::new();
    for i in 0..4 {
        let req = RegisterRequest {
            addr: format!("h{i}:1"),
            capacity_bytes: 100 * SLAB,
            slab_size_bytes: SLAB,
            domain: format!("d{i}"),
            headroom_bytes: 0,
        };
        ids.push(r.register(&req).unwrap().id);
    }
    let req = CreateRegionRequest {
        owner: "o".into(),
        size_bytes: 10 * SLAB,
        local_budget_bytes: 0,
        chunk_bytes: Some(SLAB),
        stripe_width: Some(3),
        redundancy: Some("ec:2+1".into()),
        slot_divisor: None,
    };
    let region = r.create_region(&req).unwrap();
    assert_eq!((region.stripe_width, region.slots()), (3, 30));
    let slots: Vec<u64> = (0..30).collect();
    let placed = r.place(region.id, &slots, &[]).unwrap();
    for stripe in placed.chunks(3) {
        let s: std::collections::BTreeSet<_> = stripe.iter().map(|p| p.server).collect();
        assert_eq!(s.len(), 3, "{stripe:?}");
    }
    let commit: Vec<CommitChunk> =
        placed.iter().map(|p| CommitChunk { chunk: p.chunk, server: p.server, slab: 1000 + p.chunk }).collect();
    r.commit(region.id, &commit).unwrap();
    assert!(matches!(r.place(region.id, &[30], &[]), Err(RackError::BadRequest(_))), "slot past the end");
    // moving slot 0 onto the server of slot 1 would put two fragments of chunk 0 together
    let clash = [CommitChunk { chunk: 0, server: placed[1].server, slab: 7 }];
    assert!(matches!(r.commit(region.id, &clash), Err(RackError::StripeClash(_))));

    // one server dies: its slots are degraded; a replacement avoids the stripe's servers
    let victim = placed[0].server;
    let on_victim = placed.iter().filter(|p| p.server == victim).count() as u64;
    let late = std::time::Instant::now() + std::time::Duration::from_secs(3600);
    for id in ids.iter().filter(|id| **id != victim) {
        r.last_seen.insert(*id, late); // heard from just now
    }
    r.tick(late);
    assert_eq!(r.servers[&victim].state, ServerState::Dead);
    let status = r.status();
    assert_eq!(status.regions[0].degraded_slots, on_victim);
    assert_eq!(status.regions[0].record.redundancy, "ec:2+1");
    let again = r.place(region.id, &[0], &[victim]).unwrap();
    let others: Vec<ServerId> = placed[1..3].iter().map(|p| p.server).collect();
    assert!(again[0].server != victim && !others.contains(&again[0].server), "{again:?} vs {others:?}");

    let reloaded = rack(&store);
    assert_eq!(reloaded.regions[&region.id].record, r.regions[&region.id].record);
    assert_eq!(reloaded.map(region.id, 0).unwrap().entries.len(), 30);
}

#[test]
fn an_erasure_coded_region_is_placed_by_what_its_fragments_cost() {
    let store = Arc::new(MemStore::default());
    let mut r = rack(&store);
    for i in 0..6 {
        let req = RegisterRequest {
            addr: format!("h{i}:1"),
            capacity_bytes: 2 * SLAB,
            slab_size_bytes: SLAB,
            domain: format!("d{i}"),
            headroom_bytes: 0,
        };
        r.register(&req).unwrap();
    }
    // ec:4+2 over 8 chunks: 48 fragments of a quarter chunk, 12 MiB, exactly the rack's
    // capacity; counted as whole chunks it would need 48 MiB.
    let create = |divisor| CreateRegionRequest {
        owner: "o".into(),
        size_bytes: 8 * SLAB,
        local_budget_bytes: 0,
        chunk_bytes: Some(SLAB),
        stripe_width: Some(6),
        redundancy: Some("ec:4+2".into()),
        slot_divisor: divisor,
    };
    let whole = r.create_region(&create(None)).unwrap();
    assert!(matches!(r.place(whole.id, &(0..48).collect::<Vec<_>>(), &[]), Err(RackError::Placement(_))));
    r.delete_region(whole.id).unwrap();
    let region = r.create_region(&create(Some(4))).unwrap();
    assert_eq!(region.slot_cost_bytes(), SLAB / 4);
    let placed = r.place(region.id, &(0..48).collect::<Vec<_>>(), &[]).unwrap();
    let commit: Vec<CommitChunk> =
        placed.iter().map(|p| CommitChunk { chunk: p.chunk, server: p.server, slab: p.chunk }).collect();
    r.commit(region.id, &commit).unwrap();
    let status = r.status();
    let remote: u64 = status.regions[0].remote_bytes.iter().map(|b| b.bytes).sum();
    assert_eq!(remote, 12 * SLAB, "remote bytes count fragments, not chunks");
    assert!(r.view.servers().iter().all(|s| s.free_bytes == 0), "every server full, none past it");
    assert!(r.place(region.id, &[0], &[]).is_err(), "nothing left");
    for bad in [Some(0), Some(3), Some(64)] {
        assert!(matches!(r.create_region(&create(bad)), Err(RackError::BadRequest(_))), "{bad:?}");
    }
    let reloaded = rack(&store);
    assert_eq!(reloaded.regions[&region.id].record.slot_bytes, SLAB / 4);
    assert_eq!(reloaded.view.region(region.id).unwrap().slot_bytes, SLAB / 4, "a restart counts the same");
}

#[test]
fn a_budget_is_stored_wakes_the_region_and_a_report_is_kept_until_the_region_goes() {
    let store = Arc::new(MemStore::default());
    let (mut r, id) = setup(&store);
    let epoch = r.region_epoch(id).unwrap();
    assert!(matches!(r.set_budget(id, 4096), Err(RackError::BadRequest(_))), "below the smallest budget");
    assert!(matches!(r.set_budget(RegionId(99), 1 << 20), Err(RackError::NotFound(_))));
    let record = r.set_budget(id, 8 << 20).unwrap();
    assert_eq!(record.local_budget_bytes, 8 << 20);
    assert!(r.region_epoch(id).unwrap() > epoch, "long-polling pagers wake up");
    assert_eq!(r.map(id, 0).unwrap().region.local_budget_bytes, 8 << 20, "the pager sees it in its map");
    // a restarted controller has it from the store
    let again = rack(&store);
    assert_eq!(again.map(id, 0).unwrap().region.local_budget_bytes, 8 << 20);

    let live = krak_api::messages::RegionLive {
        pid: Some(42),
        host: "h".into(),
        local_budget_bytes: 8 << 20,
        resident_bytes: 7 << 20,
        reserved_bytes: 10 * SLAB,
        used_bytes: 5 << 20,
        faults_per_s: 12.5,
        data_bytes: None,
        host_available_bytes: Some(1 << 30),
    };
    assert!(matches!(r.report_live(RegionId(99), live.clone()), Err(RackError::NotFound(_))));
    let bad_host = krak_api::messages::RegionLive { host: "a\nb".into(), ..live.clone() };
    assert!(matches!(r.report_live(id, bad_host), Err(RackError::BadRequest(_))));
    r.report_live(id, live.clone()).unwrap();
    let status = r.status();
    assert_eq!(status.regions[0].live.as_ref(), Some(&live));
    assert!(status.regions[0].live_age_ms.is_some_and(|ms| ms < 1_000));
    r.delete_region(id).unwrap();
    assert!(r.live_of(id).is_none(), "a deleted region's report goes with it");
}

#[test]
fn the_broker_divides_a_host_by_demand_waits_for_settled_reports_and_is_stored() {
    use krak_api::broker::BrokerConfig;
    use krak_api::messages::RegionLive;
    const MIB: u64 = 1 << 20;
    let store = Arc::new(MemStore::default());
    let (mut r, _) = setup(&store);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let req = CreateRegionRequest {
            owner: "o".into(),
            size_bytes: 256 * MIB,
            local_budget_bytes: 128 * MIB,
            chunk_bytes: Some(SLAB),
            stripe_width: None,
            redundancy: None,
            slot_divisor: None,
        };
        ids.push(r.create_region(&req).unwrap().id);
    }
    let report = |r: &mut RackState, id: RegionId, faults_per_s: f64| {
        let budget = r.map(id, 0).unwrap().region.local_budget_bytes;
        let live = RegionLive {
            pid: Some(1),
            host: "h".into(),
            local_budget_bytes: budget,
            resident_bytes: budget,
            reserved_bytes: 0,
            used_bytes: 200 * MIB - budget.min(200 * MIB),
            faults_per_s,
            data_bytes: None,
            host_available_bytes: Some(1 << 30),
        };
        r.report_live(id, live).unwrap();
    };
    // A report counts once a second one shows the pager kept the budget for its window.
    report(&mut r, ids[0], 5_000.0);
    report(&mut r, ids[1], 0.0);
    std::thread::sleep(Duration::from_millis(950));
    report(&mut r, ids[0], 5_000.0);
    report(&mut r, ids[1], 0.0);
    let budgets =
        |r: &RackState| ids.iter().map(|&id| r.map(id, 0).unwrap().region.local_budget_bytes / MIB).collect::<Vec<_>>();

    // Refusals name what is wrong.
    let bad = BrokerConfig { policy: "greedy".into(), ..Default::default() };
    assert!(matches!(r.set_broker(bad), Err(RackError::BadRequest(m)) if m.contains("static, demand")));
    let bad = BrokerConfig { floor_bytes: 4096, ..Default::default() };
    assert!(matches!(r.set_broker(bad), Err(RackError::BadRequest(_))));

    // Static with the host given: the round sees the host and changes nothing.
    let mut config = BrokerConfig::default();
    config.hosts.insert("h".into(), 256 * MIB);
    r.set_broker(config.clone()).unwrap();
    let t0 = Instant::now();
    assert!(r.broker_round(t0).is_empty());
    let status = r.broker_status();
    assert_eq!(
        (status.hosts.len(), status.hosts[0].regions.len(), status.hosts[0].total_from.as_str()),
        (1, 2, "given")
    );

    // Demand: the faulting region is given what the quiet one can spare.
    config.policy = "demand".into();
    r.set_broker(config).unwrap();
    let changed = r.broker_round(t0);
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert_eq!(budgets(&r), [216, 40], "its footprint and room to grow; the rest stays with the other");
    // Another round before reports measured under the new budgets: nothing moves, even
    // though the reports still say the same.
    report(&mut r, ids[0], 5_000.0);
    report(&mut r, ids[1], 50_000.0);
    assert!(r.broker_round(t0 + Duration::from_millis(1_100)).is_empty());
    assert!(r.broker_status().hosts[0].regions.iter().all(|g| !g.settled));
    assert_eq!(r.broker_status().budget_changes, 2);
    // A restarted controller brokers the same way.
    let again = rack(&store);
    assert_eq!(again.broker_status().config.policy, "demand");
    assert_eq!(again.broker_status().config.hosts["h"], 256 * MIB);

    // A host not given is brokered on its available memory once a headroom is set: what
    // its regions hold resident (216 + 40 MiB, as last reported) plus 1 GiB available,
    // minus 512 MiB.
    let derived = BrokerConfig { policy: "static".into(), headroom_bytes: Some(512 * MIB), ..Default::default() };
    r.set_broker(derived).unwrap();
    r.broker_round(t0 + Duration::from_secs(5));
    let host = &r.broker_status().hosts[0];
    assert_eq!((host.total_from.as_str(), host.total_bytes), ("derived", (216 + 40 + 512) * MIB));
}
