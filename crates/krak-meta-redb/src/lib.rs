//! The controller's embedded default [`MetaStore`], on [redb]: `krak controller --store PATH`.
//!
//! `PATH` is a directory (owner-only) holding `store.redb`, the database; `FORMAT`, which
//! says a store was created here; and `store.lock`, held with `flock` while the store is
//! open (a second opener gets [`MetaError::Unavailable`]).
//!
//! **Durability.** Every write that changes something (`put`, `delete` of a present key, a
//! `txn` that applies and changes something, the deletion of an expired lease's keys) is
//! one redb write transaction, committed with immediate durability and two-phase commit
//! before the call returns. A process killed at any point loses nothing a call returned
//! success for. Two-phase commit matters for damage: without it redb falls back to the
//! previous commit when the newest one fails its checksum, silently losing an acknowledged
//! write; with it, a damaged newest commit is a refusal to open.
//!
//! **Damage.** The store opens with redb's integrity check, which verifies the checksum
//! of every page: a flipped byte, a truncated file, a deleted or emptied database or a
//! foreign `FORMAT` is [`MetaError::Corrupt`] naming what is wrong, never a store that
//! quietly lost state. Each value also carries a CRC-32C, checked on every read.
//!
//! **Conversion.** A directory in `krak-meta-file`'s log format (`wal`, `snapshot`) is
//! converted once at open: its keys and revisions are written to a new database, read
//! back and compared, and only then are the old files moved into [`OLD_FORMAT_DIR`].
//! A log that will not open is a refusal naming why ([`RedbStoreOptions::cut_damaged_tail`]
//! is passed on to it).
//!
//! **Leases** live in memory on the monotonic clock. Keys written with a lease are stored
//! like others, but on reopen every key attached to a lease is gone (its lease died with
//! the process) and the store's revision moves past them.
//!
//! Calls are serialized by one mutex (lock order: that mutex, then redb's transactions).
//! Bounds: [`krak_meta::MAX_KEY_BYTES`], [`krak_meta::MAX_VALUE_BYTES`],
//! [`krak_meta::MAX_TXN_OPS`], [`MAX_LEASES`] live leases, TTLs of 1 ms to [`MAX_TTL_MS`],
//! [`CACHE_BYTES`] of redb's cache.
//! After a failed commit the store refuses further writes until it is reopened.

mod layout;
mod leases;
mod record;

/// Entry point for the fuzz target (`fuzz/`): the decoder of a stored value, which whoever
/// can write the store's file controls. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// A stored value as in the database: whether it decodes (refused otherwise, never a panic).
    pub fn decode_value(data: &[u8]) -> bool {
        crate::record::decode("fuzz", data).is_ok()
    }
}

pub use layout::{Conversion, CACHE_BYTES, OLD_FORMAT_DIR};
pub use leases::{MAX_LEASES, MAX_TTL_MS};

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use krak_meta::{validate_key, validate_txn, validate_value, Condition, KeyValue, LeaseId, MetaError, MetaStore, Op};
use layout::{db_err, io_err, KV, META, REVISION};
use leases::LeaseBook;
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

/// Options of [`RedbStore::open_with`].
#[derive(Debug, Clone, Default)]
pub struct RedbStoreOptions {
    /// When converting a log-format store: drop a damaged last log record instead of
    /// refusing (`krak-meta-file`'s option of that name).
    pub cut_damaged_tail: bool,
}

/// What opening found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The conversion from the log format, if this open did one.
    pub conversion: Conversion,
    /// Keys dropped because they were attached to a lease of an earlier process.
    pub dropped_leased_keys: usize,
}

#[derive(Debug)]
struct State {
    leases: LeaseBook,
    revision: u64,
    /// Why writes are refused (a commit failed; reopen the store).
    failed: Option<String>,
}

