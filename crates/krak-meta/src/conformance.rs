//! The [`MetaStore`] contract as executable checks, shared by every backend's tests.
//!
//! Each function takes a store, exercises one part of the contract and panics with a
//! message naming the broken rule. Functions that write take a key `prefix` and touch only
//! keys under it (they first delete whatever is left there from an earlier run), so several
//! can run at once on one store; [`leadership`] uses [`LEADER_KEY`] and must not run
//! concurrently with another [`leadership`] on the same store.
//!
//! Timing: lease checks take a `ttl_ms`; a backend may round a TTL up (etcd counts whole
//! seconds and has a minimum TTL), so a leased key must survive at least `ttl_ms` but may
//! take up to [`expiry_bound`] to vanish. [`run_all`] takes about `4 * ttl_ms` plus a few
//! seconds of slack: the lease and election checks run in parallel threads.

use std::time::{Duration, Instant};

use crate::{
    Condition, FencedStore, KeyValue, Leadership, LeaseId, MetaError, MetaStore, Op, LEADER_KEY, MAX_KEY_BYTES,
    MAX_TXN_OPS, MAX_VALUE_BYTES,
};

/// How long after a lease's last renewal its keys may take to vanish: `ttl_ms` rounded up
/// to whole seconds, twice, plus 2 s (etcd checks expiry every 500 ms and deletes through
/// raft).
pub fn expiry_bound(ttl_ms: u64) -> Duration {
    let secs = ttl_ms.div_ceil(1000).max(1);
    Duration::from_millis(secs * 2000 + 2000)
}

/// Every check, on keys under `/conformance/`: the quick ones one after the other, then the
/// lease and election checks in parallel threads.
pub fn run_all(store: &dyn MetaStore, ttl_ms: u64) {
    kv_basics(store, "/conformance/kv/");
    list_by_prefix(store, "/conformance/list/");
    revisions(store, "/conformance/rev/");
    txn_conditions(store, "/conformance/txn/");
    limits(store, "/conformance/limits/");
    lease_revoke(store, "/conformance/revoke/", ttl_ms);
    std::thread::scope(|s| {
        let handles = [
            s.spawn(|| lease_expires(store, "/conformance/expire/", ttl_ms)),
            s.spawn(|| lease_keep_alive(store, "/conformance/keepalive/", ttl_ms)),
            s.spawn(|| leadership(store, ttl_ms)),
        ];
        let mut failed = Vec::new();
        for h in handles {
            if let Err(e) = h.join() {
                failed.push(panic_message(&e));
            }
        }
        assert!(failed.is_empty(), "conformance checks failed: {failed:#?}");
    });
}

fn panic_message(e: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = e.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "(non-string panic)".into()
    }
}

fn ok<T>(what: &str, r: Result<T, MetaError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("contract: {what} must succeed, got error: {e}"),
    }
}

/// Deletes every key under `prefix`.
pub fn clear(store: &dyn MetaStore, prefix: &str) {
    for kv in ok("list", store.list(prefix)) {
        ok("delete", store.delete(&kv.key));
    }
    assert!(ok("list", store.list(prefix)).is_empty(), "contract: keys under {prefix:?} remain after deleting each");
}

fn get(store: &dyn MetaStore, key: &str) -> Option<KeyValue> {
    ok(&format!("get({key:?})"), store.get(key))
}

fn put(store: &dyn MetaStore, key: &str, value: &[u8]) -> u64 {
    ok(&format!("put({key:?})"), store.put(key, value))
}

fn put_leased(store: &dyn MetaStore, key: &str, value: &[u8], lease: LeaseId) -> bool {
    ok(
        &format!("txn put {key:?} with lease {:#x}", lease.0),
        store.txn(&[], &[Op::Put { key: key.into(), value: value.to_vec(), lease: Some(lease) }]),
    )
}

