//! HTTP/1.1 framing of the controller's API: a request head and a `Content-Length` body read
//! under a deadline and within limits, and an answer written in one piece. Chunked request
//! bodies are refused (501): no client of the API sends them.

use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// Longest request head (request line and headers).
pub const MAX_HEAD_BYTES: u64 = 16 << 10;
/// Most header lines in a request.
pub const MAX_HEADERS: usize = 64;

/// A socket whose every read ends by `deadline`: a slow client cannot stretch a request.
#[derive(Debug)]
pub struct DeadlineStream {
    pub stream: TcpStream,
    pub deadline: Instant,
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        match self.stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::ErrorKind::TimedOut.into()),
            other => other,
        }
    }
}

/// A request as framed on the wire.
#[derive(Debug)]
pub struct WireRequest {
    pub method: String,
    pub target: String,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
    /// The client wants the connection kept open after the answer.
    pub keep_alive: bool,
}

/// Why no request was read.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the connection before sending a byte of a request.
    Closed,
    /// The deadline passed; `started` when part of a request had arrived.
    TimedOut {
        started: bool,
    },
    Io(io::Error),
    /// A request the server refuses: answer `status` and close.
    Refused {
        status: u16,
        message: String,
    },
}

fn refused(status: u16, message: impl Into<String>) -> ReadError {
    ReadError::Refused { status, message: message.into() }
}

fn io_error(e: io::Error, started: bool) -> ReadError {
    if e.kind() == io::ErrorKind::TimedOut {
        ReadError::TimedOut { started }
    } else {
        ReadError::Io(e)
    }
}

/// Waits for the first byte of a request: `Ok(false)` when the client closed instead.
pub fn wait_for_request<R: BufRead>(reader: &mut R) -> Result<bool, ReadError> {
    match reader.fill_buf() {
        Ok(b) => Ok(!b.is_empty()),
        Err(e) => Err(io_error(e, false)),
    }
}

