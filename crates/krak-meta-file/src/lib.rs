//! An embedded, durable, single-process [`MetaStore`]: the default store of
//! `krak controller --store PATH`.
//!
//! `PATH` is a directory holding three files:
//!
//! - `wal`: the write-ahead log. Every committed write (`put`, `delete` of a present key, a
//!   `txn` that applies and changes something) is one record, written with one `pwrite` and
//!   made durable with `fdatasync` *before* the call returns and before the write becomes
//!   visible to readers. A process killed at any point (SIGKILL, power loss) therefore loses
//!   nothing that a call returned success for. Records carry a CRC-32C and end with a
//!   trailer; the file grows in zero-filled steps ahead of the records, and always ends
//!   with zeros after the last one. On open, a last record torn by a crash (its header and
//!   a prefix there, its trailer and everything after it zero: never acknowledged) is cut
//!   off and reported in [`Recovery::torn_tail_bytes`]. Any other damage is
//!   [`MetaError::Corrupt`], naming it: a record that fails its check with its trailer
//!   there (a disk damaged an acknowledged write), a log cut short anywhere (its size is
//!   not a whole number of steps, or the zeros after its last record are missing), a
//!   length pointing past the end. [`FileStoreOptions::cut_damaged_tail`] drops a damaged
//!   last record when the operator knows the store crashed. The log's first record names
//!   the snapshot revision it continues, so a deleted snapshot, or a log deleted or emptied
//!   while a snapshot exists, is a refusal to open, never a store that quietly lost state.
//!   A log of the format before trailers is read with its older rules and rewritten at
//!   open.
//! - `snapshot`: every key (without leases) at one revision. When the log outgrows both
//!   [`FileStoreOptions::compact_wal_bytes`] and the snapshot, the store writes
//!   `snapshot.tmp`, fsyncs it, renames it over `snapshot`, fsyncs the directory and
//!   replaces the log with one holding only its base record (`wal.tmp`, fsynced, renamed),
//!   so the files stay within about twice the live data. Log records at or below
//!   the snapshot's revision are skipped on replay, so a crash between the rename and the
//!   truncation is harmless.
//! - `LOCK`: held with `flock` while the store is open; a second opener gets
//!   [`MetaError::Unavailable`].
//!
//! Leases live in memory only, on the monotonic clock. Keys written with a lease are logged
//! like others, but **on reopen every key attached to a lease is gone** (its lease died
//! with the process, as if it had expired); their deletion is made permanent by a
//! compaction at open. Lease expiry itself is not logged.
//!
//! Writes are serialized by one mutex and each costs one `fdatasync`; reads are served from
//! memory under the same mutex. Bounds: [`krak_meta::MAX_KEY_BYTES`],
//! [`krak_meta::MAX_VALUE_BYTES`], [`krak_meta::MAX_TXN_OPS`], [`MAX_LEASES`] live leases,
//! lease TTLs from 1 ms to [`MAX_TTL_MS`]. After an I/O error while writing the log the
//! store refuses further writes ([`MetaError::Unavailable`]) until it is reopened: after a
//! failed fsync the page cache can no longer be trusted.

mod codec;
mod replay;

pub use codec::RecordError;

