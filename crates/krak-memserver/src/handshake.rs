//! A connection's handshake, before its peer has proved the rack secret. A stranger gets
//! little: at most two frames (its hello, then its proof), each of at most
//! [`MAX_HANDSHAKE_BODY_BYTES`], read exactly (nothing beyond them is buffered) into small
//! buffers, all within one deadline for the whole handshake however the bytes are spread;
//! and its slot is the first taken back when the server is full (`server.rs`).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use krak_proto::{encode_error, ErrorCode, Header, HEADER_LEN, MAC_LEN, MAX_HANDSHAKE_BODY_BYTES};

use crate::connection::{answer_frame, raw_id_and_kind, seal};
use crate::requests::{decode_error_code, Next, Session};
use crate::server::ServerShared;

/// How a handshake ended.
pub(crate) enum Outcome {
    /// The peer proved the secret: serve its requests.
    Authenticated,
    /// The peer went away, ran out of time, or broke the protocol (answered): close.
    Over,
}

/// Runs the handshake of `stream` until the peer is authenticated or it has to end.
pub(crate) fn run(stream: &TcpStream, shared: &ServerShared, session: &mut Session, conn_id: u64) -> Outcome {
    let timeout = Duration::from_millis(shared.config.handshake_timeout_ms);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let result = (|| -> io::Result<Option<Outcome>> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        while session.client_id.is_none() {
            let mut head = [0u8; HEADER_LEN];
            if !read_exact_by(stream, &mut head, deadline, true)? {
                return Ok(Some(Outcome::Over)); // closed before a frame began
            }
            let header = match Header::decode(&head) {
                Ok(h) if h.body_len as usize <= MAX_HANDSHAKE_BODY_BYTES => h,
                decoded => {
                    let (id, kind) = raw_id_and_kind(&head);
                    let (code, why) = match decoded {
                        Err(e) => (decode_error_code(&e), e.to_string()),
                        Ok(h) => (
                            ErrorCode::FrameTooLarge,
                            format!(
                                "a handshake frame carries at most {MAX_HANDSHAKE_BODY_BYTES} bytes, this one {}",
                                h.body_len
                            ),
                        ),
                    };
                    tracing::debug!("{}: closing in the handshake: {why}", session.peer);
                    return refuse(stream, shared, session, &mut out, id, kind, code, &why);
                }
            };
            let trailer = if session.mac.is_some() { MAC_LEN } else { 0 };
            let mut body = vec![0u8; header.body_len as usize + trailer];
            read_exact_by(stream, &mut body, deadline, false)?;
            let (body, trailer) = body.split_at(header.body_len as usize);
            let next = answer_frame(shared, session, &head, &header, body, trailer, &mut out, 0);
            if session.client_id.is_some() {
                // Before the answer goes out: once the client has it, it counts its connection
                // as served, and a newcomer must not take the slot back.
                shared.authenticated(conn_id);
            }
            (&*stream).write_all(&out)?;
            out.clear();
            if next == Next::Close {
                crate::connection::linger_close(stream);
                return Ok(Some(Outcome::Over));
            }
        }
        Ok(None)
    })();
    match result {
        Ok(None) => Outcome::Authenticated,
        Ok(Some(outcome)) => outcome,
        Err(e) => {
            match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                    let ms = timeout.as_millis();
                    tracing::debug!("{}: handshake not done within {ms} ms; closing", session.peer)
                }
                _ => tracing::debug!("{}: in the handshake: {e}", session.peer),
            }
            Outcome::Over
        }
    }
}

/// Answers a frame the handshake cannot take with `code`, then closes.
#[allow(clippy::too_many_arguments)]
fn refuse(
    stream: &TcpStream,
    shared: &ServerShared,
    session: &mut Session,
    out: &mut Vec<u8>,
    id: u64,
    kind: u16,
    code: ErrorCode,
    why: &str,
) -> io::Result<Option<Outcome>> {
    shared.counters.add_error();
    encode_error(out, id, kind, code, why);
    seal(session, out, 0);
    (&*stream).write_all(out)?;
    crate::connection::linger_close(stream);
    Ok(Some(Outcome::Over))
}

/// Fills `buf` from `stream` by `deadline`, re-arming the read timeout before every read so
/// that a peer dripping bytes cannot stretch it. False when the peer closed before the
/// first byte and `may_close` (between frames).
pub(crate) fn read_exact_by(
    stream: &TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    may_close: bool,
) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match (&*stream).read(&mut buf[got..]) {
            Ok(0) if got == 0 && may_close => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
