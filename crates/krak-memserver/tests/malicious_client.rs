//! A malicious client against a server with a rack secret: it does not know the secret,
//! guesses slab ids, presents another client's handle, replays captured frames on the
//! same and on another connection, alters bytes, and sends garbage and oversize frames,
//! while a well-behaved client on its own connections keeps getting its pages back intact.

mod common;

use common::*;
use krak_client::{ClientError, Connection};
use krak_proto::{
    encode_alloc_slab, encode_free_slab, encode_read_pages, ErrorCode, Header, PageRef, RackSecret, SlabId, HEADER_LEN,
    PAGE_SIZE,
};

struct Rack {
    server: krak_memserver::ServerHandle,
    secret: RackSecret,
}

fn rack() -> Rack {
    rack_with(|_| {})
}

fn rack_with(tune: impl FnOnce(&mut krak_memserver::ServerConfig)) -> Rack {
    let secret = RackSecret::generate();
    let mut cfg = config(16 * SLAB_BYTES);
    cfg.io_timeout_ms = 300;
    cfg.handshake_timeout_ms = 300;
    cfg.secret = Some(secret);
    tune(&mut cfg);
    Rack { server: start(cfg), secret }
}

/// The honest client: one slab of known pages, checked (contents) after each attack.
struct Victim {
    conn: Connection,
    at: Vec<PageRef>,
    pages: Vec<Vec<u8>>,
}

impl Victim {
    fn new(rack: &Rack) -> Victim {
        let mut conn = connect_with(rack.server.addr(), 1, Some(rack.secret)).unwrap();
        let slab = conn.alloc_slab().unwrap();
        let at = refs(slab, 0, 16);
        let pages = random_pages(77, 16);
        write(&mut conn, &at, &pages);
        Victim { conn, at, pages }
    }

    fn check(&mut self, round: u64) {
        assert_eq!(read(&mut self.conn, &self.at), self.pages, "victim's pages intact");
        self.pages = random_pages(round, 16);
        write(&mut self.conn, &self.at, &self.pages);
        assert_eq!(read(&mut self.conn, &self.at), self.pages);
    }
}

#[test]
fn no_secret_or_a_wrong_secret_is_refused_both_ways() {
    let rack = rack();
    let addr = rack.server.addr();
    let mut victim = Victim::new(&rack);
    for secret in [None, Some(RackSecret::generate())] {
        // The client sees at once that the server does not share its secret.
        let err = connect_with(addr, 2, secret).unwrap_err();
        assert!(matches!(err, ClientError::Auth { .. }), "{err}");
        // A client that ignores the server's proof and sends its own is refused.
        let refused = Raw::try_handshake(addr, 2, secret).err();
        assert_eq!(refused, Some(ErrorCode::AuthFailed as u16), "a bad proof does not authenticate");
    }
    victim.check(1);
    assert_eq!(rack.server.stats().slabs, 1);
    // A server with the secret, a client without: the client refuses the server.
    let open = start(config(4 * SLAB_BYTES));
    let err = connect_with(open.addr(), 2, Some(rack.secret)).unwrap_err();
    assert!(matches!(err, ClientError::Auth { .. }), "{err}");
}

#[test]
fn guessed_ids_and_another_clients_handle_are_refused_then_the_guesser_is_cut_off() {
    let rack = rack();
    let addr = rack.server.addr();
    let mut victim = Victim::new(&rack);
    let stolen = victim.at[0].slab;
    let mut thief = connect_with(addr, 2, Some(rack.secret)).unwrap();
    let mut out = vec![0u8; PAGE_SIZE];
    // The victim's own handle, presented by another client, is unknown to it.
    let err = thief.read_pages(&[PageRef { slab: stolen, page: 0 }], &mut out).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownSlab));
    assert_eq!(thief.free_slab(stolen).unwrap_err().code(), Some(ErrorCode::UnknownSlab));
    // The right id with a guessed tag, and guessed ids.
    for i in 0..4u64 {
        let guess = PageRef { slab: SlabId(stolen.0, i), page: 0 };
        assert_eq!(thief.read_pages(&[guess], &mut out).unwrap_err().code(), Some(ErrorCode::UnknownSlab));
        let guess = PageRef { slab: SlabId(stolen.0 ^ (i + 1), stolen.1), page: 0 };
        let page = vec![0xeeu8; PAGE_SIZE];
        let err = thief.write_pages(&[(guess, page.as_slice())]).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnknownSlab));
    }
    victim.check(2);
    // Past the allowance, the guesser's connection is closed.
    let mut last = None;
    for i in 0..32u64 {
        match thief.read_pages(&[PageRef { slab: SlabId(i, i), page: 0 }], &mut out) {
            Err(e) if e.code() == Some(ErrorCode::UnknownSlab) => continue,
            other => {
                last = Some(other);
                break;
            }
        }
    }
    let last = last.expect("cut off before 32 more guesses");
    assert_eq!(last.unwrap_err().code(), Some(ErrorCode::TooManyBadSlabs));
    victim.check(3);
}