/// Entry points for the fuzz targets (`fuzz/`): the decoders of what this store reads back
/// from its files, which whoever can write the directory controls. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::codec;
    pub use crate::codec::RecordError;

    /// A WAL record as on disk (header, CRC, payload): its op count, or why it is refused.
    pub fn decode_record(data: &[u8]) -> Result<usize, RecordError> {
        let (head, rest) = data.split_first_chunk::<{ codec::RECORD_HEADER }>().ok_or(RecordError::ShortHeader)?;
        let (len, crc) = codec::decode_header(head);
        let payload = rest.get(..len).ok_or(RecordError::ShortPayload)?;
        if !codec::crc_matches(len, crc, payload) {
            return Err(RecordError::CrcMismatch);
        }
        codec::decode_payload(payload).map(|r| r.ops.len())
    }

    /// A record's payload, as if its CRC had matched (a fuzzer cannot forge CRCs).
    pub fn decode_payload(data: &[u8]) -> Result<usize, RecordError> {
        codec::decode_payload(data).map(|r| r.ops.len())
    }

    /// A whole log file, replayed over an empty store: its valid length, or why it is
    /// refused.
    pub fn replay_log(data: &[u8]) -> Result<u64, krak_meta::MetaError> {
        let (mut map, mut revision, mut rec) = (Default::default(), 0, Default::default());
        crate::replay::replay(data, &Default::default(), &mut map, &mut revision, &mut rec).map(|r| r.good)
    }

    /// A snapshot file's contents: whether it decodes.
    pub fn decode_snapshot(data: &[u8]) -> bool {
        codec::read_snapshot(data).is_ok()
    }
}

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use codec::{SnapEntry, RECORD_HEADER};
use krak_meta::{validate_key, validate_txn, validate_value, Condition, KeyValue, LeaseId, MetaError, MetaStore, Op};

/// Most live leases at once; more grants are refused with [`MetaError::Invalid`].
pub const MAX_LEASES: usize = 65_536;
/// Longest lease TTL accepted: 7 days.
pub const MAX_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

const WAL: &str = "wal";
const SNAPSHOT: &str = "snapshot";
const SNAPSHOT_TMP: &str = "snapshot.tmp";
const WAL_TMP: &str = "wal.tmp";
const LOCK: &str = "LOCK";

/// Tuning of a [`FileStore`].
#[derive(Debug, Clone)]
pub struct FileStoreOptions {
    /// The log is compacted into a new snapshot once it is larger than this and larger than
    /// the current snapshot. Default 4 MiB.
    pub compact_wal_bytes: u64,
    /// Drop a whole last log record that fails its CRC instead of refusing to open. Only
    /// for a store known to have crashed while writing (so that record was never
    /// acknowledged): otherwise it may be a committed write a disk damaged.
    pub cut_damaged_tail: bool,
}

impl Default for FileStoreOptions {
    fn default() -> Self {
        FileStoreOptions { compact_wal_bytes: 4 << 20, cut_damaged_tail: false }
    }
}

/// What opening the store found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Revision of the snapshot read (0: none).
    pub snapshot_revision: u64,
    /// Keys in that snapshot.
    pub snapshot_keys: usize,
    /// Log records applied on top of the snapshot.
    pub wal_records: u64,
    /// Log records skipped because the snapshot already held them.
    pub wal_records_skipped: u64,
    /// Bytes of a damaged last record cut off the log (a write interrupted by a crash).
    pub torn_tail_bytes: u64,
    /// Keys dropped because they were attached to a lease.
    pub dropped_leased_keys: usize,
    /// The store's revision once open.
    pub revision: u64,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    mod_revision: u64,
    /// 0: no lease.
    lease: u64,
}

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

#[derive(Debug)]
struct Inner {
    map: BTreeMap<String, Entry>,
    revision: u64,
    leases: HashMap<u64, Lease>,
    next_lease: u64,
    /// No lease expires before this instant (a lower bound; `None`: no lease).
    next_expiry: Option<Instant>,
    /// The log, written at offsets (records at `wal_bytes`, never appended: it is
    /// preallocated).
    wal: File,
    /// Bytes of records in the log.
    wal_bytes: u64,
    /// The log file's size: a multiple of [`codec::LOG_STEP_BYTES`], at least a header
    /// more than `wal_bytes`.
    wal_alloc: u64,
    snapshot_bytes: u64,
    /// Set after an I/O error on the log: writes are refused until reopen.
    failed: Option<LogFailure>,
    compactions: u64,
}

