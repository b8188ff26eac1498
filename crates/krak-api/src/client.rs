//! A small blocking HTTP/1.1 client of the controller's API: one connection per request,
//! every wait bounded, answers bounded in size. For memory servers, pagers and the CLI.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest answer read (a full map of a large region fits).
pub const MAX_RESPONSE_BYTES: u64 = 256 << 20;

/// Why a call of the controller's API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad controller URL {0:?} (want http://HOST:PORT)")]
    Url(String),
    /// The controller could not be reached: nothing was sent.
    #[error("controller {addr}: cannot connect: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("controller {addr}: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("controller {addr} answered something that is not HTTP: {source}")]
    Protocol {
        addr: String,
        #[source]
        source: HttpAnswerError,
    },
    #[error("controller answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("{method} {path}: the request body does not encode as JSON: {source}")]
    Encode {
        method: String,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{method} {path}: controller answered JSON this client cannot read: {source}")]
    Json {
        method: String,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("controller {addr}: its answer is not signed with our rack secret (wrong --secret-file, or not a krak controller)")]
    Auth { addr: String },
    /// An unsigned 503: the controller's front end turned the connection away unread.
    #[error("controller {addr} is too busy to read the request (503 from its front end: {message})")]
    Busy { addr: String, message: String },
}

impl ApiError {
    /// Whether another try (later, or at another URL) may succeed: the controller could not
    /// be reached, was too busy to read the request, or is not the leader (503).
    pub fn is_transient(&self) -> bool {
        self.was_not_served() || matches!(self, ApiError::Io { .. })
    }

    /// Whether the request surely was not acted on (never sent, turned away unread, or
    /// refused by a standby), so that sending it again cannot apply it twice.
    pub fn was_not_served(&self) -> bool {
        matches!(self, ApiError::Connect { .. } | ApiError::Busy { .. } | ApiError::Status { status: 503, .. })
    }
}

/// An unsigned refusal's body with any boot id it names taken out, so that no one without
/// the secret can make a client sign for a run of their choosing.
fn strip_boot(body: Vec<u8>) -> Vec<u8> {
    if crate::signing::boot_of_refusal(&body).is_none() {
        return body;
    }
    serde_json::to_vec(&serde_json::json!({ "error": error_message(&body) })).unwrap_or_default()
}

/// The text of an error answer: its JSON `error`, else the body as text.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<crate::messages::ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}

/// Why an answer is not a well-formed HTTP response ([`parse_response`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpAnswerError {
    #[error("no end of headers")]
    NoHeadEnd,
    #[error("headers not UTF-8: {0}")]
    HeadNotUtf8(#[source] std::str::Utf8Error),
    #[error("bad status line {0:?}")]
    StatusLine(String),
    #[error("answer of {got} bytes, shorter than its Content-Length {want}")]
    ShortBody { want: usize, got: usize },
    #[error("bad chunked encoding")]
    BadChunked,
}

/// A client of one controller.
#[derive(Debug, Clone)]
pub struct Client {
    host: String,
    /// Connect, read and write timeout; a long-poll adds its wait to the read timeout.
    pub timeout: Duration,
    /// Signs every request and checks every answer with it (`None`: neither).
    pub secret: Option<krak_auth::RackSecret>,
    /// The boot id of the controller run last heard from at this URL (shared by clones):
    /// requests are signed for it (`signing`).
    boot: Arc<AtomicU64>,
}

impl Client {
    /// `url` is `http://HOST:PORT` (a trailing `/` is fine) or `HOST:PORT`.
    pub fn new(url: &str) -> Result<Client, ApiError> {
        let host = url.strip_prefix("http://").unwrap_or(url).trim_end_matches('/');
        if host.is_empty() || host.contains('/') || !host.contains(':') {
            return Err(ApiError::Url(url.to_string()));
        }
        Ok(Client {
            host: host.to_string(),
            timeout: Duration::from_secs(5),
            secret: None,
            boot: Arc::new(AtomicU64::new(crate::signing::UNKNOWN_BOOT)),
        })
    }

    /// The same client, signing with `secret`.
    pub fn with_secret(mut self, secret: Option<krak_auth::RackSecret>) -> Client {
        self.secret = secret;
        self
    }

