//! A blocking client for one krak memory server connection.
//!
//! One [`Connection`] is one TCP stream. Calls are synchronous, but requests may also be
//! pipelined: `send_*` queues a request and returns its id, `recv_*` reads the matching
//! answer. The server answers in request order on a connection, so the client checks that
//! each answer carries the id it expects. Every page read back is checked against its
//! CRC-32C before the caller sees it.
//!
//! Connecting runs the handshake of `docs/protocol.md`: both ends prove they know the rack
//! secret, and every later frame in either direction carries a MAC under a key of this
//! connection alone.

mod inbox;
mod socket_mode;

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use inbox::Inbox;
pub use socket_mode::SocketMode;

use krak_proto::{
    decode_response, encode_alloc_slab, encode_auth, encode_copy_units, encode_discard_pages, encode_free_slab,
    encode_hello, encode_push_pages, encode_read_pages, encode_stats, encode_write_pages, page_crc, proof_matches,
    DecodeError, ErrorCode, FrameMac, Header, Op, PageRef, RackSecret, Response, ServerHello, ServerStats, Side,
    SlabId, Transcript, HEADER_LEN, MAC_LEN, MAX_BATCH_PAGES, NONCE_LEN, PAGE_SIZE, PROOF_LEN, PROTOCOL_VERSION,
    RESPONSE_BIT,
};

/// Why a call to a memory server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("memory server {addr}: no answer within {timeout_ms} ms")]
    Timeout { addr: SocketAddr, timeout_ms: u64 },
    #[error("memory server {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("memory server {addr} sent a bad frame: {source}")]
    Decode { addr: SocketAddr, source: DecodeError },
    #[error("memory server {addr} refused {op}: {message} (code {code})")]
    Refused { addr: SocketAddr, op: &'static str, code: u16, message: String },
    #[error("memory server {addr} answered out of order or with the wrong kind: {source}")]
    Protocol {
        addr: SocketAddr,
        #[source]
        source: ProtocolError,
    },
    #[error("memory server {addr}: authentication failed: {source}")]
    Auth {
        addr: SocketAddr,
        #[source]
        source: AuthError,
    },
    #[error("memory server {addr}: page {page} of slab {slab:#x} failed its checksum")]
    Corrupt { addr: SocketAddr, slab: u64, page: u32 },
}

/// How an answer broke the protocol (or, for [`ProtocolError::ConnectionLost`] and
/// [`ProtocolError::Caller`], why the caller has none to give).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("page size {page_size} / slab size {slab_size_bytes} unusable")]
    Geometry { page_size: u32, slab_size_bytes: u64 },
    #[error("asked for {asked} units of {unit} bytes, got {got} of {got_unit}")]
    Count { asked: usize, unit: usize, got: usize, got_unit: u32 },
    #[error("no request in flight for id {id}")]
    NotInFlight { id: u64 },
    #[error("waiting for id {id} but the oldest request is {oldest}")]
    OutOfOrder { id: u64, oldest: u64 },
    #[error("expected {op} #{id}, got kind {kind:#06x} #{got_id}")]
    WrongFrame { op: &'static str, id: u64, kind: u16, got_id: u64 },
    #[error("{op} answered with {got}")]
    WrongAnswer { op: &'static str, got: String },
    /// The connection an answer was due on is gone (dropped by its user).
    #[error("connection lost")]
    ConnectionLost,
    /// A condition the code using the connections found, reported as a protocol failure.
    #[error("{0}")]
    Caller(&'static str),
}

/// Why the peer is not taken for a memory server of our rack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the server's hello does not prove it knows our rack secret (wrong --secret-file?)")]
    Unproven,
    #[error("{0}")]
    BadMac(#[source] krak_proto::BadMac),
}

impl ClientError {
    /// The server's error code, when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => ErrorCode::from_u16(*code),
            _ => None,
        }
    }

    /// True when the server is full: asking elsewhere may succeed.
    pub fn is_no_capacity(&self) -> bool {
        self.code() == Some(ErrorCode::NoCapacity)
    }
}