/// The embedded file store. See the crate documentation for the format and guarantees.
#[derive(Debug)]
pub struct FileStore {
    inner: Mutex<Inner>,
    dir: PathBuf,
    opts: FileStoreOptions,
    recovery: Recovery,
    /// Holds the `flock` for the store's lifetime.
    _lock: File,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> MetaError {
    MetaError::unavailable_by(format!("{what} {}", path.display()), e)
}

/// The I/O error that stopped the store's writes, kept to be re-raised until a reopen.
#[derive(Debug)]
struct LogFailure {
    what: String,
    source: Arc<std::io::Error>,
}

impl Inner {
    /// Records that the log can no longer be trusted; the error to return now.
    fn fail(&mut self, what: String, e: std::io::Error) -> MetaError {
        let source = Arc::new(e);
        self.failed = Some(LogFailure { what: what.clone(), source: source.clone() });
        MetaError::unavailable_by(what, source)
    }
}

impl FileStore {
    /// Opens (creating if needed) the store in directory `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<FileStore, MetaError> {
        Self::open_with(dir, FileStoreOptions::default())
    }

    /// Opens (creating if needed) the store in directory `dir`: reads the snapshot, replays
    /// the log (cutting off a torn last record), drops leased keys and compacts.
    pub fn open_with(dir: impl AsRef<Path>, opts: FileStoreOptions) -> Result<FileStore, MetaError> {
        let dir = dir.as_ref().to_path_buf();
        // The rack's state is the controller's alone: a new directory and every file in it
        // are readable by their owner only.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_err("create directory", &dir, e))?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .mode(0o600)
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("open", &lock_path, e))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(MetaError::unavailable_by(format!("store {} is locked by another process", dir.display()), e));
        }
        let _ = std::fs::remove_file(dir.join(SNAPSHOT_TMP));
        let _ = std::fs::remove_file(dir.join(WAL_TMP));

        let mut recovery = Recovery::default();
        let mut map = BTreeMap::new();
        let mut revision = 0;
        let snap_path = dir.join(SNAPSHOT);
        let mut snapshot_bytes = 0;
        let mut snapshot = None; // (revision, legacy)
        match std::fs::read(&snap_path) {
            Ok(buf) => {
                snapshot_bytes = buf.len() as u64;
                let legacy = codec::snapshot_is_legacy(&buf);
                let (rev, entries) = codec::read_snapshot(&buf)?;
                recovery.snapshot_revision = rev;
                recovery.snapshot_keys = entries.len();
                snapshot = Some((rev, legacy));
                revision = rev;
                for (k, value, mod_revision) in entries {
                    map.insert(k, Entry { value, mod_revision, lease: 0 });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("read", &snap_path, e)),
        }

        let wal_path = dir.join(WAL);
        let log = match std::fs::read(&wal_path) {
            Ok(log) => log,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("read", &wal_path, e)),
        };
        let replayed = replay::replay(&log, &opts, &mut map, &mut revision, &mut recovery)?;
        replay::check_base(&dir, snapshot, replayed.base, replayed.good)?;
        recovery.torn_tail_bytes = replayed.torn;
        drop(log);
        // Replaced by the compaction below, which writes a new log (of the current format).
        let wal = OpenOptions::new()
            .mode(0o600)
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(&wal_path)
            .map_err(|e| io_err("open", &wal_path, e))?;

        let before = map.len();
        map.retain(|_, e| e.lease == 0);
        recovery.dropped_leased_keys = before - map.len();
        recovery.revision = revision;

        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 40);
        let inner = Inner {
            map,
            revision,
            leases: HashMap::new(),
            next_lease: (seed & (u64::MAX >> 2)) | 1,
            next_expiry: None,
            wal,
            wal_bytes: 0,
            wal_alloc: 0,
            snapshot_bytes,
            failed: None,
            compactions: 0,
        };
        let store = FileStore { inner: Mutex::new(inner), dir, opts, recovery, _lock: lock };
        // What was replayed becomes the snapshot, and the log a new one: a torn tail or a
        // legacy log is gone, and leased keys are dropped for good.
        store.compact_locked(&mut store.lock())?;
        Ok(store)
    }

    /// What opening found: snapshot, replayed records, torn tail, dropped leased keys.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The current store revision (of the last write).
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// Current size of the log in bytes.
    pub fn wal_bytes(&self) -> u64 {
        self.lock().wal_bytes
    }

    /// Compactions done since open (the one at open included).
    pub fn compactions(&self) -> u64 {
        self.lock().compactions
    }

    /// Writes a snapshot now and empties the log.
    pub fn compact(&self) -> Result<(), MetaError> {
        let mut g = self.lock();
        g.usable()?;
        self.compact_locked(&mut g)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; recover the guard if something did.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn compact_locked(&self, g: &mut Inner) -> Result<(), MetaError> {
        let tmp = self.dir.join(SNAPSHOT_TMP);
        let count = g.map.values().filter(|e| e.lease == 0).count() as u64;
        let written = (|| -> std::io::Result<u64> {
            let f = OpenOptions::new().mode(0o600).write(true).create(true).truncate(true).open(&tmp)?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            let entries = g.map.iter().filter(|(_, e)| e.lease == 0).map(|(k, e)| SnapEntry {
                key: k,
                value: &e.value,
                mod_revision: e.mod_revision,
            });
            let n = codec::write_snapshot(&mut w, g.revision, count, entries)?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            Ok(n)
        })();
        let n = match written {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_err("write snapshot", &tmp, e));
            }
        };
        let snap = self.dir.join(SNAPSHOT);
        std::fs::rename(&tmp, &snap).map_err(|e| io_err("rename snapshot to", &snap, e))?;
        // From here the snapshot holds every logged write: the log may be replaced by one
        // holding only its base (renamed into place, so a crash leaves the old log or the
        // new, each consistent with this snapshot).
        let base = codec::encode_base(g.revision);
        let (wal, wal_tmp) = (self.dir.join(WAL), self.dir.join(WAL_TMP));
        let r = File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ("fsync of directory", self.dir.clone(), e))
            .and_then(|()| write_new_log(&wal_tmp, &base).map_err(|e| ("write", wal_tmp.clone(), e)))
            .and_then(|()| std::fs::rename(&wal_tmp, &wal).map_err(|e| ("rename over", wal.clone(), e)))
            .and_then(|()| {
                File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| ("fsync of", self.dir.clone(), e))
            })
            .and_then(|()| {
                OpenOptions::new().write(true).read(true).open(&wal).map_err(|e| ("reopen", wal.clone(), e))
            });
        match r {
            Ok(f) => g.wal = f,
            Err((what, path, e)) => {
                let _ = std::fs::remove_file(&wal_tmp);
                return Err(g.fail(format!("{what} {}", path.display()), e));
            }
        }
        g.wal_bytes = base.len() as u64;
        g.wal_alloc = codec::LOG_STEP_BYTES;
        g.snapshot_bytes = n;
        g.compactions += 1;
        Ok(())
    }

    /// Writes one record after the last and makes it durable; on failure the store stops
    /// writing.
    fn append(&self, g: &mut Inner, record: &[u8]) -> Result<(), MetaError> {
        use std::os::unix::fs::FileExt;
        let end = g.wal_bytes + record.len() as u64;
        // Grow first (zero-filled, made durable with the record by the same fdatasync: the
        // size is needed to read the data back), so a crash never changes where the log
        // ends, and a zero header always follows the last record.
        let alloc = (end + RECORD_HEADER as u64).next_multiple_of(codec::LOG_STEP_BYTES).max(g.wal_alloc);
        let r = (|| {
            if alloc > g.wal_alloc {
                g.wal.set_len(alloc)?;
                g.wal_alloc = alloc;
            }
            g.wal.write_all_at(record, g.wal_bytes)?;
            g.wal.sync_data()
        })();
        if let Err(e) = r {
            // Try to zero a partial record so the log stays replayable; either way the page
            // cache is suspect after a failed write or fsync: refuse further writes.
            let _ = g.wal.set_len(g.wal_bytes).and_then(|()| g.wal.set_len(g.wal_alloc));
            let what = format!("write to {} (reopen the store)", self.dir.join(WAL).display());
            return Err(g.fail(what, e));
        }
        g.wal_bytes = end;
        Ok(())
    }

    fn maybe_compact(&self, g: &mut Inner) {
        if g.wal_bytes > self.opts.compact_wal_bytes && g.wal_bytes > g.snapshot_bytes {
            // The write that triggered this is already durable in the log; a failed
            // compaction only means the log grows until the next attempt.
            if self.compact_locked(g).is_err() && g.failed.is_none() {
                g.snapshot_bytes = g.wal_bytes.saturating_mul(2);
            }
        }
    }

    /// Applies `ops` at a new revision after logging them; the caller checked conditions
    /// and leases. Returns the new revision, or the current one when nothing changes.
    fn commit(&self, g: &mut Inner, ops: &[Op]) -> Result<u64, MetaError> {
        let changes = ops.iter().any(|op| match op {
            Op::Put { .. } => true,
            Op::Delete { key } => g.map.contains_key(key),
        });
        if !changes {
            return Ok(g.revision);
        }
        let rev = g.revision + 1;
        let record = codec::encode_record(rev, ops);
        self.append(g, &record)?;
        for op in ops {
            g.apply(op, rev);
        }
        g.revision = rev;
        self.maybe_compact(g);
        Ok(rev)
    }
}

