use super::*;
use krak_meta::conformance;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("krak-meta-redb-{tag}-{}-{n}", std::process::id()));
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

type Dump = Vec<(String, Vec<u8>, u64)>;

fn dump(s: &dyn MetaStore) -> Dump {
    s.list("").unwrap().into_iter().map(|kv| (kv.key, kv.value, kv.mod_revision)).collect()
}

/// A closed store of 300 keys (some of 20 KiB, so the file has many pages); its contents.
fn filled(dir: &Path) -> Dump {
    let s = RedbStore::open(dir).unwrap();
    for i in 0..300u32 {
        let len = if i % 10 == 0 { 20 << 10 } else { 50 };
        s.put(&format!("/k/{i:04}"), &vec![i as u8; len]).unwrap();
    }
    s.delete("/k/0007").unwrap();
    dump(&s)
}

#[test]
fn conformance_suite() {
    let d = TempDir::new("conf");
    let s = RedbStore::open(&d.0).unwrap();
    conformance::run_all(&s, 500);
    drop(s);
    let s = RedbStore::open(&d.0).unwrap();
    conformance::kv_basics(&s, "/again/");
    conformance::txn_conditions(&s, "/again/");
}

#[test]
fn everything_survives_reopen_and_leased_keys_do_not() {
    let d = TempDir::new("reopen");
    let s = RedbStore::open(&d.0).unwrap();
    for i in 0..50 {
        s.put(&format!("/a/{i}"), format!("v{i}").as_bytes()).unwrap();
    }
    s.delete("/a/3").unwrap();
    let lease = s.grant_lease(60_000).unwrap();
    let ops = [Op::Put { key: "/leased".into(), value: b"x".to_vec(), lease: Some(lease) }];
    assert!(s.txn(&[], &ops).unwrap());
    let (before, rev) = (dump(&s), s.revision());
    drop(s);
    let s = RedbStore::open(&d.0).unwrap();
    assert_eq!(s.recovery().dropped_leased_keys, 1);
    assert!(s.revision() > rev, "the drop of leased keys moves the revision on");
    let expected: Dump = before.into_iter().filter(|(k, ..)| k != "/leased").collect();
    assert_eq!(dump(&s), expected);
    assert!(s.put("/b", b"y").unwrap() > rev + 1);
}

#[test]
fn a_log_format_store_is_converted_once_with_its_revisions() {
    let d = TempDir::new("convert");
    let old = krak_meta_file::FileStore::open(&d.0).unwrap();
    for i in 0..40 {
        old.put(&format!("/s/{i}"), &vec![i as u8; 100 + i]).unwrap();
    }
    old.delete("/s/5").unwrap();
    let lease = old.grant_lease(60_000).unwrap();
    assert!(old.txn(&[], &[Op::Put { key: "/l".into(), value: b"x".to_vec(), lease: Some(lease) }]).unwrap());
    let want: Dump = dump(&old).into_iter().filter(|(k, ..)| k != "/l").collect();
    let old_rev = old.revision();
    drop(old);
    let s = RedbStore::open(&d.0).unwrap();
    assert_eq!(s.recovery().conversion.converted_keys, Some(39));
    assert_eq!(dump(&s), want, "every key with its value and mod_revision");
    assert!(s.revision() >= old_rev);
    assert!(s.put("/new", b"n").unwrap() > old_rev);
    assert!(!d.0.join("wal").exists() && d.0.join(OLD_FORMAT_DIR).join("wal").exists(), "old files moved aside");
    drop(s);
    let s = RedbStore::open(&d.0).unwrap();
    assert_eq!(s.recovery().conversion.converted_keys, None, "converted once");
    assert_eq!(s.get("/s/9").unwrap().unwrap().value, vec![9u8; 109]);
}

#[test]
fn a_damaged_log_format_store_is_refused_not_converted() {
    let d = TempDir::new("badlog");
    let old = krak_meta_file::FileStore::open(&d.0).unwrap();
    old.put("/a", b"1").unwrap();
    old.put("/b", &[7; 300]).unwrap();
    drop(old);
    // Damage the payload of the last record (a disk flipping a byte of an acknowledged write).
    let wal = d.0.join("wal");
    let mut data = std::fs::read(&wal).unwrap();
    let pos = data.iter().rposition(|&b| b == 7).unwrap();
    data[pos] ^= 0xff;
    std::fs::write(&wal, &data).unwrap();
    match RedbStore::open(&d.0) {
        Err(MetaError::Corrupt { what, .. }) => assert!(what.contains("converting"), "{what}"),
        other => panic!("a damaged log must be refused, got {other:?}"),
    }
    assert!(wal.exists() && !d.0.join(layout::DB).exists(), "nothing converted, the log left in place");
    // The operator's documented way out: cut the damaged last record.
    let s = RedbStore::open_with(&d.0, RedbStoreOptions { cut_damaged_tail: true }).unwrap();
    assert_eq!(s.get("/a").unwrap().unwrap().value, b"1");
    assert!(s.get("/b").unwrap().is_none());
}

