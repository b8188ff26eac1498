//! The HTTP server of the controller (and of a standby): one acceptor thread admits
//! connections within bounds (in all and per client address, refused at once with 503
//! beyond), a thread per admitted connection reads its requests under deadlines, and at most
//! `workers` requests are answered at once. Request bodies are read up to a limit (413
//! beyond, before any of the body is read).

use std::io::{BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

pub use crate::http_gate::HttpStats;
use crate::http_gate::{Admission, ConnectionGate};
use crate::http_wire::{self, DeadlineStream, ReadError};

/// How often a request waiting for a worker checks for shutdown.
const POLL: Duration = Duration::from_millis(100);
/// How long a refusal may take to write: the acceptor never waits on a client.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_millis(100);
/// How long shutdown waits for connections still answering.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// What is read (and dropped) of a refused request after the answer, so that closing does
/// not reset the connection before the client reads the answer.
const LINGER_BYTES: u64 = 4 << 20;
const LINGER_TIME: Duration = Duration::from_secs(1);

/// A request as the API sees it.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// Path and query as sent: what a request signature covers.
    pub url: String,
    pub path: String,
    pub query: String,
    pub body: Vec<u8>,
    pub authorization: Option<String>,
}

impl Request {
    fn from_wire(wire: http_wire::WireRequest) -> Request {
        let (path, query) = match wire.target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (wire.target.clone(), String::new()),
        };
        Request {
            method: wire.method,
            url: wire.target,
            path,
            query,
            body: wire.body,
            authorization: wire.authorization,
        }
    }
}

/// Frames `raw` as the first request of a connection, as the server does; `Err` is the
/// status it would answer (and close) with before the API. What the `controller_request`
/// fuzz target feeds arbitrary bytes to.
pub fn decode_request(raw: &[u8], max_body_bytes: usize) -> Result<Request, u16> {
    let mut reader = BufReader::new(raw);
    match http_wire::read_request(&mut reader, &mut std::io::sink(), max_body_bytes) {
        Ok(wire) => Ok(Request::from_wire(wire)),
        Err(ReadError::Refused { status, .. }) => Err(status),
        Err(ReadError::TimedOut { .. }) => Err(408),
        Err(ReadError::Closed | ReadError::Io(_)) => Err(400),
    }
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// The answer's signature (`X-Krak-Auth`), when the controller has a secret.
    pub auth: Option<String>,
}

impl Response {
    pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response { status, content_type: "application/json", body, auth: None },
            Err(e) => Response::error(500, &format!("cannot encode the answer: {e}")),
        }
    }

    pub fn error(status: u16, message: &str) -> Response {
        let body = serde_json::to_vec(&krak_api::messages::ErrorBody { error: message.to_string() })
            .unwrap_or_else(|_| b"{\"error\":\"?\"}".to_vec());
        Response { status, content_type: "application/json", body, auth: None }
    }

    /// `GET /metrics`'s answer (OpenMetrics text).
    pub fn metrics(body: String) -> Response {
        Response { status: 200, content_type: crate::metrics::CONTENT_TYPE, body: body.into_bytes(), auth: None }
    }
}

/// Answers requests.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// The bounds of the HTTP front end.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Most requests answered at once.
    pub workers: usize,
    /// Largest request body (413 beyond).
    pub max_body_bytes: usize,
    /// Most connections open at once; more are refused with 503.
    pub max_connections: usize,
    /// Most connections open at once from one client address.
    pub max_connections_per_client: usize,
    /// A request (head and body) must arrive within this long of its first byte (of the
    /// connection's opening, for its first request); also bounds writing the answer.
    pub request_timeout_ms: u64,
    /// A kept-alive connection with no new request for this long is closed.
    pub idle_timeout_ms: u64,
}

/// Counts the requests being answered, up to `workers`.
#[derive(Debug)]
struct Workers {
    busy: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

impl Workers {
    /// Waits for a free worker; false when the server stops meanwhile.
    fn acquire(&self, stop: &AtomicBool) -> bool {
        let mut busy = self.busy.lock();
        while *busy >= self.max {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            self.freed.wait_for(&mut busy, POLL);
        }
        *busy += 1;
        true
    }