fn expect_lease_gone<T: std::fmt::Debug>(what: &str, lease: LeaseId, r: Result<T, MetaError>) {
    match r {
        Err(MetaError::LeaseGone(id)) => {
            assert_eq!(id, lease.0, "contract: {what}: LeaseGone must name the lease");
        }
        other => panic!("contract: {what} on a gone lease {:#x} must fail with LeaseGone, got {other:?}", lease.0),
    }
}

fn expect_invalid<T: std::fmt::Debug>(what: &str, r: Result<T, MetaError>) {
    match r {
        Err(MetaError::Invalid { .. }) => {}
        other => panic!("contract: {what} must be refused with Invalid, got {other:?}"),
    }
}

/// put, get, overwrite, delete; a missing key reads as `None`; delete says whether the key
/// existed.
pub fn kv_basics(store: &dyn MetaStore, prefix: &str) {
    clear(store, prefix);
    let k = format!("{prefix}a");
    assert_eq!(get(store, &k), None, "contract: a key never written reads as None");
    let r1 = put(store, &k, b"one");
    let kv = get(store, &k).unwrap_or_else(|| panic!("contract: {k:?} must be present after put"));
    assert_eq!(kv.key, k, "contract: get returns the key asked for");
    assert_eq!(kv.value, b"one", "contract: get returns the value put");
    assert_eq!(kv.mod_revision, r1, "contract: mod_revision is the revision put returned");
    let r2 = put(store, &k, b"two");
    assert!(r2 > r1, "contract: an overwrite gets a higher revision ({r2} after {r1})");
    assert_eq!(get(store, &k).map(|kv| kv.value), Some(b"two".to_vec()), "contract: an overwrite replaces the value");
    let empty = format!("{prefix}empty");
    put(store, &empty, b"");
    assert_eq!(get(store, &empty).map(|kv| kv.value), Some(Vec::new()), "contract: an empty value is a present key");
    let binary: Vec<u8> = (0..=255u8).collect();
    let bin = format!("{prefix}binary");
    put(store, &bin, &binary);
    assert_eq!(get(store, &bin).map(|kv| kv.value), Some(binary), "contract: values are arbitrary bytes");
    assert!(ok("delete", store.delete(&k)), "contract: delete of a present key returns true");
    assert_eq!(get(store, &k), None, "contract: a deleted key reads as None");
    assert!(!ok("delete", store.delete(&k)), "contract: delete of an absent key returns false");
    clear(store, prefix);
}

/// `list(prefix)` returns exactly the keys starting with the prefix, in byte order, with
/// their values and revisions.
pub fn list_by_prefix(store: &dyn MetaStore, prefix: &str) {
    clear(store, prefix);
    let names = ["b", "a", "c/2", "c/10", "c/1", "ca", "c", "z\u{e9}", "A", "a/"];
    let mut revs = std::collections::BTreeMap::new();
    for n in names {
        let k = format!("{prefix}{n}");
        revs.insert(k.clone(), put(store, &k, n.as_bytes()));
    }
    // Neighbours just outside the prefix must not show up.
    let trimmed = &prefix[..prefix.len() - 1];
    let outside = [trimmed.to_string(), format!("{trimmed}\u{7f}x"), format!("{trimmed}.x")];
    for o in &outside {
        put(store, o, b"outside");
    }
    let all = ok("list", store.list(prefix));
    let keys: Vec<&str> = all.iter().map(|kv| kv.key.as_str()).collect();
    let want: Vec<&str> = revs.keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, want, "contract: list returns every key under the prefix, in byte order, and nothing else");
    for kv in &all {
        assert_eq!(kv.value, &kv.key.as_bytes()[prefix.len()..], "contract: list returns each key's value");
        assert_eq!(kv.mod_revision, revs[&kv.key], "contract: list returns each key's mod_revision");
    }
    let c = ok("list", store.list(&format!("{prefix}c/")));
    let ckeys: Vec<String> = c.iter().map(|kv| kv.key[prefix.len()..].to_string()).collect();
    assert_eq!(ckeys, ["c/1", "c/10", "c/2"], "contract: list of a sub-prefix, in byte order");
    assert!(
        ok("list", store.list(&format!("{prefix}nothing/"))).is_empty(),
        "contract: empty prefix range lists nothing"
    );
    let exact = ok("list", store.list(&format!("{prefix}ca")));
    assert_eq!(exact.len(), 1, "contract: a prefix equal to a whole key lists that key");
    for o in &outside {
        ok("delete", store.delete(o));
    }
    clear(store, prefix);
}

