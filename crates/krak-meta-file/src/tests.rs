use super::*;
use crate::codec::RECORD_HEADER;
use krak_meta::conformance;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("krak-meta-file-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dump(s: &FileStore) -> Vec<(String, Vec<u8>, u64)> {
    s.list("").unwrap().into_iter().map(|kv| (kv.key, kv.value, kv.mod_revision)).collect()
}

#[test]
fn conformance_suite() {
    let d = TempDir::new("conf");
    let s = FileStore::open(&d.0).unwrap();
    conformance::run_all(&s, 500);
    // And again on the reopened store (leftover keys cleared by each check).
    drop(s);
    let s = FileStore::open(&d.0).unwrap();
    conformance::kv_basics(&s, "/again/");
    conformance::txn_conditions(&s, "/again/");
}

#[test]
fn everything_survives_reopen() {
    let d = TempDir::new("reopen");
    let s = FileStore::open(&d.0).unwrap();
    for i in 0..100 {
        s.put(&format!("/k/{i:03}"), format!("v{i}").as_bytes()).unwrap();
    }
    for i in (0..100).step_by(3) {
        assert!(s.delete(&format!("/k/{i:03}")).unwrap());
    }
    let r = s.get("/k/001").unwrap().unwrap().mod_revision;
    assert!(s
        .txn(
            &[Condition::ModRevision { key: "/k/001".into(), equals: r }],
            &[
                Op::Put { key: "/k/001".into(), value: b"txn".to_vec(), lease: None },
                Op::Delete { key: "/k/002".into() },
                Op::Put { key: "/t".into(), value: vec![9; 5000], lease: None },
            ],
        )
        .unwrap());
    let before = dump(&s);
    let rev = s.revision();
    drop(s);
    let s = FileStore::open(&d.0).unwrap();
    assert_eq!(dump(&s), before);
    assert_eq!(s.revision(), rev);
    assert_eq!(s.recovery().wal_records, rev, "every write was one record");
    assert_eq!(s.recovery().torn_tail_bytes, 0);
    assert!(s.put("/k/new", b"x").unwrap() > rev, "revisions keep increasing after reopen");
    // The open compacted: a second reopen reads the snapshot.
    drop(s);
    let s = FileStore::open(&d.0).unwrap();
    assert_eq!(s.recovery().snapshot_keys, before.len());
    assert_eq!(s.recovery().wal_records, 1);
    assert_eq!(s.get("/k/new").unwrap().unwrap().value, b"x");
}

#[test]
fn leased_keys_are_gone_after_reopen() {
    let d = TempDir::new("leased");
    let s = FileStore::open(&d.0).unwrap();
    s.put("/plain", b"p").unwrap();
    s.put("/over", b"durable").unwrap();
    let l = s.grant_lease(60_000).unwrap();
    for k in ["/leased", "/over"] {
        assert!(s.txn(&[], &[Op::Put { key: k.into(), value: b"l".to_vec(), lease: Some(l) }]).unwrap());
    }
    drop(s);
    let s = FileStore::open(&d.0).unwrap();
    assert_eq!(s.recovery().dropped_leased_keys, 2);
    assert_eq!(s.get("/plain").unwrap().unwrap().value, b"p");
    assert_eq!(s.get("/leased").unwrap(), None);
    assert_eq!(s.get("/over").unwrap(), None, "a leased overwrite ends like an expiry: the key is gone");
    assert!(matches!(s.keep_alive(l), Err(MetaError::LeaseGone(_))), "leases do not survive a reopen");
    drop(s);
    let s = FileStore::open(&d.0).unwrap();
    assert_eq!(s.get("/leased").unwrap(), None, "the drop is permanent");
    assert_eq!(s.recovery().dropped_leased_keys, 0);
}

/// Writes three records without compaction and returns the log bytes and where the last
/// record starts.
fn three_records(d: &Path) -> (Vec<u8>, usize) {
    let s = FileStore::open(d).unwrap();
    s.put("/a", b"1").unwrap();
    s.put("/b", &[2; 300]).unwrap();
    let before_last = s.wal_bytes() as usize;
    s.put("/c", &[3; 200]).unwrap();
    drop(s);
    let wal = std::fs::read(d.join(WAL)).unwrap();
    (wal, before_last)
}

