//! One client connection: read a frame, answer it, in order, until the peer goes away or
//! breaks the protocol. Buffers are reused across frames; answers to pipelined requests
//! that are already buffered are batched into one write.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use krak_client::SocketMode;
use krak_proto::{encode_error, DecodeError, ErrorCode, Header, HEADER_LEN, MAC_LEN, MAX_BODY_BYTES};

use crate::affinity::FollowCpu;
use crate::handshake::{self, Outcome};
use crate::requests::{self, decode_error_code, Next, Session};
use crate::server::ServerShared;

/// Read buffer: large enough to hold many small pipelined requests at once.
const READ_BUF_BYTES: usize = 256 << 10;
/// Answers are held back while further requests are already buffered, up to this much.
const FLUSH_BYTES: usize = 1 << 20;
/// ... and up to this many: with at most `max_connections_per_client` connections, this
/// bounds the requests of one client read and not yet answered.
const FLUSH_ANSWERS: usize = 64;
/// After an error answer, how long (and how much) we drain the peer before closing, so the
/// answer is not destroyed by a reset caused by unread data.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 4 << 20;
/// Bound on a refused connection sending its first frame.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a connection ended without an I/O error.
enum End {
    /// The peer closed between frames.
    Closed,
    /// The peer broke the protocol; an error answer is queued.
    Violation,
}

/// Serves one accepted connection (`conn_id`) until it ends: its handshake
/// (`handshake.rs`), then its requests. Never panics on peer input.
pub(crate) fn serve(stream: TcpStream, shared: &ServerShared, peer: SocketAddr, conn_id: u64) {
    tracing::debug!("{peer}: connected");
    let mut session = Session::new(peer);
    if let Outcome::Over = handshake::run(&stream, shared, &mut session, conn_id) {
        if let Some(client_id) = session.client_id {
            shared.registry.disconnect(client_id, Instant::now());
        }
        return;
    }
    let io_timeout = Duration::from_millis(shared.config.io_timeout_ms);
    let mut conn = Conn::new(&stream, io_timeout, Duration::from_micros(shared.config.spin_us));
    if shared.config.follow_cpu {
        match FollowCpu::new() {
            Ok(f) => conn.follow = Some(f),
            Err(e) => {
                tracing::warn!("{peer}: cannot read this thread's CPU affinity ({e}); not following the client's CPU")
            }
        }
    }
    let result = conn.setup().and_then(|()| conn.serve_frames(shared, &mut session));
    match result {
        Ok(End::Closed) => tracing::debug!("{peer}: closed"),
        Ok(End::Violation) => {
            if conn.flush().is_ok() && conn.mode.set_nonblocking(&stream, false).is_ok() {
                linger_close(&stream);
            }
        }
        Err(e) if shared.stopping() => tracing::debug!("{peer}: closed by shutdown ({e})"),
        Err(e) => match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                let ms = io_timeout.as_millis();
                tracing::warn!("{peer}: no progress for {ms} ms inside a frame; closing");
            }
            io::ErrorKind::UnexpectedEof => tracing::warn!("{peer}: closed in the middle of a frame"),
            _ => tracing::debug!("{peer}: {e}"),
        },
    }
    if let Some(client_id) = session.client_id {
        shared.registry.disconnect(client_id, Instant::now());
    }
}

/// Answers the first frame of a connection the server has no room for, then closes it.
pub(crate) fn refuse(stream: TcpStream, shared: &ServerShared, peer: SocketAddr) {
    shared.counters.add_error();
    let timeout = REFUSE_TIMEOUT.min(Duration::from_millis(shared.config.handshake_timeout_ms));
    let result = (|| -> io::Result<()> {
        stream.set_write_timeout(Some(timeout))?;
        let mut head = [0u8; HEADER_LEN];
        if !handshake::read_exact_by(&stream, &mut head, Instant::now() + timeout, true)? {
            return Ok(());
        }
        // Its body is drained by the close, which keeps it from resetting our answer.
        let (id, kind) = raw_id_and_kind(&head);
        let msg = format!("server already serves its maximum of {} connections", shared.config.max_connections);
        let mut out = Vec::new();
        encode_error(&mut out, id, kind, ErrorCode::TooManyConnections, &msg);
        (&stream).write_all(&out)
    })();
    match result {
        Ok(()) => linger_close(&stream),
        Err(e) => tracing::debug!("{peer}: refused connection failed: {e}"),
    }
}

