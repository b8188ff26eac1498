//! The etcd store against real etcd processes started by the testkit. These tests fail
//! (never skip) when etcd is not installed: install Debian's `etcd-server`.

use std::time::{Duration, Instant};

use krak_meta::{conformance, Leadership, MetaError, MetaStore, Op};
use krak_meta_etcd::testkit::EtcdCluster;
use krak_meta_etcd::{EtcdOptions, EtcdStore};

#[test]
fn conformance_on_one_member() {
    let t = Instant::now();
    let etcd = EtcdCluster::start(1);
    let started = t.elapsed();
    let store = etcd.store();
    conformance::run_all(&store, 1000);
    println!("etcd started in {started:?}; conformance suite in {:?}", t.elapsed() - started);
}

#[test]
fn list_pages_through_many_keys_at_one_revision() {
    let etcd = EtcdCluster::start(1);
    let store = etcd.store();
    // 2500 keys in 20 txns of 125: more than two pages of 1024.
    for b in 0..20 {
        let ops: Vec<Op> = (0..125)
            .map(|i| Op::Put { key: format!("/many/{:05}", b * 125 + i), value: vec![b as u8; 10], lease: None })
            .collect();
        assert!(store.txn(&[], &ops).unwrap());
    }
    store.put("/many0", b"outside").unwrap();
    let all = store.list("/many/").unwrap();
    assert_eq!(all.len(), 2500);
    assert!(all.windows(2).all(|w| w[0].key < w[1].key));
    assert_eq!(store.list("").unwrap().len(), 2501, "the empty prefix lists every key");
}

#[test]
fn requests_fail_with_unavailable_within_the_timeout_when_etcd_dies() {
    let mut etcd = EtcdCluster::start(1);
    let timeout = Duration::from_millis(1000);
    let store = EtcdStore::connect_with(
        &etcd.endpoints(),
        EtcdOptions { request_timeout: timeout, connect_timeout: Duration::from_millis(300) },
    )
    .unwrap();
    store.put("/k", b"v").unwrap();
    let lease = store.grant_lease(5000).unwrap();

    // Frozen (SIGSTOP): the port accepts, nothing answers. Calls must end by the timeout.
    etcd.pause(0);
    check_all_unavailable(&store, lease, timeout, "paused");
    etcd.resume(0);
    // (The writes sent to the frozen member may be applied now that it runs again.)
    let r = store.put("/k2", b"v2").expect("works again once resumed");
    assert_eq!(store.get("/k2").unwrap().unwrap().mod_revision, r);

    // Killed: connections are refused at once.
    etcd.kill(0);
    check_all_unavailable(&store, lease, timeout, "killed");
}

/// Every kind of call, all at once (so a frozen etcd costs one timeout, not eight): each
/// must end in `Unavailable` within the timeout.
fn check_all_unavailable(store: &EtcdStore, lease: krak_meta::LeaseId, timeout: Duration, how: &str) {
    type Call<'a> = Box<dyn Fn() -> Result<(), MetaError> + Send + Sync + 'a>;
    let calls: Vec<(&str, Call)> = vec![
        ("get", Box::new(|| store.get("/k").map(|_| ()))),
        ("list", Box::new(|| store.list("/").map(|_| ()))),
        ("put", Box::new(|| store.put("/k", b"w").map(|_| ()))),
        ("delete", Box::new(|| store.delete("/k").map(|_| ()))),
        ("txn", Box::new(|| store.txn(&[], &[Op::Delete { key: "/k".into() }]).map(|_| ()))),
        ("grant_lease", Box::new(|| store.grant_lease(2000).map(|_| ()))),
        ("keep_alive", Box::new(move || store.keep_alive(lease))),
        ("revoke", Box::new(move || store.revoke(lease))),
    ];
    std::thread::scope(|s| {
        let handles: Vec<_> = calls
            .iter()
            .map(|(name, call)| {
                s.spawn(move || {
                    let t = Instant::now();
                    let r = call();
                    (*name, r, t.elapsed())
                })
            })
            .collect();
        for h in handles {
            let (name, r, took) = h.join().unwrap();
            assert!(
                matches!(r, Err(MetaError::Unavailable { .. })),
                "{how} etcd: {name} must be Unavailable, got {r:?}"
            );
            assert!(
                took < timeout + Duration::from_millis(500),
                "{how} etcd: {name} took {took:?} (timeout {timeout:?})"
            );
        }
    });
}

#[test]
fn three_members_survive_the_loss_of_one() {
    let mut etcd = EtcdCluster::start(3);
    let store = etcd.store();
    for i in 0..20 {
        store.put(&format!("/ha/{i:02}"), format!("before {i}").as_bytes()).unwrap();
    }
    // The lease must outlast a write stuck in an election (up to the 3 s request timeout):
    // a controller's leader TTL should be well above its store's request timeout.
    let leader = Leadership::try_acquire(&store, "ctl-a", 10_000).unwrap().expect("first candidate leads");
    // Member 0 is the endpoint the store uses first: kill it (whether or not it is etcd's
    // raft leader; if it is, the others elect a new one within about a second).
    etcd.kill(0);
    let t = Instant::now();
    let mut first_ok = None;
    let mut errors = Vec::new();
    for i in 20..60 {
        let key = format!("/ha/{i:02}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // A write sent to a member during an election may fail: retry until the bound.
            match store.put(&key, format!("after {i}").as_bytes()) {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    errors.push(e.to_string());
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    panic!("put {key} still failing 5 s after one of three members died: {e}; before: {errors:?}")
                }
            }
        }
        first_ok.get_or_insert(t.elapsed());
    }
    let all = store.list("/ha/").unwrap();
    assert_eq!(all.len(), 60);
    for kv in &all {
        let i: usize = kv.key[4..].parse().unwrap();
        let want = if i < 20 { format!("before {i}") } else { format!("after {i}") };
        assert_eq!(kv.value, want.as_bytes());
    }
    // The leader's lease is kept alive through the surviving members.
    let held = t.elapsed();
    if let Err(e) = leader.renew(&store) {
        panic!("the leadership must survive the loss of one member: {e} ({held:?} after the kill; errors: {errors:?})");
    }
    assert!(Leadership::try_acquire(&store, "ctl-b", 10_000).unwrap().is_none());
    println!(
        "3 members, one killed: first write after {:?}, {} failed attempts before it",
        first_ok.unwrap(),
        errors.len()
    );
    // Two of three gone: no quorum. Calls end in Unavailable, not a hang.
    etcd.kill(1);
    let timeout = Duration::from_secs(1);
    let store = EtcdStore::connect_with(
        &etcd.endpoints(),
        EtcdOptions { request_timeout: timeout, connect_timeout: Duration::from_millis(300) },
    )
    .unwrap();
    let t = Instant::now();
    let r = store.put("/ha/noquorum", b"x");
    assert!(matches!(r, Err(MetaError::Unavailable { .. })), "without quorum a put must be Unavailable, got {r:?}");
    assert!(t.elapsed() < timeout + Duration::from_millis(500), "took {:?}", t.elapsed());
}
