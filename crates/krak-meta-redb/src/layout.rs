//! The store directory: which files mean what, creating a store, and converting one in
//! `krak-meta-file`'s log format once.
//!
//! A store is created whole or not at all: the database is built as `store.redb.tmp`,
//! fsynced, renamed to `store.redb`, and only then is `FORMAT` written. So a `FORMAT`
//! without `store.redb` means the database was deleted (a refusal), and a `store.redb`
//! without `FORMAT` is a complete store whose creation was interrupted (`FORMAT` is
//! written again).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use krak_meta::{MetaError, MetaStore};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::record;

pub(crate) const DB: &str = "store.redb";
const DB_TMP: &str = "store.redb.tmp";
const FORMAT: &str = "FORMAT";
const FORMAT_TEXT: &str = "krak-meta-redb 1\n";
pub(crate) const LOCK: &str = "store.lock";
/// Where the files of a converted log-format store are kept (the operator may delete it).
pub const OLD_FORMAT_DIR: &str = "old-log-format";
/// The files of `krak-meta-file`'s format.
const OLD_FILES: [&str; 5] = ["wal", "snapshot", "wal.tmp", "snapshot.tmp", "LOCK"];

pub(crate) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const REVISION: &str = "revision";

/// Most bytes redb caches of the database (its default is 1 GiB): the controller's memory
/// bound holds whatever the store's size.
pub const CACHE_BYTES: usize = 64 << 20;

/// A redb builder with the store's settings: a bounded cache, and every page checked at
/// open (a file altered since redb wrote it is refused instead of trusted).
pub(crate) fn builder() -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(CACHE_BYTES).set_check_integrity_on_open(true);
    b
}

pub(crate) fn io_err(what: &str, path: &Path, e: std::io::Error) -> MetaError {
    MetaError::unavailable_by(format!("{what} {}", path.display()), e)
}

/// A redb error as a [`MetaError`]: damage is [`MetaError::Corrupt`], the rest unavailable.
pub(crate) fn db_err(what: impl Into<String>, e: impl Into<redb::Error>) -> MetaError {
    let what = what.into();
    match e.into() {
        e @ (redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_)) => MetaError::corrupt_by(what, e),
        // redb reports a file that is not a database (bad magic, bad header) as invalid data.
        redb::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => MetaError::corrupt_by(what, e),
        redb::Error::DatabaseAlreadyOpen => MetaError::unavailable(format!("{what}: opened by another process")),
        e => MetaError::unavailable_by(what, e),
    }
}

fn sync_dir(dir: &Path) -> Result<(), MetaError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err("fsync directory", dir, e))
}

/// What [`prepare`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Conversion {
    /// Keys carried over from a store in the log format (then moved to [`OLD_FORMAT_DIR`]).
    pub converted_keys: Option<usize>,
}

/// Makes `dir` hold a complete store (creating or converting one); returns the database's
/// path. The caller holds [`LOCK`].
pub(crate) fn prepare(dir: &Path, cut_damaged_tail: bool) -> Result<(PathBuf, Conversion), MetaError> {
    let (db, format, tmp) = (dir.join(DB), dir.join(FORMAT), dir.join(DB_TMP));
    let mut conversion = Conversion::default();
    match (format.exists(), db.exists()) {
        (true, true) => check_format(&format)?,
        (true, false) => {
            return Err(MetaError::corrupt(format!(
                "{} is missing but {} says a store was created here: it was deleted or moved. Restore it \
                 from a backup, or move the directory away to start an empty store",
                db.display(),
                format.display()
            )))
        }
        (false, true) => write_format(dir)?,
        (false, false) => {
            let _ = std::fs::remove_file(&tmp);
            let old = dir.join("wal").exists() || dir.join("snapshot").exists();
            let keys = build(&tmp, old.then_some(cut_damaged_tail))?;
            std::fs::rename(&tmp, &db).map_err(|e| io_err("rename into place", &tmp, e))?;
            sync_dir(dir)?;
            write_format(dir)?;
            conversion.converted_keys = old.then_some(keys);
        }
    }
    // A conversion that crashed after FORMAT was written still moves the old files aside.
    move_old_files(dir)?;
    let len = std::fs::metadata(&db).map_err(|e| io_err("stat", &db, e))?.len();
    if len == 0 {
        // redb would quietly start an empty database in an empty file.
        return Err(MetaError::corrupt(format!(
            "{} is empty: it was truncated. Restore it from a backup",
            db.display()
        )));
    }
    Ok((db, conversion))
}