/// Writes a new log `path` holding only its base record, preallocated, durably (owner-only).
fn write_new_log(path: &Path, base: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().mode(0o600).write(true).create(true).truncate(true).open(path)?;
    f.write_all(base)?;
    f.set_len(codec::LOG_STEP_BYTES)?;
    f.sync_all()
}

fn apply_to_map(map: &mut BTreeMap<String, Entry>, op: &Op, rev: u64) {
    match op {
        Op::Put { key, value, lease } => {
            map.insert(key.clone(), Entry { value: value.clone(), mod_revision: rev, lease: lease.map_or(0, |l| l.0) });
        }
        Op::Delete { key } => {
            map.remove(key);
        }
    }
}

impl Inner {
    fn usable(&self) -> Result<(), MetaError> {
        match &self.failed {
            Some(f) => Err(MetaError::unavailable_by(f.what.clone(), f.source.clone())),
            None => Ok(()),
        }
    }

    fn mod_revision(&self, key: &str) -> u64 {
        self.map.get(key).map_or(0, |e| e.mod_revision)
    }

    /// Applies one op in memory, keeping the leases' key sets right.
    fn apply(&mut self, op: &Op, rev: u64) {
        let key = match op {
            Op::Put { key, .. } | Op::Delete { key } => key,
        };
        if let Some(old) = self.map.get(key) {
            if old.lease != 0 {
                if let Some(l) = self.leases.get_mut(&old.lease) {
                    l.keys.remove(key);
                }
            }
        }
        if let Op::Put { lease: Some(l), .. } = op {
            if let Some(l) = self.leases.get_mut(&l.0) {
                l.keys.insert(key.clone());
            }
        }
        apply_to_map(&mut self.map, op, rev);
    }

