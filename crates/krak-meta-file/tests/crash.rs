//! A writer killed with SIGKILL mid-stream loses nothing it was told was committed
//! ([`krak_meta::crash`]: a small compaction threshold so a kill can land inside a
//! compaction too), then a torn last record as power loss can leave it is cut off.

use std::path::{Path, PathBuf};
use std::time::Instant;

use krak_meta::crash::{key, value};
use krak_meta::MetaStore;
use krak_meta_file::{FileStore, FileStoreOptions};

const ROUNDS: u32 = 5;

fn opts() -> FileStoreOptions {
    FileStoreOptions { compact_wal_bytes: 1 << 20, ..Default::default() }
}

fn open(dir: &Path) -> Box<dyn MetaStore> {
    Box::new(FileStore::open_with(dir, opts()).expect("open the store"))
}

/// The child: does nothing unless re-executed by the parent.
#[test]
fn crash_child_writer() {
    krak_meta::crash::child_writer(open);
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn sigkill_mid_stream_loses_nothing_committed() {
    if std::env::var_os(krak_meta::crash::CHILD_ENV).is_some() {
        return;
    }
    let dir = TempDir(std::env::temp_dir().join(format!("krak-meta-file-crash-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let start = Instant::now();
    let reported = krak_meta::crash::sigkill_rounds("crash_child_writer", &dir.0, ROUNDS, open, |_, _| {});
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
    println!("{ROUNDS} rounds in {:?}; last commits {reported:?}", start.elapsed());
}