fn check_format(path: &Path) -> Result<(), MetaError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err("read", path, e))?;
    if text != FORMAT_TEXT {
        return Err(MetaError::corrupt(format!(
            "{} reads {:?}, not {FORMAT_TEXT:?}: not a store this krak can open",
            path.display(),
            text.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

fn write_format(dir: &Path) -> Result<(), MetaError> {
    let tmp = dir.join("FORMAT.tmp");
    let r = OpenOptions::new().mode(0o600).write(true).create(true).truncate(true).open(&tmp).and_then(|mut f| {
        f.write_all(FORMAT_TEXT.as_bytes())?;
        f.sync_all()
    });
    r.map_err(|e| io_err("write", &tmp, e))?;
    std::fs::rename(&tmp, dir.join(FORMAT)).map_err(|e| io_err("rename into place", &tmp, e))?;
    sync_dir(dir)
}

/// Builds a complete database at `tmp`: empty, or holding the keys of the log-format store
/// in its directory (`Some(cut_damaged_tail)`). Returns how many keys it holds.
fn build(tmp: &Path, convert: Option<bool>) -> Result<usize, MetaError> {
    let dir = tmp.parent().unwrap_or(Path::new("."));
    let (entries, revision) = match convert {
        None => (Vec::new(), 0),
        Some(cut_damaged_tail) => {
            let opts = krak_meta_file::FileStoreOptions { cut_damaged_tail, ..Default::default() };
            let old = krak_meta_file::FileStore::open_with(dir, opts).map_err(|e| {
                MetaError::corrupt_by(
                    format!("converting the log-format store in {} (fix it, then start again)", dir.display()),
                    e,
                )
            })?;
            (old.list("")?, old.revision())
        }
    };
    let db = builder().create(tmp).map_err(|e| db_err(format!("create {}", tmp.display()), e))?;
    use std::os::unix::fs::PermissionsExt;
    let owner_only = std::fs::Permissions::from_mode(0o600);
    std::fs::set_permissions(tmp, owner_only).map_err(|e| io_err("chmod", tmp, e))?;
    let w = db.begin_write().map_err(|e| db_err("begin the first transaction", e))?;
    {
        let mut kv = w.open_table(KV).map_err(|e| db_err("create table kv", e))?;
        for e in &entries {
            let rec = record::encode(e.mod_revision, 0, &e.value);
            kv.insert(e.key.as_str(), rec.as_slice()).map_err(|err| db_err(format!("insert {:?}", e.key), err))?;
        }
        let mut meta = w.open_table(META).map_err(|e| db_err("create table meta", e))?;
        meta.insert(REVISION, revision).map_err(|e| db_err("write the revision", e))?;
    }
    w.commit().map_err(|e| db_err("commit the first transaction", e))?;
    drop(db);
    File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| io_err("fsync", tmp, e))?;
    // Read it back: a conversion is checked before the old files are moved aside.
    let check = builder().open(tmp).map_err(|e| db_err(format!("reopen {}", tmp.display()), e))?;
    let r = check.begin_read().map_err(|e| db_err("read back", e))?;
    let kv = r.open_table(KV).map_err(|e| db_err("read back table kv", e))?;
    for e in &entries {
        let got = kv.get(e.key.as_str()).map_err(|err| db_err("read back", err))?;
        let rec = got.map(|g| record::decode(&e.key, g.value())).transpose()?;
        if rec.as_ref().is_none_or(|r| r.value != e.value || r.mod_revision != e.mod_revision) {
            return Err(MetaError::corrupt(format!("converted key {:?} did not read back the same", e.key)));
        }
    }
    Ok(entries.len())
}

fn move_old_files(dir: &Path) -> Result<(), MetaError> {
    let present: Vec<&str> = OLD_FILES.into_iter().filter(|f| dir.join(f).exists()).collect();
    if present.is_empty() {
        return Ok(());
    }
    let to = dir.join(OLD_FORMAT_DIR);
    std::fs::DirBuilder::new().mode(0o700).recursive(true).create(&to).map_err(|e| io_err("create", &to, e))?;
    for f in present {
        std::fs::rename(dir.join(f), to.join(f)).map_err(|e| io_err("move aside", &dir.join(f), e))?;
    }
    sync_dir(&to)?;
    sync_dir(dir)
}
