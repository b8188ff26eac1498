//! Fencing a leader's writes: [`FencedStore`] applies every write only while the leader key
//! still holds this leader's claim, so a controller that lost its lease (paused, cut off,
//! slow to notice) cannot overwrite what its successor wrote meanwhile.

use std::sync::Arc;

use crate::{Condition, KeyValue, LeaseId, MetaError, MetaStore, Op, LEADER_KEY};

/// A store whose writes all carry one more condition: the leader key's `mod_revision` is
/// still the one this leader wrote. Reads and lease calls pass straight through. A write
/// refused for that reason fails with [`MetaError::NotLeader`].
#[derive(Debug)]
pub struct FencedStore<S> {
    inner: S,
    leader_revision: u64,
}

impl<S: MetaStore> FencedStore<S> {
    /// Fences `inner` with a leadership whose key was written at `leader_revision`
    /// ([`crate::Leadership::revision`]).
    pub fn new(inner: S, leader_revision: u64) -> FencedStore<S> {
        FencedStore { inner, leader_revision }
    }

    fn fence(&self) -> Condition {
        Condition::ModRevision { key: LEADER_KEY.into(), equals: self.leader_revision }
    }

    /// After a refused transaction: whether the fence is what failed.
    fn check_still_leader(&self) -> Result<(), MetaError> {
        match self.inner.get(LEADER_KEY)? {
            Some(kv) if kv.mod_revision == self.leader_revision => Ok(()),
            Some(kv) => Err(MetaError::NotLeader(format!(
                "{LEADER_KEY} was rewritten at revision {} (ours: {})",
                kv.mod_revision, self.leader_revision
            ))),
            None => Err(MetaError::NotLeader(format!(
                "{LEADER_KEY} is gone (ours was at revision {})",
                self.leader_revision
            ))),
        }
    }

    fn fenced_txn(&self, conditions: &[Condition], ops: &[Op]) -> Result<bool, MetaError> {
        let mut all = Vec::with_capacity(conditions.len() + 1);
        all.extend_from_slice(conditions);
        all.push(self.fence());
        if self.inner.txn(&all, ops)? {
            return Ok(true);
        }
        self.check_still_leader()?;
        Ok(false)
    }
}

impl<S: MetaStore> MetaStore for FencedStore<S> {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        self.inner.get(key)
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, MetaError> {
        self.inner.list(prefix)
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<u64, MetaError> {
        let op = Op::Put { key: key.to_string(), value: value.to_vec(), lease: None };
        if !self.fenced_txn(&[], &[op])? {
            // only the fence conditions it; check_still_leader found it holding, so the
            // leader key changed and changed back: refuse rather than guess
            return Err(MetaError::NotLeader("the leader key changed during a write".into()));
        }
        // txn answers no revision: read it back (our write, or a later one)
        self.inner
            .get(key)?
            .map(|kv| kv.mod_revision)
            .ok_or_else(|| MetaError::unavailable(format!("{key} vanished right after it was written")))
    }

    fn delete(&self, key: &str) -> Result<bool, MetaError> {
        let existed = self.inner.get(key)?.is_some();
        if !self.fenced_txn(&[], &[Op::Delete { key: key.to_string() }])? {
            return Err(MetaError::NotLeader("the leader key changed during a delete".into()));
        }
        Ok(existed)
    }

    fn txn(&self, conditions: &[Condition], ops: &[Op]) -> Result<bool, MetaError> {
        self.fenced_txn(conditions, ops)
    }

    fn grant_lease(&self, ttl_ms: u64) -> Result<LeaseId, MetaError> {
        self.inner.grant_lease(ttl_ms)
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<(), MetaError> {
        self.inner.keep_alive(lease)
    }

    fn revoke(&self, lease: LeaseId) -> Result<(), MetaError> {
        self.inner.revoke(lease)
    }
}

/// Implements [`MetaStore`] for a pointer type by forwarding to what it points at.
macro_rules! forward_meta_store {
    ($($ptr:ty),*) => {$(
        impl<T: MetaStore + ?Sized> MetaStore for $ptr {
            fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
                (**self).get(key)
            }
            fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, MetaError> {
                (**self).list(prefix)
            }
            fn put(&self, key: &str, value: &[u8]) -> Result<u64, MetaError> {
                (**self).put(key, value)
            }
            fn delete(&self, key: &str) -> Result<bool, MetaError> {
                (**self).delete(key)
            }
            fn txn(&self, conditions: &[Condition], ops: &[Op]) -> Result<bool, MetaError> {
                (**self).txn(conditions, ops)
            }
            fn grant_lease(&self, ttl_ms: u64) -> Result<LeaseId, MetaError> {
                (**self).grant_lease(ttl_ms)
            }
            fn keep_alive(&self, lease: LeaseId) -> Result<(), MetaError> {
                (**self).keep_alive(lease)
            }
            fn revoke(&self, lease: LeaseId) -> Result<(), MetaError> {
                (**self).revoke(lease)
            }
        }
    )*};
}

forward_meta_store!(&T, Arc<T>);
