//! A client that reconnects within the grace period keeps its slabs; one that does not
//! loses them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use krak_proto::ErrorCode;

#[test]
fn reconnecting_within_grace_finds_its_data_and_leaving_frees_it() {
    let mut cfg = config(4 * SLAB_BYTES);
    cfg.grace_ms = 500;
    let server = start(cfg);
    let mut c = connect(server.addr(), 40);
    let slab = c.alloc_slab().unwrap();
    let pages = random_pages(40, 16);
    let at = refs(slab, 10, 16);
    write(&mut c, &at, &pages);
    drop(c);

    // Back quickly (well within 500 ms) with the same client id: same data.
    assert!(eventually(Duration::from_secs(1), || server.stats().connections == 0));
    std::thread::sleep(Duration::from_millis(100));
    let mut c = connect(server.addr(), 40);
    assert_eq!(read(&mut c, &at), pages);
    assert_eq!(server.stats().lent_bytes, SLAB_BYTES);

    // While any connection of the client is open, nothing is freed however long it takes.
    let mut other = connect(server.addr(), 40);
    drop(c);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(read(&mut other, &at), pages);
    drop(other);

    // Gone for good: freed after the grace period, not before.
    let gone = Instant::now();
    assert!(eventually(Duration::from_secs(5), || server.stats().lent_bytes == 0), "slabs freed");
    assert!(gone.elapsed() >= Duration::from_millis(400), "freed only after the grace period");
    let st = server.stats();
    assert_eq!((st.slabs, st.clients), (0, 0));
    let mut c = connect(server.addr(), 40);
    let mut out = vec![0u8; 16 * 4096];
    assert_eq!(c.read_pages(&at, &mut out).unwrap_err().code(), Some(ErrorCode::UnknownSlab));
}

#[test]
fn grace_is_per_client() {
    let mut cfg = config(4 * SLAB_BYTES);
    cfg.grace_ms = 200;
    let server = start(cfg);
    let mut stays = connect(server.addr(), 50);
    let kept = stays.alloc_slab().unwrap();
    let mut leaves = connect(server.addr(), 51);
    leaves.alloc_slab().unwrap();
    leaves.alloc_slab().unwrap();
    assert_eq!(server.stats().clients, 2);
    drop(leaves);
    assert!(eventually(Duration::from_secs(5), || server.stats().lent_bytes == SLAB_BYTES));
    assert_eq!(server.stats().clients, 1);
    stays.free_slab(kept).unwrap();
}
