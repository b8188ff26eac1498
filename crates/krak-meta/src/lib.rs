//! The controller's metadata store, as a consumer-side trait.
//!
//! The controller keeps servers, regions and the slab map (with epochs) in a [`MetaStore`]:
//! a small transactional key-value store with revisions and leases, the subset of etcd's
//! model the controller needs. This crate depends on no backend, so the controller can be
//! built and tested against any of them; backends live in their own crates
//! (`krak-meta-redb`: the embedded default, on redb; `krak-meta-file`: the older embedded
//! log; `krak-meta-etcd`: a real etcd cluster, for a highly available rack).

pub mod conformance;
pub mod crash;
mod election;
mod fence;

pub use election::{Leadership, LEADER_KEY};
pub use fence::FencedStore;

/// A cause carried by a backend-neutral [`MetaError`] (an io error, a parse error, an
/// HTTP error of a backend, ...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a store operation failed. Callers branch on the category (retry on
/// [`Unavailable`](MetaError::Unavailable), give up otherwise); the backend's own error,
/// when there is one, is kept as the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The store cannot be reached or did not answer in time; retrying may help.
    #[error("metadata store unavailable: {what}{}", caused_by(.source))]
    Unavailable {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The lease expired or was revoked.
    #[error("lease {0:#x} is gone")]
    LeaseGone(u64),
    /// The store's data could not be read back (corrupt file, unexpected answer).
    #[error("metadata store corrupt or unreadable: {what}{}", caused_by(.source))]
    Corrupt {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A request the store refuses (key too long, value too large, ...).
    #[error("invalid request to the metadata store: {what}{}", caused_by(.source))]
    Invalid {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A fenced write ([`FencedStore`]) of a leader that is no longer the leader.
    #[error("no longer the leader: {0}")]
    NotLeader(String),
}

/// `": {source}"`, so a printed error shows its cause (the workspace's convention).
fn caused_by(source: &Option<BoxError>) -> String {
    source.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
}

impl MetaError {
    /// [`MetaError::Unavailable`] with no further cause.
    pub fn unavailable(what: impl Into<String>) -> Self {
        MetaError::Unavailable { what: what.into(), source: None }
    }
    /// [`MetaError::Unavailable`] caused by `source`.
    pub fn unavailable_by(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        MetaError::Unavailable { what: what.into(), source: Some(source.into()) }
    }
    /// [`MetaError::Corrupt`] with no further cause.
    pub fn corrupt(what: impl Into<String>) -> Self {
        MetaError::Corrupt { what: what.into(), source: None }
    }
    /// [`MetaError::Corrupt`] caused by `source`.
    pub fn corrupt_by(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        MetaError::Corrupt { what: what.into(), source: Some(source.into()) }
    }
    /// [`MetaError::Invalid`] with no further cause.
    pub fn invalid(what: impl Into<String>) -> Self {
        MetaError::Invalid { what: what.into(), source: None }
    }
    /// [`MetaError::Invalid`] caused by `source`.
    pub fn invalid_by(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        MetaError::Invalid { what: what.into(), source: Some(source.into()) }
    }
}

/// A key with its value and the store revision of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Store revision at which this key was last written (never 0 for a present key).
    pub mod_revision: u64,
}

/// A lease: keys attached to it vanish when it expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub u64);

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The key's `mod_revision` equals this value; 0 means "the key is absent".
    ModRevision { key: String, equals: u64 },
}

/// A write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Vec<u8>, lease: Option<LeaseId> },
    Delete { key: String },
}

/// Most bytes in one value; larger ones are refused with [`MetaError::Invalid`].
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Most bytes in one key; longer keys (and the empty key) are refused with
/// [`MetaError::Invalid`].
pub const MAX_KEY_BYTES: usize = 1024;

/// Most ops in one transaction (etcd's default `--max-txn-ops`); more are refused with
/// [`MetaError::Invalid`]. A transaction may not write the same key twice either.
pub const MAX_TXN_OPS: usize = 128;

/// Checks a key against the bounds every backend enforces: not empty, at most
/// [`MAX_KEY_BYTES`], no NUL byte.
pub fn validate_key(key: &str) -> Result<(), MetaError> {
    if key.is_empty() {
        return Err(MetaError::invalid("empty key"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(MetaError::invalid(format!("key of {} bytes, more than {MAX_KEY_BYTES}", key.len())));
    }
    if key.contains('\0') {
        return Err(MetaError::invalid("key contains a NUL byte"));
    }
    Ok(())
}

/// Checks a value against [`MAX_VALUE_BYTES`].
pub fn validate_value(value: &[u8]) -> Result<(), MetaError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(MetaError::invalid(format!("value of {} bytes, more than {MAX_VALUE_BYTES}", value.len())));
    }
    Ok(())
}

/// Checks a transaction against the bounds every backend enforces: valid keys and values,
/// at most [`MAX_TXN_OPS`] ops and as many conditions, no key written twice.
pub fn validate_txn(conditions: &[Condition], ops: &[Op]) -> Result<(), MetaError> {
    if ops.len() > MAX_TXN_OPS || conditions.len() > MAX_TXN_OPS {
        return Err(MetaError::invalid(format!(
            "transaction of {} conditions and {} ops, more than {MAX_TXN_OPS}",
            conditions.len(),
            ops.len()
        )));
    }
    for c in conditions {
        let Condition::ModRevision { key, .. } = c;
        validate_key(key)?;
    }
    let mut seen = std::collections::HashSet::with_capacity(ops.len());
    for op in ops {
        let key = match op {
            Op::Put { key, value, .. } => {
                validate_value(value)?;
                key
            }
            Op::Delete { key } => key,
        };
        validate_key(key)?;
        if !seen.insert(key.as_str()) {
            return Err(MetaError::invalid(format!("transaction writes key {key:?} twice")));
        }
    }
    Ok(())
}

/// The store the controller keeps its state in. Implementations are thread-safe, bound
/// every wait by a timeout, and never panic on what they read back.
pub trait MetaStore: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError>;
    /// Every key that starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, MetaError>;
    /// Writes `value` under `key`; returns the new store revision.
    fn put(&self, key: &str, value: &[u8]) -> Result<u64, MetaError>;
    /// Removes `key`; true when it existed.
    fn delete(&self, key: &str) -> Result<bool, MetaError>;
    /// Applies every op atomically if every condition holds; returns whether it did.
    fn txn(&self, conditions: &[Condition], ops: &[Op]) -> Result<bool, MetaError>;
    /// A lease that expires `ttl_ms` after its last keep-alive.
    fn grant_lease(&self, ttl_ms: u64) -> Result<LeaseId, MetaError>;
    /// Renews a lease; [`MetaError::LeaseGone`] when it already expired.
    fn keep_alive(&self, lease: LeaseId) -> Result<(), MetaError>;
    /// Ends a lease now, deleting its keys.
    fn revoke(&self, lease: LeaseId) -> Result<(), MetaError>;
}