    fn release(&self) {
        *self.busy.lock() -= 1;
        self.freed.notify_one();
    }
}

/// What every connection thread shares.
struct Context {
    limits: HttpLimits,
    handler: Handler,
    stats: Arc<HttpStats>,
    stop: AtomicBool,
    workers: Workers,
}

/// A running server.
pub struct HttpServer {
    addr: SocketAddr,
    context: Arc<Context>,
    gate: Arc<ConnectionGate>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer").field("addr", &self.addr).field("limits", &self.context.limits).finish()
    }
}

impl HttpServer {
    /// Listens on `listen` and answers with `handler` within `limits`, counting in `stats`.
    pub fn start(
        listen: SocketAddr,
        limits: HttpLimits,
        stats: Arc<HttpStats>,
        handler: Handler,
    ) -> Result<HttpServer, std::io::Error> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let gate = ConnectionGate::new(limits.max_connections, limits.max_connections_per_client, stats.clone());
        let workers = Workers { busy: Mutex::new(0), freed: Condvar::new(), max: limits.workers.max(1) };
        let context = Arc::new(Context { limits, handler, stats, stop: AtomicBool::new(false), workers });
        let acceptor = {
            let (context, gate) = (context.clone(), gate.clone());
            thread::Builder::new()
                .name("krak-ctl-http-accept".into())
                .spawn(move || accept_loop(&listener, &context, &gate))?
        };
        Ok(HttpServer { addr, context, gate, acceptor: Some(acceptor) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener, cuts every connection and waits (a bounded time) for the
    /// requests being answered.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.context.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            // the acceptor blocks in accept(): a connection of our own wakes it to see `stop`
            let wake = match self.addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), self.addr.port()),
                IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), self.addr.port()),
                _ => self.addr,
            };
            match TcpStream::connect_timeout(&wake, Duration::from_secs(2)) {
                Ok(_) => {
                    let _ = acceptor.join();
                }
                Err(e) => tracing::warn!("cannot wake the HTTP acceptor on {wake} ({e}); leaving it behind"),
            }
        }
        self.gate.close_all();
        if !self.gate.wait_drained(DRAIN_TIMEOUT) {
            tracing::warn!("HTTP connections still open {} s after shutdown", DRAIN_TIMEOUT.as_secs());
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.stop();
        }
    }
}

fn accept_loop(listener: &TcpListener, context: &Arc<Context>, gate: &Arc<ConnectionGate>) {
    loop {
        let accepted = listener.accept();
        if context.stop.load(Ordering::SeqCst) {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // out of descriptors and the like: back off rather than spin
                tracing::warn!("http accept: {e}");
                thread::sleep(POLL);
                continue;
            }
        };
        let admission = match gate.admit(&stream, peer.ip()) {
            Ok(a) => a,
            Err(why) => {
                tracing::debug!("refusing a connection from {peer}: {} bound", why.as_str());
                refuse(stream, &format!("too many connections ({} bound); retry later", why.as_str()));
                continue;
            }
        };
        let context = context.clone();
        let spawned = thread::Builder::new()
            .name("krak-ctl-http-conn".into())
            .spawn(move || serve_connection(stream, admission, &context));
        if let Err(e) = spawned {
            tracing::warn!("cannot start a thread for the connection from {peer}: {e}");
        }
    }
}

/// 503 without reading the request, then close.
fn refuse(mut stream: TcpStream, message: &str) {
    let _ = stream.set_write_timeout(Some(REFUSAL_WRITE_TIMEOUT));
    let body = Response::error(503, message).body;
    let _ = stream.write_all(&http_wire::encode_response(503, "application/json", &body, None, false));
    let _ = stream.shutdown(Shutdown::Write);
}

