//! Capacity is enforced promptly; slabs are private to the client id that allocated them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use krak_proto::{ErrorCode, PageRef, SlabId};

#[test]
fn a_full_server_refuses_at_once_and_recovers_after_a_free() {
    let server = start(config(2 * SLAB_BYTES));
    let mut c = connect(server.addr(), 10);
    let a = c.alloc_slab().unwrap();
    let _b = c.alloc_slab().unwrap();
    let t0 = Instant::now();
    let err = c.alloc_slab().unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(1), "refused promptly");
    assert!(err.is_no_capacity(), "{err}");
    assert!(err.to_string().contains("capacity 2MiB exhausted: 2MiB lent in 2 slabs of 1MiB"), "{err}");
    // Another client is refused too: capacity is server-wide.
    assert!(connect(server.addr(), 11).alloc_slab().unwrap_err().is_no_capacity());
    c.free_slab(a).unwrap();
    assert_eq!(server.stats().lent_bytes, SLAB_BYTES);
    c.alloc_slab().unwrap();
    assert_eq!((server.stats().slabs, server.stats().lent_bytes), (2, 2 * SLAB_BYTES));
}

#[test]
fn another_client_cannot_touch_a_slab_and_cannot_tell_it_exists() {
    let server = start(config(4 * SLAB_BYTES));
    let mut a = connect(server.addr(), 20);
    let mut b = connect(server.addr(), 21);
    let slab = a.alloc_slab().unwrap();
    let pages = random_pages(20, 4);
    let at = refs(slab, 0, 4);
    write(&mut a, &at, &pages);

    let mut out = vec![0u8; 4 * 4096];
    let foreign = b.read_pages(&at, &mut out).unwrap_err();
    let missing = b.read_pages(&refs(SlabId(slab.0 ^ 1, slab.1), 0, 4), &mut out).unwrap_err();
    assert_eq!(foreign.code(), Some(ErrorCode::UnknownSlab));
    assert_eq!(missing.code(), Some(ErrorCode::UnknownSlab));
    assert!(out.iter().all(|&x| x == 0), "nothing leaked");

    let evil = random_pages(21, 4);
    let batch: Vec<(PageRef, &[u8])> = at.iter().copied().zip(evil.iter().map(|p| p.as_slice())).collect();
    assert_eq!(b.write_pages(&batch).unwrap_err().code(), Some(ErrorCode::UnknownSlab));
    assert_eq!(b.free_slab(slab).unwrap_err().code(), Some(ErrorCode::UnknownSlab));

    // The owner's data and slab are intact, and its connection never noticed.
    assert_eq!(read(&mut a, &at), pages);
    let beyond = [PageRef { slab, page: 256 }];
    assert_eq!(a.read_pages(&beyond, &mut out[..4096]).unwrap_err().code(), Some(ErrorCode::PageOutOfRange));
    a.free_slab(slab).unwrap();
    assert_eq!(server.stats().errors, 5);
}

#[test]
fn connections_past_the_limit_are_told_so_and_the_slot_frees_up() {
    let mut cfg = config(4 * SLAB_BYTES);
    cfg.max_connections = 2;
    let server = start(cfg);
    let mut first = connect(server.addr(), 30);
    let _second = connect(server.addr(), 31);
    let err = krak_client::Connection::connect(
        server.addr(),
        krak_client::ConnectOptions { client_id: 32, timeout_ms: 5_000, spin_us: 0, secret: None },
    )
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooManyConnections), "{err}");
    first.stats().unwrap(); // served connections are unaffected
    drop(first);
    assert!(eventually(Duration::from_secs(2), || server.stats().connections == 1));
    connect(server.addr(), 32).stats().unwrap();
}
