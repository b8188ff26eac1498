//! A crash check every durable backend's tests share: a writer killed with SIGKILL
//! mid-stream loses nothing it was told was committed.
//!
//! The backend's test binary holds two tests: a child ([`child_writer`], which does
//! nothing unless [`CHILD_ENV`] is set) and a parent ([`sigkill_rounds`]) that re-executes
//! the binary filtered to the child. The child writes keys as fast as it can (puts and
//! two-key transactions, every fifth value 300 KiB so a kill can land inside a write) and
//! prints `committed N` after each call returned. The parent kills it with SIGKILL after a
//! varying number of commits, reopens the store and checks every reported key and value,
//! over several rounds on the same store.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{MetaStore, Op};

/// Names the store directory of a child writer.
pub const CHILD_ENV: &str = "KRAK_META_CRASH_CHILD";
const ROUND_ENV: &str = "KRAK_META_CRASH_ROUND";
const SIGKILL: i32 = 9;

/// The key of write `i` of `round`.
pub fn key(round: u32, i: u64) -> String {
    format!("/crash/r{round}/{i:08}")
}

/// The value of write `i` of `round`.
pub fn value(round: u32, i: u64) -> Vec<u8> {
    let len = if i.is_multiple_of(5) { 300 << 10 } else { 64 + (i % 97) as usize };
    (0..len).map(|j| (j as u64 ^ i.wrapping_mul(31) ^ u64::from(round) << 5) as u8).collect()
}

/// The child: writes until killed when re-executed by [`sigkill_rounds`], else returns.
pub fn child_writer(open: impl Fn(&Path) -> Box<dyn MetaStore>) {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let round: u32 = std::env::var(ROUND_ENV).expect("round").parse().expect("round number");
    let store = open(Path::new(&dir));
    let mut out = std::io::stdout().lock();
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
        writeln!(out, "committed {i}").expect("stdout");
        out.flush().expect("stdout");
    }
}

/// Runs one child round; returns the highest index it reported as committed.
fn run_child(child_test: &str, dir: &Path, round: u32, kill_after: u64) -> Option<u64> {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([child_test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(ROUND_ENV, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (mut last, mut killed) = (None, false);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("child stdout");
        if let Some(n) = line.strip_prefix("committed ") {
            let n: u64 = n.parse().expect("commit number");
            last = Some(n);
            if n + 1 >= kill_after && !killed {
                // Scatter the kill point over the next write and its fsyncs.
                std::thread::sleep(std::time::Duration::from_micros(u64::from(round) * 700));
                child.kill().expect("SIGKILL the child");
                killed = true;
            }
        }
    }
    let status = child.wait().expect("wait for the child");
    assert!(killed, "the child ended on its own after {last:?} commits: {status:?}");
    assert_eq!(status.signal(), Some(SIGKILL), "the child must die of SIGKILL: {status:?}");
    last
}

/// The parent: `rounds` children on the store in `dir`, each killed after a varying
/// number of commits; after each, the store reopened with `open` must hold every reported
/// write whole, at most one unreported write beyond them, and no half transaction.
/// `after_reopen(round, store)` may check the backend's own recovery report. Returns the
/// last reported index of each round.
pub fn sigkill_rounds(
    child_test: &str,
    dir: &Path,
    rounds: u32,
    open: impl Fn(&Path) -> Box<dyn MetaStore>,
    mut after_reopen: impl FnMut(u32, &dyn MetaStore),
) -> Vec<u64> {
    let mut reported = Vec::new();
    for round in 0..rounds {
        let kill_after = 60 + u64::from(round) * 37;
        reported.push(run_child(child_test, dir, round, kill_after).expect("the child committed something"));
        let store = open(dir);
        for (r, &last) in reported.iter().enumerate() {
            check_round(&*store, r as u32, last);
        }
        after_reopen(round, &*store);
    }
    reported
}

fn check_round(store: &dyn MetaStore, r: u32, last: u64) {
    let whole_txn = |i: u64| {
        let b = store.get(&format!("{}.b", key(r, i))).expect("get");
        assert!(b.is_some_and(|b| b.value == value(r, i + 1)), "round {r}: txn {i} half applied");
    };
    for i in 0..=last {
        let kv = store.get(&key(r, i)).expect("get");
        let kv = kv.unwrap_or_else(|| panic!("round {r}: key {i} was reported committed but is missing"));
        assert!(kv.value == value(r, i), "round {r}: key {i} has a wrong value");
        if i % 3 == 2 {
            whole_txn(i);
        }
    }
    // Whatever the child wrote beyond its last report is whole or absent.
    let index = |k: &str| k[k.len() - 8..].parse::<u64>().expect("key index");
    let extra: Vec<_> = store
        .list(&format!("/crash/r{r}/"))
        .expect("list")
        .into_iter()
        .filter(|kv| !kv.key.ends_with(".b") && index(&kv.key) > last)
        .collect();
    assert!(extra.len() <= 1, "round {r}: {} keys beyond the last report", extra.len());
    for kv in extra {
        let i = index(&kv.key);
        assert!(kv.value == value(r, i), "round {r}: unreported key {i} has a wrong value");
        if i % 3 == 2 {
            whole_txn(i);
        }
    }
}