/// The socket closes when its last descriptor does: the gate's, dropped with `admission`
/// (a parameter, so after every local) under the gate's lock, so a client that saw the close
/// and reconnects finds its place free.
fn serve_connection(stream: TcpStream, admission: Admission, context: &Context) {
    let limits = &context.limits;
    let request_timeout = Duration::from_millis(limits.request_timeout_ms);
    let idle_timeout = Duration::from_millis(limits.idle_timeout_ms);
    let Ok(mut writer) = stream.try_clone() else { return };
    let _ = writer.set_write_timeout(Some(request_timeout));
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(DeadlineStream { stream, deadline: Instant::now() + request_timeout });
    let mut first = true;
    while !context.stop.load(Ordering::SeqCst) {
        if !first {
            reader.get_mut().deadline = Instant::now() + idle_timeout;
        }
        match http_wire::wait_for_request(&mut reader) {
            Ok(true) => {}
            Ok(false) | Err(ReadError::Closed | ReadError::Io(_) | ReadError::Refused { .. }) => return,
            Err(ReadError::TimedOut { .. }) => {
                if first {
                    context.stats.request_timed_out();
                } else {
                    context.stats.idle_timed_out();
                }
                return;
            }
        }
        if !first {
            reader.get_mut().deadline = Instant::now() + request_timeout;
        }
        first = false;
        let wire = match http_wire::read_request(&mut reader, &mut writer, limits.max_body_bytes) {
            Ok(w) => w,
            Err(ReadError::Closed) => return,
            Err(ReadError::Io(e)) => {
                tracing::debug!("http read: {e}");
                return;
            }
            Err(ReadError::TimedOut { started }) => {
                context.stats.request_timed_out();
                if started {
                    let body = Response::error(408, "request not complete within the request timeout").body;
                    let _ = writer.write_all(&http_wire::encode_response(408, "application/json", &body, None, false));
                    linger(reader.into_inner(), &writer);
                }
                return;
            }
            Err(ReadError::Refused { status, message }) => {
                context.stats.malformed();
                let body = Response::error(status, &message).body;
                let _ = writer.write_all(&http_wire::encode_response(status, "application/json", &body, None, false));
                linger(reader.into_inner(), &writer);
                return;
            }
        };
        if !admission.answering() {
            return; // closed for room while its request arrived: not served
        }
        if !context.workers.acquire(&context.stop) {
            return;
        }
        let keep_alive = wire.keep_alive;
        let request = Request::from_wire(wire);
        let response = (context.handler)(request);
        context.workers.release();
        let keep_alive = keep_alive && !context.stop.load(Ordering::SeqCst);
        let out = http_wire::encode_response(
            response.status,
            response.content_type,
            &response.body,
            response.auth.as_deref(),
            keep_alive,
        );
        if let Err(e) = writer.write_all(&out) {
            tracing::debug!("http respond: {e}");
            return;
        }
        if !keep_alive {
            return;
        }
        admission.waiting();
    }
}

/// Half-closes, then reads a bounded amount for a bounded time, so that unread request bytes
/// do not make the close a reset that could destroy the answer before the client reads it.
fn linger(mut reading: DeadlineStream, writer: &TcpStream) {
    let _ = writer.shutdown(Shutdown::Write);
    reading.deadline = Instant::now() + LINGER_TIME;
    let _ = std::io::copy(&mut std::io::Read::take(reading, LINGER_BYTES), &mut std::io::sink());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutated_requests_never_panic_and_stay_within_the_limits() {
        // A stable stand-in for the `controller_request` fuzz target's HTTP part.
        let valid = b"PUT /v1/policy?x=1 HTTP/1.1\r\nHost: h\r\nAuthorization: Krak-HMAC ts=1\r\n\
                      Content-Length: 15\r\nExpect: 100-continue\r\n\r\n{\"name\":\"pack\"}";
        let decoded = decode_request(valid, 1024).unwrap();
        assert_eq!((decoded.path.as_str(), decoded.query.as_str()), ("/v1/policy", "x=1"));
        assert_eq!(decoded.body, b"{\"name\":\"pack\"}");
        let alphabet = b"\r\n :?/0123456789GETPOSTContent-Length: chunked\xc3\xa9";
        let mut x = 0x9e37_79b9_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut bytes = valid.to_vec();
            for _ in 0..1 + next() % 8 {
                let at = (next() as usize) % (bytes.len() + 1);
                let c = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 if at < bytes.len() => bytes[at] = c,
                    1 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, c),
                }
            }
            match decode_request(&bytes, 32) {
                Ok(r) => {
                    assert!(r.body.len() <= 32);
                    assert!(r.url.starts_with('/') && r.url.len() <= bytes.len());
                }
                Err(status) => assert!((400..=505).contains(&status), "{status}"),
            }
        }
    }
}
