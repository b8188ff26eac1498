//! Helpers shared by the integration tests: a server on a free port, clients, pages.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use krak_client::{ConnectOptions, Connection};
use krak_memserver::{ServerConfig, ServerHandle};
use krak_proto::{decode_response, Header, Op, PageRef, Response, SlabId, HEADER_LEN, PAGE_SIZE, RESPONSE_BIT};
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
    Connection::connect(addr, ConnectOptions { client_id, timeout_ms: 5_000, spin_us: 0 }).expect("client connects")
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
