//! A writer killed with SIGKILL mid-stream loses nothing it was told was committed.
//!
//! The test re-executes this very test binary, filtered to [`crash_child_writer`] and with
//! [`CHILD_ENV`] naming the store: the child writes keys as fast as it can (puts and
//! two-key transactions, some values of 300 KiB so that a kill can land inside a `write`,
//! a small compaction threshold so that it can land inside a compaction too) and prints
//! `committed N` after each call returned. The parent kills it with SIGKILL after a varying
//! number of commits, reopens the store and checks every reported key and value, over
//! several rounds on the same store.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use krak_meta::{MetaStore, Op};
use krak_meta_file::{FileStore, FileStoreOptions};

const CHILD_ENV: &str = "KRAK_META_FILE_CRASH_CHILD";
const ROUND_ENV: &str = "KRAK_META_FILE_CRASH_ROUND";
const CHILD_TEST: &str = "crash_child_writer";
const ROUNDS: u32 = 5;

fn opts() -> FileStoreOptions {
    FileStoreOptions { compact_wal_bytes: 1 << 20, ..Default::default() }
}

fn key(round: u32, i: u64) -> String {
    format!("/crash/r{round}/{i:08}")
}

fn value(round: u32, i: u64) -> Vec<u8> {
    let len = if i.is_multiple_of(5) { 300 << 10 } else { 64 + (i % 97) as usize };
    (0..len).map(|j| (j as u64 ^ i.wrapping_mul(31) ^ u64::from(round) << 5) as u8).collect()
}

/// The child: does nothing unless re-executed by the parent.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let round: u32 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let store = FileStore::open_with(&dir, opts()).expect("child: open store");
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    for i in 0.. {
        if i % 3 == 2 {
            // A transaction of two keys: both or neither.
            let ops = [
                Op::Put { key: key(round, i), value: value(round, i), lease: None },
                Op::Put { key: format!("{}.b", key(round, i)), value: value(round, i + 1), lease: None },
            ];
            assert!(store.txn(&[], &ops).expect("child: txn"));
        } else {
            store.put(&key(round, i), &value(round, i)).expect("child: put");
        }
        writeln!(out, "committed {i}").unwrap();
        out.flush().unwrap();
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs one child round; returns the highest index it reported as committed.
fn run_child(dir: &Path, round: u32, kill_after: u64) -> Option<u64> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(ROUND_ENV, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let mut last = None;
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("committed ") {
            let n: u64 = n.parse().unwrap();
            last = Some(n);
            if n + 1 >= kill_after && !killed {
                // Scatter the kill point over the next write, fsync or compaction.
                std::thread::sleep(std::time::Duration::from_micros(u64::from(round) * 700));
                child.kill().expect("SIGKILL the child");
                killed = true;
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(killed, "the child ended on its own after {last:?} commits: {status:?}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc_sigkill()), "the child must die of SIGKILL: {status:?}");
    last
}

fn libc_sigkill() -> i32 {
    9
}

#[test]
fn sigkill_mid_stream_loses_nothing_committed() {
    let dir = TempDir(std::env::temp_dir().join(format!("krak-meta-file-crash-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let start = Instant::now();
    let mut reported = Vec::new();
    let mut torn = Vec::new();
    for round in 0..ROUNDS {
        let kill_after = 60 + u64::from(round) * 37;
        let last = run_child(&dir.0, round, kill_after).expect("the child committed something");
        reported.push(last);
        let store = FileStore::open_with(&dir.0, opts()).expect("reopen after SIGKILL");
        let rec = store.recovery().clone();
        torn.push(rec.torn_tail_bytes);
        for (r, &last) in reported.iter().enumerate() {
            let r = r as u32;
            for i in 0..=last {
                let kv = store.get(&key(r, i)).unwrap();
                let kv = kv.unwrap_or_else(|| panic!("round {r}: key {i} was reported committed but is missing"));
                assert!(kv.value == value(r, i), "round {r}: key {i} has a wrong value");
                if i % 3 == 2 {
                    let b = store.get(&format!("{}.b", key(r, i))).unwrap();
                    assert!(b.is_some_and(|b| b.value == value(r, i + 1)), "round {r}: txn {i} half applied");
                }
            }
            // Whatever the child wrote beyond its last report is whole or absent.
            let extra: Vec<_> = store
                .list(&format!("/crash/r{r}/"))
                .unwrap()
                .into_iter()
                .filter(|kv| !kv.key.ends_with(".b"))
                .filter(|kv| kv.key[kv.key.len() - 8..].parse::<u64>().unwrap() > last)
                .collect();
            assert!(extra.len() <= 1, "round {r}: {} keys beyond the last report", extra.len());
            for kv in extra {
                let i: u64 = kv.key[kv.key.len() - 8..].parse().unwrap();
                assert!(kv.value == value(r, i), "round {r}: unreported key {i} has a wrong value");
                if i % 3 == 2 {
                    assert!(store.get(&format!("{}.b", kv.key)).unwrap().is_some(), "round {r}: txn {i} half applied");
                }
            }
        }
        println!(
            "round {round}: killed after commit {} (asked at {kill_after}); reopen: {} records replayed, \
             {} skipped, snapshot of {} keys, torn tail {} bytes",
            reported[round as usize], rec.wal_records, rec.wal_records_skipped, rec.snapshot_keys, rec.torn_tail_bytes
        );
    }
    // SIGKILL rarely cuts a write short (the kernel finishes most writes first), so finish
    // with what power loss can leave: a record header promising more than was written.
    let wal = dir.0.join("wal");
    // The log is preallocated: the torn write lands in the zeros after the last record (the
    // last nonzero byte is that record's trailer), and the file's size does not change.
    let mut bytes = std::fs::read(&wal).unwrap();
    let good = bytes.len();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    assert!(end + 4000 + 24 <= good, "room for the torn record in the preallocated log");
    bytes[end..end + 4].copy_from_slice(&4000u32.to_le_bytes());
    bytes[end + 4..end + 8 + 1500].fill(0xab);
    std::fs::write(&wal, &bytes).unwrap();
    let store = FileStore::open_with(&dir.0, opts()).expect("reopen with a torn tail");
    assert_eq!(store.recovery().torn_tail_bytes, 1508, "the torn record is cut off");
    let r = ROUNDS - 1;
    let last = reported[r as usize];
    assert!(store.get(&key(r, last)).unwrap().is_some_and(|kv| kv.value == value(r, last)));
    assert!(std::fs::metadata(&wal).unwrap().len() <= good as u64);
    println!("{ROUNDS} rounds in {:?}; torn tails seen: {torn:?}", start.elapsed());
}
