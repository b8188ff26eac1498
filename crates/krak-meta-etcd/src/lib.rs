//! A [`MetaStore`] on an etcd v3 cluster (developed against etcd 3.4, Debian's
//! `etcd-server`), for a rack whose controller must survive the loss of a machine.
//!
//! It speaks etcd's JSON gateway (`POST /v3/kv/range`, `/v3/kv/put`, `/v3/kv/deleterange`,
//! `/v3/kv/txn`, `/v3/lease/grant`, `/v3/lease/keepalive`, `/v3/lease/revoke`; keys and
//! values in base64) over plain HTTP/1.1, one connection per request, so it needs no gRPC
//! stack and no async runtime.
//!
//! - **Endpoints**: [`EtcdStore::connect`] takes `URL[,URL...]` (`http://host:port`). A
//!   request goes to the endpoint that answered last; when it cannot connect there it tries
//!   the next one. Reads and lease calls also move on after a connection breaks mid-request
//!   or a member answers that it is unavailable (no leader); `put`, `delete` and `txn` do
//!   not, because the write may have been applied: they fail with
//!   [`MetaError::Unavailable`], whose message says the outcome is unknown.
//! - **Timeouts**: every call, failover included, ends within
//!   [`EtcdOptions::request_timeout`] (connecting to one endpoint within
//!   [`EtcdOptions::connect_timeout`]); host names are resolved by the system resolver
//!   without a timeout, so give IP addresses.
//! - **Leases**: etcd counts TTLs in whole seconds: `grant_lease(ttl_ms)` asks for
//!   `ceil(ttl_ms / 1000)` seconds, and etcd raises that to its minimum TTL (1.5 election
//!   timeouts, 2 s with etcd's defaults); a lease's keys vanish up to ~0.5 s after it expires
//!   (etcd's expiry check period). `revoke` or `keep_alive` of a gone lease is
//!   [`MetaError::LeaseGone`].
//! - **Bounds**: the [`krak_meta`] bounds are checked before sending; etcd adds its own: a
//!   request over `--max-request-bytes` (1.5 MiB by default, so a txn writing two values of
//!   1 MiB) is refused by etcd with [`MetaError::Invalid`]. Answers are read up to
//!   [`MAX_RESPONSE_BYTES`]; `list` pages through large ranges at one revision.
//! - **Errors**: nothing etcd or a stranger on its port answers makes this panic:
//!   unparseable answers are [`MetaError::Corrupt`], gRPC errors are mapped
//!   (`InvalidArgument` → `Invalid`, lease `NotFound` → `LeaseGone`, others →
//!   `Unavailable`).
//!
//! [`testkit`] starts real etcd members for tests.

mod http;
pub mod testkit;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use krak_meta::{
    validate_key, validate_txn, validate_value, BoxError, Condition, KeyValue, LeaseId, MetaError, MetaStore, Op,
};
use serde_json::{json, Value};

pub use http::{Endpoint, EndpointError, HttpError, ResponseError};

/// Entry points for the fuzz targets (`fuzz/`): the decoders of etcd's answers, which come
/// from the network. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// An HTTP answer as read off the socket: its status, or none when refused.
    pub fn read_http_answer(data: &[u8]) -> Option<u16> {
        crate::http::read_response(&mut &data[..], 1 << 20).ok().map(|r| r.status)
    }

    /// A range answer's JSON: the keys it lists, or none when refused.
    pub fn parse_range_answer(data: &[u8]) -> Option<usize> {
        let v: serde_json::Value = serde_json::from_slice(data).ok()?;
        crate::parse_page(&v, 16).ok().map(|p| p.kvs.len())
    }
}

/// Most bytes of one answer read from etcd.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Keys asked for per page by `list` (fewer when a page would exceed
/// [`MAX_RESPONSE_BYTES`]).
const LIST_PAGE: usize = 1024;

/// Timeouts of an [`EtcdStore`].
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Whole-call bound, failover to other endpoints included. Default 5 s.
    pub request_timeout: Duration,
    /// Bound on connecting to one endpoint. Default 1 s.
    pub connect_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions { request_timeout: Duration::from_secs(5), connect_timeout: Duration::from_secs(1) }
    }
}

/// A [`MetaStore`] client of an etcd cluster. Cheap to share between threads.
#[derive(Debug)]
pub struct EtcdStore {
    endpoints: Vec<Endpoint>,
    /// Index of the endpoint that answered last.
    current: AtomicUsize,
    opts: EtcdOptions,
}

