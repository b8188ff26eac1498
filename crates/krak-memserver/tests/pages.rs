//! Pages written through the real client come back intact, pipelined or concurrent.

mod common;

use std::time::Duration;

use common::*;
use krak_proto::{PageRef, PAGE_SIZE};

#[test]
fn written_pages_read_back_and_untouched_pages_are_zero() {
    let server = start(config(8 * SLAB_BYTES));
    let mut c = connect(server.addr(), 1);
    assert_eq!((c.hello().page_size, c.hello().slab_size_bytes), (4096, SLAB_BYTES));
    assert_eq!(c.slab_pages(), 256);
    let slab = c.alloc_slab().unwrap();
    let pages = random_pages(1, 256);
    let at = refs(slab, 0, 256);
    write(&mut c, &at[..100], &pages[..100]);
    write(&mut c, &at[100..], &pages[100..]);
    assert_eq!(read(&mut c, &at), pages);

    let other = c.alloc_slab().unwrap();
    assert!(read(&mut c, &refs(other, 200, 56)).iter().all(|p| p.iter().all(|&b| b == 0)));
    // Request order, repeats included.
    let order = [at[9], at[3], at[9]];
    let got = read(&mut c, &order);
    assert_eq!(got, [pages[9].clone(), pages[3].clone(), pages[9].clone()]);

    let st = c.stats().unwrap();
    assert_eq!((st.slabs, st.lent_bytes, st.clients, st.connections), (2, 2 * SLAB_BYTES, 1, 1));
    assert_eq!((st.pages_written, st.pages_read, st.errors), (256, 256 + 56 + 3, 0));
    server.shutdown().unwrap();
}

#[test]
fn sixty_four_pipelined_write_batches_are_answered_in_order() {
    let server = start(config(8 * SLAB_BYTES));
    let mut c = connect(server.addr(), 2);
    let slabs = [c.alloc_slab().unwrap(), c.alloc_slab().unwrap()];
    // 64 batches of 8 pages: 512 pages over two slabs.
    let pages = random_pages(2, 512);
    let at: Vec<PageRef> = (0..512).map(|i| PageRef { slab: slabs[i / 256], page: (i % 256) as u32 }).collect();
    let mut ids = Vec::new();
    for (chunk_at, chunk) in at.chunks(8).zip(pages.chunks(8)) {
        let batch: Vec<(PageRef, &[u8])> = chunk_at.iter().copied().zip(chunk.iter().map(|p| p.as_slice())).collect();
        ids.push(c.send_write_pages(&batch).unwrap());
    }
    assert_eq!(c.in_flight(), 64);
    for id in ids {
        c.recv_written(id).unwrap();
    }
    // Pipelined reads too, answered in order.
    let ids: Vec<u64> = at.chunks(64).map(|chunk| c.send_read_pages(chunk).unwrap()).collect();
    for (id, (chunk_at, chunk)) in ids.into_iter().zip(at.chunks(64).zip(pages.chunks(64))) {
        let mut out = vec![0u8; chunk_at.len() * PAGE_SIZE];
        c.recv_pages(id, chunk_at, &mut out).unwrap();
        assert!(out.chunks_exact(PAGE_SIZE).zip(chunk).all(|(a, b)| a == b.as_slice()));
    }
    assert_eq!(server.stats().pages_written, 512);
}

#[test]
fn connections_of_one_client_share_a_slab_concurrently() {
    let server = start(config(8 * SLAB_BYTES));
    let addr = server.addr();
    let slab = connect(addr, 3).alloc_slab().unwrap();
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = connect(addr, 3);
                // Each thread owns 64 pages of the slab and rewrites them a few times.
                let at = refs(slab, t * 64, 64);
                for round in 0..5 {
                    let pages = random_pages(u64::from(t) * 100 + round, 64);
                    write(&mut c, &at, &pages);
                    assert_eq!(read(&mut c, &at), pages, "thread {t} round {round}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut c = connect(addr, 3);
    for t in 0..4u32 {
        assert_eq!(read(&mut c, &refs(slab, t * 64, 64)), random_pages(u64::from(t) * 100 + 4, 64));
    }
    assert!(eventually(Duration::from_secs(2), || server.stats().connections == 1));
}

#[test]
fn fragment_slabs_store_small_units_and_refuse_the_wrong_size() {
    let server = start(config(8 * SLAB_BYTES));
    let mut c = connect(server.addr(), 9);
    let slab = c.alloc_slab_units(1024).unwrap();
    assert_eq!(c.stats().unwrap().lent_bytes, SLAB_BYTES / 4, "256 units of 1 KiB");
    let units: Vec<Vec<u8>> = (0..256u32).map(|i| (0..1024).map(|b| (b as u32 ^ (i * 7)) as u8).collect()).collect();
    let at = refs(slab, 0, 256);
    let batch: Vec<(PageRef, &[u8])> = at.iter().copied().zip(units.iter().map(|u| u.as_slice())).collect();
    c.write_pages(&batch).unwrap();
    let mut out = vec![0u8; 256 * 1024];
    c.read_pages(&at, &mut out).unwrap();
    assert!(out.chunks_exact(1024).zip(&units).all(|(got, want)| got == want.as_slice()));
    // Whole pages of a fragment slab: refused, the connection stays usable.
    let mut page = vec![0u8; PAGE_SIZE];
    let err = c.read_pages(&at[..1], &mut page).unwrap_err();
    assert_eq!(err.code(), Some(krak_proto::ErrorCode::WrongUnitSize), "{err}");
    let err = c.write_pages(&[(at[0], page.as_slice())]).unwrap_err();
    assert_eq!(err.code(), Some(krak_proto::ErrorCode::WrongUnitSize), "{err}");
    c.read_pages(&at[..1], &mut out[..1024]).unwrap();
    assert!(out[..1024] == units[0][..], "nothing of the refused write was stored");
    server.shutdown().unwrap();
}

#[test]
fn discarded_units_read_zero_take_no_copy_and_only_their_owner_may_discard() {
    let server = start(config(8 * SLAB_BYTES));
    let mut c = connect(server.addr(), 7);
    let slab = c.alloc_slab().unwrap();
    let pages = random_pages(7, 16);
    let at = refs(slab, 0, 16);
    write(&mut c, &at, &pages);
    assert_eq!(c.discard_units(PAGE_SIZE as u32, &at[4..12]).unwrap(), 8);
    let got = read(&mut c, &at);
    for (i, page) in got.iter().enumerate() {
        if (4..12).contains(&i) {
            assert!(page.iter().all(|&b| b == 0), "unit {i} reads zeros after its discard");
        } else {
            assert_eq!(page, &pages[i], "unit {i} untouched");
        }
    }
    // A copy (a moving chunk's) never lands in a discarded unit; a write does.
    let copy: Vec<(PageRef, &[u8])> = vec![(at[5], pages[5].as_slice())];
    let id = c.send_copy_pages(&copy).unwrap();
    assert_eq!(c.recv_copied(id).unwrap(), 0);
    write(&mut c, &at[5..6], &pages[5..6]);
    assert_eq!(read(&mut c, &at[5..6])[0], pages[5]);
    // Another client's discard of this slab is refused like any access to it.
    let mut other = connect(server.addr(), 8);
    let err = other.discard_units(PAGE_SIZE as u32, &at[..1]).unwrap_err();
    assert!(err.to_string().contains("slab"), "{err}");
    assert_eq!(read(&mut c, &at[..1])[0], pages[0], "the refused discard changed nothing");
    assert_eq!(server.stats().units_discarded, 8);
    server.shutdown().unwrap();
}
