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
/// record starts and ends.
fn three_records(d: &Path) -> (Vec<u8>, usize, usize) {
    let s = FileStore::open(d).unwrap();
    s.put("/a", b"1").unwrap();
    s.put("/b", &[2; 300]).unwrap();
    let before_last = s.wal_bytes() as usize;
    s.put("/c", &[3; 200]).unwrap();
    let end = s.wal_bytes() as usize;
    drop(s);
    let wal = std::fs::read(d.join(WAL)).unwrap();
    assert_eq!(wal.len() as u64 % codec::LOG_STEP_BYTES, 0, "the log is preallocated");
    assert!(wal[end..].iter().all(|&b| b == 0), "zeros follow the last record");
    (wal, before_last, end)
}

#[test]
fn a_torn_last_write_is_cut_off_at_every_length() {
    let d = TempDir::new("torn-src");
    let (wal, before_last, end) = three_records(&d.0);
    // A crash tears a write: a prefix of the record reached the disk, the rest of the file
    // is still the zeros it was grown with.
    let mut tails: Vec<(String, Vec<u8>, bool)> = (0..end - before_last)
        .map(|cut| {
            let mut bytes = wal.clone();
            bytes[before_last + cut..end].fill(0);
            // Once the payload is through (only the trailer missing, or zeros that were zero
            // anyway) the write is whole.
            let payload_end = end - codec::RECORD_TRAILER;
            let whole = bytes[..payload_end] == wal[..payload_end];
            (format!("torn after {cut} bytes"), bytes, whole)
        })
        .collect();
    let mut flipped = wal.clone();
    flipped[end - codec::RECORD_TRAILER - 1] ^= 0xff;
    tails.push(("last payload byte flipped, cut as asked".into(), flipped, false));
    for (what, bytes, whole) in tails {
        let t = TempDir::new("torn");
        std::fs::write(t.0.join(WAL), &bytes).unwrap();
        let opts = FileStoreOptions { cut_damaged_tail: what.contains("as asked"), ..Default::default() };
        let s = FileStore::open_with(&t.0, opts).unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
        let torn = bytes[before_last..].iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        assert_eq!(s.recovery().torn_tail_bytes as usize, if whole { 0 } else { torn }, "{what}");
        assert_eq!(s.recovery().wal_records, 2 + u64::from(whole), "{what}");
        assert_eq!(s.get("/a").unwrap().unwrap().value, b"1", "{what}");
        assert_eq!(s.get("/b").unwrap().unwrap().value, vec![2; 300], "{what}");
        assert_eq!(s.get("/c").unwrap().map(|kv| kv.value), whole.then(|| vec![3; 200]), "{what}");
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
    let (wal, before_last, end) = three_records(&d.0);
    // In its CRC, its payload, or its length: shorter, longer (still inside the file), or
    // past the end of the file. Its trailer is there, so it was written whole.
    let payload = before_last + RECORD_HEADER;
    for (at, flip) in [
        (before_last + 5, 0x20),
        (payload + 5, 0x20),
        (end - 9, 0x20),
        (before_last, 0x80),
        (before_last + 1, 0x20),
        (before_last + 3, 0x40),
    ] {
        let mut bad = wal.clone();
        bad[at] ^= flip;
        std::fs::write(d.0.join(WAL), &bad).unwrap();
        match FileStore::open(&d.0) {
            Err(MetaError::Corrupt { what, .. }) => {
                assert!(what.contains("whole but damaged") && what.contains("--store-cut-damaged-tail"), "{what}")
            }
            other => panic!("flip at {at}: want Corrupt, got {other:?}"),
        }
        assert_eq!(std::fs::read(d.0.join(WAL)).unwrap(), bad, "flip at {at}: the log is untouched");
    }
    // A flip in its trailer loses nothing: the record's CRC holds.
    let mut bad = wal.clone();
    bad[end - 2] ^= 0x20;
    std::fs::write(d.0.join(WAL), &bad).unwrap();
    assert_eq!(FileStore::open(&d.0).unwrap().get("/c").unwrap().unwrap().value, vec![3; 200]);
}

#[test]
fn a_log_cut_short_anywhere_is_a_refusal() {
    let d = TempDir::new("cut-src");
    let (wal, before_last, end) = three_records(&d.0);
    let t = TempDir::new("cut");
    std::fs::copy(d.0.join(SNAPSHOT), t.0.join(SNAPSHOT)).unwrap();
    // Inside the last record, at its end, inside the zeros after it, at the base record.
    for cut in [before_last + 3, before_last + 40, end - 1, end, end + 3, 100, 10] {
        std::fs::write(t.0.join(WAL), &wal[..cut]).unwrap();
        for cut_damaged_tail in [false, true] {
            let opts = FileStoreOptions { cut_damaged_tail, ..Default::default() };
            match FileStore::open_with(&t.0, opts) {
                Err(MetaError::Corrupt { what, .. }) => assert!(what.contains("cut short"), "{what}"),
                other => panic!("log cut at {cut}: want Corrupt, got {other:?}"),
            }
        }
    }
    // Cut at a step of the file's growth: through a record, and where a record ends (only
    // the zeros the store always leaves after the last record tell this one).
    let step = codec::LOG_STEP_BYTES as usize;
    for (ends_at_step, tag) in [(false, "through"), (true, "at-end")] {
        let d = TempDir::new(tag);
        let s = FileStore::open(&d.0).unwrap();
        let overhead = codec::encode_record(1, &[Op::Put { key: "/k/0".into(), value: vec![], lease: None }]).len();
        let mut i = 0;
        while (s.wal_bytes() as usize) < step - 2000 {
            s.put(&format!("/k/{i}"), &[7; 1000]).unwrap();
            i += 1;
        }
        let fill = step - s.wal_bytes() as usize - overhead - if ends_at_step { 0 } else { 100 };
        s.put("/k/x", &vec![9; fill]).unwrap();
        s.put("/k/y", &[8; 500]).unwrap();
        let before = dump(&s);
        drop(s);
        let wal = std::fs::read(d.0.join(WAL)).unwrap();
        assert_eq!(wal.len(), 2 * step);
        std::fs::write(d.0.join(WAL), &wal[..step]).unwrap();
        match FileStore::open(&d.0) {
            Err(MetaError::Corrupt { what, .. }) => assert!(what.contains("cut short"), "{tag}: {what}"),
            other => panic!("{tag}: want Corrupt, got {other:?}"),
        }
        std::fs::write(d.0.join(WAL), &wal).unwrap();
        assert_eq!(dump(&FileStore::open(&d.0).unwrap()), before, "{tag}: whole again, nothing lost");
    }
}

#[test]
fn a_log_of_the_format_before_trailers_opens_and_is_rewritten() {
    let d = TempDir::new("legacy");
    let put = |key: &str, value: &[u8]| Op::Put { key: key.into(), value: value.to_vec(), lease: None };
    let mut log = codec::encode_legacy_base(0);
    log.extend(codec::encode_unframed(1, &[put("/a", b"1")]));
    log.extend(codec::encode_unframed(2, &[put("/b", &[2; 300])]));
    let last = codec::encode_unframed(3, &[put("/c", b"3")]);
    log.extend(&last[..last.len() - 4]); // a write cut short by a crash, as such logs had them
    std::fs::write(d.0.join(WAL), &log).unwrap();
    let s = FileStore::open(&d.0).unwrap();
    assert_eq!(s.recovery().wal_records, 2);
    assert_eq!(s.recovery().torn_tail_bytes as usize, last.len() - 4);
    assert_eq!(s.get("/b").unwrap().unwrap().value, vec![2; 300]);
    assert_eq!(s.get("/c").unwrap(), None);
    s.put("/d", b"4").unwrap();
    drop(s);
    let wal = std::fs::read(d.0.join(WAL)).unwrap();
    assert_eq!(wal.len() as u64, codec::LOG_STEP_BYTES, "rewritten in the framed format");
    let s = FileStore::open(&d.0).unwrap();
    assert_eq!(s.recovery().torn_tail_bytes, 0);
    assert_eq!(s.get("/a").unwrap().unwrap().value, b"1");
    assert_eq!(s.get("/d").unwrap().unwrap().value, b"4");
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
        refused(&d.0, "the log was deleted, emptied or cut short");
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
    let (mut wal, _, _) = three_records(&d.0);
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
    conformance::concurrent_writes(&s, "/c/", 4, 200);
    drop(s);
    conformance::check_concurrent_writes(&FileStore::open(&d.0).unwrap(), "/c/", 4, 200);
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
