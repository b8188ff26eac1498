//! What etcd's answers and errors mean for the [`MetaStore`](krak_meta::MetaStore)
//! contract.

use etcd_client::{Error, ResponseHeader};
use krak_meta::{KeyValue, MetaError};
use tonic::Code;

/// How a failed call ends.
#[derive(Debug)]
pub(crate) enum Failure {
    /// For good: the caller gets this error.
    Final(MetaError),
    /// Refused before anything was proposed (no leader): safe to retry, writes too.
    Refused,
    /// Perhaps applied (or not): only reads and lease calls may retry.
    Unknown,
}

/// Classifies an error by its gRPC code, and by etcd's own text where the code is not
/// enough. `lease`: the lease a `NotFound` is about.
pub(crate) fn classify(e: &Error, lease: Option<u64>) -> Failure {
    let Error::GRpcStatus(status) = e else {
        return match e {
            // etcd-client's own reading of a keep-alive answer of TTL 0.
            Error::LeaseKeepAliveError(m) if m.contains("not found") => {
                Failure::Final(MetaError::LeaseGone(lease.unwrap_or(0)))
            }
            Error::InvalidArgs(_) | Error::InvalidUri(_) | Error::Utf8Error(_) => {
                Failure::Final(MetaError::invalid_by("etcd request", e.to_string()))
            }
            _ => Failure::Unknown,
        };
    };
    let message = status.message();
    match status.code() {
        Code::NotFound if message.contains("lease not found") => {
            Failure::Final(MetaError::LeaseGone(lease.unwrap_or(0)))
        }
        Code::InvalidArgument => Failure::Final(MetaError::invalid_by("etcd refused the request", e.to_string())),
        _ if message.contains("no leader") => Failure::Refused,
        Code::OutOfRange | Code::ResourceExhausted if too_large_text(message) => {
            Failure::Final(MetaError::invalid_by("etcd's answer is too large", e.to_string()))
        }
        _ => Failure::Unknown,
    }
}

fn too_large_text(message: &str) -> bool {
    message.contains("message length too large") || message.contains("too large")
}

/// Whether `e` is an answer larger than the client decodes (a smaller page may pass).
pub(crate) fn too_large(e: &MetaError) -> bool {
    matches!(e, MetaError::Invalid { what, .. } if what.contains("answer is too large"))
}

/// The revision of an answer's header; a missing header breaks the contract.
pub(crate) fn header_revision(h: Option<&ResponseHeader>) -> Result<i64, MetaError> {
    match h.map(ResponseHeader::revision) {
        Some(r) if r > 0 => Ok(r),
        other => Err(MetaError::corrupt(format!("etcd answered without a revision ({other:?})"))),
    }
}

/// A key of an answer; a key that is not UTF-8 or a revision of 0 breaks the contract.
pub(crate) fn to_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue, MetaError> {
    let key =
        kv.key_str().map_err(|e| MetaError::corrupt_by("etcd answered a key that is not UTF-8", e.to_string()))?;
    let mod_revision = u64::try_from(kv.mod_revision()).ok().filter(|&r| r > 0);
    let mod_revision =
        mod_revision.ok_or_else(|| MetaError::corrupt(format!("key {key:?} has revision {}", kv.mod_revision())))?;
    Ok(KeyValue { key: key.to_string(), value: kv.value().to_vec(), mod_revision })
}

/// The first key after every key that starts with `prefix` (etcd's `range_end` of a
/// prefix); `[0]` (every key) for a prefix of only 0xff bytes.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().expect("not empty") += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn errors_are_classified() {
        let status = |code, msg: &str| Error::GRpcStatus(tonic::Status::new(code, msg));
        let lease_gone = classify(&status(Code::NotFound, "etcdserver: requested lease not found"), Some(7));
        assert!(matches!(lease_gone, Failure::Final(MetaError::LeaseGone(7))));
        let kept_gone = classify(&Error::LeaseKeepAliveError("lease not found".into()), Some(8));
        assert!(matches!(kept_gone, Failure::Final(MetaError::LeaseGone(8))));
        let big = classify(&status(Code::InvalidArgument, "etcdserver: request is too large"), None);
        assert!(matches!(big, Failure::Final(MetaError::Invalid { .. })));
        assert!(matches!(classify(&status(Code::Unavailable, "etcdserver: no leader"), None), Failure::Refused));
        assert!(matches!(classify(&status(Code::Unavailable, "transport"), None), Failure::Unknown));
        assert!(matches!(classify(&status(Code::DeadlineExceeded, "timeout"), None), Failure::Unknown));
        let huge = classify(&status(Code::OutOfRange, "message length too large: found 9 bytes"), None);
        assert!(matches!(huge, Failure::Final(ref e) if too_large(e)));
    }
}