#[test]
fn torn_last_record_is_cut_off_at_every_length() {
    let d = TempDir::new("torn-src");
    let (wal, before_last) = three_records(&d.0);
    let mut tails: Vec<(String, Vec<u8>)> =
        (1..wal.len() - before_last).map(|cut| (format!("cut at {cut}"), wal[..before_last + cut].to_vec())).collect();
    let mut zeros = wal[..before_last].to_vec();
    zeros.extend_from_slice(&[0; 4096]);
    tails.push(("zero-filled tail".into(), zeros));
    let mut flipped = wal.clone();
    *flipped.last_mut().unwrap() ^= 0xff;
    tails.push(("last byte flipped, cut as asked".into(), flipped));
    for (what, bytes) in tails {
        let t = TempDir::new("torn");
        std::fs::write(t.0.join(WAL), &bytes).unwrap();
        let opts = FileStoreOptions { cut_damaged_tail: what.contains("as asked"), ..Default::default() };
        let s = FileStore::open_with(&t.0, opts).unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
        assert_eq!(s.recovery().torn_tail_bytes as usize, bytes.len() - before_last, "{what}");
        assert_eq!(s.recovery().wal_records, 2, "{what}");
        assert_eq!(s.get("/a").unwrap().unwrap().value, b"1", "{what}");
        assert_eq!(s.get("/b").unwrap().unwrap().value, vec![2; 300], "{what}");
        assert_eq!(s.get("/c").unwrap(), None, "{what}");
        // The store goes on: new writes land after the cut and survive.
        s.put("/d", b"after").unwrap();
        drop(s);
        let s = FileStore::open(&t.0).unwrap();
        assert_eq!(s.get("/d").unwrap().unwrap().value, b"after", "{what}");
        assert_eq!(s.recovery().torn_tail_bytes, 0, "{what}");
    }
}

#[test]
fn a_whole_damaged_last_record_is_a_refusal_that_changes_nothing() {
    let d = TempDir::new("flip-last");
    let (wal, before_last) = three_records(&d.0);
    // In its CRC or its payload. (A flip in the *last* record's length that points past the
    // end of the file is indistinguishable from a write cut short, and is cut off as one.)
    for at in [before_last + 5, before_last + RECORD_HEADER + 5, wal.len() - 1] {
        let mut bad = wal.clone();
        bad[at] ^= 0x20;
        std::fs::write(d.0.join(WAL), &bad).unwrap();
        match FileStore::open(&d.0) {
            Err(MetaError::Corrupt { what, .. }) => {
                assert!(what.contains("whole but damaged") && what.contains("--store-cut-damaged-tail"), "{what}")
            }
            other => panic!("flip at {at}: want Corrupt, got {other:?}"),
        }
        assert_eq!(std::fs::read(d.0.join(WAL)).unwrap(), bad, "flip at {at}: the log is untouched");
    }
    // Undamaged again, everything is there.
    std::fs::write(d.0.join(WAL), &wal).unwrap();
    let s = FileStore::open(&d.0).unwrap();
    assert_eq!(s.get("/c").unwrap().unwrap().value, vec![3; 200]);
}

#[test]
fn a_damaged_length_never_cuts_off_the_records_after_it() {
    let d = TempDir::new("flip-length");
    let s = FileStore::open(&d.0).unwrap();
    let first = s.wal_bytes() as usize; // the base record
    for i in 0..6u8 {
        s.put(&format!("/k/{i}"), &[i; 100]).unwrap();
    }
    drop(s);
    let wal = std::fs::read(d.0.join(WAL)).unwrap();
    // The length of the first write grows past the end of the log, or past any record's
    // bound: either way the records after it are whole, so it is no torn write.
    for (byte, flip) in [(2, 0x01), (3, 0x80)] {
        let mut bad = wal.clone();
        bad[first + byte] ^= flip;
        std::fs::write(d.0.join(WAL), &bad).unwrap();
        for cut in [false, true] {
            let opts = FileStoreOptions { cut_damaged_tail: cut, ..Default::default() };
            match FileStore::open_with(&d.0, opts) {
                Err(MetaError::Corrupt { .. }) => {}
                other => panic!("length byte {byte} flipped (cut {cut}): want Corrupt, got {other:?}"),
            }
            assert_eq!(std::fs::read(d.0.join(WAL)).unwrap(), bad, "the log is untouched");
        }
    }
}