/// Every write gets a revision higher than any before it; a key's `mod_revision` is the
/// revision of its last write; a transaction's puts share one revision.
pub fn revisions(store: &dyn MetaStore, prefix: &str) {
    clear(store, prefix);
    let mut last = 0;
    for i in 0..20 {
        let k = format!("{prefix}{}", i % 3);
        let r = put(store, &k, format!("{i}").as_bytes());
        assert!(r > last, "contract: revisions strictly increase ({r} after {last})");
        assert_ne!(r, 0, "contract: revision 0 means absent, never returned by put");
        let kv = get(store, &k).expect("present after put");
        assert_eq!(kv.mod_revision, r, "contract: mod_revision of {k:?} is the revision its put returned");
        last = r;
    }
    // A key not written since keeps its revision while others change.
    let still = get(store, &format!("{prefix}0")).expect("present").mod_revision;
    put(store, &format!("{prefix}1"), b"x");
    assert_eq!(
        get(store, &format!("{prefix}0")).unwrap().mod_revision,
        still,
        "contract: an untouched key keeps its mod_revision"
    );
    // A transaction's puts share one revision, higher than before.
    let (a, b) = (format!("{prefix}ta"), format!("{prefix}tb"));
    let ops = [
        Op::Put { key: a.clone(), value: b"a".to_vec(), lease: None },
        Op::Put { key: b.clone(), value: b"b".to_vec(), lease: None },
    ];
    assert!(ok("txn", store.txn(&[], &ops)), "contract: a txn without conditions applies");
    let (ra, rb) = (get(store, &a).unwrap().mod_revision, get(store, &b).unwrap().mod_revision);
    assert_eq!(ra, rb, "contract: puts of one txn share one revision");
    assert!(ra > last, "contract: a txn's revision is higher than earlier writes");
    let after = put(store, &a, b"again");
    assert!(after > ra, "contract: revisions keep increasing after a txn");
    // A delete then a put still moves forward.
    ok("delete", store.delete(&a));
    let again = put(store, &a, b"back");
    assert!(again > after, "contract: revision after delete and re-put is higher ({again} after {after})");
    clear(store, prefix);
}