/// Tuning of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// Identifies the client across reconnects, so a server keeps its slabs for a while.
    pub client_id: u64,
    /// Bound on connecting and on waiting for any one answer.
    pub timeout_ms: u64,
    /// How long to busy-wait for an answer before sleeping in a blocking read (0: never).
    pub spin_us: u64,
    /// The rack secret both ends prove they know; `None` uses the well-known insecure key
    /// (only a server without a secret accepts it).
    pub secret: Option<RackSecret>,
}

/// One connection to a memory server, after a successful hello.
#[derive(Debug)]
pub struct Connection {
    addr: SocketAddr,
    stream: TcpStream,
    hello: ServerHello,
    next_id: u64,
    /// Ids sent and not yet answered, oldest first.
    in_flight: std::collections::VecDeque<(u64, Op)>,
    timeout_ms: u64,
    spin: Duration,
    send_buf: Vec<u8>,
    inbox: Inbox,
    /// Seals and checks frames once the server's hello proved it knows the secret.
    mac: Option<FrameMac>,
}

impl Connection {
    /// Connects, says hello and checks the server speaks our protocol.
    pub fn connect(addr: SocketAddr, opts: ConnectOptions) -> Result<Connection, ClientError> {
        let timeout = Duration::from_millis(opts.timeout_ms.max(1));
        let stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|source| ClientError::Connect { addr, source })?;
        let io_err = |source| ClientError::Io { addr, source };
        stream.set_nodelay(true).map_err(io_err)?;
        stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
        stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
        let placeholder = ServerHello {
            version: 0,
            page_size: 0,
            slab_size_bytes: 0,
            capacity_bytes: 0,
            server_id: 0,
            nonce: [0; NONCE_LEN],
            proof: [0; PROOF_LEN],
        };
        let mut conn = Connection {
            addr,
            stream,
            hello: placeholder,
            next_id: 1,
            in_flight: Default::default(),
            timeout_ms: opts.timeout_ms,
            spin: Duration::from_micros(opts.spin_us),
            send_buf: Vec::with_capacity(64 << 10),
            inbox: Inbox::new(),
            mac: None,
        };
        let nonce: [u8; NONCE_LEN] = rand::random();
        let id =
            conn.send_with(Op::Hello, |buf, id| encode_hello(buf, id, PROTOCOL_VERSION, opts.client_id, &nonce))?;
        let hello = match conn.recv(id)? {
            Response::Hello(h) => h,
            other => return Err(unexpected(addr, Op::Hello, &other)),
        };
        let secret = opts.secret.unwrap_or_else(RackSecret::insecure);
        let transcript =
            Transcript { version: PROTOCOL_VERSION, client_id: opts.client_id, client_nonce: nonce, server: hello };
        if !proof_matches(&transcript.server_proof(&secret), &hello.proof) {
            return Err(ClientError::Auth { addr, source: AuthError::Unproven });
        }
        conn.mac = Some(FrameMac::new(&transcript.session_key(&secret), Side::Client));
        let proof = transcript.client_proof(&secret);
        let id = conn.send_with(Op::Auth, |buf, id| encode_auth(buf, id, &proof))?;
        match conn.recv(id)? {
            Response::Authenticated => {}
            other => return Err(unexpected(addr, Op::Auth, &other)),
        }
        let h = hello;
        if h.page_size as usize != PAGE_SIZE || h.slab_size_bytes == 0 || h.slab_size_bytes % PAGE_SIZE as u64 != 0 {
            return Err(ClientError::Protocol {
                addr,
                source: ProtocolError::Geometry { page_size: h.page_size, slab_size_bytes: h.slab_size_bytes },
            });
        }
        conn.hello = h;
        Ok(conn)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the server said about itself in the hello.
    pub fn hello(&self) -> &ServerHello {
        &self.hello
    }

    /// Pages in one slab of this server.
    pub fn slab_pages(&self) -> u32 {
        (self.hello.slab_size_bytes / PAGE_SIZE as u64) as u32
    }

    /// Number of requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Allocates a slab of whole pages.
    pub fn alloc_slab(&mut self) -> Result<SlabId, ClientError> {
        self.alloc_slab_units(PAGE_SIZE as u32)
    }