/// Whether a request may be sent again (to another endpoint) when its outcome is unknown.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads and lease calls: repeating them is harmless.
    Safe,
    /// Writes: only when the request certainly was not sent.
    IfNotSent,
}

impl EtcdStore {
    /// A store on the comma-separated endpoints `urls` with default options. Does not
    /// contact etcd: the first call does.
    pub fn connect(urls: &str) -> Result<EtcdStore, MetaError> {
        Self::connect_with(urls, EtcdOptions::default())
    }

    /// A store on the comma-separated endpoints `urls`.
    pub fn connect_with(urls: &str, opts: EtcdOptions) -> Result<EtcdStore, MetaError> {
        let endpoints = urls
            .split(',')
            .filter(|u| !u.trim().is_empty())
            .map(|u| Endpoint::parse(u).map_err(|e| MetaError::invalid_by("etcd endpoint", e)))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(MetaError::invalid(format!("no etcd endpoint in {urls:?}")));
        }
        Ok(EtcdStore { endpoints, current: AtomicUsize::new(0), opts })
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.url.clone()).collect()
    }

    /// The options in use.
    pub fn options(&self) -> &EtcdOptions {
        &self.opts
    }

    /// Sends one gateway request, failing over as [`Retry`] allows; returns the JSON answer
    /// of a successful call, or the mapped gRPC error.
    fn call(&self, path: &str, body: &Value, retry: Retry, lease: Option<u64>) -> Result<Value, MetaError> {
        Ok(self.call_limited(path, body, retry, lease, MAX_RESPONSE_BYTES)?)
    }

    fn call_limited(
        &self,
        path: &str,
        body: &Value,
        retry: Retry,
        lease: Option<u64>,
        max_body: usize,
    ) -> Result<Value, CallError> {
        let bytes = serde_json::to_vec(body).map_err(|e| MetaError::invalid_by("encode request", e))?;
        let deadline = Instant::now() + self.opts.request_timeout;
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for attempt in 0..n {
            if Instant::now() >= deadline {
                break;
            }
            let i = (first + attempt) % n;
            let ep = &self.endpoints[i];
            match http::post(ep, path, &bytes, deadline, self.opts.connect_timeout, max_body) {
                Ok(resp) => match decode_answer(ep, &resp, lease) {
                    // "no leader" is refused before anything is proposed: safe for writes too.
                    Err(e)
                        if e.unavailable() && (retry == Retry::Safe || matches!(e, AnswerError::NoLeader { .. })) =>
                    {
                        failures.push(Failure::Answer(e))
                    }
                    r => {
                        self.current.store(i, Ordering::Relaxed);
                        return Ok(r?);
                    }
                },
                // The peer answered, unacceptably: another endpoint is not asked.
                Err(e) if e.bad_answer() => return Err(answer_refused(path, e)),
                Err(e) if !e.sent() || retry == Retry::Safe => failures.push(Failure::Http(e)),
                Err(e) => {
                    return Err(MetaError::unavailable_by(
                        format!("{path}: the write was sent: it may or may not have been applied"),
                        e,
                    )
                    .into())
                }
            }
        }
        Err(MetaError::unavailable_by(
            format!("etcd {path} failed within {:?}", self.opts.request_timeout),
            Failures(failures),
        )
        .into())
    }

    /// One page of a range: keys in `[key, range_end)` at `revision` (0: latest).
    fn range_page(&self, key: &[u8], range_end: &[u8], limit: usize, revision: u64) -> Result<Page, MetaError> {
        let mut limit = limit.max(1);
        loop {
            let body = json!({
                "key": B64.encode(key),
                "range_end": B64.encode(range_end),
                "limit": limit.to_string(),
                "revision": revision.to_string(),
            });
            // A page that would be too large is asked again, smaller.
            let max = if limit > 1 { MAX_RESPONSE_BYTES } else { MAX_RESPONSE_BYTES * 2 };
            match self.call_limited("/v3/kv/range", &body, Retry::Safe, None, max) {
                Err(CallError::TooLarge(_)) if limit > 1 => limit /= 2,
                Err(e) => return Err(e.into()),
                Ok(v) => return parse_page(&v, limit),
            }
        }
    }
}

/// What [`EtcdStore::call_limited`] fails with: an answer too large (which `list` retries
/// with smaller pages), or anything else.
#[derive(Debug)]
enum CallError {
    TooLarge(MetaError),
    Meta(MetaError),
}

impl From<MetaError> for CallError {
    fn from(e: MetaError) -> Self {
        CallError::Meta(e)
    }
}