struct Conn<'s> {
    stream: &'s TcpStream,
    reader: BufReader<&'s TcpStream>,
    io_timeout: Duration,
    /// Busy-wait for the next request (`ServerConfig::spin_us`).
    spin: Duration,
    /// The socket is non-blocking while the connection busy-waits for requests, and stays
    /// so while whole frames arrive in time: no mode switch per request.
    mode: SocketMode,
    body: Vec<u8>,
    out: Vec<u8>,
    /// Answers in `out` not yet written.
    pending: usize,
    /// Moves this thread to the CPU the requests arrive on before each sleep
    /// (`ServerConfig::follow_cpu`).
    follow: Option<FollowCpu>,
}

impl<'s> Conn<'s> {
    fn new(stream: &'s TcpStream, io_timeout: Duration, spin: Duration) -> Conn<'s> {
        Conn {
            stream,
            reader: BufReader::with_capacity(READ_BUF_BYTES, stream),
            io_timeout,
            spin,
            mode: SocketMode::default(),
            body: Vec::new(),
            out: Vec::with_capacity(64 << 10),
            pending: 0,
            follow: None,
        }
    }

    fn setup(&self) -> io::Result<()> {
        self.stream.set_nodelay(true)?;
        self.stream.set_read_timeout(Some(self.io_timeout))?;
        self.stream.set_write_timeout(Some(self.io_timeout))
    }

    fn serve_frames(&mut self, shared: &ServerShared, session: &mut Session) -> io::Result<End> {
        loop {
            // Every frame after our hello carries a MAC, ours and theirs (docs/protocol.md).
            let start = self.out.len();
            let trailer = if session.mac.is_some() { MAC_LEN } else { 0 };
            let (header, head) = match self.read_header(trailer)? {
                None => return Ok(End::Closed),
                Some(Ok(h)) => h,
                Some(Err((e, head))) => {
                    // Without a valid header we cannot find the next frame: answer, then close.
                    tracing::warn!("{}: closing after a bad frame header: {e}", session.peer);
                    let (id, kind) = raw_id_and_kind(&head);
                    shared.counters.add_error();
                    encode_error(&mut self.out, id, kind, decode_error_code(&e), &e.to_string());
                    seal(session, &mut self.out, start);
                    return Ok(End::Violation);
                }
            };
            self.read_body(header.body_len as usize)?;
            let mut trailer = [0u8; MAC_LEN];
            let trailer = if session.mac.is_some() {
                self.reader.read_exact(&mut trailer)?;
                &trailer[..]
            } else {
                &[][..]
            };
            if answer_frame(shared, session, &head, &header, &self.body, trailer, &mut self.out, start) == Next::Close {
                return Ok(End::Violation);
            }
            self.pending += 1;
            let trailer = if session.mac.is_some() { MAC_LEN } else { 0 };
            if self.out.len() >= FLUSH_BYTES || self.pending >= FLUSH_ANSWERS || !self.next_frame_buffered(trailer) {
                self.flush()?;
            }
        }
    }

    /// The next header, `None` on a clean close between frames, or a header that failed
    /// to decode (with its raw bytes). Waits forever for a frame's first byte (the peer is
    /// authenticated), then at most `io_timeout` for each read of the rest (a frame of
    /// `trailer` MAC bytes after its body).
    #[allow(clippy::type_complexity)]
    fn read_header(
        &mut self,
        trailer: usize,
    ) -> io::Result<Option<Result<(Header, [u8; HEADER_LEN]), (DecodeError, [u8; HEADER_LEN])>>> {
        if self.reader.buffer().is_empty() {
            self.flush()?;
            // A pager's next request usually follows within microseconds: catch it awake
            // if the server spins at all.
            if self.spin.is_zero() || !self.spin_for_bytes()? {
                self.follow_cpu();
                self.mode.set_nonblocking(self.stream, false)?;
                // The read timeout is `io_timeout` throughout (no system call to switch it
                // per frame): between frames an elapsed one only means an idle peer.
                loop {
                    match self.reader.fill_buf() {
                        Ok(_) => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
            if self.reader.buffer().is_empty() {
                return Ok(None);
            }
        }
        // The rest of a frame that is not all here yet is read blocking, bounded per read.
        if self.mode.is_nonblocking() && !self.next_frame_buffered(trailer) {
            self.mode.set_nonblocking(self.stream, false)?;
        }
        let mut head = [0u8; HEADER_LEN];
        self.reader.read_exact(&mut head)?;
        Ok(Some(Header::decode(&head).map(|h| (h, head)).map_err(|e| (e, head))))
    }

    /// Busy-waits up to `spin` with non-blocking reads into the read buffer; true when
    /// bytes (or the peer's close) arrived.
    fn spin_for_bytes(&mut self) -> io::Result<bool> {
        self.mode.set_nonblocking(self.stream, true)?;
        let start = Instant::now();
        loop {
            match self.reader.fill_buf() {
                Ok(_) => return Ok(true),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => return Err(e),
            }
            if start.elapsed() >= self.spin {
                return Ok(false);
            }
            std::thread::yield_now();
        }
    }

    fn read_body(&mut self, len: usize) -> io::Result<()> {
        debug_assert!(len <= MAX_BODY_BYTES, "Header::decode bounds the body");
        self.body.clear();
        self.body.reserve(len);
        let got = (&mut self.reader).take(len as u64).read_to_end(&mut self.body)?;
        if got < len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// True when the whole next frame is already in the read buffer, so answering it
    /// needs no wait and our pending answers can go out together with its answer.
    fn next_frame_buffered(&self, trailer: usize) -> bool {
        let buf = self.reader.buffer();
        if buf.len() < HEADER_LEN {
            return false;
        }
        let body_len = u32::from_le_bytes([buf[16], buf[17], buf[18], buf[19]]) as usize;
        buf.len() - HEADER_LEN >= body_len + trailer
    }

    /// Before a sleep: be woken where the next request's packets are processed.
    fn follow_cpu(&mut self) {
        if let Some(follow) = &mut self.follow {
            if let Err(e) = follow.follow(self.stream) {
                tracing::warn!("cannot follow the client's CPU ({e}); no longer trying on this connection");
                self.follow = None;
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.pending = 0;
        if !self.out.is_empty() {
            let result = self.mode.write_all(self.stream, &self.out);
            self.out.clear();
            result?;
        }
        // Keep one large buffer, not the largest answer ever sent, alive per connection.
        if self.out.capacity() > 2 * FLUSH_BYTES {
            self.out.shrink_to(FLUSH_BYTES);
        }
        Ok(())
    }
}

/// Answers one whole frame (`head`, `body`, and the `trailer` of its MAC once the
/// connection has one) at `out[start..]`, sealed: a frame whose MAC does not check is
/// answered `AuthFailed`. `Next::Close` when the connection must end after the answer. The
/// handshake and the frames after it both answer here.
#[allow(clippy::too_many_arguments)]
pub(crate) fn answer_frame(
    shared: &ServerShared,
    session: &mut Session,
    head: &[u8; HEADER_LEN],
    header: &Header,
    body: &[u8],
    trailer: &[u8],
    out: &mut Vec<u8>,
    start: usize,
) -> Next {
    if let Some(mac) = session.mac.as_mut() {
        let opened = <&[u8; MAC_LEN]>::try_from(trailer)
            .map_err(|_| "no MAC trailer".to_string())
            .and_then(|t| mac.open(head, body, t).map_err(|e| e.to_string()));
        if let Err(e) = opened {
            tracing::warn!("{}: closing: {e}", session.peer);
            shared.counters.add_error();
            let msg = format!("authentication failed: {e}");
            encode_error(out, header.request_id, header.kind, ErrorCode::AuthFailed, &msg);
            seal(session, out, start);
            return Next::Close;
        }
    }
    let sealed = session.mac.is_some();
    let next = requests::answer(shared, session, header, body, out);
    if sealed {
        seal(session, out, start);
    }
    next
}

/// Appends the MAC of the answer at `out[start..]` once the connection is past our hello.
pub(crate) fn seal(session: &mut Session, out: &mut Vec<u8>, start: usize) {
    if let Some(mac) = session.mac.as_mut() {
        if out.len() > start {
            mac.seal(out, start);
        }
    }
}

/// Request id and kind from a header that may not have decoded, to address an error answer.
pub(crate) fn raw_id_and_kind(head: &[u8; HEADER_LEN]) -> (u64, u16) {
    let mut id = [0u8; 8];
    id.copy_from_slice(&head[8..16]);
    (u64::from_le_bytes(id), u16::from_le_bytes([head[4], head[5]]))
}

/// Closes after an error answer: half-close, then read (and drop) what the peer still
/// sends, bounded in time and bytes, so unread data does not reset the connection.
pub(crate) fn linger_close(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 16 << 10];
    let mut drained = 0usize;
    while drained < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match (&mut &*stream).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}