    /// Allocates a slab of [`Connection::slab_pages`] units of `unit_bytes` each (a page's
    /// fragment, for erasure-coded regions): it costs the server that many units' bytes.
    pub fn alloc_slab_units(&mut self, unit_bytes: u32) -> Result<SlabId, ClientError> {
        let addr = self.addr;
        let id = self.send_with(Op::AllocSlab, |buf, id| encode_alloc_slab(buf, id, unit_bytes))?;
        match self.recv(id)? {
            Response::SlabAllocated { slab } => Ok(slab),
            other => Err(unexpected(addr, Op::AllocSlab, &other)),
        }
    }

    pub fn free_slab(&mut self, slab: SlabId) -> Result<(), ClientError> {
        let addr = self.addr;
        let id = self.send_with(Op::FreeSlab, |buf, id| encode_free_slab(buf, id, slab))?;
        match self.recv(id)? {
            Response::SlabFreed => Ok(()),
            other => Err(unexpected(addr, Op::FreeSlab, &other)),
        }
    }

    pub fn stats(&mut self) -> Result<ServerStats, ClientError> {
        let addr = self.addr;
        let id = self.send_with(Op::Stats, encode_stats)?;
        match self.recv(id)? {
            Response::Stats(s) => Ok(s),
            other => Err(unexpected(addr, Op::Stats, &other)),
        }
    }

    /// Reads `pages` into `out` (one unit per page, in order, units of `out.len() /
    /// pages.len()` bytes), checking CRCs.
    pub fn read_pages(&mut self, pages: &[PageRef], out: &mut [u8]) -> Result<(), ClientError> {
        let unit_bytes = if pages.is_empty() { PAGE_SIZE } else { out.len() / pages.len() };
        let id = self.send_read_units(unit_bytes as u32, pages)?;
        self.recv_pages(id, pages, out)
    }

    /// Writes a batch of units (all of one size); returns once the server has stored all of them.
    pub fn write_pages(&mut self, pages: &[(PageRef, &[u8])]) -> Result<(), ClientError> {
        let id = self.send_write_pages(pages)?;
        self.recv_written(id)
    }

    /// Queues a read of up to `MAX_BATCH_PAGES` whole pages; answer with [`Connection::recv_pages`].
    pub fn send_read_pages(&mut self, pages: &[PageRef]) -> Result<u64, ClientError> {
        self.send_read_units(PAGE_SIZE as u32, pages)
    }

    /// Queues a read of up to `MAX_BATCH_PAGES` units of `unit_bytes` (the size of every slab
    /// named); answer with [`Connection::recv_pages`].
    pub fn send_read_units(&mut self, unit_bytes: u32, pages: &[PageRef]) -> Result<u64, ClientError> {
        assert!(pages.len() <= MAX_BATCH_PAGES, "caller must split batches");
        self.send_with(Op::ReadPages, |buf, id| encode_read_pages(buf, id, unit_bytes, pages))
    }

    /// Discards up to `MAX_BATCH_PAGES` units of `unit_bytes` (the size of every slab named):
    /// they read as zeros from now on and the server may give their memory back. Returns how
    /// many were discarded.
    pub fn discard_units(&mut self, unit_bytes: u32, pages: &[PageRef]) -> Result<u32, ClientError> {
        assert!(pages.len() <= MAX_BATCH_PAGES, "caller must split batches");
        let id = self.send_with(Op::DiscardPages, |buf, id| encode_discard_pages(buf, id, unit_bytes, pages))?;
        self.recv_stored(id, Op::DiscardPages)
    }

    /// Queues a write of up to `MAX_BATCH_PAGES` units, all of one size (that of the slabs
    /// named); answer with [`Connection::recv_written`].
    pub fn send_write_pages(&mut self, pages: &[(PageRef, &[u8])]) -> Result<u64, ClientError> {
        assert!(pages.len() <= MAX_BATCH_PAGES, "caller must split batches");
        let unit_bytes = pages.first().map_or(PAGE_SIZE, |(_, d)| d.len()) as u32;
        self.send_with(Op::WritePages, |buf, id| encode_write_pages(buf, id, unit_bytes, pages.iter().copied()))
    }

