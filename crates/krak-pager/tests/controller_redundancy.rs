//! Redundant regions placed by a real rack controller (in process, over its default store):
//! every fragment of a chunk on its own server and failure domain, as the controller's map
//! shows; a server killed under a verified workload costs no page; the controller shows the
//! region's slots on the dead server as degraded until re-protection, whose replacements
//! the controller places (on a host that joins the rack meanwhile) and the pager commits.
//! Every page is checked against an oracle during the workload and at the end.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::oracle::*;
use common::*;
use krak_api::messages::{MapReply, StatusReply};
use krak_api::{Api, Client, RegionId};
use krak_controller::{Controller, ControllerConfig, ControllerHandle, ServerId};
use krak_memserver::membership::{self, Figures, MemberHandle, Membership};
use krak_memserver::ServerHandle;
use krak_pager::{FarMemory, FaultMode, PagerConfig, Redundancy, PAGE_SIZE};

const REGION_BYTES: u64 = 8 << 20;
const BUDGET_BYTES: u64 = 1 << 20;
const SERVER_BYTES: u64 = 64 << 20;
const THREADS: usize = 3;

/// A controller and memory servers that join it (each its own domain) with the membership
/// agent of `krak memserver --controller`; a server taken out stops heartbeating.
struct Rack {
    servers: Arc<Mutex<Vec<Option<ServerHandle>>>>,
    /// Controller id of each registered server (by index in `servers`).
    ids: Arc<Mutex<HashMap<usize, ServerId>>>,
    /// The membership agent of each registered server.
    members: Mutex<HashMap<usize, MemberHandle>>,
    controller: Option<ControllerHandle>,
    url: String,
    dir: std::path::PathBuf,
}

