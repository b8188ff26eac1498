//! The controller over HTTP, with the in-memory store double: membership, liveness, regions,
//! place + commit, maps with long-poll, policy switch, metrics, bad input, and a restart on
//! the same store.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::memstore::MemStore;
use krak_api::messages::{
    CommitChunk, CommitReply, CommitRequest, CreateRegionRequest, HeartbeatReply, HeartbeatRequest, MapReply,
    MoveStartRequest, PlaceReply, PlaceRequest, PolicyBody, RegionReply, RegisterReply, RegisterRequest, ServersReply,
    StatusReply,
};
use krak_api::Client;
use krak_controller::{Controller, ControllerConfig, ControllerHandle, Move, ServerId, ServerState};
use krak_meta::MetaStore;

const SLAB: u64 = 1 << 20;

fn start(store: Arc<MemStore>) -> (ControllerHandle, Client) {
    let mut config = ControllerConfig::new("127.0.0.1:0".parse().unwrap());
    config.suspect_after_ms = 300;
    config.dead_after_ms = 600;
    config.tick_ms = 20;
    config.long_poll_max_ms = 2_000;
    let handle = Controller::start(config, store as Arc<dyn MetaStore>).unwrap();
    let client = Client::new(&handle.url()).unwrap();
    (handle, client)
}

fn register(c: &Client, addr: &str, domain: &str, slabs: u64) -> ServerId {
    let req = RegisterRequest {
        addr: addr.into(),
        capacity_bytes: slabs * SLAB,
        slab_size_bytes: SLAB,
        domain: domain.into(),
        headroom_bytes: 0,
    };
    let reply: RegisterReply = c.call("POST", "/v1/servers", Some(&req)).unwrap();
    assert_eq!(reply.state, ServerState::Alive);
    reply.id
}

fn heartbeat(c: &Client, id: ServerId, free_slabs: u64) -> HeartbeatReply {
    let req = HeartbeatRequest { lent_bytes: 0, free_bytes: free_slabs * SLAB, slabs: 0, host_free_bytes: None };
    c.call("POST", &format!("/v1/servers/{id}/heartbeat"), Some(&req)).unwrap()
}

fn states(c: &Client) -> Vec<(ServerId, ServerState)> {
    let s: ServersReply = c.call::<(), _>("GET", "/v1/servers", None).unwrap();
    s.servers.iter().map(|s| (s.record.id, s.record.state)).collect()
}