#[test]
fn a_missing_snapshot_or_a_deleted_or_emptied_log_is_a_refusal() {
    let fill = |d: &Path| {
        let s = FileStore::open(d).unwrap();
        for i in 0..5u8 {
            s.put(&format!("/k/{i}"), &[i; 10]).unwrap();
        }
        s.compact().unwrap();
        s.put("/k/after", b"x").unwrap();
    };
    let refused = |d: &Path, what: &str| match FileStore::open(d) {
        Err(MetaError::Corrupt { what: m, .. }) => assert!(m.contains(what) && m.contains("backup"), "{m}"),
        other => panic!("want Corrupt naming {what:?}, got {other:?}"),
    };
    let d = TempDir::new("no-snapshot");
    fill(&d.0);
    std::fs::remove_file(d.0.join(SNAPSHOT)).unwrap();
    refused(&d.0, "the snapshot is missing");
    for (tag, damage) in [("deleted", true), ("emptied", false)] {
        let d = TempDir::new(tag);
        fill(&d.0);
        if damage {
            std::fs::remove_file(d.0.join(WAL)).unwrap();
        } else {
            std::fs::write(d.0.join(WAL), b"").unwrap();
        }
        refused(&d.0, "the log was deleted or emptied");
    }
    // An older snapshot put back in place of the current one.
    let d = TempDir::new("old-snapshot");
    let s = FileStore::open(&d.0).unwrap();
    s.put("/a", b"1").unwrap();
    s.compact().unwrap();
    let old = std::fs::read(d.0.join(SNAPSHOT)).unwrap();
    s.put("/b", b"2").unwrap();
    s.compact().unwrap();
    drop(s);
    std::fs::write(d.0.join(SNAPSHOT), old).unwrap();
    refused(&d.0, "replaced by an older one");
    // A new store, and one reopened many times, open fine.
    let d = TempDir::new("fresh");
    for _ in 0..3 {
        let s = FileStore::open(&d.0).unwrap();
        s.put("/n", b"v").unwrap();
    }
    assert_eq!(FileStore::open(&d.0).unwrap().get("/n").unwrap().unwrap().value, b"v");
}

#[test]
fn damage_before_the_last_record_is_corrupt_not_cut() {
    let d = TempDir::new("corrupt");
    let (mut wal, _) = three_records(&d.0);
    wal[RECORD_HEADER + 3] ^= 1; // inside the first record
    std::fs::write(d.0.join(WAL), &wal).unwrap();
    match FileStore::open(&d.0) {
        Err(MetaError::Corrupt { what: m, .. }) => assert!(m.contains("offset 0"), "{m}"),
        other => panic!("damage in the middle of the log must be Corrupt, got {other:?}"),
    }
    // A damaged snapshot too.
    let d = TempDir::new("corrupt-snap");
    let s = FileStore::open(&d.0).unwrap();
    s.put("/a", b"1").unwrap();
    s.compact().unwrap();
    drop(s);
    let mut snap = std::fs::read(d.0.join(SNAPSHOT)).unwrap();
    snap[20] ^= 4;
    std::fs::write(d.0.join(SNAPSHOT), &snap).unwrap();
    assert!(matches!(FileStore::open(&d.0), Err(MetaError::Corrupt { .. })));
}

