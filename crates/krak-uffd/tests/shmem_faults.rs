//! The fault loop of `fault_loop.rs` on a shared memfd mapping, driven as a pager process
//! drives one: pages installed through the userfaultfd, read back with `pread` on the
//! memfd and dropped by punching holes in it, after which they fault again.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use krak_uffd::{CopyError, Event, MemfdView, SharedMapping, Uffd, PAGE_SIZE};

fn page_pattern(page: usize) -> Vec<u8> {
    (0..PAGE_SIZE).map(|i| (page * 31 + i * 7) as u8).collect()
}

#[test]
fn shmem_faults_are_served_and_holes_fault_again() {
    const PAGES: usize = 64;
    let uffd = Arc::new(Uffd::open_for_shmem().expect("userfaultfd with shmem write-protect"));
    let shared = SharedMapping::new(PAGES * PAGE_SIZE).unwrap();
    let base = shared.as_ptr() as usize;
    uffd.register(base, shared.len()).unwrap();
    let map = MemfdView::new(shared.memfd().try_clone_to_owned().unwrap(), base, shared.len()).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let wp_faults = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (uffd, stop, wp_faults) = (uffd.clone(), stop.clone(), wp_faults.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut pfd =
                    libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&*uffd), events: libc::POLLIN, revents: 0 };
                // SAFETY: one live pollfd, count 1.
                unsafe { libc::poll(&mut pfd, 1, 10) };
                while let Some(ev) = uffd.read_event().unwrap() {
                    let Event::Pagefault { addr, write, wp, .. } = ev else { panic!("unexpected event {ev:?}") };
                    let page_addr = addr & !(PAGE_SIZE - 1);
                    if wp {
                        wp_faults.fetch_add(1, Ordering::Relaxed);
                        uffd.write_protect(page_addr, PAGE_SIZE, false, true).unwrap();
                        continue;
                    }
                    let page = (page_addr - base) / PAGE_SIZE;
                    // read faults get the page write-protected, as the pager does for clean pages
                    match uffd.copy(page_addr, &page_pattern(page), !write, true) {
                        Ok(n) => assert_eq!(n, PAGE_SIZE),
                        Err(CopyError::Exists) => uffd.wake(page_addr, PAGE_SIZE).unwrap(),
                        Err(e) => panic!("copy failed: {e}"),
                    }
                }
            }
        })
    };

    for page in 0..PAGES {
        let p = (base + page * PAGE_SIZE) as *mut u8;
        // SAFETY: inside the mapping; the handler thread installs the page on first touch.
        let first = unsafe { p.add(100).read_volatile() };
        assert_eq!(first, page_pattern(page)[100]);
        // SAFETY: as above; the page is present and write-protected, so this raises a WP fault.
        unsafe { p.add(5).write_volatile(0xEE) };
        // SAFETY: as above.
        assert_eq!(unsafe { p.add(5).read_volatile() }, 0xEE);
    }
    assert_eq!(wp_faults.load(Ordering::Relaxed), PAGES, "every first write to a clean page faults once");

    // the file sees the program's writes
    let mut out = vec![0u8; PAGE_SIZE];
    map.copy_out(7 * PAGE_SIZE, &mut out).unwrap();
    let mut want = page_pattern(7);
    want[5] = 0xEE;
    assert_eq!(out, want);
    assert_eq!(map.resident_pages().unwrap(), PAGES);

    // dropped pages fault again and are served again (with the pattern, not the old write)
    map.discard_pages(&(0..PAGES).rev().collect::<Vec<_>>()).unwrap();
    assert_eq!(map.resident_pages().unwrap(), 0);
    // SAFETY: page 3 is inside the mapping; the touch faults it back in first.
    let _ = unsafe { ((base + 3 * PAGE_SIZE) as *const u8).read_volatile() };
    map.copy_out(3 * PAGE_SIZE, &mut out).unwrap();
    assert_eq!(out, page_pattern(3));
    assert_eq!(map.resident_pages().unwrap(), 1);
    // SAFETY: as above; page 3 came back write-protected, so this write faults once more.
    unsafe { ((base + 3 * PAGE_SIZE + 5) as *mut u8).write_volatile(0x11) };
    assert_eq!(wp_faults.load(Ordering::Relaxed), PAGES + 1);

    stop.store(true, Ordering::Relaxed);
    handler.join().unwrap();
}
