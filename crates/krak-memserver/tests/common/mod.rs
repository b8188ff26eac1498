//! Helpers shared by the integration tests: a server on a free port, clients, pages.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use krak_client::{ConnectOptions, Connection};
use krak_memserver::{ServerConfig, ServerHandle};
use krak_proto::{
    decode_response, encode_auth, encode_hello, FrameMac, Header, Op, PageRef, RackSecret, Response, Side, SlabId,
    Transcript, HEADER_LEN, MAC_LEN, NONCE_LEN, PAGE_SIZE, PROTOCOL_VERSION, RESPONSE_BIT,
};
use rand::{Rng, SeedableRng};

/// Slab of 256 pages: small enough for many slabs, large enough for a full batch.
pub const SLAB_BYTES: u64 = 1 << 20;

pub fn config(capacity_bytes: u64) -> ServerConfig {
    ServerConfig { slab_size_bytes: SLAB_BYTES, ..ServerConfig::new("127.0.0.1:0".parse().unwrap(), capacity_bytes) }
}

pub fn start(config: ServerConfig) -> ServerHandle {
    krak_memserver::spawn(config).expect("server starts")
}

pub fn connect(addr: SocketAddr, client_id: u64) -> Connection {
    connect_with(addr, client_id, None).expect("client connects")
}

pub fn connect_with(
    addr: SocketAddr,
    client_id: u64,
    secret: Option<RackSecret>,
) -> Result<Connection, krak_client::ClientError> {
    Connection::connect(addr, ConnectOptions { client_id, timeout_ms: 5_000, spin_us: 0, secret })
}

/// A raw connection past the handshake, sending and checking MAC'd frames by hand.
pub struct Raw {
    pub s: TcpStream,
    pub mac: FrameMac,
}

impl Raw {
    /// Hello and auth as `client_id` with `secret` (the insecure key when `None`).
    pub fn handshake(addr: SocketAddr, client_id: u64, secret: Option<RackSecret>) -> Raw {
        Raw::try_handshake(addr, client_id, secret).expect("authenticated")
    }

    /// As [`Raw::handshake`], ignoring the server's proof; `Err` is the status of the
    /// answer to our proof.
    pub fn try_handshake(addr: SocketAddr, client_id: u64, secret: Option<RackSecret>) -> Result<Raw, u16> {
        let secret = secret.unwrap_or_else(RackSecret::insecure);
        let mut s = raw(addr);
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut buf = Vec::new();
        encode_hello(&mut buf, 1, PROTOCOL_VERSION, client_id, &nonce);
        send(&mut s, &buf);
        let (h, body) = recv_frame(&mut s);
        let Ok(Response::Hello(hello)) = decode_response(&h, &body) else { panic!("not a hello") };
        let t = Transcript { version: PROTOCOL_VERSION, client_id, client_nonce: nonce, server: hello };
        let mut raw = Raw { s, mac: FrameMac::new(&t.session_key(&secret), Side::Client) };
        let mut buf = Vec::new();
        encode_auth(&mut buf, 2, &t.client_proof(&secret));
        raw.send(buf);
        // A refusal is sealed under the server's key, which a client with the wrong
        // secret does not have: read it without checking.
        let (h, body) = recv_frame(&mut raw.s);
        let mut trailer = [0u8; MAC_LEN];
        raw.s.read_exact(&mut trailer).expect("a MAC trailer");
        if h.status != 0 {
            return Err(h.status);
        }
        raw.mac.open(&h.encode(), &body, &trailer).expect("the server's MAC verifies");
        Ok(raw)
    }

    /// Seals one whole frame and sends it; returns the sealed bytes (for replays).
    pub fn send(&mut self, mut frame: Vec<u8>) -> Vec<u8> {
        self.mac.seal(&mut frame, 0);
        send(&mut self.s, &frame);
        frame
    }

    /// One answer, its MAC checked.
    pub fn recv(&mut self) -> (Header, Vec<u8>) {
        let mut head = [0u8; HEADER_LEN];
        self.s.read_exact(&mut head).expect("a response header");
        let h = Header::decode(&head).expect("a valid response header");
        let mut body = vec![0u8; h.body_len as usize];
        self.s.read_exact(&mut body).expect("a response body");
        let mut trailer = [0u8; MAC_LEN];
        self.s.read_exact(&mut trailer).expect("a MAC trailer");
        self.mac.open(&head, &body, &trailer).expect("the server's MAC verifies");
        (h, body)
    }

    /// One error answer: (code, request id, message).
    pub fn recv_error(&mut self) -> (u16, u64, String) {
        let (h, body) = self.recv();
        assert_ne!(h.status, 0, "expected an error, got kind {:#06x}", h.kind);
        (h.status, h.request_id, String::from_utf8(body).expect("UTF-8 message"))
    }
}

/// `n` pages of seeded random bytes.
pub fn random_pages(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut p = vec![0u8; PAGE_SIZE];
            rng.fill(&mut p[..]);
            p
        })
        .collect()
}

pub fn refs(slab: SlabId, first: u32, n: usize) -> Vec<PageRef> {
    (0..n as u32).map(|i| PageRef { slab, page: first + i }).collect()
}

pub fn write(conn: &mut Connection, at: &[PageRef], pages: &[Vec<u8>]) {
    let batch: Vec<(PageRef, &[u8])> = at.iter().copied().zip(pages.iter().map(|p| p.as_slice())).collect();
    conn.write_pages(&batch).expect("write");
}

pub fn read(conn: &mut Connection, at: &[PageRef]) -> Vec<Vec<u8>> {
    let mut out = vec![0u8; at.len() * PAGE_SIZE];
    conn.read_pages(at, &mut out).expect("read");
    out.chunks_exact(PAGE_SIZE).map(<[u8]>::to_vec).collect()
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// A raw socket for sending hand-made frames.
pub fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

pub fn send(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).unwrap();
}

/// Reads one response frame: (header, status, body). Panics on EOF or timeout.
pub fn recv_frame(s: &mut TcpStream) -> (Header, Vec<u8>) {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).expect("a response header");
    let h = Header::decode(&head).expect("a valid response header");
    let mut body = vec![0u8; h.body_len as usize];
    s.read_exact(&mut body).expect("a response body");
    (h, body)
}

/// Reads one error response and returns its code, request id and message. Read off the
/// header rather than `decode_response`: an answer to an unknown kind echoes that kind.
pub fn recv_error(s: &mut TcpStream) -> (u16, u64, String) {
    let (h, body) = recv_frame(s);
    assert_ne!(h.status, 0, "expected an error, got kind {:#06x}", h.kind);
    assert!(h.kind & RESPONSE_BIT != 0, "answers carry the response bit");
    if Op::from_kind(h.kind).is_some() {
        assert!(matches!(decode_response(&h, &body), Ok(Response::Error { .. })), "a well-formed error answer");
    }
    (h.status, h.request_id, String::from_utf8(body).expect("UTF-8 message"))
}

/// True once the server has closed `s` (EOF or reset), within the read timeout.
pub fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe),
        }
    }
}