/// The redb-backed store; see the crate docs.
pub struct RedbStore {
    db: Database,
    dir: PathBuf,
    state: Mutex<State>,
    recovery: Recovery,
    _lock: std::fs::File,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (creating or converting) the store in `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<RedbStore, MetaError> {
        Self::open_with(dir, RedbStoreOptions::default())
    }

    /// Opens the store in `dir`: creates it, or converts a log-format store, checks every
    /// page, drops leased keys.
    pub fn open_with(dir: impl AsRef<Path>, opts: RedbStoreOptions) -> Result<RedbStore, MetaError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::DirBuilder::new().mode(0o700).recursive(true).create(&dir).map_err(|e| io_err("create", &dir, e))?;
        let lock_path = dir.join(layout::LOCK);
        let lock = OpenOptions::new()
            .mode(0o600)
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| io_err("open", &lock_path, e))?;
        // SAFETY: flock on a file descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(MetaError::unavailable(format!(
                "store {} is open in another process (one controller per store)",
                dir.display()
            )));
        }
        let (db_path, conversion) = layout::prepare(&dir, opts.cut_damaged_tail)?;
        let db = layout::builder()
            .open(&db_path)
            .map_err(|e| db_err(format!("open {} (restore it from a backup)", db_path.display()), e))?;
        let (revision, dropped) = drop_leased_keys(&db)?;
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let state = State { leases: LeaseBook::new(seed ^ u64::from(std::process::id())), revision, failed: None };
        let recovery = Recovery { conversion, dropped_leased_keys: dropped };
        Ok(RedbStore { db, dir, state: Mutex::new(state), recovery, _lock: lock })
    }

    /// What opening found.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The current store revision.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadOnlyTable<&str, &[u8]>) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        let r = self.db.begin_read().map_err(|e| db_err("begin a read", e))?;
        let kv = r.open_table(KV).map_err(|e| db_err("open table kv", e))?;
        f(&kv)
    }

    /// Deletes the keys of every lease past its deadline.
    fn expire(&self, st: &mut State, now: Instant) -> Result<(), MetaError> {
        if !st.leases.due(now) {
            return Ok(());
        }
        let ended = st.leases.expire(now);
        self.delete_lease_keys(st, &ended)
    }

    /// Deletes the keys still attached to the given ended leases, at a new revision.
    fn delete_lease_keys(
        &self,
        st: &mut State,
        ended: &[(u64, std::collections::BTreeSet<String>)],
    ) -> Result<(), MetaError> {
        if ended.iter().all(|(_, keys)| keys.is_empty()) {
            return Ok(());
        }
        self.write(st, |kv, _| {
            let mut changed = false;
            for (id, keys) in ended {
                for k in keys {
                    let held = get_record(kv, k)?.is_some_and(|r| r.lease == *id);
                    if held {
                        kv.remove(k.as_str()).map_err(|e| db_err("delete a leased key", e))?;
                        changed = true;
                    }
                }
            }
            Ok(changed.then_some(()))
        })
        .map(|_| ())
    }

    /// Runs `f` in a write transaction at the next revision and commits it durably when
    /// `f` returns `Some` (a change); `None` aborts. After a failed commit, refuses writes.
    fn write<T>(
        &self,
        st: &mut State,
        f: impl FnOnce(&mut redb::Table<&str, &[u8]>, u64) -> Result<Option<T>, MetaError>,
    ) -> Result<Option<T>, MetaError> {
        if let Some(why) = &st.failed {
            return Err(MetaError::unavailable(why.clone()));
        }
        let rev = st.revision + 1;
        let mut w = self.db.begin_write().map_err(|e| db_err("begin a write", e))?;
        w.set_durability(Durability::Immediate).map_err(|e| db_err("set durability", e))?;
        w.set_two_phase_commit(true);
        let out = {
            let mut kv = w.open_table(KV).map_err(|e| db_err("open table kv", e))?;
            f(&mut kv, rev)?
        };
        if out.is_none() {
            w.abort().map_err(|e| db_err("abort a write", e))?;
            return Ok(None);
        }
        let committed = (|| {
            let mut meta = w.open_table(META).map_err(|e| db_err("open table meta", e))?;
            meta.insert(REVISION, rev).map_err(|e| db_err("write the revision", e))?;
            drop(meta);
            w.commit().map_err(|e| db_err("commit", e))
        })();
        if let Err(e) = committed {
            st.failed = Some(format!("a commit to {} failed ({e}); reopen the store", self.dir.display()));
            return Err(e);
        }
        st.revision = rev;
        Ok(out)
    }

    /// Applies `ops` if every condition holds: `None` when one does not. Returns the
    /// revision after (unchanged when nothing changed). A failed condition, like a txn
    /// without a change, commits nothing.
    fn apply(&self, st: &mut State, conditions: &[Condition], ops: &[Op]) -> Result<Option<u64>, MetaError> {
        let (mut held, mut moved) = (true, Vec::new());
        let changed = self.write(st, |kv, rev| {
            for c in conditions {
                let Condition::ModRevision { key, equals } = c;
                if get_record(kv, key)?.map_or(0, |r| r.mod_revision) != *equals {
                    held = false;
                    return Ok(None);
                }
            }
            for op in ops {
                match op {
                    Op::Put { key, value, lease } => {
                        let new = lease.map_or(0, |l| l.0);
                        let old = get_record(kv, key)?.map_or(0, |r| r.lease);
                        let rec = record::encode(rev, new, value);
                        kv.insert(key.as_str(), rec.as_slice()).map_err(|e| db_err(format!("put {key:?}"), e))?;
                        moved.push((key.clone(), old, new));
                    }
                    Op::Delete { key } => {
                        if let Some(old) = get_record(kv, key)? {
                            kv.remove(key.as_str()).map_err(|e| db_err(format!("delete {key:?}"), e))?;
                            moved.push((key.clone(), old.lease, 0));
                        }
                    }
                }
            }
            Ok((!moved.is_empty()).then_some(()))
        })?;
        if !held {
            return Ok(None);
        }
        if changed.is_some() {
            for (key, old, new) in moved {
                st.leases.moved(&key, old, new);
            }
        }
        Ok(Some(st.revision))
    }
}

fn get_record(
    kv: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<record::Record>, MetaError> {
    let got = kv.get(key).map_err(|e| db_err(format!("get {key:?}"), e))?;
    got.map(|g| record::decode(key, g.value())).transpose()
}

/// Deletes every key written with a lease (their leases died with the process that
/// granted them) at a new revision; returns the revision and how many were dropped.
fn drop_leased_keys(db: &Database) -> Result<(u64, usize), MetaError> {
    let w = db.begin_write().map_err(|e| db_err("begin the open's write", e))?;
    let (revision, dropped) = {
        let mut meta = w.open_table(META).map_err(|e| db_err("open table meta", e))?;
        let revision = meta
            .get(REVISION)
            .map_err(|e| db_err("read the revision", e))?
            .map(|g| g.value())
            .ok_or_else(|| MetaError::corrupt("the store has no revision"))?;
        let mut kv = w.open_table(KV).map_err(|e| db_err("open table kv", e))?;
        let mut leased = Vec::new();
        for item in kv.iter().map_err(|e| db_err("scan", e))? {
            let (k, v) = item.map_err(|e| db_err("scan", e))?;
            let rec = record::decode(k.value(), v.value())?;
            if rec.mod_revision > revision {
                return Err(MetaError::corrupt(format!(
                    "key {:?} has revision {} past the store's {revision}",
                    k.value(),
                    rec.mod_revision
                )));
            }
            if rec.lease != 0 {
                leased.push(k.value().to_string());
            }
        }
        for k in &leased {
            kv.remove(k.as_str()).map_err(|e| db_err("drop a leased key", e))?;
        }
        let revision = revision + u64::from(!leased.is_empty());
        meta.insert(REVISION, revision).map_err(|e| db_err("write the revision", e))?;
        (revision, leased.len())
    };
    if dropped == 0 {
        w.abort().map_err(|e| db_err("abort", e))?;
    } else {
        w.commit().map_err(|e| db_err("commit the dropped leased keys", e))?;
    }
    Ok((revision, dropped))
}

impl MetaStore for RedbStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        let mut st = self.lock();
        self.expire(&mut st, Instant::now())?;
        let rec = self.read(|kv| get_record(kv, key))?;
        Ok(rec.map(|r| KeyValue { key: key.to_string(), value: r.value, mod_revision: r.mod_revision }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, MetaError> {
        let mut st = self.lock();
        self.expire(&mut st, Instant::now())?;
        self.read(|kv| {
            let mut out = Vec::new();
            for item in kv.range(prefix..).map_err(|e| db_err("list", e))? {
                let (k, v) = item.map_err(|e| db_err("list", e))?;
                if !k.value().starts_with(prefix) {
                    break;
                }
                let r = record::decode(k.value(), v.value())?;
                out.push(KeyValue { key: k.value().to_string(), value: r.value, mod_revision: r.mod_revision });
            }
            Ok(out)
        })
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<u64, MetaError> {
        validate_key(key)?;
        validate_value(value)?;
        let mut st = self.lock();
        self.expire(&mut st, Instant::now())?;
        let op = Op::Put { key: key.to_string(), value: value.to_vec(), lease: None };
        Ok(self.apply(&mut st, &[], &[op])?.unwrap_or(st.revision))
    }

    fn delete(&self, key: &str) -> Result<bool, MetaError> {
        validate_key(key)?;
        let mut st = self.lock();
        self.expire(&mut st, Instant::now())?;
        let before = st.revision;
        self.apply(&mut st, &[], &[Op::Delete { key: key.to_string() }])?;
        Ok(st.revision != before)
    }

    fn txn(&self, conditions: &[Condition], ops: &[Op]) -> Result<bool, MetaError> {
        validate_txn(conditions, ops)?;
        let mut st = self.lock();
        self.expire(&mut st, Instant::now())?;
        for op in ops {
            if let Op::Put { lease: Some(l), .. } = op {
                if !st.leases.is_live(l.0) {
                    return Err(MetaError::LeaseGone(l.0));
                }
            }
        }
        Ok(self.apply(&mut st, conditions, ops)?.is_some())
    }

    fn grant_lease(&self, ttl_ms: u64) -> Result<LeaseId, MetaError> {
        if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
            return Err(MetaError::invalid(format!("lease TTL of {ttl_ms} ms, not in 1..={MAX_TTL_MS}")));
        }
        let mut st = self.lock();
        let now = Instant::now();
        self.expire(&mut st, now)?;
        let id = st.leases.grant(Duration::from_millis(ttl_ms), now);
        id.map(LeaseId).ok_or_else(|| MetaError::invalid(format!("{MAX_LEASES} leases are live already")))
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<(), MetaError> {
        let mut st = self.lock();
        let now = Instant::now();
        self.expire(&mut st, now)?;
        if st.leases.renew(lease.0, now) {
            Ok(())
        } else {
            Err(MetaError::LeaseGone(lease.0))
        }
    }

    fn revoke(&self, lease: LeaseId) -> Result<(), MetaError> {
        let mut st = self.lock();
        self.expire(&mut st, Instant::now())?;
        let keys = st.leases.end(lease.0).ok_or(MetaError::LeaseGone(lease.0))?;
        self.delete_lease_keys(&mut st, &[(lease.0, keys)])
    }
}

#[cfg(test)]
mod tests;
