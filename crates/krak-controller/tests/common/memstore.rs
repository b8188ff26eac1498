//! An in-memory `MetaStore`: a test double for the controller's tests only (the real
//! backends are `krak-meta-redb`, `krak-meta-file` and `krak-meta-etcd`). Leases never expire on their own;
//! `fail` makes every call answer `Unavailable`, to test store errors.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use krak_meta::{Condition, KeyValue, LeaseId, MetaError, MetaStore, Op};
use parking_lot::Mutex;

#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
    next_lease: AtomicU64,
    pub fail: AtomicBool,
    /// Transactions applied (to check batching).
    pub txns: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    revision: u64,
    keys: BTreeMap<String, (Vec<u8>, u64, Option<LeaseId>)>,
    leases: HashMap<LeaseId, ()>,
}

impl MemStore {
    fn check(&self) -> Result<(), MetaError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(MetaError::unavailable("test store set to fail"));
        }
        Ok(())
    }

    /// Keys present (for tests).
    pub fn len(&self) -> usize {
        self.inner.lock().keys.len()
    }
}

impl MetaStore for MemStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        self.check()?;
        let inner = self.inner.lock();
        Ok(inner.keys.get(key).map(|(v, r, _)| KeyValue { key: key.to_string(), value: v.clone(), mod_revision: *r }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, MetaError> {
        self.check()?;
        let inner = self.inner.lock();
        Ok(inner
            .keys
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, r, _))| KeyValue { key: k.clone(), value: v.clone(), mod_revision: *r })
            .collect())
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<u64, MetaError> {
        self.check()?;
        let mut inner = self.inner.lock();
        inner.revision += 1;
        let rev = inner.revision;
        inner.keys.insert(key.to_string(), (value.to_vec(), rev, None));
        Ok(rev)
    }

    fn delete(&self, key: &str) -> Result<bool, MetaError> {
        self.check()?;
        let mut inner = self.inner.lock();
        inner.revision += 1;
        Ok(inner.keys.remove(key).is_some())
    }

    fn txn(&self, conditions: &[Condition], ops: &[Op]) -> Result<bool, MetaError> {
        self.check()?;
        if ops.len() > 128 {
            return Err(MetaError::invalid(format!(
                "{} ops in one transaction (etcd's default limit is 128)",
                ops.len()
            )));
        }
        let mut inner = self.inner.lock();
        for c in conditions {
            let Condition::ModRevision { key, equals } = c;
            let rev = inner.keys.get(key).map_or(0, |(_, r, _)| *r);
            if rev != *equals {
                return Ok(false);
            }
        }
        inner.revision += 1;
        let rev = inner.revision;
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    inner.keys.insert(key.clone(), (value.clone(), rev, *lease));
                }
                Op::Delete { key } => {
                    inner.keys.remove(key);
                }
            }
        }
        self.txns.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    fn grant_lease(&self, _ttl_ms: u64) -> Result<LeaseId, MetaError> {
        self.check()?;
        let id = LeaseId(self.next_lease.fetch_add(1, Ordering::SeqCst) + 1);
        self.inner.lock().leases.insert(id, ());
        Ok(id)
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<(), MetaError> {
        self.check()?;
        if self.inner.lock().leases.contains_key(&lease) {
            Ok(())
        } else {
            Err(MetaError::LeaseGone(lease.0))
        }
    }

    fn revoke(&self, lease: LeaseId) -> Result<(), MetaError> {
        self.check()?;
        let mut inner = self.inner.lock();
        inner.leases.remove(&lease);
        inner.keys.retain(|_, (_, _, l)| *l != Some(lease));
        Ok(())
    }
}