    /// Queues a copy of up to `MAX_BATCH_PAGES` units, all of one size: stored like a write,
    /// except units a write stored since their slab was allocated, which keep that write
    /// (the copy of a moving chunk must not undo a newer write-back). Answer with
    /// [`Connection::recv_copied`].
    pub fn send_copy_pages(&mut self, pages: &[(PageRef, &[u8])]) -> Result<u64, ClientError> {
        let unit_bytes = pages.first().map_or(PAGE_SIZE, |(_, d)| d.len()) as u32;
        self.send_copy_units(unit_bytes, pages.iter().map(|&(at, data)| (at, page_crc(data), data)))
    }

    /// Queues a copy like [`Connection::send_copy_pages`], of units given with their CRC-32C
    /// as stored (a server pushing its units to another one).
    pub fn send_copy_units<'p>(
        &mut self,
        unit_bytes: u32,
        units: impl ExactSizeIterator<Item = (PageRef, u32, &'p [u8])>,
    ) -> Result<u64, ClientError> {
        assert!(units.len() <= MAX_BATCH_PAGES, "caller must split batches");
        self.send_with(Op::CopyPages, |buf, id| encode_copy_units(buf, id, unit_bytes, units))
    }

    /// Queues a push: units `pages` of slab `src` of this server go, as a copy, to the same
    /// units of slab `dst` on the memory server at `to`, server to server. Answer with
    /// [`Connection::recv_pushed`].
    pub fn send_push_pages(
        &mut self,
        to: SocketAddr,
        src: SlabId,
        dst: SlabId,
        unit_bytes: u32,
        pages: &[u32],
    ) -> Result<u64, ClientError> {
        assert!(pages.len() <= MAX_BATCH_PAGES, "caller must split batches");
        self.send_with(Op::PushPages, |buf, id| encode_push_pages(buf, id, to, src, dst, unit_bytes, pages))
    }

    /// Receives the answer to a push: how many units the target stored.
    pub fn recv_pushed(&mut self, id: u64) -> Result<u32, ClientError> {
        self.recv_stored(id, Op::PushPages)
    }

    /// Receives the answer to a copy sent with [`Connection::send_copy_pages`]: how many
    /// units it stored.
    pub fn recv_copied(&mut self, id: u64) -> Result<u32, ClientError> {
        self.recv_stored(id, Op::CopyPages)
    }

    /// Receives the answer to a read sent with [`Connection::send_read_units`] (or
    /// `send_read_pages`): one unit per requested page into `out`, checking each CRC.
    pub fn recv_pages(&mut self, id: u64, pages: &[PageRef], out: &mut [u8]) -> Result<(), ClientError> {
        let unit = if pages.is_empty() { PAGE_SIZE } else { out.len() / pages.len() };
        assert_eq!(out.len(), pages.len() * unit, "one output unit per requested page");
        let addr = self.addr;
        match self.recv(id)? {
            Response::Pages(entries) => {
                if entries.len() != pages.len() || (!pages.is_empty() && entries.unit_bytes() as usize != unit) {
                    let source = ProtocolError::Count {
                        asked: pages.len(),
                        unit,
                        got: entries.len(),
                        got_unit: entries.unit_bytes(),
                    };
                    return Err(ClientError::Protocol { addr, source });
                }
                for ((entry, at), dst) in entries.iter().zip(pages).zip(out.chunks_exact_mut(unit.max(1))) {
                    if page_crc(entry.data) != entry.crc {
                        return Err(ClientError::Corrupt { addr, slab: at.slab.0, page: at.page });
                    }
                    dst.copy_from_slice(entry.data);
                }
                Ok(())
            }
            other => Err(unexpected(addr, Op::ReadPages, &other)),
        }
    }

    /// Like [`Connection::recv_pages`], but a unit whose CRC fails does not fail the call:
    /// its position in `pages` is pushed to `corrupt` (its bytes in `out` are not to be
    /// used), and every other unit is delivered. For callers that can rebuild a unit.
    pub fn recv_units(
        &mut self,
        id: u64,
        pages: &[PageRef],
        out: &mut [u8],
        corrupt: &mut Vec<usize>,
    ) -> Result<(), ClientError> {
        let unit = if pages.is_empty() { PAGE_SIZE } else { out.len() / pages.len() };
        assert_eq!(out.len(), pages.len() * unit, "one output unit per requested page");
        let addr = self.addr;
        match self.recv(id)? {
            Response::Pages(entries) => {
                if entries.len() != pages.len() || (!pages.is_empty() && entries.unit_bytes() as usize != unit) {
                    let source = ProtocolError::Count {
                        asked: pages.len(),
                        unit,
                        got: entries.len(),
                        got_unit: entries.unit_bytes(),
                    };
                    return Err(ClientError::Protocol { addr, source });
                }
                for (i, (entry, dst)) in entries.iter().zip(out.chunks_exact_mut(unit.max(1))).enumerate() {
                    if page_crc(entry.data) != entry.crc {
                        corrupt.push(i);
                    } else {
                        dst.copy_from_slice(entry.data);
                    }
                }
                Ok(())
            }
            other => Err(unexpected(addr, Op::ReadPages, &other)),
        }
    }

