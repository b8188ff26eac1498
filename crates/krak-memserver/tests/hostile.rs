//! Garbage, bad headers, oversize and truncated frames and wrong checksums get an error
//! answer (or a close) on their own connection, while a well-behaved client keeps working.

mod common;

use std::net::Shutdown;
use std::time::{Duration, Instant};

use common::*;
use krak_client::Connection;
use krak_proto::{
    encode_alloc_slab, encode_hello, encode_read_pages, encode_write_pages, ErrorCode, Header, PageRef, SlabId,
    HEADER_LEN, MAX_BATCH_PAGES, NONCE_LEN, PAGE_SIZE, PROTOCOL_VERSION,
};

/// A good client with one slab of known data; `check` proves it is still served correctly.
struct Bystander {
    conn: Connection,
    at: Vec<PageRef>,
    pages: Vec<Vec<u8>>,
}

impl Bystander {
    fn new(addr: std::net::SocketAddr) -> Bystander {
        let mut conn = connect(addr, 1000);
        let slab = conn.alloc_slab().unwrap();
        let at = refs(slab, 0, 32);
        let pages = random_pages(1000, 32);
        write(&mut conn, &at, &pages);
        Bystander { conn, at, pages }
    }

    fn check(&mut self, round: u64) {
        assert_eq!(read(&mut self.conn, &self.at), self.pages, "bystander data intact");
        self.pages = random_pages(1000 + round, 32);
        write(&mut self.conn, &self.at, &self.pages);
        assert_eq!(read(&mut self.conn, &self.at), self.pages);
    }
}

/// A raw connection past the handshake as client `id`.
fn raw_hello(addr: std::net::SocketAddr, id: u64) -> Raw {
    Raw::handshake(addr, id, None)
}

fn server() -> krak_memserver::ServerHandle {
    let mut cfg = config(16 * SLAB_BYTES);
    cfg.io_timeout_ms = 300;
    cfg.handshake_timeout_ms = 300;
    start(cfg)
}