impl From<CallError> for MetaError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::TooLarge(e) | CallError::Meta(e) => e,
        }
    }
}

/// A malformed answer is [`MetaError::Corrupt`], one too large [`MetaError::Invalid`].
fn answer_refused(path: &str, e: HttpError) -> CallError {
    match e {
        HttpError::Answer { source: ResponseError::TooLarge(_), .. } => {
            CallError::TooLarge(MetaError::invalid_by(path.to_string(), e))
        }
        e => CallError::Meta(MetaError::corrupt_by(path.to_string(), e)),
    }
}

/// One endpoint's failure of a call that may go on to the next endpoint.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Http(HttpError),
    #[error(transparent)]
    Answer(AnswerError),
}

/// Every endpoint's failure of one call, in the order tried.
#[derive(Debug)]
struct Failures(Vec<Failure>);

impl std::fmt::Display for Failures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no endpoint tried");
        }
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failures {
    /// The last endpoint's failure (all of them are in the message).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.last().map(|e| e as _)
    }
}

/// Why an endpoint's answer is not a success.
#[derive(Debug, thiserror::Error)]
enum AnswerError {
    /// The member has no raft leader: it refused before proposing anything.
    #[error("{url}: etcd error {code}: {message}")]
    NoLeader { url: String, code: u64, message: String },
    #[error("{url}: etcd error {code}: {message}")]
    Grpc { url: String, code: u64, message: String },
    #[error("lease {0:#x} is gone")]
    LeaseGone(u64),
    #[error("{url}: HTTP {status}: {body}")]
    Busy { url: String, status: u16, body: String },
    #[error("{url}: HTTP {status} without an error: {body}")]
    NoError { url: String, status: u16, body: String },
    #[error("{url}: HTTP {status} with a body that is not JSON: {body:?}{}", .source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    NotJson {
        url: String,
        status: u16,
        body: String,
        #[source]
        source: Option<serde_json::Error>,
    },
    #[error(transparent)]
    Shape(MetaError),
}

impl AnswerError {
    /// Whether it maps to [`MetaError::Unavailable`] (another endpoint may do better).
    fn unavailable(&self) -> bool {
        match self {
            AnswerError::NoLeader { .. } | AnswerError::Busy { .. } | AnswerError::NoError { .. } => true,
            AnswerError::Grpc { code, .. } => *code != 3,
            AnswerError::LeaseGone(_) | AnswerError::NotJson { .. } | AnswerError::Shape(_) => false,
        }
    }
}

impl From<AnswerError> for MetaError {
    fn from(e: AnswerError) -> Self {
        match e {
            AnswerError::LeaseGone(id) => MetaError::LeaseGone(id),
            AnswerError::Shape(e) => e,
            AnswerError::Grpc { code: 3, .. } => MetaError::invalid_by("etcd refused the request", e),
            AnswerError::NotJson { .. } => MetaError::corrupt_by("etcd answer", e),
            e => MetaError::unavailable_by("etcd", e),
        }
    }
}

impl From<AnswerError> for CallError {
    fn from(e: AnswerError) -> Self {
        CallError::Meta(e.into())
    }
}

struct Page {
    kvs: Vec<KeyValue>,
    more: bool,
    revision: u64,
    limit: usize,
}

fn corrupt(what: &str, v: &Value) -> MetaError {
    MetaError::corrupt(format!("etcd answer: {what}: {}", shown(v)))
}

/// [`corrupt`] with the parse error that found it.
fn corrupt_by(what: &str, v: &Value, e: impl Into<BoxError>) -> MetaError {
    MetaError::corrupt_by(format!("etcd answer: {what}: {}", shown(v)), e)
}

/// At most 200 bytes of `v`, for messages.
fn shown(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// An integer field: etcd's gateway writes 64-bit integers as strings, omits zeros.
fn int(v: &Value, field: &str) -> Result<u64, MetaError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => {
            // Negative TTLs (-1: lease not found) read as 0.
            if let Ok(n) = s.parse::<i64>() {
                return Ok(n.max(0) as u64);
            }
            s.parse::<u64>().map_err(|e| corrupt_by(&format!("{field} is not an integer"), v, e))
        }
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_i64().map(|i| i.max(0) as u64))
            .ok_or_else(|| corrupt(&format!("{field} is not an integer"), v)),
        Some(_) => Err(corrupt(&format!("{field} is not an integer"), v)),
    }
}

fn b64(v: &Value, field: &str) -> Result<Vec<u8>, MetaError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => B64.decode(s).map_err(|e| corrupt_by(&format!("{field} is not base64"), v, e)),
        Some(_) => Err(corrupt(&format!("{field} is not a string"), v)),
    }
}