#[test]
fn compaction_keeps_the_log_bounded() {
    let d = TempDir::new("compact");
    let opts = FileStoreOptions { compact_wal_bytes: 64 << 10, ..Default::default() };
    let s = FileStore::open_with(&d.0, opts.clone()).unwrap();
    let mut max_wal = 0;
    for i in 0..3000u32 {
        s.put(&format!("/k/{}", i % 50), &[i as u8; 1000]).unwrap();
        max_wal = max_wal.max(s.wal_bytes());
    }
    assert!(s.compactions() >= 10, "{} compactions", s.compactions());
    // The log never exceeds the threshold (or the snapshot, ~50 KB) by more than one record.
    assert!(max_wal < (64 << 10) + 2000, "log grew to {max_wal} bytes");
    let before = dump(&s);
    drop(s);
    let s = FileStore::open_with(&d.0, opts).unwrap();
    assert_eq!(dump(&s), before);
    let files: u64 = std::fs::read_dir(&d.0).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(files < 200 << 10, "store files take {files} bytes for ~50 KB of data");
}

#[test]
fn crash_between_snapshot_rename_and_log_replacement() {
    let d = TempDir::new("rename");
    let s = FileStore::open(&d.0).unwrap();
    for i in 0..20 {
        s.put(&format!("/k/{i}"), &[i; 10]).unwrap();
    }
    let before = dump(&s);
    let wal = std::fs::read(d.0.join(WAL)).unwrap();
    s.compact().unwrap();
    drop(s);
    // As if the crash came after the new snapshot's rename, before the new log's (which
    // was left half-written as wal.tmp): the old log, whose records the snapshot holds.
    std::fs::write(d.0.join(WAL), &wal).unwrap();
    std::fs::write(d.0.join(WAL_TMP), b"half a base record").unwrap();
    let s = FileStore::open(&d.0).unwrap();
    assert_eq!(s.recovery().wal_records_skipped, 20);
    assert_eq!(s.recovery().wal_records, 0);
    assert_eq!(dump(&s), before);
    assert!(!d.0.join(WAL_TMP).exists(), "the leftover is removed");
    s.put("/k/after", b"x").unwrap();
    drop(s);
    assert_eq!(FileStore::open(&d.0).unwrap().get("/k/after").unwrap().unwrap().value, b"x");
}

#[test]
fn one_process_at_a_time_and_bounds() {
    let d = TempDir::new("lock");
    let s = FileStore::open(&d.0).unwrap();
    match FileStore::open(&d.0) {
        Err(MetaError::Unavailable { what: m, .. }) => assert!(m.contains("locked"), "{m}"),
        other => panic!("a second open must be refused, got {other:?}"),
    }
    assert!(matches!(s.grant_lease(0), Err(MetaError::Invalid { .. })));
    assert!(matches!(s.grant_lease(MAX_TTL_MS + 1), Err(MetaError::Invalid { .. })));
    assert!(matches!(s.put("/a\0b", b""), Err(MetaError::Invalid { .. })));
    drop(s);
    FileStore::open(&d.0).expect("reopen once the first is closed");
}

#[test]
fn many_threads_write_and_everything_survives() {
    let d = TempDir::new("threads");
    let s = FileStore::open_with(&d.0, FileStoreOptions { compact_wal_bytes: 32 << 10, ..Default::default() }).unwrap();
    std::thread::scope(|sc| {
        for t in 0..4 {
            let s = &s;
            sc.spawn(move || {
                for i in 0..200 {
                    s.put(&format!("/t{t}/{i}"), format!("{t}:{i}").as_bytes()).unwrap();
                }
            });
        }
    });
    assert_eq!(s.revision(), 800);
    drop(s);
    let s = FileStore::open(&d.0).unwrap();
    for t in 0..4 {
        let l = s.list(&format!("/t{t}/")).unwrap();
        assert_eq!(l.len(), 200);
        for kv in l {
            let i = kv.key.rsplit('/').next().unwrap();
            assert_eq!(kv.value, format!("{t}:{i}").as_bytes());
        }
    }
}

#[test]
fn a_new_store_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let d = TempDir::new("modes");
    let dir = d.0.join("state");
    let s = FileStore::open(&dir).unwrap();
    s.put("/k", b"v").unwrap();
    s.compact().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the store's directory");
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(files.len() >= 3, "lock, log and snapshot: {files:?}");
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}
