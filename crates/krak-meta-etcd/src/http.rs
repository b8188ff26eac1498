//! The smallest HTTP/1.1 client that does the job: one `POST` per connection
//! (`Connection: close`), every step bounded by one deadline, every answer bounded in size
//! and parsed without trusting it. Requests carry the gRPC metadata `hasleader: true`
//! (the gateway forwards `Grpc-Metadata-*` headers): a member that knows it has no raft
//! leader refuses at once ("no leader") instead of holding the request until it times out.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::num::ParseIntError;
use std::time::{Duration, Instant};

/// Most bytes of a response head (status line and headers).
const MAX_HEAD: usize = 64 << 10;

/// One etcd client URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As given, for messages.
    pub url: String,
    /// `host:port`, for the `Host` header and resolution.
    pub authority: String,
}

impl Endpoint {
    /// Parses `http://host:port` (a trailing `/` allowed) or a bare `host:port`.
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        let u = url.trim();
        let url = || u.to_string();
        let rest = if let Some(r) = u.strip_prefix("http://") {
            r
        } else if u.starts_with("https://") {
            return Err(EndpointError::Https { url: url() });
        } else if u.contains("://") {
            return Err(EndpointError::Scheme { url: url() });
        } else {
            u
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains('/') || authority.contains(char::is_whitespace) {
            return Err(EndpointError::Shape { url: url() });
        }
        let (_, port) = authority.rsplit_once(':').ok_or_else(|| EndpointError::NoPort { url: url() })?;
        port.parse::<u16>().map_err(|source| EndpointError::BadPort { url: url(), port: port.to_string(), source })?;
        Ok(Endpoint { url: u.to_string(), authority: authority.to_string() })
    }
}

/// Why an etcd URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{url}: https is not supported (use etcd's plain-HTTP client URL on a trusted network)")]
    Https { url: String },
    #[error("{url}: only http:// URLs are supported")]
    Scheme { url: String },
    #[error("{url}: expected http://host:port")]
    Shape { url: String },
    #[error("{url}: no port (expected http://host:port)")]
    NoPort { url: String },
    #[error("{url}: bad port {port:?}: {source}")]
    BadPort {
        url: String,
        port: String,
        #[source]
        source: ParseIntError,
    },
}