fn header_revision(v: &Value) -> Result<u64, MetaError> {
    let h = v.get("header").ok_or_else(|| corrupt("no header", v))?;
    let r = int(h, "revision")?;
    if r == 0 {
        return Err(corrupt("revision 0 in header", v));
    }
    Ok(r)
}

fn parse_kv(v: &Value) -> Result<KeyValue, MetaError> {
    let key = String::from_utf8(b64(v, "key")?).map_err(|e| corrupt_by("key is not UTF-8", v, e))?;
    let value = b64(v, "value")?;
    let mod_revision = int(v, "mod_revision")?;
    if key.is_empty() || mod_revision == 0 {
        return Err(corrupt("kv without key or mod_revision", v));
    }
    Ok(KeyValue { key, value, mod_revision })
}

fn parse_page(v: &Value, limit: usize) -> Result<Page, MetaError> {
    let revision = header_revision(v)?;
    let kvs = match v.get("kvs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().map(parse_kv).collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(corrupt("kvs is not a list", v)),
    };
    let more = match v.get("more") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(corrupt("more is not a bool", v)),
    };
    if kvs.windows(2).any(|w| w[0].key >= w[1].key) {
        return Err(corrupt("keys out of order", v));
    }
    Ok(Page { kvs, more, revision, limit })
}

/// Maps an answer to its JSON, or its gRPC error to an [`AnswerError`].
fn decode_answer(ep: &Endpoint, resp: &http::Response, lease: Option<u64>) -> Result<Value, AnswerError> {
    // Streaming calls (keepalive) answer `{"result": ...}` objects; take the first.
    let first = serde_json::Deserializer::from_slice(&resp.body).into_iter::<Value>().next();
    let body = || String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).into_owned();
    let v = match first {
        Some(Ok(v)) => v,
        _ if resp.status >= 500 || resp.status == 429 => {
            return Err(AnswerError::Busy { url: ep.url.clone(), status: resp.status, body: body() })
        }
        other => {
            return Err(AnswerError::NotJson {
                url: ep.url.clone(),
                status: resp.status,
                body: body(),
                source: other.and_then(Result::err),
            })
        }
    };
    if !v.is_object() {
        return Err(AnswerError::Shape(corrupt("not an object", &v)));
    }
    // Errors: `{"error": "...", "code": N}` (unary) or `{"error": {"grpc_code": N, ...}}`
    // (streaming).
    if let Some(err) = v.get("error") {
        let (code, message) = match err {
            Value::Object(_) => {
                (int(err, "grpc_code").unwrap_or(2), err.get("message").cloned().unwrap_or(Value::Null))
            }
            other => (int(&v, "code").unwrap_or(2), other.clone()),
        };
        let message = match message {
            Value::String(s) => s,
            other => other.to_string(),
        };
        return Err(grpc_error(ep, code, message, lease));
    }
    if resp.status != 200 {
        return Err(AnswerError::NoError { url: ep.url.clone(), status: resp.status, body: v.to_string() });
    }
    match v.get("result") {
        Some(r) if r.is_object() => Ok(r.clone()),
        _ => Ok(v),
    }
}

/// Classifies a gRPC error by its code, and by etcd's own text where the code is not enough.
fn grpc_error(ep: &Endpoint, code: u64, message: String, lease: Option<u64>) -> AnswerError {
    let url = ep.url.clone();
    if code == 5 && message.contains("lease not found") {
        AnswerError::LeaseGone(lease.unwrap_or(0))
    } else if code != 3 && message.contains("no leader") {
        AnswerError::NoLeader { url, code, message }
    } else {
        // 3 (invalid argument) is refused for good; cancelled, unknown, deadline, resource
        // exhausted, aborted, unavailable, ... may pass elsewhere or later.
        AnswerError::Grpc { url, code, message }
    }
}

/// The first key after every key that starts with `prefix` (etcd's `range_end` of a
/// prefix); `[0]` (every key) for the empty prefix.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
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

fn lease_of(ops: &[Op]) -> Option<u64> {
    ops.iter().find_map(|op| match op {
        Op::Put { lease: Some(l), .. } => Some(l.0),
        _ => None,
    })
}