    /// Ends every lease whose deadline passed, deleting its keys (in memory only: leased
    /// keys never survive a reopen anyway).
    fn expire(&mut self, now: Instant) {
        match self.next_expiry {
            Some(t) if now >= t => {}
            _ => return,
        }
        let dead: Vec<u64> = self.leases.iter().filter(|(_, l)| l.deadline <= now).map(|(&id, _)| id).collect();
        for id in dead {
            self.end_lease(id);
        }
        self.next_expiry = self.leases.values().map(|l| l.deadline).min();
    }

    fn end_lease(&mut self, id: u64) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        let mut deleted = false;
        for k in lease.keys {
            if self.map.get(&k).is_some_and(|e| e.lease == id) {
                self.map.remove(&k);
                deleted = true;
            }
        }
        if deleted {
            self.revision += 1;
        }
        true
    }

    fn check_leases(&self, ops: &[Op]) -> Result<(), MetaError> {
        for op in ops {
            if let Op::Put { lease: Some(l), .. } = op {
                if !self.leases.contains_key(&l.0) {
                    return Err(MetaError::LeaseGone(l.0));
                }
            }
        }
        Ok(())
    }
}

fn kv(key: &str, e: &Entry) -> KeyValue {
    KeyValue { key: key.to_string(), value: e.value.clone(), mod_revision: e.mod_revision }
}