    /// Sends a request; returns the status and body whatever the status. A signed refusal
    /// that names another controller run than the one the request was signed for (a
    /// restarted controller, a new leader, or the first request) is asked again once, for
    /// that run: nothing was served.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        extra_wait: Duration,
    ) -> Result<(u16, Vec<u8>), ApiError> {
        let Some(secret) = &self.secret else { return self.send(method, path, body, extra_wait, None) };
        let boot = self.boot.load(Ordering::Relaxed);
        let answer = self.send(method, path, body, extra_wait, Some((secret, boot)))?;
        match answer {
            (401, ref refusal) => match crate::signing::boot_of_refusal(refusal) {
                Some(current) if current != boot => {
                    self.boot.store(current, Ordering::Relaxed);
                    self.send(method, path, body, extra_wait, Some((secret, current)))
                }
                _ => Ok(answer),
            },
            _ => Ok(answer),
        }
    }

    /// Sends one request, signed for controller run `boot` with `secret` when given.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        extra_wait: Duration,
        signing: Option<(&krak_auth::RackSecret, u64)>,
    ) -> Result<(u16, Vec<u8>), ApiError> {
        let io = |source| ApiError::Io { addr: self.host.clone(), source };
        let connect = |source| ApiError::Connect { addr: self.host.clone(), source };
        let addr: SocketAddr =
            self.host.to_socket_addrs().map_err(connect)?.next().ok_or_else(|| ApiError::Url(self.host.clone()))?;
        let mut stream = TcpStream::connect_timeout(&addr, self.timeout).map_err(connect)?;
        stream.set_read_timeout(Some(self.timeout + extra_wait)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let body = body.unwrap_or_default();
        let signed = signing
            .map(|(s, boot)| crate::signing::sign_request(s, method, path, body, crate::signing::now_ms(), boot));
        let authorization = signed.as_ref().map(|(h, _)| format!("Authorization: {h}\r\n")).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\n{authorization}Content-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let sent = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
        let mut answer = Vec::new();
        let read = (&stream).take(MAX_RESPONSE_BYTES).read_to_end(&mut answer);
        // a server may answer (413, 503) and close before taking the whole request: its
        // answer counts, when it arrived
        let (status, body, auth) = match (sent, read, parse_response(&answer)) {
            (_, _, Ok(parsed)) => parsed,
            (Err(e), _, _) | (Ok(()), Err(e), _) => return Err(io(e)),
            (Ok(()), Ok(_), Err(source)) => return Err(ApiError::Protocol { addr: self.host.clone(), source }),
        };
        if let (Some((secret, _)), Some((_, nonce))) = (signing, &signed) {
            if !crate::signing::verify_response(secret, nonce, status, &body, auth.as_deref()) {
                return match status {
                    // A refusal of our signature cannot be signed for us: report it as it is
                    // (and it names no controller run: only a signed one is believed).
                    401 => Ok((status, strip_boot(body))),
                    // Nor can a front end that turns a connection away before reading its
                    // request (too many connections): busy, worth another try or URL. Anyone
                    // on the path could say so, but only to deny service, as they could anyway.
                    503 => Err(ApiError::Busy { addr: self.host.clone(), message: error_message(&body) }),
                    _ => Err(ApiError::Auth { addr: self.host.clone() }),
                };
            }
        }
        Ok((status, body))
    }

    /// Sends `body` as JSON and decodes a 2xx answer.
    pub fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        self.call_waiting(method, path, body, Duration::ZERO)
    }

    /// Like [`Client::call`], for a request the server may hold for up to `wait`.
    pub fn call_waiting<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
        wait: Duration,
    ) -> Result<T, ApiError> {
        let encode = |source| ApiError::Encode { method: method.into(), path: path.into(), source };
        let body = body.map(serde_json::to_vec).transpose().map_err(encode)?;
        let (status, answer) = self.raw(method, path, body.as_deref(), wait)?;
        if !(200..300).contains(&status) {
            return Err(ApiError::Status { status, message: error_message(&answer) });
        }
        serde_json::from_slice(&answer).map_err(|source| ApiError::Json {
            method: method.into(),
            path: path.into(),
            source,
        })
    }
}

/// Rounds over the URLs a call makes while every URL turns it away unserved, and the pause
/// before each round after the first.
const ROUNDS: usize = 3;
const ROUND_PAUSE_MS: [u64; ROUNDS - 1] = [100, 400];

/// A client of a rack whose controller may be any of several URLs (a leader and its
/// standbys): a call goes to the URL that answered last, and moves on to the next one when a
/// URL cannot be reached or answers 503 (a standby, a leader whose store failed, or a front
/// end too busy to read it). When every URL turned it away unserved, it tries them all again
/// after a pause, a bounded number of times.
#[derive(Debug, Clone)]
pub struct ControllerClient {
    clients: Vec<(String, Client)>,
    current: usize,
}

impl ControllerClient {
    /// `urls` is one URL or several separated by commas.
    /// Every URL's client signs with `secret`.
    pub fn with_secret(mut self, secret: Option<krak_auth::RackSecret>) -> ControllerClient {
        for (_, c) in &mut self.clients {
            c.secret = secret;
        }
        self
    }

