//! A small blocking HTTP/1.1 client of the controller's API: one connection per request,
//! every wait bounded, answers bounded in size. For memory servers, pagers and the CLI.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
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
}

impl Client {
    /// `url` is `http://HOST:PORT` (a trailing `/` is fine) or `HOST:PORT`.
    pub fn new(url: &str) -> Result<Client, ApiError> {
        let host = url.strip_prefix("http://").unwrap_or(url).trim_end_matches('/');
        if host.is_empty() || host.contains('/') || !host.contains(':') {
            return Err(ApiError::Url(url.to_string()));
        }
        Ok(Client { host: host.to_string(), timeout: Duration::from_secs(5), secret: None })
    }

    /// The same client, signing with `secret`.
    pub fn with_secret(mut self, secret: Option<krak_auth::RackSecret>) -> Client {
        self.secret = secret;
        self
    }

    /// Sends a request; returns the status and body whatever the status.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        extra_wait: Duration,
    ) -> Result<(u16, Vec<u8>), ApiError> {
        let io = |source| ApiError::Io { addr: self.host.clone(), source };
        let addr: SocketAddr =
            self.host.to_socket_addrs().map_err(io)?.next().ok_or_else(|| ApiError::Url(self.host.clone()))?;
        let mut stream = TcpStream::connect_timeout(&addr, self.timeout).map_err(io)?;
        stream.set_read_timeout(Some(self.timeout + extra_wait)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let body = body.unwrap_or_default();
        let signed =
            self.secret.as_ref().map(|s| crate::signing::sign_request(s, method, path, body, crate::signing::now_ms()));
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
        if let (Some(secret), Some((_, nonce))) = (&self.secret, &signed) {
            // A refusal of our signature cannot be signed for us: report it as it is.
            if status != 401 && !crate::signing::verify_response(secret, nonce, status, &body, auth.as_deref()) {
                return Err(ApiError::Auth { addr: self.host.clone() });
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
            let message = serde_json::from_slice::<crate::messages::ErrorBody>(&answer)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&answer).into_owned());
            return Err(ApiError::Status { status, message });
        }
        serde_json::from_slice(&answer).map_err(|source| ApiError::Json {
            method: method.into(),
            path: path.into(),
            source,
        })
    }
}

/// A client of a rack whose controller may be any of several URLs (a leader and its
/// standbys): a call goes to the URL that answered last, and moves on to the next one when a
/// URL cannot be reached or answers 503 (a standby, or a leader whose store failed).
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
    /// connection failure; returns that answer, or the last failure.
    pub fn call_waiting<B: Serialize, T: DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&B>,
        wait: Duration,
    ) -> Result<T, ApiError> {
        let n = self.clients.len();
        let mut last = None;
        for i in 0..n {
            let at = (self.current + i) % n;
            match self.clients[at].1.call_waiting(method, path, body, wait) {
                Err(e @ (ApiError::Io { .. } | ApiError::Status { status: 503, .. })) => {
                    tracing::debug!("{}: {e}", self.clients[at].0);
                    last = Some(e);
                }
                answer => {
                    self.current = at;
                    return answer;
                }
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