/// Why a request failed, which decides whether another endpoint may be tried
/// ([`HttpError::sent`]).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The endpoint's name did not resolve: nothing was sent.
    #[error("{url}: resolve: {source}")]
    Resolve {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// No address was tried before the deadline (or the name resolved to none).
    #[error("{url}: connect: no address")]
    NoAddress { url: String },
    /// No connection was made: the request was certainly not sent.
    #[error("{url}: connect: {addr}: {source}")]
    Connect {
        url: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The deadline passed once connected, before the request was sent.
    #[error("{url}: timed out")]
    TimedOut { url: String },
    /// Setting up or sending on the connection failed: the request may have been sent.
    #[error("{url}: {what}: {source}")]
    Io {
        url: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Reading or parsing the answer failed.
    #[error("{url}: {source}")]
    Answer {
        url: String,
        #[source]
        source: ResponseError,
    },
}

impl HttpError {
    /// Whether the request may have reached the endpoint (and a write been applied).
    pub fn sent(&self) -> bool {
        !matches!(self, HttpError::Resolve { .. } | HttpError::NoAddress { .. } | HttpError::Connect { .. })
    }

    /// Whether the peer answered something unacceptable (malformed or too large), rather
    /// than failing to answer.
    pub fn bad_answer(&self) -> bool {
        match self {
            HttpError::Answer { source, .. } => {
                !matches!(source, ResponseError::TimedOut | ResponseError::Receive(_) | ResponseError::Closed { .. })
            }
            _ => false,
        }
    }
}

/// Why an HTTP answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// No answer within the request's deadline.
    #[error("no answer within the request timeout")]
    TimedOut,
    #[error("receive: {0}")]
    Receive(#[source] std::io::Error),
    /// A peer that dies or resets looks like this too: not proof of a bad answer.
    #[error("connection closed inside the response {}", if *.in_body { "body" } else { "head" })]
    Closed { in_body: bool },
    /// The peer answered something that is not a well-formed HTTP response.
    #[error("{what} {got:?}")]
    Malformed { what: &'static str, got: String },
    #[error("a line longer than {max} bytes")]
    LineTooLong { max: usize },
    #[error("response head over {MAX_HEAD} bytes")]
    HeadTooLong,
    #[error("chunk not followed by CRLF")]
    ChunkNotTerminated,
    /// The response body is larger than allowed.
    #[error("answer over {0} bytes")]
    TooLarge(usize),
}

/// A response: status code and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

fn remaining(deadline: Instant) -> Option<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    (d > Duration::ZERO).then_some(d)
}

/// Sends `POST path` with a JSON `body` to `ep` and reads the answer, all before
/// `deadline`; connecting takes at most `connect_timeout` of that.
pub fn post(
    ep: &Endpoint,
    path: &str,
    body: &[u8],
    deadline: Instant,
    connect_timeout: Duration,
    max_body: usize,
) -> Result<Response, HttpError> {
    let url = || ep.url.clone();
    let addrs: Vec<SocketAddr> =
        ep.authority.to_socket_addrs().map_err(|source| HttpError::Resolve { url: url(), source })?.collect();
    let mut stream = None;
    let mut last = None;
    for a in addrs {
        let Some(left) = remaining(deadline) else { break };
        match TcpStream::connect_timeout(&a, left.min(connect_timeout)) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some((a, e)),
        }
    }
    let mut s = match (stream, last) {
        (Some(s), _) => s,
        (None, Some((addr, source))) => return Err(HttpError::Connect { url: url(), addr, source }),
        (None, None) => return Err(HttpError::NoAddress { url: url() }),
    };
    let io = |what: &'static str, source: std::io::Error| HttpError::Io { url: url(), what, source };
    let _ = s.set_nodelay(true);
    let left = remaining(deadline).ok_or_else(|| HttpError::TimedOut { url: url() })?;
    s.set_write_timeout(Some(left)).map_err(|e| io("set timeout", e))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Grpc-Metadata-hasleader: true\r\nConnection: close\r\n\r\n",
        ep.authority,
        body.len()
    );
    let mut req = Vec::with_capacity(head.len() + body.len());
    req.extend_from_slice(head.as_bytes());
    req.extend_from_slice(body);
    s.write_all(&req).map_err(|e| io("send", e))?;
    let mut r = DeadlineReader { s, deadline, url: &ep.url };
    read_response(&mut r, max_body).map_err(|source| HttpError::Answer { url: url(), source })
}

/// Reads with the socket timeout set to what is left of the deadline before each read.
struct DeadlineReader<'a> {
    s: TcpStream,
    deadline: Instant,
    url: &'a str,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = remaining(self.deadline).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{}: no answer in time", self.url))
        })?;
        self.s.set_read_timeout(Some(left))?;
        self.s.read(buf)
    }
}

fn read_err(e: std::io::Error) -> ResponseError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ResponseError::TimedOut,
        _ => ResponseError::Receive(e),
    }
}

/// A byte source with one-byte lookahead over a reader, for line-oriented parsing.
struct Buffered<'r, R: Read> {
    r: &'r mut R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl<'r, R: Read> Buffered<'r, R> {
    fn new(r: &'r mut R) -> Self {
        Buffered { r, buf: vec![0; 16 << 10], pos: 0, end: 0 }
    }

    /// Refills; false at end of stream.
    fn fill(&mut self) -> Result<bool, ResponseError> {
        if self.pos < self.end {
            return Ok(true);
        }
        loop {
            match self.r.read(&mut self.buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.pos = 0;
                    self.end = n;
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e)),
            }
        }
    }

    /// One line without its `\r\n`, at most `max` bytes.
    fn line(&mut self, max: usize) -> Result<Vec<u8>, ResponseError> {
        let mut out = Vec::new();
        loop {
            if !self.fill()? {
                // A peer that dies or resets looks like this too: not proof of a bad answer.
                return Err(ResponseError::Closed { in_body: false });
            }
            let chunk = &self.buf[self.pos..self.end];
            if let Some(i) = chunk.iter().position(|&b| b == b'\n') {
                out.extend_from_slice(&chunk[..i]);
                self.pos += i + 1;
                if out.last() == Some(&b'\r') {
                    out.pop();
                }
                return Ok(out);
            }
            out.extend_from_slice(chunk);
            self.pos = self.end;
            if out.len() > max {
                return Err(ResponseError::LineTooLong { max });
            }
        }
    }

    /// Exactly `n` bytes appended to `out`.
    fn exact(&mut self, n: usize, out: &mut Vec<u8>) -> Result<(), ResponseError> {
        let mut left = n;
        while left > 0 {
            if !self.fill()? {
                return Err(ResponseError::Closed { in_body: true });
            }
            let take = left.min(self.end - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            left -= take;
        }
        Ok(())
    }

    /// Everything to the end of the stream, at most `max` bytes.
    fn read_until_close(&mut self, max: usize, out: &mut Vec<u8>) -> Result<(), ResponseError> {
        while self.fill()? {
            out.extend_from_slice(&self.buf[self.pos..self.end]);
            self.pos = self.end;
            if out.len() > max {
                return Err(ResponseError::TooLarge(max));
            }
        }
        Ok(())
    }
}