#[test]
fn garbage_and_bad_headers_are_answered_then_closed() {
    let server = server();
    let addr = server.addr();
    let mut good = Bystander::new(addr);

    // Plain garbage: not a krak peer.
    let mut s = raw(addr);
    send(&mut s, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n");
    assert_eq!(recv_error(&mut s).0, ErrorCode::Malformed as u16);
    assert!(closed_by_server(&mut s));
    good.check(1);

    // A header with a bad magic, mid-session.
    let mut s = raw_hello(addr, 7);
    let mut bad = Header { kind: 2, status: 0, request_id: 77, body_len: 0 }.encode();
    bad[..4].copy_from_slice(b"XRAK");
    send(&mut s.s, &bad);
    let (code, id, msg) = s.recv_error();
    assert_eq!((code, id), (ErrorCode::Malformed as u16, 77));
    assert!(msg.contains("bad magic"), "{msg}");
    assert!(closed_by_server(&mut s.s));
    good.check(2);

    // Non-zero reserved bytes.
    let mut s = raw_hello(addr, 7);
    let mut bad = Header { kind: 2, status: 0, request_id: 78, body_len: 0 }.encode();
    bad[22] = 1;
    send(&mut s.s, &bad);
    assert_eq!(s.recv_error().0, ErrorCode::Malformed as u16);
    assert!(closed_by_server(&mut s.s));
    good.check(3);
}

#[test]
fn an_oversize_body_is_refused_before_it_is_read() {
    let server = server();
    let addr = server.addr();
    let mut good = Bystander::new(addr);
    let mut s = raw_hello(addr, 8);
    let huge = Header { kind: 5, status: 0, request_id: 9, body_len: 100 << 20 };
    send(&mut s.s, &huge.encode());
    // Send some of the claimed body: the server must not wait for (or buffer) 100 MiB.
    let _ = std::io::Write::write_all(&mut s.s, &vec![0u8; 64 << 10]);
    let (code, id, msg) = s.recv_error();
    assert_eq!((code, id), (ErrorCode::FrameTooLarge as u16, 9));
    assert!(msg.contains("104857600"), "{msg}");
    assert!(closed_by_server(&mut s.s));
    good.check(1);
}

#[test]
fn malformed_bodies_unknown_kinds_and_missing_hello_close_the_connection() {
    let server = server();
    let addr = server.addr();
    let mut good = Bystander::new(addr);
    let page = vec![3u8; PAGE_SIZE];
    let at = PageRef { slab: SlabId(1, 1), page: 0 };

    // A write whose count promises two pages but carries one.
    let mut s = raw_hello(addr, 9);
    let mut frame = Vec::new();
    encode_write_pages(&mut frame, 5, PAGE_SIZE as u32, [(at, page.as_slice())].into_iter());
    frame[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&2u32.to_le_bytes());
    s.send(frame);
    let (code, id, _) = s.recv_error();
    assert_eq!((code, id), (ErrorCode::Malformed as u16, 5));
    assert!(closed_by_server(&mut s.s));
    good.check(1);

    // A read batch over the limit.
    let mut s = raw_hello(addr, 9);
    let mut frame = Header { kind: 4, status: 0, request_id: 6, body_len: 8 }.encode().to_vec();
    frame.extend_from_slice(&(MAX_BATCH_PAGES as u32 + 1).to_le_bytes());
    frame.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    s.send(frame);
    assert_eq!(s.recv_error().0, ErrorCode::BatchTooLarge as u16);
    assert!(closed_by_server(&mut s.s));

    // An unknown kind.
    let mut s = raw_hello(addr, 9);
    s.send(Header { kind: 0x77, status: 0, request_id: 7, body_len: 0 }.encode().to_vec());
    assert_eq!(s.recv_error().0, ErrorCode::UnknownOp as u16);
    assert!(closed_by_server(&mut s.s));

    // Work before hello, and a hello in a foreign version.
    let mut s = raw(addr);
    let mut frame = Vec::new();
    encode_alloc_slab(&mut frame, 8, PAGE_SIZE as u32);
    send(&mut s, &frame);
    assert_eq!(recv_error(&mut s).0, ErrorCode::HelloRequired as u16);
    assert!(closed_by_server(&mut s));
    let mut s = raw(addr);
    let mut frame = Vec::new();
    encode_hello(&mut frame, 1, PROTOCOL_VERSION + 1, 9, &[0; NONCE_LEN]);
    send(&mut s, &frame);
    assert_eq!(recv_error(&mut s).0, ErrorCode::UnsupportedVersion as u16);
    assert!(closed_by_server(&mut s));
    good.check(2);
    assert_eq!(server.stats().slabs, 1, "no slab came out of any of this");
}

#[test]
fn truncated_frames_are_closed_on_eof_or_after_the_io_timeout() {
    let server = server();
    let addr = server.addr();
    let mut good = Bystander::new(addr);
    let page = vec![3u8; PAGE_SIZE];
    let mut frame = Vec::new();
    encode_write_pages(&mut frame, 5, PAGE_SIZE as u32, [(good.at[0], page.as_slice())].into_iter());

    // Half a write, then EOF.
    let mut s = raw_hello(addr, 1000);
    send(&mut s.s, &frame[..frame.len() / 2]);
    s.s.shutdown(Shutdown::Write).unwrap();
    assert!(closed_by_server(&mut s.s));
    good.check(1);

    // Half a write, then silence: closed after io_timeout (300 ms), not left hanging.
    let mut s = raw_hello(addr, 1000);
    send(&mut s.s, &frame[..frame.len() / 2]);
    let t0 = Instant::now();
    assert!(closed_by_server(&mut s.s));
    assert!(t0.elapsed() < Duration::from_secs(3), "closed after {:?}", t0.elapsed());
    good.check(2); // the half-written page never landed: check compares the bystander's data

    // Half a header, then silence.
    let mut s = raw_hello(addr, 1000);
    send(&mut s.s, &frame[..10]);
    assert!(closed_by_server(&mut s.s));

    // An idle connection (no byte of a frame yet) is not timed out.
    let mut s = raw_hello(addr, 1000);
    std::thread::sleep(Duration::from_millis(700));
    let mut frame = Vec::new();
    encode_read_pages(&mut frame, 2, PAGE_SIZE as u32, &good.at[..1]);
    s.send(frame);
    let (h, body) = s.recv();
    // count, unit size, crc, then the page
    assert_eq!((h.status, body.len()), (0, 4 + 4 + 4 + PAGE_SIZE));
    assert!(&body[12..] == good.pages[0].as_slice(), "the page read back");
}

#[test]
fn a_wrong_checksum_stores_nothing_but_keeps_the_connection() {
    let server = server();
    let addr = server.addr();
    let mut good = Bystander::new(addr);
    let mut s = raw_hello(addr, 1000); // same client: it may write the bystander's slab
    let fresh = random_pages(5, 2);
    let mut frame = Vec::new();
    encode_write_pages(
        &mut frame,
        5,
        PAGE_SIZE as u32,
        good.at[..2].iter().copied().zip(fresh.iter().map(|p| p.as_slice())),
    );
    let last = frame.len() - 1;
    frame[last] ^= 0xff; // corrupt the second page after its crc was computed
    s.send(frame);
    let (code, id, msg) = s.recv_error();
    assert_eq!((code, id), (ErrorCode::ChecksumMismatch as u16, 5));
    assert!(msg.contains("nothing in the batch was stored"), "{msg}");
    good.check(1); // the first page of the bad batch was not stored either

    // Same connection still served.
    let mut frame = Vec::new();
    encode_read_pages(&mut frame, 6, PAGE_SIZE as u32, &good.at[..1]);
    s.send(frame);
    let (h, body) = s.recv();
    assert_eq!((h.request_id, h.status), (6, 0));
    assert!(&body[12..] == good.pages[0].as_slice(), "the page read back");
}