impl Rack {
    /// `n` servers, of which the first `registered` register at once.
    fn start(tag: &str, n: usize, registered: usize) -> Rack {
        let handles = servers(n, SERVER_BYTES);
        let dir = std::env::temp_dir().join(format!("krak-ctl-red-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(krak_meta_redb::RedbStore::open(&dir).expect("store"));
        let mut config = ControllerConfig::new("127.0.0.1:0".parse().unwrap());
        config.default_chunk_bytes = SLAB_BYTES;
        config.heartbeat_interval_ms = 100;
        // Heartbeats come every 100 ms; on a loaded 2-core host a test thread may miss a few,
        // and a live server called dead would be lost for the region (one loss too many).
        config.suspect_after_ms = 1_000;
        config.dead_after_ms = 2_500;
        let controller = Controller::start(config, store).expect("controller starts");
        let url = controller.url();
        let rack = Rack {
            servers: Arc::new(Mutex::new(handles.into_iter().map(Some).collect::<Vec<_>>())),
            ids: Arc::new(Mutex::new(HashMap::new())),
            members: Mutex::new(HashMap::new()),
            controller: Some(controller),
            url,
            dir,
        };
        for i in 0..registered {
            rack.register(i);
        }
        rack
    }

    /// Server `i` joins the rack; its controller id.
    fn register(&self, i: usize) -> ServerId {
        let servers = self.servers.clone();
        // a server is taken out only after its agent stopped, so it is always there
        let figures = move || Figures {
            stats: servers.lock().unwrap()[i].as_ref().map(ServerHandle::stats).unwrap_or_default(),
            host_free_bytes: None,
        };
        let m = Membership {
            controller: self.url.clone(),
            addr: self.addr(i),
            domain: format!("rack1/host{i}"),
            headroom_bytes: 0,
            secret: None,
        };
        let member = membership::spawn(m, Box::new(figures)).expect("membership thread");
        let id = member.wait_registered(10_000).expect("server registers");
        self.members.lock().unwrap().insert(i, member);
        self.ids.lock().unwrap().insert(i, id);
        id
    }

    fn addr(&self, i: usize) -> String {
        self.servers.lock().unwrap()[i].as_ref().expect("running").addr().to_string()
    }

    fn slabs(&self, i: usize) -> u64 {
        self.servers.lock().unwrap()[i].as_ref().expect("running").stats().slabs
    }

    /// Shuts server `i` down (its slabs are gone) and stops its heartbeats.
    fn kill(&self, i: usize) -> ServerId {
        let id = self.ids.lock().unwrap().remove(&i).expect("registered");
        self.members.lock().unwrap().remove(&i).expect("a member").stop();
        let handle = self.servers.lock().unwrap()[i].take().expect("running");
        handle.shutdown().expect("server stops");
        id
    }

    /// Server `i` stops heartbeating but keeps serving: the controller will call it dead.
    fn silence(&self, i: usize) -> ServerId {
        self.members.lock().unwrap().remove(&i).expect("a member").stop();
        self.ids.lock().unwrap()[&i]
    }

    fn client(&self) -> Client {
        Client::new(&self.url).unwrap()
    }

    fn status(&self) -> StatusReply {
        self.client().status().expect("status")
    }

    fn map(&self, region: u64) -> MapReply {
        self.client().map(RegionId(region)).expect("map")
    }

    fn region(&self, scheme: &str, mode: FaultMode) -> Arc<FarMemory> {
        Arc::new(
            FarMemory::new(PagerConfig {
                region_bytes: REGION_BYTES,
                local_budget_bytes: BUDGET_BYTES,
                controller: Some(self.url.clone()),
                fault_mode: mode,
                redundancy: scheme.parse::<Redundancy>().unwrap(),
                ..Default::default()
            })
            .expect("redundant region placed by the controller"),
        )
    }
}

impl Drop for Rack {
    fn drop(&mut self) {
        self.members.lock().unwrap().clear();
        if let Some(c) = self.controller.take() {
            c.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every page filled at version 1, then threads reading (checked) and rewriting them.
struct Checked {
    oracle: Arc<Oracle>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(u64, u64)>>,
}

impl Checked {
    fn start(region: &Arc<FarMemory>) -> Checked {
        let pages = region.len() / PAGE_SIZE;
        let oracle = Arc::new(Oracle::at(pages, 1));
        for p in 0..pages {
            fill_page(region, p, 1);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let threads = workload(region.clone(), oracle.clone(), stop.clone(), THREADS);
        Checked { oracle, stop, threads }
    }

    /// Stops the threads; no read may have been wrong (`during` says when), and every
    /// page must be as last written.
    fn finish(self, region: &FarMemory, during: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let wrong: u64 = self.threads.into_iter().map(|t| t.join().expect("worker").1).sum();
        assert_eq!(wrong, 0, "the workload saw wrong pages ({during})");
        let oracle = &self.oracle;
        let bad: Vec<usize> =
            (0..oracle.0.len()).filter(|p| !page_is(region, *p, oracle.0[*p].load(Ordering::Relaxed))).collect();
        assert!(bad.is_empty(), "{during}: {} pages wrong, e.g. {:?}", bad.len(), &bad[..bad.len().min(8)]);
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The servers of each chunk's stripe, as the controller's map has them.
fn stripes_in_map(map: &MapReply) -> Vec<Vec<ServerId>> {
    let width = map.region.stripe_width as usize;
    let mut slots = vec![None; map.region.slots() as usize];
    for e in &map.entries {
        slots[e.chunk as usize] = Some(e.server);
    }
    let slots: Vec<ServerId> = slots.into_iter().map(|s| s.expect("every slot placed")).collect();
    slots.chunks(width).map(<[ServerId]>::to_vec).collect()
}

/// Checks that every slot of `before` on `from` is on `to` in `after`, that no other slot
/// changed, and that every stripe of `after` is on distinct servers.
fn only_moved(before: &[Vec<ServerId>], after: &[Vec<ServerId>], from: ServerId, to: ServerId) {
    for (b, a) in before.iter().zip(after) {
        assert!(distinct(a), "a stripe shares a server: {a:?}");
        for (old, new) in b.iter().zip(a) {
            let want = if *old == from { to } else { *old };
            assert_eq!(*new, want, "slots of {from} go to {to}, the others stay: {b:?} -> {a:?}");
        }
    }
}

fn distinct(stripe: &[ServerId]) -> bool {
    let mut s = stripe.to_vec();
    s.sort();
    s.dedup();
    s.len() == stripe.len()
}

/// Places a `scheme` region on the first `width` servers of a rack of `width + 1`, kills
/// server 0 under a verified workload, checks that the controller shows degraded slots
/// while no server can take the replacements, registers the last server, and checks that
/// re-protection through the controller brings the region back: degraded slots 0, the
/// replaced slots on the new server, every stripe still on distinct servers, every page
/// as written.
fn lose_a_server_and_reprotect(tag: &str, scheme: &str, mode: FaultMode) {
    let width = scheme.parse::<Redundancy>().unwrap().width();
    let rack = Rack::start(tag, width + 1, width);
    let region = rack.region(scheme, mode);
    let status = rack.status();
    assert_eq!(status.regions.len(), 1);
    let record = &status.regions[0];
    assert_eq!((record.record.stripe_width as usize, record.record.redundancy.as_str()), (width, scheme));
    assert_eq!(record.placed_chunks, record.record.slots(), "every fragment committed: {record:?}");
    let region_id = record.record.id.0;
    let stripes = stripes_in_map(&rack.map(region_id));
    let domain_of: HashMap<ServerId, String> =
        status.servers.iter().map(|s| (s.record.id, s.record.domain.clone())).collect();
    for stripe in &stripes {
        assert!(distinct(stripe), "{scheme}: a chunk's fragments share a server: {stripe:?}");
        let mut domains: Vec<&String> = stripe.iter().map(|s| &domain_of[s]).collect();
        domains.sort();
        domains.dedup();
        assert_eq!(domains.len(), width, "{scheme}: a chunk's fragments share a domain: {stripe:?}");
    }

    let checked = Checked::start(&region);
    std::thread::sleep(Duration::from_millis(500));
    let dead = rack.kill(0);

    // No server outside the stripes is placeable: the slots stay degraded until one joins.
    wait_until("the controller to count the dead server's slots as degraded", Duration::from_secs(20), || {
        rack.status().regions[0].degraded_slots > 0
    });
    let degraded = rack.status().regions[0].degraded_slots;
    assert_eq!(degraded, stripes.iter().flatten().filter(|s| **s == dead).count() as u64);
    wait_until("the pager to lose the killed server", Duration::from_secs(20), || region.lost_servers().len() == 1);
    let joined = rack.register(width);

    wait_until("re-protection through the controller", Duration::from_secs(40), || {
        rack.status().regions[0].degraded_slots == 0 && region.min_live_fragments() == width
    });
    checked.finish(&region, scheme);

    only_moved(&stripes, &stripes_in_map(&rack.map(region_id)), dead, joined);
    let stats = region.stats();
    eprintln!("{scheme}: {stats:?}");
    assert_eq!(stats.failed_faults, 0);
    assert!(stats.reprotected_pages > 0, "{scheme}: re-protection rebuilt pages");
    assert_eq!(rack.slabs(width), degraded, "{scheme}: the joined server holds one slab per replaced fragment");

    drop(region);
    assert!(rack.status().regions.is_empty(), "dropping the region removes it from the controller");
    for s in rack.servers.lock().unwrap().iter().flatten() {
        assert_eq!(s.stats().lent_bytes, 0, "every fragment's slab is freed");
    }
}

#[test]
fn servers_the_controller_calls_dead_but_that_serve_the_region_keep_their_fragments() {
    // replicate:2 over three servers, two of which go silent towards the controller (as a
    // flood of strangers on its front end made it happen): every chunk has a copy on one of
    // them, and a pager taking the verdict as it is would lose them all.
    let rack = Rack::start("silent", 3, 3);
    let region = rack.region("replicate:2", FaultMode::Threads);
    let checked = Checked::start(&region);
    std::thread::sleep(Duration::from_millis(300));
    let silent = [rack.silence(0), rack.silence(1)];
    wait_until("the controller to call both silent servers dead", Duration::from_secs(20), || {
        let status = rack.status();
        silent.iter().all(|id| {
            status.servers.iter().any(|s| s.record.id == *id && s.record.state == krak_api::ServerState::Dead)
        })
    });
    // Several map rounds, and re-protection's probes, under the verified workload.
    std::thread::sleep(Duration::from_secs(3));
    assert!(region.lost_servers().is_empty(), "servers that still serve were lost: {:?}", region.lost_servers());
    assert_eq!(region.min_live_fragments(), 2, "every chunk keeps both copies");
    checked.finish(&region, "two servers called dead while they serve");
    let stats = region.stats();
    assert_eq!((stats.failed_faults, stats.lost_servers), (0, 0), "{stats:?}");
    // A server that is really gone is still lost: killed, it no longer answers.
    let checked = Checked::start(&region);
    let handle = rack.servers.lock().unwrap()[2].take().expect("running");
    handle.shutdown().expect("server stops");
    wait_until("the pager to lose the killed server", Duration::from_secs(20), || region.lost_servers().len() == 1);
    checked.finish(&region, "after a real loss");
}

#[test]
fn an_ec_4_2_region_placed_by_the_controller_is_reprotected_through_it() {
    lose_a_server_and_reprotect("ec", "ec:4+2", FaultMode::Threads);
}

#[test]
fn a_replicate_2_region_placed_by_the_controller_is_reprotected_through_it() {
    lose_a_server_and_reprotect("rep", "replicate:2", FaultMode::Sigbus);
}

/// Places an `ec:4+2` region on the first six servers of a rack of seven, registers the
/// seventh, and has the controller drain server 0 under a verified workload: the pager
/// moves each fragment there to the slot's new server the controller places, and commits
/// it; the drained server ends with nothing, the map never shows two fragments of a chunk
/// on one server, and every page is as written.
#[test]
fn a_controller_drain_moves_an_ec_region_s_fragments_off_the_server() {
    let rack = Rack::start("drain", 7, 6);
    let region = rack.region("ec:4+2", FaultMode::Threads);
    let region_id = rack.status().regions[0].record.id.0;
    let checked = Checked::start(&region);
    std::thread::sleep(Duration::from_millis(300));
    let spare = rack.register(6);
    let drained = rack.ids.lock().unwrap()[&0];
    let before = stripes_in_map(&rack.map(region_id));
    let on_drained = before.iter().flatten().filter(|s| **s == drained).count();
    assert!(on_drained > 0, "the region uses server 0");
    rack.client().drain(drained).expect("drain accepted");
    wait_until("the pager to move every fragment off the drained server", Duration::from_secs(40), || {
        rack.slabs(0) == 0 && stripes_in_map(&rack.map(region_id)).iter().flatten().all(|s| *s != drained)
    });
    std::thread::sleep(Duration::from_millis(300));
    checked.finish(&region, "during the drain");
    only_moved(&before, &stripes_in_map(&rack.map(region_id)), drained, spare);
    let stats = region.stats();
    assert_eq!(stats.fragments_moved, on_drained as u64);
    assert_eq!((stats.failed_faults, stats.lost_servers), (0, 0), "{stats:?}");
    assert_eq!(region.min_live_fragments(), 6);
    assert_eq!(rack.slabs(6), on_drained as u64);
    let status = rack.status();
    let s0 = status.servers.iter().find(|s| s.record.id == drained).expect("drained server listed");
    assert_eq!(s0.mapped_slabs, 0, "the controller maps nothing on the drained server: {s0:?}");
    // every move was listed while it ran, and its commit ended it
    assert!(status.moves_in_flight.is_empty(), "{:?}", status.moves_in_flight);
    let (_, metrics) = rack.client().raw("GET", "/metrics", None, Duration::ZERO).expect("metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    for outcome in ["started", "committed"] {
        let line = format!("krak_moves_total{{outcome=\"{outcome}\"}} {on_drained}");
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
}

/// An `ec:4+2` region spread over eight servers; the policy switches to `pack`, whose
/// consolidation the pager carries out fragment by fragment under a verified workload:
/// a server empties, no stripe ever shares a server, and every page is as written.
#[test]
fn switching_to_pack_consolidates_an_ec_region_so_a_server_empties() {
    let rack = Rack::start("pack", 8, 8);
    let region = rack.region("ec:4+2", FaultMode::Threads);
    let region_id = rack.status().regions[0].record.id.0;
    let used = || (0..8).filter(|i| rack.slabs(*i) > 0).count();
    assert_eq!(used(), 8, "spread placed fragments on every server");
    let checked = Checked::start(&region);
    std::thread::sleep(Duration::from_millis(300));
    rack.client().set_policy("pack").expect("policy switched");
    wait_until("pack to empty a server", Duration::from_secs(40), || used() < 8);
    // Consolidation settles (with stripes six wide, at most two of eight servers can empty).
    let mut last = stripes_in_map(&rack.map(region_id));
    wait_until("consolidation to settle", Duration::from_secs(40), || {
        std::thread::sleep(Duration::from_millis(1500));
        let now = stripes_in_map(&rack.map(region_id));
        std::mem::replace(&mut last, now.clone()) == now
    });
    checked.finish(&region, "while fragments consolidated");
    assert!(last.iter().all(|s| distinct(s)), "a stripe shares a server: {last:?}");
    let emptied: Vec<_> = rack.status().servers.into_iter().filter(|s| s.empty).collect();
    assert!(!emptied.is_empty() && emptied.len() <= 2, "{emptied:?}");
    let stats = region.stats();
    assert!(stats.fragments_moved > 0);
    assert_eq!((stats.failed_faults, stats.lost_servers), (0, 0), "{stats:?}");
    assert_eq!(region.min_live_fragments(), 6);
    assert!(rack.status().moves_in_flight.is_empty());
}