/// Transactions with `ModRevision` conditions (0 = absent) apply all their ops or none, and
/// return false when a condition fails.
pub fn txn_conditions(store: &dyn MetaStore, prefix: &str) {
    clear(store, prefix);
    let (a, b, c) = (format!("{prefix}a"), format!("{prefix}b"), format!("{prefix}c"));
    let absent = |k: &str| Condition::ModRevision { key: k.into(), equals: 0 };
    let putop = |k: &str, v: &[u8]| Op::Put { key: k.into(), value: v.to_vec(), lease: None };

    // Create-if-absent succeeds once, then fails.
    assert!(
        ok("txn", store.txn(&[absent(&a)], &[putop(&a, b"1")])),
        "contract: txn on an absent key (equals 0) applies"
    );
    let ra = get(store, &a).expect("created by txn").mod_revision;
    assert!(
        !ok("txn", store.txn(&[absent(&a)], &[putop(&a, b"2")])),
        "contract: txn with a failing condition returns false"
    );
    assert_eq!(get(store, &a).unwrap().value, b"1", "contract: a failed txn writes nothing");

    // Compare-and-swap on the current revision.
    let cas = Condition::ModRevision { key: a.clone(), equals: ra };
    assert!(
        ok("txn", store.txn(std::slice::from_ref(&cas), &[putop(&a, b"3")])),
        "contract: txn with the current mod_revision applies"
    );
    assert!(!ok("txn", store.txn(&[cas], &[putop(&a, b"4")])), "contract: txn with a stale mod_revision fails");
    assert_eq!(get(store, &a).unwrap().value, b"3");
    let ra = get(store, &a).unwrap().mod_revision;

    // All or nothing: one failing condition among several, several ops.
    put(store, &b, b"b0");
    let rb = get(store, &b).unwrap().mod_revision;
    let conds = [
        Condition::ModRevision { key: a.clone(), equals: ra },
        Condition::ModRevision { key: b.clone(), equals: rb + 1000 },
        absent(&c),
    ];
    let ops = [putop(&a, b"X"), Op::Delete { key: b.clone() }, putop(&c, b"X")];
    assert!(!ok("txn", store.txn(&conds, &ops)), "contract: one failing condition fails the txn");
    assert_eq!(get(store, &a).unwrap().value, b"3", "contract: a failed txn changes no key (a)");
    assert_eq!(get(store, &b).unwrap().value, b"b0", "contract: a failed txn deletes no key (b)");
    assert_eq!(get(store, &c), None, "contract: a failed txn creates no key (c)");

    // The same with every condition true: every op applies.
    let conds = [
        Condition::ModRevision { key: a.clone(), equals: ra },
        Condition::ModRevision { key: b.clone(), equals: rb },
        absent(&c),
    ];
    assert!(ok("txn", store.txn(&conds, &ops)), "contract: a txn whose conditions all hold applies");
    assert_eq!(get(store, &a).unwrap().value, b"X", "contract: every op of a txn applies (a)");
    assert_eq!(get(store, &b), None, "contract: every op of a txn applies (delete b)");
    assert_eq!(get(store, &c).unwrap().value, b"X", "contract: every op of a txn applies (c)");

    // A condition on a deleted key sees it as absent; a delete of an absent key in a txn is fine.
    assert!(
        ok("txn", store.txn(&[absent(&b)], &[Op::Delete { key: b.clone() }])),
        "contract: a deleted key is absent (0)"
    );
    // Conditions only: applies nothing, reports the comparison.
    assert!(ok("txn", store.txn(&[absent(&b)], &[])), "contract: a txn without ops reports its conditions");
    assert!(!ok("txn", store.txn(&[absent(&a)], &[])), "contract: a txn without ops reports its conditions");

    // Racing create-if-absent from several threads: exactly one wins.
    let race = format!("{prefix}race");
    let wins = std::sync::atomic::AtomicUsize::new(0);
    let barrier = std::sync::Barrier::new(4);
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let (race, wins, barrier) = (&race, &wins, &barrier);
            s.spawn(move || {
                barrier.wait();
                if ok("txn", store.txn(&[absent(race)], &[putop(race, &[t])])) {
                    wins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(wins.into_inner(), 1, "contract: of racing create-if-absent txns exactly one applies");
    clear(store, prefix);
}

/// Bounds: values up to [`MAX_VALUE_BYTES`] are stored, larger refused with `Invalid` (in
/// `put` and in `txn`); keys of [`MAX_KEY_BYTES`] work, longer or empty ones are refused;
/// at most [`MAX_TXN_OPS`] ops per txn, no key written twice in one txn. A refused write
/// changes nothing.
pub fn limits(store: &dyn MetaStore, prefix: &str) {
    clear(store, prefix);
    let k = format!("{prefix}big");
    let big: Vec<u8> = (0..MAX_VALUE_BYTES).map(|i| (i * 7 + i / 4096) as u8).collect();
    put(store, &k, &big);
    assert!(get(store, &k).unwrap().value == big, "contract: a value of MAX_VALUE_BYTES reads back intact");
    let too_big = vec![1u8; MAX_VALUE_BYTES + 1];
    expect_invalid("put of MAX_VALUE_BYTES + 1", store.put(&k, &too_big));
    expect_invalid(
        "txn put of MAX_VALUE_BYTES + 1",
        store.txn(&[], &[Op::Put { key: format!("{prefix}other"), value: too_big, lease: None }]),
    );
    assert!(get(store, &k).unwrap().value == big, "contract: a refused put leaves the old value");
    assert_eq!(get(store, &format!("{prefix}other")), None, "contract: a refused txn writes nothing");

    let long_key = format!("{prefix}{}", "k".repeat(MAX_KEY_BYTES - prefix.len()));
    put(store, &long_key, b"long");
    assert_eq!(get(store, &long_key).unwrap().value, b"long", "contract: a key of MAX_KEY_BYTES works");
    let too_long = format!("{long_key}k");
    expect_invalid("put with a key of MAX_KEY_BYTES + 1", store.put(&too_long, b"x"));
    expect_invalid("put with the empty key", store.put("", b"x"));

    let many: Vec<Op> =
        (0..=MAX_TXN_OPS).map(|i| Op::Put { key: format!("{prefix}many/{i}"), value: vec![], lease: None }).collect();
    expect_invalid("txn of MAX_TXN_OPS + 1 ops", store.txn(&[], &many));
    assert!(ok("txn", store.txn(&[], &many[..MAX_TXN_OPS])), "contract: a txn of MAX_TXN_OPS ops applies");
    assert_eq!(ok("list", store.list(&format!("{prefix}many/"))).len(), MAX_TXN_OPS);
    let dup = [
        Op::Put { key: format!("{prefix}dup"), value: b"1".to_vec(), lease: None },
        Op::Delete { key: format!("{prefix}dup") },
    ];
    expect_invalid("txn writing one key twice", store.txn(&[], &dup));
    clear(store, prefix);
}

/// Keys put with a lease vanish after the TTL passes without keep-alive (not before);
/// keep-alive, revoke and a put on the expired lease then fail with `LeaseGone`.
pub fn lease_expires(store: &dyn MetaStore, prefix: &str, ttl_ms: u64) {
    clear(store, prefix);
    let (k, plain) = (format!("{prefix}leased"), format!("{prefix}plain"));
    put(store, &plain, b"stays");
    let start = Instant::now();
    let lease = ok("grant_lease", store.grant_lease(ttl_ms));
    assert!(put_leased(store, &k, b"v", lease), "contract: a put with a live lease applies");
    let r = put_leased(store, &format!("{k}2"), b"v2", lease);
    assert!(r, "contract: several keys can share a lease");
    assert!(get(store, &k).is_some(), "contract: a leased key is present right after put");
    std::thread::sleep(Duration::from_millis(ttl_ms / 2));
    assert!(get(store, &k).is_some(), "contract: a leased key is present before its TTL passes");
    let bound = expiry_bound(ttl_ms);
    let gone_at = loop {
        let present = get(store, &k).is_some() || get(store, &format!("{k}2")).is_some();
        let elapsed = start.elapsed();
        if !present {
            break elapsed;
        }
        assert!(
            elapsed < bound,
            "contract: leased keys must vanish once the TTL ({ttl_ms} ms) passes; present after {elapsed:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        gone_at >= Duration::from_millis(ttl_ms),
        "contract: leased keys vanished after {gone_at:?}, before the TTL of {ttl_ms} ms"
    );
    assert_eq!(get(store, &format!("{k}2")), None, "contract: every key of an expired lease vanishes");
    assert!(get(store, &plain).is_some(), "contract: lease expiry leaves keys without a lease alone");
    expect_lease_gone("keep_alive", lease, store.keep_alive(lease));
    expect_lease_gone("revoke", lease, store.revoke(lease));
    expect_lease_gone(
        "txn put",
        lease,
        store.txn(&[], &[Op::Put { key: k.clone(), value: vec![], lease: Some(lease) }]),
    );
    assert_eq!(get(store, &k), None, "contract: a put refused for a gone lease writes nothing");
    clear(store, prefix);
}

/// Keys of a lease kept alive survive well past the TTL; revoke then deletes them at once.
pub fn lease_keep_alive(store: &dyn MetaStore, prefix: &str, ttl_ms: u64) {
    clear(store, prefix);
    let k = format!("{prefix}kept");
    let lease = ok("grant_lease", store.grant_lease(ttl_ms));
    assert!(put_leased(store, &k, b"v", lease), "contract: a put with a live lease applies");
    let until = Instant::now() + Duration::from_millis(ttl_ms * 5 / 2);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis((ttl_ms / 4).max(10)));
        ok("keep_alive on a live lease", store.keep_alive(lease));
        assert!(get(store, &k).is_some(), "contract: a key whose lease is kept alive stays past the TTL");
    }
    ok("revoke", store.revoke(lease));
    assert_eq!(get(store, &k), None, "contract: revoke deletes the lease's keys at once");
    expect_lease_gone("keep_alive after revoke", lease, store.keep_alive(lease));
    clear(store, prefix);
}

/// Revoke deletes every key of the lease and nothing else, at once; a key overwritten
/// without the lease is detached from it.
pub fn lease_revoke(store: &dyn MetaStore, prefix: &str, ttl_ms: u64) {
    clear(store, prefix);
    let lease = ok("grant_lease", store.grant_lease(ttl_ms.max(10_000)));
    let other = ok("grant_lease", store.grant_lease(ttl_ms.max(10_000)));
    assert_ne!(lease, other, "contract: each grant is a new lease");
    for i in 0..3 {
        assert!(put_leased(store, &format!("{prefix}l/{i}"), b"v", lease));
    }
    assert!(put_leased(store, &format!("{prefix}other"), b"v", other));
    // Overwritten without a lease: no longer attached.
    assert!(put_leased(store, &format!("{prefix}detached"), b"v", lease));
    put(store, &format!("{prefix}detached"), b"plain now");
    ok("revoke", store.revoke(lease));
    assert!(
        ok("list", store.list(&format!("{prefix}l/"))).is_empty(),
        "contract: revoke deletes every key of the lease"
    );
    assert!(get(store, &format!("{prefix}other")).is_some(), "contract: revoke leaves other leases' keys alone");
    assert_eq!(
        get(store, &format!("{prefix}detached")).map(|kv| kv.value),
        Some(b"plain now".to_vec()),
        "contract: a key overwritten without a lease no longer belongs to it"
    );
    expect_lease_gone("revoke twice", lease, store.revoke(lease));
    ok("revoke", store.revoke(other));
    assert_eq!(get(store, &format!("{prefix}other")), None);
    clear(store, prefix);
}

/// Two candidates: exactly one wins, also when racing; after the winner resigns the other
/// wins; after the winner's lease lapses (no renewal) the other wins within
/// [`expiry_bound`], and the old winner's renew fails.
pub fn leadership(store: &dyn MetaStore, ttl_ms: u64) {
    let bound = expiry_bound(ttl_ms);
    let start = Instant::now();
    while ok("get leader", Leadership::current(store)).is_some() {
        assert!(start.elapsed() < bound, "conformance: {LEADER_KEY} is held by someone else; run leadership alone");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Sequential: A wins, B loses, B sees A.
    let a = ok("try_acquire", Leadership::try_acquire(store, "cand-a", ttl_ms))
        .expect("contract: the first candidate wins");
    assert_eq!(a.id(), "cand-a");
    let b = ok("try_acquire", Leadership::try_acquire(store, "cand-b", ttl_ms));
    assert!(b.is_none(), "contract: a second candidate loses while the leader holds");
    assert_eq!(
        ok("current", Leadership::current(store)).as_deref(),
        Some("cand-a"),
        "contract: current names the winner"
    );
    ok("renew by the leader", a.renew(store));
    // A resigns: B wins at once.
    ok("resign", a.resign(store));
    let b = ok("try_acquire", Leadership::try_acquire(store, "cand-b", ttl_ms))
        .expect("contract: after the leader resigns the other candidate wins");
    assert_eq!(ok("current", Leadership::current(store)).as_deref(), Some("cand-b"));
    // B lapses (no renewal): A wins within the bound; B's renew then fails.
    let lapse = Instant::now();
    let a = loop {
        if let Some(a) = ok("try_acquire", Leadership::try_acquire(store, "cand-a", ttl_ms)) {
            break a;
        }
        assert!(lapse.elapsed() < bound, "contract: after the leader's lease lapses the other wins within {bound:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        lapse.elapsed() >= Duration::from_millis(ttl_ms / 2),
        "contract: the other candidate won after {:?}, well before the leader's TTL",
        lapse.elapsed()
    );
    assert!(b.renew(store).is_err(), "contract: renew by a leader whose lease lapsed fails");
    // Fencing: the deposed leader's writes are refused, the new leader's applied.
    let fenced_b = FencedStore::new(store, b.revision());
    let fenced_a = FencedStore::new(store, a.revision());
    let key = "/conformance/fence/k";
    match fenced_b.put(key, b"from the deposed leader") {
        Err(MetaError::NotLeader(_)) => {}
        other => panic!("contract: a deposed leader's fenced put fails with NotLeader, got {other:?}"),
    }
    match fenced_b.txn(&[], &[Op::Delete { key: key.into() }]) {
        Err(MetaError::NotLeader(_)) => {}
        other => panic!("contract: a deposed leader's fenced txn fails with NotLeader, got {other:?}"),
    }
    assert!(ok("get", store.get(key)).is_none(), "contract: nothing of the deposed leader was written");
    let r = ok("fenced put by the leader", fenced_a.put(key, b"from the leader"));
    let kv = ok("get", store.get(key)).expect("the leader's fenced put is applied");
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"from the leader"[..], r));
    let other = [Condition::ModRevision { key: key.into(), equals: 0 }];
    assert!(
        !ok("fenced txn", fenced_a.txn(&other, &[])),
        "contract: a leader's own failed condition is false, not NotLeader"
    );
    assert!(ok("fenced delete", fenced_a.delete(key)));
    ok("resign", a.resign(store));
    // Racing candidates: exactly one wins, a few rounds.
    for round in 0..3 {
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<Option<Leadership>> = std::thread::scope(|s| {
            let hs: Vec<_> = ["race-a", "race-b"]
                .into_iter()
                .map(|id| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        ok("try_acquire", Leadership::try_acquire(store, id, ttl_ms))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("candidate thread")).collect()
        });
        let winners: Vec<Leadership> = results.into_iter().flatten().collect();
        assert_eq!(winners.len(), 1, "contract: of two racing candidates exactly one wins (round {round})");
        let w = winners.into_iter().next().expect("one winner");
        assert_eq!(ok("current", Leadership::current(store)).as_deref(), Some(w.id()));
        ok("resign", w.resign(store));
        assert_eq!(ok("current", Leadership::current(store)), None, "contract: resign frees the leader key at once");
    }
}

/// `threads` threads put `per_thread` keys each under `prefix` at once; afterwards (and
/// after a reopen: [`check_concurrent_writes`]) every key holds its own value, and the
/// revision moved by one per write.
pub fn concurrent_writes(store: &dyn MetaStore, prefix: &str, threads: u32, per_thread: u32) {
    clear(store, prefix);
    let before = put(store, &format!("{prefix}start"), b"");
    std::thread::scope(|sc| {
        for t in 0..threads {
            sc.spawn(move || {
                for i in 0..per_thread {
                    put(store, &format!("{prefix}t{t}/{i}"), format!("{t}:{i}").as_bytes());
                }
            });
        }
    });
    let after = put(store, &format!("{prefix}end"), b"");
    assert_eq!(after - before, u64::from(threads * per_thread) + 1, "contract: one revision per write");
    check_concurrent_writes(store, prefix, threads, per_thread);
}

/// Checks what [`concurrent_writes`] wrote.
pub fn check_concurrent_writes(store: &dyn MetaStore, prefix: &str, threads: u32, per_thread: u32) {
    for t in 0..threads {
        let l = ok("list", store.list(&format!("{prefix}t{t}/")));
        assert_eq!(l.len(), per_thread as usize, "contract: every concurrent write of thread {t} is there");
        for kv in l {
            let i = kv.key.rsplit('/').next().unwrap_or_default();
            assert_eq!(kv.value, format!("{t}:{i}").as_bytes(), "contract: {} holds its own value", kv.key);
        }
    }
}