/// Parses a response: status line, headers, then a body framed by `Content-Length`,
/// chunked encoding (trailers skipped) or the end of the connection.
pub fn read_response<R: Read>(r: &mut R, max_body: usize) -> Result<Response, ResponseError> {
    let mut b = Buffered::new(r);
    let status_line = b.line(MAX_HEAD)?;
    let status_line = String::from_utf8_lossy(&status_line).into_owned();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(ResponseError::Malformed { what: "not an HTTP/1.x answer", got: trunc(&status_line) });
    }
    let status: u16 = code
        .parse()
        .ok()
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| ResponseError::Malformed { what: "bad status line", got: trunc(&status_line) })?;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut head_bytes = status_line.len();
    loop {
        let line = b.line(MAX_HEAD)?;
        head_bytes += line.len() + 2;
        if head_bytes > MAX_HEAD {
            return Err(ResponseError::HeadTooLong);
        }
        if line.is_empty() {
            break;
        }
        let line = String::from_utf8_lossy(&line);
        let Some((name, value)) = line.split_once(':') else {
            return Err(ResponseError::Malformed { what: "bad header line", got: trunc(&line) });
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| ResponseError::Malformed { what: "bad Content-Length", got: trunc(value) })?;
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else {
                return Err(ResponseError::Malformed { what: "unsupported Transfer-Encoding", got: trunc(value) });
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let line = b.line(1024)?;
            let line = String::from_utf8_lossy(&line);
            let size = line.split(';').next().unwrap_or("").trim();
            let n = usize::from_str_radix(size, 16)
                .map_err(|_| ResponseError::Malformed { what: "bad chunk size", got: trunc(&line) })?;
            if n == 0 {
                // Trailers, up to the empty line (or the end of the connection).
                while b.fill()? {
                    if b.line(MAX_HEAD)?.is_empty() {
                        break;
                    }
                }
                break;
            }
            if body.len().saturating_add(n) > max_body {
                return Err(ResponseError::TooLarge(max_body));
            }
            b.exact(n, &mut body)?;
            if !b.line(16)?.is_empty() {
                return Err(ResponseError::ChunkNotTerminated);
            }
        }
    } else if let Some(n) = content_length {
        if n > max_body {
            return Err(ResponseError::TooLarge(max_body));
        }
        b.exact(n, &mut body)?;
    } else {
        b.read_until_close(max_body, &mut body)?;
    }
    Ok(Response { status, body })
}

fn trunc(s: &str) -> String {
    s.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Response, ResponseError> {
        read_response(&mut &raw[..], 1 << 20)
    }

    #[test]
    fn endpoints() {
        assert_eq!(Endpoint::parse("http://127.0.0.1:2379/").unwrap().authority, "127.0.0.1:2379");
        assert_eq!(Endpoint::parse("localhost:1").unwrap().authority, "localhost:1");
        assert!(matches!(Endpoint::parse("https://x:1"), Err(EndpointError::Https { .. })));
        for bad in ["", "http://", "http://host", "http://h:99999", "http://h:1/v3", "ftp://h:1"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn framing() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"{}"[..]));
        let r = parse(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nTrailer: X\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nX: y\r\n\r\n")
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (404, &b"abcde"[..]));
        let r = parse(b"HTTP/1.0 200 OK\r\n\r\nto the end").unwrap();
        assert_eq!(r.body, b"to the end");
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        let cases: &[&[u8]] = &[
            b"",
            b"garbage\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ];
        for c in cases {
            assert!(parse(c).is_err(), "{:?} parsed", String::from_utf8_lossy(c));
        }
        let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 100_000));
        assert!(parse(&huge).is_err());
        let mut big = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', (1 << 20) + 1));
        assert!(matches!(parse(&big).unwrap_err(), ResponseError::TooLarge(n) if n == 1 << 20));
    }
}
