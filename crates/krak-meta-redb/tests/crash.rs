//! A writer killed with SIGKILL mid-stream loses nothing it was told was committed
//! ([`krak_meta::crash`]), and every reopen passes redb's page check.

use std::path::{Path, PathBuf};

use krak_meta::MetaStore;
use krak_meta_redb::RedbStore;

fn open(dir: &Path) -> Box<dyn MetaStore> {
    Box::new(RedbStore::open(dir).expect("open the store"))
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
    let dir = TempDir(std::env::temp_dir().join(format!("krak-meta-redb-crash-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let start = std::time::Instant::now();
    let reported = krak_meta::crash::sigkill_rounds("crash_child_writer", &dir.0, 5, open, |_, _| {});
    println!("5 rounds in {:?}; last commits {reported:?}", start.elapsed());
}
