//! PushPages: one memory server copies a client's units straight to another one, never
//! over a unit the client wrote there since the slab was allocated, and only into the
//! client's own slabs on a server of the same rack.

mod common;

use common::{config, connect, connect_with, start};
use krak_proto::{ErrorCode, PageRef, RackSecret, SlabId, PAGE_SIZE};

fn page(seed: u32) -> Vec<u8> {
    (0..PAGE_SIZE).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed.wrapping_mul(7919)) as u8).collect()
}

fn read(conn: &mut krak_client::Connection, slab: SlabId, index: u32) -> Vec<u8> {
    let mut out = vec![0u8; PAGE_SIZE];
    conn.read_pages(&[PageRef { slab, page: index }], &mut out).expect("read");
    out
}

#[test]
fn a_push_copies_every_unit_except_those_written_since() {
    let (a, b) = (start(config(16 << 20)), start(config(16 << 20)));
    let mut on_a = connect(a.addr(), 7);
    let mut on_b = connect(b.addr(), 7);
    let (src, dst) = (on_a.alloc_slab().unwrap(), on_b.alloc_slab().unwrap());
    let pages: Vec<Vec<u8>> = (0..200).map(page).collect();
    for chunk in (0..200u32).collect::<Vec<_>>().chunks(64) {
        let writes: Vec<(PageRef, &[u8])> =
            chunk.iter().map(|&i| (PageRef { slab: src, page: i }, pages[i as usize].as_slice())).collect();
        on_a.write_pages(&writes).unwrap();
    }
    // A write-back that reached the new slab before the copy: the copy must leave it.
    let newer = page(9999);
    on_b.write_pages(&[(PageRef { slab: dst, page: 5 }, newer.as_slice())]).unwrap();

    let indexes: Vec<u32> = (0..200).collect();
    let mut stored = 0;
    for chunk in indexes.chunks(100) {
        let id = on_a.send_push_pages(b.addr(), src, dst, PAGE_SIZE as u32, chunk).unwrap();
        stored += on_a.recv_pushed(id).unwrap();
    }
    assert_eq!(stored, 199, "every unit but the one written on the target");
    for i in 0..200u32 {
        let want = if i == 5 { &newer } else { &pages[i as usize] };
        assert_eq!(&read(&mut on_b, dst, i), want, "unit {i} on the target");
    }
    // A later write still replaces a copied unit, and a second push changes nothing.
    on_b.write_pages(&[(PageRef { slab: dst, page: 6 }, newer.as_slice())]).unwrap();
    let id = on_a.send_push_pages(b.addr(), src, dst, PAGE_SIZE as u32, &[6, 7]).unwrap();
    assert_eq!(on_a.recv_pushed(id).unwrap(), 1, "unit 7 was only copied, so it is copied again");
    assert_eq!(read(&mut on_b, dst, 6), newer);
    assert_eq!(read(&mut on_b, dst, 7), pages[7]);
}

#[test]
fn pushes_reach_only_the_clients_own_slabs_on_a_server_of_the_rack() {
    let secret = RackSecret::generate();
    let secure = |s: Option<RackSecret>| {
        let mut c = config(16 << 20);
        c.secret = s;
        start(c)
    };
    let (a, b, stranger) = (secure(Some(secret)), secure(Some(secret)), secure(Some(RackSecret::generate())));
    let mut on_a = connect_with(a.addr(), 1, Some(secret)).unwrap();
    let mut other_client_on_b = connect_with(b.addr(), 2, Some(secret)).unwrap();
    let src = on_a.alloc_slab().unwrap();
    let theirs = other_client_on_b.alloc_slab().unwrap();
    let data = page(1);
    on_a.write_pages(&[(PageRef { slab: src, page: 0 }, data.as_slice())]).unwrap();

    let refused = |conn: &mut krak_client::Connection, to, src, dst| {
        let id = conn.send_push_pages(to, src, dst, PAGE_SIZE as u32, &[0]).unwrap();
        conn.recv_pushed(id).unwrap_err().code()
    };
    // Another client's slab on the target: the target refuses, the push fails.
    assert_eq!(refused(&mut on_a, b.addr(), src, theirs), Some(ErrorCode::PushFailed));
    assert_eq!(read(&mut other_client_on_b, theirs, 0), vec![0u8; PAGE_SIZE], "their slab untouched");
    // A server that does not know the rack secret, and an address nobody listens on.
    assert!(connect_with(stranger.addr(), 1, Some(secret)).is_err(), "the stranger is not of our rack");
    assert_eq!(refused(&mut on_a, stranger.addr(), src, theirs), Some(ErrorCode::PushFailed));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    assert_eq!(refused(&mut on_a, closed, src, theirs), Some(ErrorCode::PushFailed));
    // A source slab this client does not hold is the usual unknown slab.
    let mut other_on_a = connect_with(a.addr(), 2, Some(secret)).unwrap();
    let dst = connect_with(b.addr(), 2, Some(secret)).unwrap().alloc_slab().unwrap();
    assert_eq!(refused(&mut other_on_a, b.addr(), src, dst), Some(ErrorCode::UnknownSlab));
    // The connection keeps serving after each refusal.
    let mut on_b = connect_with(b.addr(), 1, Some(secret)).unwrap();
    let mine = on_b.alloc_slab().unwrap();
    let id = on_a.send_push_pages(b.addr(), src, mine, PAGE_SIZE as u32, &[0]).unwrap();
    assert_eq!(on_a.recv_pushed(id).unwrap(), 1);
    assert_eq!(read(&mut on_b, mine, 0), data);
}