    /// Receives the answer to a write sent with [`Connection::send_write_pages`].
    pub fn recv_written(&mut self, id: u64) -> Result<(), ClientError> {
        self.recv_stored(id, Op::WritePages).map(|_| ())
    }

    /// The answer to a write, copy or push (`op`): how many units were stored.
    fn recv_stored(&mut self, id: u64, op: Op) -> Result<u32, ClientError> {
        let addr = self.addr;
        match self.recv(id)? {
            Response::Written { count } => Ok(count),
            other => Err(unexpected(addr, op, &other)),
        }
    }

    fn send_with(&mut self, op: Op, encode: impl FnOnce(&mut Vec<u8>, u64)) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_buf.clear();
        encode(&mut self.send_buf, id);
        if let Some(mac) = self.mac.as_mut() {
            mac.seal(&mut self.send_buf, 0);
        }
        self.inbox.write_all(&self.stream, &self.send_buf).map_err(|e| self.io_error(e))?;
        self.in_flight.push_back((id, op));
        Ok(id)
    }

    /// Reads the next answer, which must be the one to request `id`.
    fn recv(&mut self, id: u64) -> Result<Response<'_>, ClientError> {
        let addr = self.addr;
        let Some((expected, op)) = self.in_flight.pop_front() else {
            return Err(ClientError::Protocol { addr, source: ProtocolError::NotInFlight { id } });
        };
        if expected != id {
            return Err(ClientError::Protocol { addr, source: ProtocolError::OutOfOrder { id, oldest: expected } });
        }
        self.inbox.fill(&self.stream, HEADER_LEN, self.spin).map_err(|e| self.io_error(e))?;
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(self.inbox.take(HEADER_LEN));
        let header = Header::decode(&head).map_err(|source| ClientError::Decode { addr, source })?;
        let trailer_len = if self.mac.is_some() { MAC_LEN } else { 0 };
        let frame_rest = header.body_len as usize + trailer_len;
        self.inbox.fill(&self.stream, frame_rest, self.spin).map_err(|e| self.io_error(e))?;
        let rest = self.inbox.take(frame_rest);
        let (body, trailer) = rest.split_at(header.body_len as usize);
        if let Some(mac) = self.mac.as_mut() {
            let trailer: &[u8; MAC_LEN] = trailer.try_into().expect("split at the body's length");
            mac.open(&head, body, trailer).map_err(|e| ClientError::Auth { addr, source: AuthError::BadMac(e) })?;
        }
        if header.request_id != id || header.kind != (op as u16 | RESPONSE_BIT) {
            let source = ProtocolError::WrongFrame { op: op.name(), id, kind: header.kind, got_id: header.request_id };
            return Err(ClientError::Protocol { addr, source });
        }
        let response = decode_response(&header, body).map_err(|source| ClientError::Decode { addr, source })?;
        if let Response::Error { code, message } = response {
            return Err(ClientError::Refused { addr, op: op.name(), code, message: message.to_string() });
        }
        Ok(response)
    }

    fn io_error(&self, e: io::Error) -> ClientError {
        if is_timeout(&e) {
            ClientError::Timeout { addr: self.addr, timeout_ms: self.timeout_ms }
        } else {
            ClientError::Io { addr: self.addr, source: e }
        }
    }
}

fn unexpected(addr: SocketAddr, op: Op, got: &Response<'_>) -> ClientError {
    ClientError::Protocol { addr, source: ProtocolError::WrongAnswer { op: op.name(), got: format!("{got:?}") } }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}