/// Reads one request. A `Content-Length` above `max_body_bytes` is refused with 413 before
/// the body is read; `Expect: 100-continue` is answered on `interim` once the head is good.
pub fn read_request<R: BufRead, W: Write>(
    reader: &mut R,
    interim: &mut W,
    max_body_bytes: usize,
) -> Result<WireRequest, ReadError> {
    let mut head = reader.take(MAX_HEAD_BYTES);
    let line = read_line(&mut head)?.ok_or(ReadError::Closed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refused(400, "malformed request line"));
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(refused(505, format!("unsupported HTTP version {version:?}"))),
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) || !target.starts_with('/') {
        return Err(refused(400, "malformed request line"));
    }
    let mut content_length: Option<u64> = None;
    let mut authorization = None;
    let mut keep_alive = !http10;
    let mut expect_continue = false;
    for n in 0.. {
        let line = read_line(&mut head)?.ok_or_else(|| refused(400, "request head cut short"))?;
        if line.is_empty() {
            break;
        }
        if n >= MAX_HEADERS {
            return Err(refused(431, format!("more than {MAX_HEADERS} header lines")));
        }
        let Some((name, value)) = line.split_once(':') else { return Err(refused(400, "malformed header line")) };
        if name.is_empty() || name.ends_with([' ', '\t']) || line.starts_with([' ', '\t']) {
            return Err(refused(400, "malformed header line"));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value.parse().map_err(|_| refused(400, "bad Content-Length"))?;
            if content_length.is_some_and(|old| old != n) {
                return Err(refused(400, "conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(refused(501, "Transfer-Encoding is not supported; send a Content-Length"));
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case("100-continue") {
                return Err(refused(417, format!("unsupported expectation {value:?}")));
            }
            expect_continue = true;
        }
    }
    let length = content_length.unwrap_or(0);
    if length > max_body_bytes as u64 {
        return Err(refused(413, format!("request body larger than {max_body_bytes} bytes")));
    }
    if expect_continue && length > 0 && !http10 {
        interim.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").map_err(ReadError::Io)?;
    }
    // grown as bytes arrive: a Content-Length alone reserves no memory
    let mut body = Vec::new();
    reader.take(length).read_to_end(&mut body).map_err(|e| io_error(e, true))?;
    if body.len() as u64 != length {
        return Err(refused(400, "request body cut short"));
    }
    Ok(WireRequest { method: method.to_ascii_uppercase(), target: target.to_string(), authorization, body, keep_alive })
}

/// One line of the head without its CRLF; `None` at end of stream before any byte.
fn read_line<R: BufRead>(head: &mut io::Take<R>) -> Result<Option<String>, ReadError> {
    let mut line = Vec::new();
    head.read_until(b'\n', &mut line).map_err(|e| io_error(e, true))?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.pop() != Some(b'\n') {
        return Err(if head.limit() == 0 {
            refused(431, format!("request head larger than {MAX_HEAD_BYTES} bytes"))
        } else {
            refused(400, "request head cut short")
        });
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map(Some).map_err(|_| refused(400, "request head is not UTF-8"))
}

/// The reason phrase of the statuses the API answers.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        417 => "Expectation Failed",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// An answer in wire form: status line, headers, body.
pub fn encode_response(status: u16, content_type: &str, body: &[u8], auth: Option<&str>, keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 160);
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    if let Some(auth) = auth {
        let _ = write!(out, "{}: {auth}\r\n", krak_api::signing::RESPONSE_HEADER);
    }
    out.extend_from_slice(if keep_alive { b"Connection: keep-alive\r\n\r\n" } else { b"Connection: close\r\n\r\n" });
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], max: usize) -> (Result<WireRequest, ReadError>, Vec<u8>) {
        let mut interim = Vec::new();
        let r = read_request(&mut io::BufReader::new(raw), &mut interim, max);
        (r, interim)
    }

    fn status(r: Result<WireRequest, ReadError>) -> u16 {
        match r {
            Err(ReadError::Refused { status, .. }) => status,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn reads_a_request_with_body_and_headers() {
        let raw =
            b"post /v1/x?a=1 HTTP/1.1\r\nHost: h\r\nAuthorization:  Krak-HMAC k=v \r\ncontent-length: 3\r\n\r\nabcNEXT";
        let (r, interim) = parse(raw, 1024);
        let r = r.unwrap();
        assert_eq!((r.method.as_str(), r.target.as_str()), ("POST", "/v1/x?a=1"));
        assert_eq!(r.authorization.as_deref(), Some("Krak-HMAC k=v"));
        assert_eq!(r.body, b"abc");
        assert!(r.keep_alive && interim.is_empty());
    }

    #[test]
    fn connection_close_http10_and_expect_continue() {
        let (r, _) = parse(b"GET / HTTP/1.1\nConnection: close\n\n", 1024);
        assert!(!r.unwrap().keep_alive);
        let (r, _) = parse(b"GET / HTTP/1.0\r\n\r\n", 1024);
        assert!(!r.unwrap().keep_alive);
        let (r, interim) = parse(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi", 1024);
        assert_eq!(r.unwrap().body, b"hi");
        assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn refuses_what_it_cannot_frame() {
        assert_eq!(status(parse(b"POST / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n", 1024).0), 413);
        // 413 comes before the body is waited for, and without a 100 Continue
        let (r, interim) = parse(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2000\r\n\r\n", 1024);
        assert_eq!((status(r), interim.len()), (413, 0));
        assert_eq!(status(parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 1024).0), 501);
        assert_eq!(status(parse(b"GET / HTTP/2.0\r\n\r\n", 1024).0), 505);
        assert_eq!(status(parse(b"GET /\r\n\r\n", 1024).0), 400);
        assert_eq!(status(parse(b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 1024).0), 400);
        assert_eq!(status(parse(b"GET / HTTP/1.1\r\nA: 1\r\n", 1024).0), 400);
        assert_eq!(status(parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", 1024).0), 400);
        assert_eq!(status(parse(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 9).0), 400);
        let many: Vec<u8> = [&b"GET / HTTP/1.1\r\n"[..], &b"A: b\r\n".repeat(MAX_HEADERS + 1), b"\r\n"].concat();
        assert_eq!(status(parse(&many, 1024).0), 431);
        let long = [&b"GET /"[..], &vec![b'a'; MAX_HEAD_BYTES as usize], b" HTTP/1.1\r\n\r\n"].concat();
        assert_eq!(status(parse(&long, 1024).0), 431);
        assert!(matches!(parse(b"", 1024).0, Err(ReadError::Closed)));
    }

    #[test]
    fn encodes_an_answer() {
        let out = encode_response(404, "application/json", b"{}", Some("sig"), false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Length: 2\r\n") && text.contains("X-Krak-Auth: sig\r\n"), "{text}");
        assert!(text.ends_with("Connection: close\r\n\r\n{}"), "{text}");
    }
}