#[test]
fn replayed_and_altered_frames_are_refused() {
    let rack = rack();
    let addr = rack.server.addr();
    let mut victim = Victim::new(&rack);

    // Capture a frame (a free of the victim's slab, sent by the victim's own client id on
    // a connection of its own) and replay it on the same connection.
    let mut a = Raw::handshake(addr, 1, Some(rack.secret));
    let mut frame = Vec::new();
    encode_alloc_slab(&mut frame, 10, PAGE_SIZE as u32);
    let captured = a.send(frame);
    let (h, body) = a.recv();
    assert_eq!(h.status, 0);
    let slab =
        SlabId(u64::from_le_bytes(body[0..8].try_into().unwrap()), u64::from_le_bytes(body[8..16].try_into().unwrap()));
    send(&mut a.s, &captured);
    assert_eq!(a.recv_error().0, ErrorCode::AuthFailed as u16);
    assert!(closed_by_server(&mut a.s));
    assert_eq!(rack.server.stats().slabs, 2, "the replayed alloc allocated nothing");

    // The same frame replayed as the first frame of another connection of the same client.
    let mut b = Raw::handshake(addr, 1, Some(rack.secret));
    send(&mut b.s, &captured);
    assert_eq!(b.recv_error().0, ErrorCode::AuthFailed as u16);
    assert!(closed_by_server(&mut b.s));

    // A free of the new slab, altered in one byte of the handle after sealing.
    let mut c = Raw::handshake(addr, 1, Some(rack.secret));
    let mut frame = Vec::new();
    encode_free_slab(&mut frame, 11, slab);
    c.mac.seal(&mut frame, 0);
    frame[HEADER_LEN + 3] ^= 0x40;
    send(&mut c.s, &frame);
    assert_eq!(c.recv_error().0, ErrorCode::AuthFailed as u16);
    assert!(closed_by_server(&mut c.s));

    // A frame without its trailer: the server waits for the MAC, then gives up.
    let mut d = Raw::handshake(addr, 1, Some(rack.secret));
    let mut frame = Vec::new();
    encode_read_pages(&mut frame, 12, PAGE_SIZE as u32, &victim.at[..1]);
    send(&mut d.s, &frame);
    assert!(closed_by_server(&mut d.s));
    victim.check(4);
    assert_eq!(rack.server.stats().slabs, 2);
}

#[test]
fn garbage_and_oversize_frames_close_only_their_connection() {
    let rack = rack();
    let addr = rack.server.addr();
    let mut victim = Victim::new(&rack);
    // Garbage before any handshake.
    let mut s = raw(addr);
    send(&mut s, &[0xa5; 200]);
    assert_eq!(recv_error(&mut s).0, ErrorCode::Malformed as u16);
    assert!(closed_by_server(&mut s));
    victim.check(5);
    // Garbage after the handshake.
    let mut g = Raw::handshake(addr, 2, Some(rack.secret));
    send(&mut g.s, b"GET /v1/status HTTP/1.1\r\n\r\n");
    assert_eq!(g.recv_error().0, ErrorCode::Malformed as u16);
    assert!(closed_by_server(&mut g.s));
    // A validly sealed header that claims an oversize body.
    let mut o = Raw::handshake(addr, 2, Some(rack.secret));
    send(&mut o.s, &Header { kind: 5, status: 0, request_id: 3, body_len: u32::MAX }.encode());
    assert_eq!(o.recv_error().0, ErrorCode::FrameTooLarge as u16);
    assert!(closed_by_server(&mut o.s));
    victim.check(6);
}

#[test]
fn per_client_limits_on_connections_and_bytes() {
    let rack = rack_with(|c| {
        c.max_connections_per_client = 4;
        c.max_bytes_per_client = Some(4 * SLAB_BYTES);
    });
    let addr = rack.server.addr();
    let mut victim = Victim::new(&rack);
    // Four connections per client (the victim holds one of its own client id 1).
    let mut held: Vec<Connection> = (0..4).map(|_| connect_with(addr, 3, Some(rack.secret)).unwrap()).collect();
    let err = connect_with(addr, 3, Some(rack.secret)).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ClientLimit), "{err}");
    // Four slabs per client; another client still gets its slabs.
    for _ in 0..4 {
        held[0].alloc_slab().unwrap();
    }
    let err = held[1].alloc_slab().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ClientLimit), "{err}");
    let mut other = connect_with(addr, 4, Some(rack.secret)).unwrap();
    other.alloc_slab().unwrap();
    held.pop();
    // A closed connection frees its slot.
    assert!(eventually(std::time::Duration::from_secs(5), || connect_with(addr, 3, Some(rack.secret)).is_ok()));
    victim.check(7);
}

#[test]
fn a_connection_that_never_authenticates_is_closed_after_the_handshake_timeout() {
    let rack = rack_with(|c| c.max_connections = 2);
    let addr = rack.server.addr();
    // Two silent connections take both slots, then are closed (handshake timeout 300 ms) ...
    // (closed_by_server gives up after 5 s, long past the timeout).
    let mut silent: Vec<_> = (0..2).map(|_| raw(addr)).collect();
    for s in &mut silent {
        assert!(closed_by_server(s));
    }
    // ... and so are connections that said hello but never proved the secret.
    let mut s = raw(addr);
    let mut hello = Vec::new();
    krak_proto::encode_hello(&mut hello, 1, krak_proto::PROTOCOL_VERSION, 5, &[0; krak_proto::NONCE_LEN]);
    send(&mut s, &hello);
    let _ = recv_frame(&mut s);
    assert!(closed_by_server(&mut s));
    // The slots are free again: an honest client gets in and its pages round-trip.
    assert!(eventually(std::time::Duration::from_secs(5), || rack.server.stats().connections == 0));
    let mut victim = Victim::new(&rack);
    victim.check(8);
}