impl MetaStore for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        validate_key(key)?;
        let v = self.call("/v3/kv/range", &json!({ "key": B64.encode(key) }), Retry::Safe, None)?;
        let page = parse_page(&v, 1)?;
        match page.kvs.into_iter().next() {
            Some(kv) if kv.key == key => Ok(Some(kv)),
            Some(kv) => Err(MetaError::corrupt(format!("etcd answered key {:?} for {key:?}", kv.key))),
            None => Ok(None),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, MetaError> {
        let (start, end) = if prefix.is_empty() {
            (vec![0], vec![0])
        } else {
            (prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes()))
        };
        let mut out = Vec::new();
        let mut key = start;
        let mut revision = 0;
        let mut limit = LIST_PAGE;
        loop {
            let page = self.range_page(&key, &end, limit, revision)?;
            revision = page.revision;
            limit = page.limit;
            if let (Some(last), Some(first)) = (out.last(), page.kvs.first()) {
                let (last, first): (&KeyValue, &KeyValue) = (last, first);
                if first.key <= last.key {
                    return Err(MetaError::corrupt("etcd pages overlap"));
                }
            }
            if page.kvs.iter().any(|kv| !kv.key.starts_with(prefix)) {
                return Err(MetaError::corrupt(format!("etcd listed a key outside prefix {prefix:?}")));
            }
            let n = page.kvs.len();
            out.extend(page.kvs);
            if !page.more || n == 0 {
                return Ok(out);
            }
            let mut next = out.last().expect("n > 0").key.as_bytes().to_vec();
            next.push(0);
            key = next;
        }
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<u64, MetaError> {
        validate_key(key)?;
        validate_value(value)?;
        let body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        let v = self.call("/v3/kv/put", &body, Retry::IfNotSent, None)?;
        header_revision(&v)
    }

    fn delete(&self, key: &str) -> Result<bool, MetaError> {
        validate_key(key)?;
        let v = self.call("/v3/kv/deleterange", &json!({ "key": B64.encode(key) }), Retry::IfNotSent, None)?;
        header_revision(&v)?;
        Ok(int(&v, "deleted")? > 0)
    }

    fn txn(&self, conditions: &[Condition], ops: &[Op]) -> Result<bool, MetaError> {
        validate_txn(conditions, ops)?;
        let compare: Vec<Value> = conditions
            .iter()
            .map(|c| {
                let Condition::ModRevision { key, equals } = c;
                json!({ "target": "MOD", "result": "EQUAL", "key": B64.encode(key), "mod_revision": equals.to_string() })
            })
            .collect();
        let success: Vec<Value> = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => json!({ "request_put": {
                    "key": B64.encode(key),
                    "value": B64.encode(value),
                    "lease": lease.map_or(0, |l| l.0).to_string(),
                }}),
                Op::Delete { key } => json!({ "request_delete_range": { "key": B64.encode(key) } }),
            })
            .collect();
        let body = json!({ "compare": compare, "success": success, "failure": [] });
        let v = self.call("/v3/kv/txn", &body, Retry::IfNotSent, lease_of(ops))?;
        header_revision(&v)?;
        match v.get("succeeded") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(corrupt("succeeded is not a bool", &v)),
        }
    }

    fn grant_lease(&self, ttl_ms: u64) -> Result<LeaseId, MetaError> {
        if ttl_ms == 0 {
            return Err(MetaError::invalid("lease TTL of 0 ms"));
        }
        let secs = ttl_ms.div_ceil(1000);
        if secs > i64::MAX as u64 / 2 {
            return Err(MetaError::invalid(format!("lease TTL of {ttl_ms} ms is too long")));
        }
        // A lost answer leaks a lease, which expires on its own: safe to retry.
        let v = self.call("/v3/lease/grant", &json!({ "TTL": secs.to_string() }), Retry::Safe, None)?;
        if let Some(e) = v.get("error").and_then(Value::as_str).filter(|e| !e.is_empty()) {
            return Err(MetaError::unavailable(format!("lease grant: {e}")));
        }
        let id = int(&v, "ID")?;
        if id == 0 || int(&v, "TTL")? == 0 {
            return Err(corrupt("lease grant without ID or TTL", &v));
        }
        Ok(LeaseId(id))
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<(), MetaError> {
        let v = self.call("/v3/lease/keepalive", &json!({ "ID": lease.0.to_string() }), Retry::Safe, Some(lease.0))?;
        // etcd answers TTL 0 (omitted) for a lease it does not know.
        if int(&v, "TTL")? == 0 {
            return Err(MetaError::LeaseGone(lease.0));
        }
        Ok(())
    }

    fn revoke(&self, lease: LeaseId) -> Result<(), MetaError> {
        self.call("/v3/lease/revoke", &json!({ "ID": lease.0.to_string() }), Retry::Safe, Some(lease.0))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
