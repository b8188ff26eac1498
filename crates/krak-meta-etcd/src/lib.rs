//! A [`MetaStore`] on an etcd v3 cluster (developed against etcd 3.4, Debian's
//! `etcd-server`), for a rack whose controller must survive the loss of a machine.
//!
//! It speaks etcd's native gRPC API through the maintained [`etcd_client`] crate (tonic
//! and prost), on a runtime of one thread it owns, so callers stay blocking.
//!
//! - **Endpoints**: [`EtcdStore::connect`] takes `URL[,URL...]` (`http://host:port`). The
//!   client balances requests over the endpoints that are up; connections are made lazily,
//!   so connecting does not contact etcd (the first call does). Reads and lease calls that
//!   fail as unavailable are tried again until the deadline; `put`, `delete` and `txn` are
//!   tried again only when etcd refused them before proposing anything (no leader):
//!   otherwise they fail with [`MetaError::Unavailable`], whose message says the outcome is
//!   unknown.
//! - **Timeouts**: every call, retries included, ends within
//!   [`EtcdOptions::request_timeout`] (connecting to one endpoint within
//!   [`EtcdOptions::connect_timeout`]).
//! - **Leases**: etcd counts TTLs in whole seconds: `grant_lease(ttl_ms)` asks for
//!   `ceil(ttl_ms / 1000)` seconds, and etcd raises that to its minimum TTL (1.5 election
//!   timeouts, 2 s with etcd's defaults); a lease's keys vanish up to ~0.5 s after it expires
//!   (etcd's expiry check period). `revoke` or `keep_alive` of a gone lease is
//!   [`MetaError::LeaseGone`].
//! - **Bounds**: the [`krak_meta`] bounds are checked before sending; etcd adds its own: a
//!   request over `--max-request-bytes` (1.5 MiB by default, so a txn writing two values of
//!   1 MiB) is refused by etcd with [`MetaError::Invalid`]. Answers are decoded up to
//!   [`MAX_RESPONSE_BYTES`]; `list` pages through large ranges at one revision.
//! - **Errors**: nothing etcd or a stranger on its port answers makes this panic (prost
//!   decodes, and refuses what is not a message); gRPC codes are mapped (`InvalidArgument`
//!   → `Invalid`, lease `NotFound` → `LeaseGone`, others → `Unavailable`), and answers that
//!   break the contract (a key not asked for, pages that overlap) are `Corrupt`.
//!
//! [`testkit`] starts real etcd members for tests.

mod answer;
pub mod testkit;

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient, LeaseClient, PutOptions, Txn,
    TxnOp,
};
use krak_meta::{validate_key, validate_txn, validate_value, Condition, KeyValue, LeaseId, MetaError, MetaStore, Op};

use answer::{classify, header_revision, prefix_end, to_kv, Failure};

/// Most bytes of one answer decoded from etcd.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Keys asked for per page by `list` (fewer when a page would exceed
/// [`MAX_RESPONSE_BYTES`]).
const LIST_PAGE: i64 = 1024;
/// Pause between two tries of a call that may be retried.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Timeouts of an [`EtcdStore`].
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Whole-call bound, retries included. Default 5 s.
    pub request_timeout: Duration,
    /// Bound on connecting to one endpoint. Default 1 s.
    pub connect_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions { request_timeout: Duration::from_secs(5), connect_timeout: Duration::from_secs(1) }
    }
}

/// Whether a call may be sent again when its outcome is unknown.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Retry {
    /// Reads and lease calls: repeating them is harmless.
    Safe,
    /// Writes: only when etcd refused them before proposing anything.
    IfRefused,
}

/// A [`MetaStore`] client of an etcd cluster. Cheap to share between threads.
pub struct EtcdStore {
    rt: tokio::runtime::Runtime,
    kv: KvClient,
    lease: LeaseClient,
    endpoints: Vec<String>,
    opts: EtcdOptions,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("endpoints", &self.endpoints).field("opts", &self.opts).finish()
    }
}

impl EtcdStore {
    /// A store on the comma-separated endpoints `urls` with default options. Does not
    /// contact etcd: the first call does.
    pub fn connect(urls: &str) -> Result<EtcdStore, MetaError> {
        Self::connect_with(urls, EtcdOptions::default())
    }