impl MetaStore for FileStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        let mut g = self.lock();
        g.expire(Instant::now());
        Ok(g.map.get(key).map(|e| kv(key, e)))
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, MetaError> {
        let mut g = self.lock();
        g.expire(Instant::now());
        Ok(g.map
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| kv(k, e))
            .collect())
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<u64, MetaError> {
        validate_key(key)?;
        validate_value(value)?;
        let mut g = self.lock();
        g.usable()?;
        g.expire(Instant::now());
        self.commit(&mut g, &[Op::Put { key: key.to_string(), value: value.to_vec(), lease: None }])
    }

    fn delete(&self, key: &str) -> Result<bool, MetaError> {
        validate_key(key)?;
        let mut g = self.lock();
        g.usable()?;
        g.expire(Instant::now());
        if !g.map.contains_key(key) {
            return Ok(false);
        }
        self.commit(&mut g, &[Op::Delete { key: key.to_string() }])?;
        Ok(true)
    }

    fn txn(&self, conditions: &[Condition], ops: &[Op]) -> Result<bool, MetaError> {
        validate_txn(conditions, ops)?;
        let mut g = self.lock();
        g.usable()?;
        g.expire(Instant::now());
        for c in conditions {
            let Condition::ModRevision { key, equals } = c;
            if g.mod_revision(key) != *equals {
                return Ok(false);
            }
        }
        g.check_leases(ops)?;
        self.commit(&mut g, ops)?;
        Ok(true)
    }

    fn grant_lease(&self, ttl_ms: u64) -> Result<LeaseId, MetaError> {
        if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
            return Err(MetaError::invalid(format!("lease TTL of {ttl_ms} ms, not in 1..={MAX_TTL_MS}")));
        }
        let mut g = self.lock();
        let now = Instant::now();
        g.expire(now);
        if g.leases.len() >= MAX_LEASES {
            return Err(MetaError::invalid(format!("{MAX_LEASES} leases are live already")));
        }
        let id = loop {
            let id = g.next_lease;
            g.next_lease = (g.next_lease + 1) & (u64::MAX >> 1);
            if id != 0 && !g.leases.contains_key(&id) {
                break id;
            }
        };
        let ttl = Duration::from_millis(ttl_ms);
        let deadline = now + ttl;
        g.leases.insert(id, Lease { ttl, deadline, keys: BTreeSet::new() });
        g.next_expiry = Some(g.next_expiry.map_or(deadline, |t| t.min(deadline)));
        Ok(LeaseId(id))
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<(), MetaError> {
        let mut g = self.lock();
        let now = Instant::now();
        g.expire(now);
        match g.leases.get_mut(&lease.0) {
            Some(l) => {
                l.deadline = now + l.ttl;
                Ok(())
            }
            None => Err(MetaError::LeaseGone(lease.0)),
        }
    }

    fn revoke(&self, lease: LeaseId) -> Result<(), MetaError> {
        let mut g = self.lock();
        g.expire(Instant::now());
        if g.end_lease(lease.0) {
            Ok(())
        } else {
            Err(MetaError::LeaseGone(lease.0))
        }
    }
}

#[cfg(test)]
mod tests;