    pub fn new(urls: &str, timeout: Duration) -> Result<ControllerClient, ApiError> {
        let mut clients = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let mut client = Client::new(url)?;
            client.timeout = timeout;
            clients.push((url.to_string(), client));
        }
        if clients.is_empty() {
            return Err(ApiError::Url(urls.to_string()));
        }
        Ok(ControllerClient { clients, current: 0 })
    }

    /// The URL that answered last (or will be tried first).
    pub fn url(&self) -> &str {
        &self.clients[self.current].0
    }

    pub fn call<B: Serialize, T: DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        self.call_waiting(method, path, body, Duration::ZERO)
    }

    /// Calls each URL in turn from the current one until one answers other than 503 or a
    /// connection failure; returns that answer, or the last failure. Rounds repeat (after
    /// 100 ms, then 400 ms) only while no URL may have acted on the request.
    pub fn call_waiting<B: Serialize, T: DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&B>,
        wait: Duration,
    ) -> Result<T, ApiError> {
        let n = self.clients.len();
        let mut last = None;
        for round in 0..ROUNDS {
            if round > 0 {
                std::thread::sleep(Duration::from_millis(ROUND_PAUSE_MS[round - 1]));
            }
            let mut all_unserved = true;
            for i in 0..n {
                let at = (self.current + i) % n;
                match self.clients[at].1.call_waiting(method, path, body, wait) {
                    Err(e) if e.is_transient() => {
                        tracing::debug!("{}: {e}", self.clients[at].0);
                        all_unserved &= e.was_not_served();
                        last = Some(e);
                    }
                    answer => {
                        self.current = at;
                        return answer;
                    }
                }
            }
            if !all_unserved {
                break;
            }
        }
        Err(last.unwrap_or_else(|| ApiError::Url("no controller URL".into())))
    }
}

/// Status, body and `X-Krak-Auth` header of a `Connection: close` answer
/// (`Content-Length` or read to the end; chunked encoding is decoded).
#[allow(clippy::type_complexity)]
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>, Option<String>), HttpAnswerError> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or(HttpAnswerError::NoHeadEnd)?;
    let head = std::str::from_utf8(&raw[..end]).map_err(HttpAnswerError::HeadNotUtf8)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpAnswerError::StatusLine(status_line.to_string()))?;
    let mut length = None;
    let mut chunked = false;
    let mut auth = None;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else { continue };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            length = v.parse::<usize>().ok();
        } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k == crate::signing::RESPONSE_HEADER.to_ascii_lowercase() {
            auth = Some(v.to_string());
        }
    }
    let body = &raw[end + 4..];
    if chunked {
        return dechunk(body).map(|b| (status, b, auth));
    }
    let body = match length {
        Some(n) if n <= body.len() => &body[..n],
        Some(want) => return Err(HttpAnswerError::ShortBody { want, got: body.len() }),
        None => body,
    };
    Ok((status, body.to_vec(), auth))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, HttpAnswerError> {
    let bad = || HttpAnswerError::BadChunked;
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| bad())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).map_err(|_| bad())?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err(bad());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A front end answering every connection with `answer` (unsigned), as the controller's
    /// gate does when full; counts the connections. It reads what the request sent first,
    /// so that closing does not reset the answer away.
    fn front_end(answer: &'static str) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = s.read(&mut [0u8; 4096]);
                let _ = s.write_all(answer.as_bytes());
                let _ = s.shutdown(std::net::Shutdown::Write);
                let _ = s.read_to_end(&mut Vec::new());
            }
        });
        (url, seen)
    }

    const BUSY: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 26\r\n\r\n{\"error\":\"too many conns\"}";
    const UNSIGNED_OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";

    #[test]
    fn an_unsigned_503_is_busy_and_tried_again_and_elsewhere() {
        let secret = Some(krak_auth::RackSecret::generate());
        let (busy, busy_seen) = front_end(BUSY);
        let (dead, _) = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            (format!("http://{}", l.local_addr().unwrap()), ())
        }; // closed again: connecting is refused
        let mut c =
            ControllerClient::new(&format!("{busy},{dead}"), Duration::from_secs(2)).unwrap().with_secret(secret);
        let started = std::time::Instant::now();
        let err = c.call::<(), serde_json::Value>("GET", "/v1/status", None).unwrap_err();
        // every URL in every round, the pauses between them, and the failure says what happened
        assert_eq!(busy_seen.load(Ordering::SeqCst), ROUNDS, "{err}");
        assert!(started.elapsed() >= Duration::from_millis(ROUND_PAUSE_MS.iter().sum()), "{:?}", started.elapsed());
        assert!(err.was_not_served(), "{err}");
        let single = Client::new(&busy).unwrap().with_secret(secret);
        let err = single.call::<(), serde_json::Value>("GET", "/v1/status", None).unwrap_err();
        assert!(matches!(&err, ApiError::Busy { message, .. } if message == "too many conns"), "{err}");
        assert!(err.to_string().contains("too busy"), "{err}");
    }

    #[test]
    fn an_unsigned_answer_is_still_refused_and_not_tried_again() {
        let secret = Some(krak_auth::RackSecret::generate());
        let (url, seen) = front_end(UNSIGNED_OK);
        let mut c = ControllerClient::new(&url, Duration::from_secs(2)).unwrap().with_secret(secret);
        let err = c.call::<(), serde_json::Value>("GET", "/v1/status", None).unwrap_err();
        assert!(matches!(err, ApiError::Auth { .. }), "{err}");
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn parses_plain_and_chunked_answers() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), (200, b"{}".to_vec(), None));
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (404, b"abcde".to_vec(), None));
        let signed = b"HTTP/1.1 200 OK\r\nX-Krak-Auth: mac=ab\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_response(signed).unwrap().2.as_deref(), Some("mac=ab"));
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 2x\r\n\r\n").is_err());
        assert!(Client::new("http://127.0.0.1:80/").is_ok());
        assert!(Client::new("http://nohost").is_err());
    }
}