#[test]
fn the_rack_over_http_and_a_restart() {
    let started = Instant::now();
    let store = Arc::new(MemStore::default());
    let (ctl, c) = start(store.clone());

    let a = register(&c, "10.0.0.1:7070", "rack1/host1", 64);
    let b = register(&c, "10.0.0.2:7070", "rack1/host2", 64);
    let d = register(&c, "10.0.0.3:7070", "rack2/host1", 64);
    assert_eq!((a, b, d), (ServerId(1), ServerId(2), ServerId(3)));
    // re-registering by address keeps the id
    assert_eq!(register(&c, "10.0.0.1:7070", "rack1/host1", 64), a);

    // a and b heartbeat, d falls silent: suspect, then dead
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        heartbeat(&c, a, 64);
        heartbeat(&c, b, 64);
        if states(&c).contains(&(d, ServerState::Dead)) {
            break;
        }
        assert!(Instant::now() < deadline, "server {d} never declared dead: {:?}", states(&c));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(states(&c)[..2], [(a, ServerState::Alive), (b, ServerState::Alive)]);
    // from here on a and b heartbeat in the background
    let beating = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let beater = {
        let (c, beating) = (c.clone(), beating.clone());
        std::thread::spawn(move || {
            while beating.load(std::sync::atomic::Ordering::SeqCst) {
                heartbeat(&c, a, 60);
                heartbeat(&c, b, 60);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // a region of 8 chunks; place them all (never on the dead server), commit, read back
    let create = CreateRegionRequest {
        owner: "host9/pid42".into(),
        size_bytes: 8 * SLAB,
        local_budget_bytes: 2 * SLAB,
        chunk_bytes: Some(SLAB),
        stripe_width: None,
        redundancy: None,
        slot_divisor: None,
    };
    let region = c.call::<_, RegionReply>("POST", "/v1/regions", Some(&create)).unwrap().region;
    let place = PlaceRequest { chunks: (0..8).collect(), exclude: vec![] };
    let placed: PlaceReply = c.call("POST", &format!("/v1/regions/{}/place", region.id), Some(&place)).unwrap();
    assert_eq!(placed.policy, "spread");
    assert_eq!(placed.placements.len(), 8);
    assert!(placed.placements.iter().all(|p| p.server == a || p.server == b), "{placed:?}");
    let commit = CommitRequest {
        chunks: placed
            .placements
            .iter()
            .map(|p| CommitChunk { chunk: p.chunk, server: p.server, slab: 100 + p.chunk })
            .collect(),
    };
    let committed: CommitReply = c.call("POST", &format!("/v1/regions/{}/commit", region.id), Some(&commit)).unwrap();
    let map: MapReply = c.call::<(), _>("GET", &format!("/v1/regions/{}/map", region.id), None).unwrap();
    assert_eq!(map.epoch, committed.epoch);
    assert_eq!(map.entries.len(), 8);
    for (e, p) in map.entries.iter().zip(&placed.placements) {
        assert_eq!((e.chunk, e.server, e.slab, e.epoch), (p.chunk, p.server, 100 + p.chunk, committed.epoch));
    }
    assert!(map.servers.iter().all(|s| s.state == ServerState::Alive && s.addr.starts_with("10.0.0.")));

    // a long-poll at the current epoch waits for the next change: move chunk 0 to the other server
    let poll_client = c.clone();
    let path = format!("/v1/regions/{}/map?since_epoch={}", region.id, committed.epoch);
    let (started_tx, poller_started) = std::sync::mpsc::channel();
    let poller = std::thread::spawn(move || {
        let t = Instant::now();
        started_tx.send(()).unwrap();
        let reply: MapReply = poll_client.call_waiting::<(), _>("GET", &path, None, Duration::from_secs(3)).unwrap();
        (reply, t.elapsed())
    });
    // commit 200 ms after the poller started (on a busy host it may start late): a poll
    // that waits answers no sooner, one that does not answers without the commit
    poller_started.recv().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let other = if map.entries[0].server == a { b } else { a };
    let moved = CommitRequest { chunks: vec![CommitChunk { chunk: 0, server: other, slab: 7 }] };
    let moved: CommitReply = c.call("POST", &format!("/v1/regions/{}/commit", region.id), Some(&moved)).unwrap();
    let (delta, waited) = poller.join().unwrap();
    assert!(waited >= Duration::from_millis(150), "long-poll answered after {waited:?}");
    assert_eq!(delta.epoch, moved.epoch);
    assert_eq!(delta.entries.len(), 1, "{delta:?}");
    assert_eq!((delta.entries[0].chunk, delta.entries[0].server, delta.entries[0].epoch), (0, other, moved.epoch));
    // a long-poll that sees nothing new answers at its wait bound, with no entries
    let t = Instant::now();
    let idle: MapReply = c
        .call::<(), _>("GET", &format!("/v1/regions/{}/map?since_epoch={}&wait_ms=300", region.id, moved.epoch), None)
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(250) && idle.entries.is_empty());

    // policy switch, and drain excludes a server from placement
    let set = PolicyBody { name: "pack".into(), available: vec![] };
    let policy: PolicyBody = c.call("PUT", "/v1/policy", Some(&set)).unwrap();
    assert_eq!(policy.name, "pack");
    assert!(policy.available.contains(&"domain-spread".to_string()));
    let _: serde_json::Value = c.call::<(), _>("POST", &format!("/v1/servers/{b}/drain"), None).unwrap();
    let placed: PlaceReply = c
        .call(
            "POST",
            &format!("/v1/regions/{}/place", region.id),
            Some(&PlaceRequest { chunks: vec![3], exclude: vec![] }),
        )
        .unwrap();
    assert_eq!((placed.policy.as_str(), placed.placements[0].server), ("pack", a));

    // moves in flight: listed from the pager's start until the slot's commit or give-up
    let moves = format!("/v1/regions/{}/moves", region.id);
    let from = map.entries[1].server;
    let to = if from == a { b } else { a };
    for slot in [1, 2] {
        let start = MoveStartRequest { slot, from, to };
        let _: serde_json::Value = c.call("POST", &moves, Some(&start)).unwrap();
    }
    let status: StatusReply = c.call::<(), _>("GET", "/v1/status", None).unwrap();
    assert_eq!(status.moves_in_flight, vec![Move { region: region.id, from, to, slabs: 2 }]);
    let done = CommitRequest { chunks: vec![CommitChunk { chunk: 1, server: to, slab: 9 }] };
    let _: CommitReply = c.call("POST", &format!("/v1/regions/{}/commit", region.id), Some(&done)).unwrap();
    let status: StatusReply = c.call::<(), _>("GET", "/v1/status", None).unwrap();
    assert_eq!(status.moves_in_flight, vec![Move { region: region.id, from, to, slabs: 1 }]);
    let _: serde_json::Value = c.call::<(), _>("DELETE", &format!("{moves}/2"), None).unwrap();
    let status: StatusReply = c.call::<(), _>("GET", "/v1/status", None).unwrap();
    assert!(status.moves_in_flight.is_empty(), "{:?}", status.moves_in_flight);

    // status and metrics
    let status: StatusReply = c.call::<(), _>("GET", "/v1/status", None).unwrap();
    assert_eq!(status.policy, "pack");
    assert_eq!(status.drains, vec![b]);
    assert_eq!(status.regions.len(), 1);
    let remote: u64 = status.regions[0].remote_bytes.iter().map(|r| r.bytes).sum();
    assert_eq!(remote, 8 * SLAB);
    let (code, metrics) = c.raw("GET", "/metrics", None, Duration::ZERO).unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    assert_eq!(code, 200);
    for line in [
        "krak_servers{state=\"alive\"} 1",
        "krak_servers{state=\"draining\"} 1",
        "krak_servers{state=\"dead\"} 1",
        "krak_slabs 8",
        "krak_regions 1",
        "krak_server_failures_total 1",
        "krak_placement_decision_seconds_count 2",
        "krak_policy{name=\"pack\"} 1",
        "krak_capacity_bytes 134217728",
        "krak_moves_in_flight 0",
        "krak_moves_total{outcome=\"started\"} 2",
        "krak_moves_total{outcome=\"committed\"} 1",
        "krak_moves_total{outcome=\"abandoned\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
    // histograms where a count would hide the shape: moves, requests by endpoint
    assert!(metrics.lines().any(|l| l == "krak_move_duration_seconds_count 1"), "{metrics}");
    let status_requests = "krak_http_request_duration_seconds_count{endpoint=\"/v1/status\",code=\"2xx\"} ";
    let n: u64 = metrics.lines().find_map(|l| l.strip_prefix(status_requests)?.parse().ok()).expect(status_requests);
    assert!(n >= 3, "{n} status requests counted");
    let heartbeats = "krak_http_request_duration_seconds_bucket{le=\"+Inf\",endpoint=\"/v1/servers/{id}/heartbeat\"";
    assert!(metrics.lines().any(|l| l.starts_with(heartbeats)), "{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");

    // bad input: JSON errors, never a crash
    for (method, path, body, want) in [
        ("POST", "/v1/servers", &b"{not json"[..], 400),
        ("POST", "/v1/servers", &b"{\"addr\":\"x:1\",\"capacity_bytes\":1,\"slab_size_bytes\":0}"[..], 400),
        ("POST", "/v1/regions/99/place", &b"{\"chunks\":[0]}"[..], 404),
        ("POST", "/v1/regions/1/place", &b"{\"chunks\":[8]}"[..], 400),
        ("POST", "/v1/regions/1/commit", &b"{\"chunks\":[{\"chunk\":1,\"server\":3,\"slab\":1}]}"[..], 409),
        ("GET", "/v1/regions/x/map", &b""[..], 400),
        ("GET", "/v1/regions/1/map?since_epoch=abc", &b""[..], 400),
        ("PUT", "/v1/policy", &b"{\"name\":\"nope\"}"[..], 400),
        ("POST", "/v1/regions/1/moves", &b"{\"slot\":8,\"from\":1,\"to\":2}"[..], 400),
        ("POST", "/v1/regions/1/moves", &b"{\"slot\":0,\"from\":1,\"to\":99}"[..], 400),
        ("POST", "/v1/regions/99/moves", &b"{\"slot\":0,\"from\":1,\"to\":2}"[..], 404),
        ("DELETE", "/v1/regions/1/moves/0", &b""[..], 404),
        ("DELETE", "/v1/regions/1/moves/x", &b""[..], 400),
        ("DELETE", "/v1/status", &b""[..], 405),
        ("GET", "/nothing", &b""[..], 404),
    ] {
        let (code, answer) = c.raw(method, path, Some(body), Duration::ZERO).unwrap();
        assert_eq!(code, want, "{method} {path}: {}", String::from_utf8_lossy(&answer));
        let err: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert!(err["error"].is_string());
    }
    let big = vec![b' '; (1 << 20) + 1];
    let (code, _) = c.raw("POST", "/v1/servers", Some(&big), Duration::ZERO).unwrap();
    assert_eq!(code, 413);

    // restart on the same store: same servers, regions, map, policy
    let before: StatusReply = c.call::<(), _>("GET", "/v1/status", None).unwrap();
    let map_before: MapReply = c.call::<(), _>("GET", &format!("/v1/regions/{}/map", region.id), None).unwrap();
    beating.store(false, std::sync::atomic::Ordering::SeqCst);
    beater.join().unwrap();
    ctl.shutdown();
    let (ctl, c) = start(store.clone());
    let after: StatusReply = c.call::<(), _>("GET", "/v1/status", None).unwrap();
    let map_after: MapReply = c.call::<(), _>("GET", &format!("/v1/regions/{}/map", region.id), None).unwrap();
    assert_eq!(
        (&map_after.entries, &map_after.servers, &map_after.region),
        (&map_before.entries, &map_before.servers, &map_before.region)
    );
    // a region's epoch never goes back across a restart
    assert_eq!(map_after.epoch, before.map_epoch);
    assert!(map_after.epoch >= map_before.epoch);
    assert_eq!(after.policy, before.policy);
    assert_eq!(after.map_epoch, before.map_epoch);
    assert_eq!(after.regions.len(), 1);
    assert_eq!(after.regions[0].remote_bytes, before.regions[0].remote_bytes);
    let ids = |s: &StatusReply| {
        s.servers.iter().map(|s| (s.record.id, s.record.state, s.record.addr.clone())).collect::<Vec<_>>()
    };
    assert_eq!(ids(&after), ids(&before));
    // ids keep counting after a restart
    assert_eq!(register(&c, "10.0.0.4:7070", "rack2/host2", 64), ServerId(4));
    let region2 = c.call::<_, RegionReply>("POST", "/v1/regions", Some(&create)).unwrap().region;
    assert_eq!(region2.id.0, region.id.0 + 1);
    // deleting a region removes its map from the store
    let _: RegionReply = c.call::<(), _>("DELETE", &format!("/v1/regions/{}", region.id), None).unwrap();
    assert!(store.list("/krak/slabs/").unwrap().is_empty());
    ctl.shutdown();
    eprintln!("api test took {:?}", started.elapsed());
}
