//! Leader election on any [`MetaStore`]: the leader is whoever holds the leader key, which
//! is attached to its lease, so it vanishes when the leader stops renewing.

use crate::{Condition, LeaseId, MetaError, MetaStore, Op};

/// The key whose value names the current leader.
pub const LEADER_KEY: &str = "/krak/leader";

/// One candidate's claim on leadership.
#[derive(Debug)]
pub struct Leadership {
    id: String,
    lease: LeaseId,
    /// `mod_revision` of the leader key as this leader wrote it: the fence of its writes.
    revision: u64,
}

impl Leadership {
    /// Tries once to become leader with a lease of `ttl_ms`; `Ok(None)` when another
    /// candidate leads. The caller renews with [`Leadership::renew`] well within `ttl_ms`.
    pub fn try_acquire(store: &dyn MetaStore, id: &str, ttl_ms: u64) -> Result<Option<Leadership>, MetaError> {
        let lease = store.grant_lease(ttl_ms)?;
        let won = store.txn(
            &[Condition::ModRevision { key: LEADER_KEY.into(), equals: 0 }],
            &[Op::Put { key: LEADER_KEY.into(), value: id.as_bytes().to_vec(), lease: Some(lease) }],
        )?;
        if won {
            // Read back the revision of our write. If the key already holds another claim
            // (our lease lapsed in between), we lost.
            match store.get(LEADER_KEY)? {
                Some(kv) if kv.value == id.as_bytes() => {
                    Ok(Some(Leadership { id: id.to_string(), lease, revision: kv.mod_revision }))
                }
                _ => {
                    let _ = store.revoke(lease);
                    Ok(None)
                }
            }
        } else {
            store.revoke(lease)?;
            Ok(None)
        }
    }

    /// Keeps the leadership; an error means it is lost and the caller must stop leading.
    pub fn renew(&self, store: &dyn MetaStore) -> Result<(), MetaError> {
        store.keep_alive(self.lease)?;
        match store.get(LEADER_KEY)? {
            Some(kv) if kv.value == self.id.as_bytes() => Ok(()),
            _ => Err(MetaError::LeaseGone(self.lease.0)),
        }
    }

    /// Gives leadership up at once, so a standby can take over without waiting for the lease.
    pub fn resign(self, store: &dyn MetaStore) -> Result<(), MetaError> {
        store.revoke(self.lease)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// `mod_revision` of the leader key this leader wrote; hand it to
    /// [`crate::FencedStore::new`] so that its writes stop when the leadership does.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The current leader's id, if any.
    pub fn current(store: &dyn MetaStore) -> Result<Option<String>, MetaError> {
        Ok(store.get(LEADER_KEY)?.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }
}