#[test]
fn flipped_bytes_anywhere_are_refused_or_harmless_never_a_loss() {
    let d = TempDir::new("flip");
    let want = filled(&d.0);
    let db = d.0.join(layout::DB);
    let clean = std::fs::read(&db).unwrap();
    let (mut refused, mut harmless) = (0, 0);
    // Every 4 KiB page's first bytes and a spread of offsets inside pages.
    let offsets: Vec<usize> = (0..clean.len()).step_by(509).chain((0..clean.len()).step_by(4096)).collect();
    for &off in &offsets {
        let mut bad = clean.clone();
        bad[off] ^= 0x5a;
        std::fs::write(&db, &bad).unwrap();
        match std::panic::catch_unwind(|| RedbStore::open(&d.0)) {
            Err(_) => panic!("opening with byte {off} flipped panicked"),
            Ok(Err(MetaError::Corrupt { .. })) => refused += 1,
            Ok(Err(e)) => panic!("byte {off} flipped: expected Corrupt, got {e}"),
            Ok(Ok(s)) => {
                assert_eq!(dump(&s), want, "byte {off} flipped: the store opened with different contents");
                harmless += 1;
            }
        }
    }
    std::fs::write(&db, &clean).unwrap();
    assert_eq!(dump(&RedbStore::open(&d.0).unwrap()), want);
    println!("{} offsets: {refused} refused, {harmless} in unused space", offsets.len());
    assert!(refused > offsets.len() / 4, "most damage must be seen: {refused} of {}", offsets.len());
}

#[test]
fn truncated_emptied_or_deleted_files_are_refused() {
    let d = TempDir::new("trunc");
    let want = filled(&d.0);
    let db = d.0.join(layout::DB);
    let clean = std::fs::read(&db).unwrap();
    for len in [0, 1, 512, 4096, clean.len() / 2, clean.len() - 4096, clean.len() - 1] {
        std::fs::write(&db, &clean[..len]).unwrap();
        match RedbStore::open(&d.0) {
            Err(MetaError::Corrupt { .. }) => {}
            other => panic!("a store cut to {len} of {} bytes must be refused, got {other:?}", clean.len()),
        }
    }
    std::fs::remove_file(&db).unwrap();
    match RedbStore::open(&d.0) {
        Err(MetaError::Corrupt { what, .. }) => assert!(what.contains("deleted"), "{what}"),
        other => panic!("a deleted database must be refused, got {other:?}"),
    }
    std::fs::write(&db, &clean).unwrap();
    std::fs::write(d.0.join("FORMAT"), "something else\n").unwrap();
    assert!(matches!(RedbStore::open(&d.0), Err(MetaError::Corrupt { .. })), "a foreign FORMAT is refused");
    // A deleted FORMAT with the database whole loses nothing: it is written again.
    std::fs::remove_file(d.0.join("FORMAT")).unwrap();
    assert_eq!(dump(&RedbStore::open(&d.0).unwrap()), want);
    assert!(d.0.join("FORMAT").exists());
}

#[test]
fn one_process_at_a_time_owner_only_and_bounds() {
    use std::os::unix::fs::PermissionsExt;
    let d = TempDir::new("lock");
    let dir = d.0.join("state");
    let s = RedbStore::open(&dir).unwrap();
    match RedbStore::open(&dir) {
        Err(MetaError::Unavailable { what, .. }) => assert!(what.contains("another process"), "{what}"),
        other => panic!("a second open must be refused, got {other:?}"),
    }
    s.put("/k", b"v").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for f in ["store.redb", "FORMAT", "store.lock"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    assert!(matches!(s.grant_lease(0), Err(MetaError::Invalid { .. })));
    assert!(matches!(s.grant_lease(MAX_TTL_MS + 1), Err(MetaError::Invalid { .. })));
    assert!(matches!(s.put("/a\0b", b""), Err(MetaError::Invalid { .. })));
    drop(s);
    RedbStore::open(&dir).expect("reopen once the first is closed");
}

#[test]
fn many_threads_write_and_everything_survives() {
    let d = TempDir::new("threads");
    let s = RedbStore::open(&d.0).unwrap();
    conformance::concurrent_writes(&s, "/c/", 4, 100);
    drop(s);
    conformance::check_concurrent_writes(&RedbStore::open(&d.0).unwrap(), "/c/", 4, 100);
}

#[test]
fn a_failed_condition_or_an_empty_change_commits_nothing() {
    let d = TempDir::new("nochange");
    let s = RedbStore::open(&d.0).unwrap();
    let rev = s.put("/a", b"1").unwrap();
    let cond = [Condition::ModRevision { key: "/a".into(), equals: rev + 5 }];
    assert!(!s.txn(&cond, &[Op::Put { key: "/b".into(), value: b"2".to_vec(), lease: None }]).unwrap());
    assert!(!s.delete("/absent").unwrap());
    assert!(s.txn(&[], &[Op::Delete { key: "/absent".into() }]).unwrap(), "an empty change applies");
    assert_eq!(s.revision(), rev, "none of them moved the revision");
    assert!(s.get("/b").unwrap().is_none());
    drop(s);
    assert_eq!(RedbStore::open(&d.0).unwrap().revision(), rev, "nor was any committed");
}