    /// A store on the comma-separated endpoints `urls`.
    pub fn connect_with(urls: &str, opts: EtcdOptions) -> Result<EtcdStore, MetaError> {
        let endpoints: Vec<String> =
            urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect();
        if endpoints.is_empty() {
            return Err(MetaError::invalid(format!("no etcd endpoint in {urls:?}")));
        }
        for e in &endpoints {
            let rest = e.strip_prefix("http://").ok_or_else(|| {
                MetaError::invalid(format!("etcd endpoint {e:?}: give http://HOST:PORT (TLS to etcd is not supported)"))
            })?;
            let port = rest.rsplit_once(':').map(|(_, p)| p.trim_end_matches('/'));
            if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
                return Err(MetaError::invalid(format!("etcd endpoint {e:?}: no port (http://HOST:PORT)")));
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("krak-etcd")
            .enable_all()
            .build()
            .map_err(|e| MetaError::unavailable_by("start the etcd client's runtime", e))?;
        let options = ConnectOptions::new()
            .with_timeout(opts.request_timeout)
            .with_connect_timeout(opts.connect_timeout)
            .with_require_leader(true);
        let client = rt
            .block_on(Client::connect(&endpoints, Some(options)))
            .map_err(|e| MetaError::invalid_by(format!("etcd endpoints {urls:?}"), e))?;
        let kv = client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES);
        let lease = client.lease_client();
        Ok(EtcdStore { rt, kv, lease, endpoints, opts })
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    /// The options in use.
    pub fn options(&self) -> &EtcdOptions {
        &self.opts
    }

    /// Runs `call` until it succeeds, fails for good, or the deadline passes; retries as
    /// `retry` allows. `lease`: the lease a `NotFound` answer is about.
    fn run<T, F, Fut>(&self, what: &str, retry: Retry, lease: Option<u64>, call: F) -> Result<T, MetaError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.opts.request_timeout;
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = match retry {
                    Retry::IfRefused => format!(
                        "etcd {what}: no answer within {:?}: the write may or may not have been applied",
                        self.opts.request_timeout
                    ),
                    Retry::Safe => format!("etcd {what}: no answer within {:?}", self.opts.request_timeout),
                };
                return Err(match last {
                    Some(e) => MetaError::unavailable_by(why, e),
                    None => MetaError::unavailable(why),
                });
            }
            let e = match self.rt.block_on(async { tokio::time::timeout(left, call()).await }) {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                Err(_) => continue,
            };
            match classify(&e, lease) {
                Failure::Final(e) => return Err(e),
                Failure::Refused => {}
                Failure::Unknown if retry == Retry::Safe => {}
                Failure::Unknown => {
                    return Err(MetaError::unavailable_by(
                        format!("etcd {what}: the write was sent: it may or may not have been applied"),
                        e,
                    ))
                }
            }
            last = Some(e);
            std::thread::sleep(RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// One page of a range: keys in `[key, range_end)` at `revision` (0: latest); halves
    /// the page while etcd's answer would exceed [`MAX_RESPONSE_BYTES`].
    fn range_page(&self, key: &[u8], end: &[u8], revision: i64) -> Result<(Vec<KeyValue>, bool, i64), MetaError> {
        let mut limit = LIST_PAGE;
        loop {
            let opts = GetOptions::new().with_range(end.to_vec()).with_limit(limit).with_revision(revision);
            let r = self.run("range", Retry::Safe, None, || {
                let mut kv = self.kv.clone();
                let opts = opts.clone();
                async move { kv.get(key.to_vec(), Some(opts)).await }
            });
            match r {
                Err(e) if answer::too_large(&e) && limit > 1 => limit /= 2,
                Err(e) => return Err(e),
                Ok(resp) => {
                    let rev = header_revision(resp.header())?;
                    let kvs = resp.kvs().iter().map(to_kv).collect::<Result<Vec<_>, _>>()?;
                    return Ok((kvs, resp.more(), rev));
                }
            }
        }
    }
}

impl MetaStore for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        validate_key(key)?;
        let resp = self.run("get", Retry::Safe, None, || {
            let mut kv = self.kv.clone();
            async move { kv.get(key, None).await }
        })?;
        match resp.kvs() {
            [] => Ok(None),
            [one] => match to_kv(one)? {
                kv if kv.key == key => Ok(Some(kv)),
                kv => Err(MetaError::corrupt(format!("etcd answered key {:?} for {key:?}", kv.key))),
            },
            many => Err(MetaError::corrupt(format!("etcd answered {} keys for {key:?}", many.len()))),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, MetaError> {
        let (start, end) = if prefix.is_empty() {
            (vec![0], vec![0])
        } else {
            (prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes()))
        };
        let mut out: Vec<KeyValue> = Vec::new();
        let (mut key, mut revision) = (start, 0);
        loop {
            let (page, more, rev) = self.range_page(&key, &end, revision)?;
            revision = rev;
            if let (Some(last), Some(first)) = (out.last(), page.first()) {
                if first.key <= last.key {
                    return Err(MetaError::corrupt("etcd pages overlap"));
                }
            }
            if page.iter().any(|kv| !kv.key.starts_with(prefix)) {
                return Err(MetaError::corrupt(format!("etcd listed a key outside prefix {prefix:?}")));
            }
            let n = page.len();
            out.extend(page);
            match out.last() {
                Some(last) if more && n > 0 => {
                    key = last.key.as_bytes().to_vec();
                    key.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<u64, MetaError> {
        validate_key(key)?;
        validate_value(value)?;
        let resp = self.run("put", Retry::IfRefused, None, || {
            let mut kv = self.kv.clone();
            async move { kv.put(key, value, None).await }
        })?;
        Ok(header_revision(resp.header())? as u64)
    }

    fn delete(&self, key: &str) -> Result<bool, MetaError> {
        validate_key(key)?;
        let resp = self.run("delete", Retry::IfRefused, None, || {
            let mut kv = self.kv.clone();
            async move { kv.delete(key, None::<DeleteOptions>).await }
        })?;
        header_revision(resp.header())?;
        Ok(resp.deleted() > 0)
    }

    fn txn(&self, conditions: &[Condition], ops: &[Op]) -> Result<bool, MetaError> {
        validate_txn(conditions, ops)?;
        let compare: Vec<Compare> = conditions
            .iter()
            .map(|c| {
                let Condition::ModRevision { key, equals } = c;
                Compare::mod_revision(key.as_str(), CompareOp::Equal, i64::try_from(*equals).unwrap_or(i64::MAX))
            })
            .collect();
        let then: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    let opts = lease.map(|l| PutOptions::new().with_lease(l.0 as i64));
                    TxnOp::put(key.as_str(), value.clone(), opts)
                }
                Op::Delete { key } => TxnOp::delete(key.as_str(), None),
            })
            .collect();
        let lease = ops.iter().find_map(|op| match op {
            Op::Put { lease: Some(l), .. } => Some(l.0),
            _ => None,
        });
        let txn = Txn::new().when(compare).and_then(then);
        let resp = self.run("txn", Retry::IfRefused, lease, || {
            let mut kv = self.kv.clone();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })?;
        header_revision(resp.header())?;
        Ok(resp.succeeded())
    }

    fn grant_lease(&self, ttl_ms: u64) -> Result<LeaseId, MetaError> {
        if ttl_ms == 0 {
            return Err(MetaError::invalid("lease TTL of 0 ms"));
        }
        let secs = i64::try_from(ttl_ms.div_ceil(1000))
            .ok()
            .filter(|s| *s <= i64::MAX / 2)
            .ok_or_else(|| MetaError::invalid(format!("lease TTL of {ttl_ms} ms is too long")))?;
        // A lost answer leaks a lease, which expires on its own: safe to retry.
        let resp = self.run("lease grant", Retry::Safe, None, || {
            let mut lease = self.lease.clone();
            async move { lease.grant(secs, None).await }
        })?;
        if !resp.error().is_empty() {
            return Err(MetaError::unavailable(format!("lease grant: {}", resp.error())));
        }
        if resp.id() <= 0 || resp.ttl() <= 0 {
            return Err(MetaError::corrupt(format!("lease grant answered id {} ttl {}", resp.id(), resp.ttl())));
        }
        Ok(LeaseId(resp.id() as u64))
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<(), MetaError> {
        let id = i64::try_from(lease.0).map_err(|_| MetaError::LeaseGone(lease.0))?;
        let ttl = self.run("lease keep-alive", Retry::Safe, Some(lease.0), || {
            let mut client = self.lease.clone();
            async move {
                let (mut keeper, mut answers) = client.keep_alive(id).await?;
                keeper.keep_alive().await?;
                Ok(answers.message().await?.map(|a| a.ttl()))
            }
        })?;
        match ttl {
            // etcd answers TTL 0 for a lease it does not know.
            Some(ttl) if ttl > 0 => Ok(()),
            Some(_) => Err(MetaError::LeaseGone(lease.0)),
            None => Err(MetaError::unavailable("lease keep-alive: etcd closed the stream without an answer")),
        }
    }

    fn revoke(&self, lease: LeaseId) -> Result<(), MetaError> {
        let id = i64::try_from(lease.0).map_err(|_| MetaError::LeaseGone(lease.0))?;
        self.run("lease revoke", Retry::Safe, Some(lease.0), || {
            let mut client = self.lease.clone();
            async move { client.revoke(id).await }
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_endpoints_are_refused_before_anything_is_sent() {
        for urls in ["", " , ", "localhost:2379", "https://127.0.0.1:2379", "http://127.0.0.1"] {
            assert!(matches!(EtcdStore::connect(urls), Err(MetaError::Invalid { .. })), "{urls:?}");
        }
        let s = EtcdStore::connect("http://127.0.0.1:1, http://127.0.0.1:2").unwrap();
        assert_eq!(s.endpoints(), ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert!(matches!(s.put("", b"x"), Err(MetaError::Invalid { .. })));
        assert!(matches!(s.grant_lease(0), Err(MetaError::Invalid { .. })));
    }

    #[test]
    fn nothing_listening_is_unavailable_within_the_timeout() {
        let opts =
            EtcdOptions { request_timeout: Duration::from_millis(600), connect_timeout: Duration::from_millis(100) };
        let s = EtcdStore::connect_with("http://127.0.0.1:1", opts).unwrap();
        let t = Instant::now();
        match s.get("/k") {
            Err(MetaError::Unavailable { .. }) => {}
            other => panic!("expected Unavailable, got {other:?}"),
        }
        match s.put("/k", b"v") {
            Err(MetaError::Unavailable { what, .. }) => assert!(what.contains("may or may not"), "{what}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }
}
