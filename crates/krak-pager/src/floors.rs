//! The physical floor of a far-memory fault on this machine: a userfaultfd fault served from
//! local memory, by a handler thread or by the faulting thread itself (SIGBUS), exactly as
//! the pager serves one in each fault mode, minus the network.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use krak_uffd::{AnonMapping, CopyError, Event, Uffd, PAGE_SIZE};

use crate::error::{InstallError, PagerError};

/// Latency percentiles of a measurement, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FaultLatency {
    pub samples: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Touches `pages` fresh pages of a registered mapping, one at a time, each fault served by
/// a handler thread with `UFFDIO_COPY` from local memory; times each touch.
pub fn measure_local_fault(pages: usize) -> Result<FaultLatency, PagerError> {
    let uffd = Arc::new(Uffd::open()?);
    let map = AnonMapping::new(pages.max(1) * PAGE_SIZE).map_err(PagerError::Mapping)?;
    let base = map.as_ptr() as usize;
    uffd.register(base, map.len())?;
    let stop = Arc::new(AtomicBool::new(false));
    let handler = {
        let (uffd, stop) = (uffd.clone(), stop.clone());
        std::thread::spawn(move || -> Result<(), PagerError> {
            let page = vec![0x5au8; PAGE_SIZE];
            while !stop.load(Ordering::Relaxed) {
                if !uffd.wait_readable(50)? {
                    continue;
                }
                while let Some(event) = uffd.read_event()? {
                    if let Event::Pagefault { addr, .. } = event {
                        let at = addr & !(PAGE_SIZE - 1);
                        match uffd.copy(at, &page, false, true) {
                            Ok(_) => {}
                            Err(CopyError::Exists) => uffd.wake(at, PAGE_SIZE)?,
                            Err(CopyError::Again { .. }) => {}
                            Err(CopyError::Other(e)) => return Err(e.into()),
                            Err(CopyError::OutsideMapping { start, len }) => {
                                return Err(InstallError::OutsideMapping { start, len }.into())
                            }
                        }
                    }
                }
            }
            Ok(())
        })
    };
    let timed = time_first_touches(&map, pages);
    stop.store(true, Ordering::Relaxed);
    handler.join().map_err(|_| PagerError::Install(InstallError::ProbePanicked))??;
    timed
}

/// Reads the first byte of each of the first `pages` pages of `map` once (each touch
/// faults, and whoever serves it installs a page of `0x5a`), timing each; checks the bytes.
fn time_first_touches(map: &AnonMapping, pages: usize) -> Result<FaultLatency, PagerError> {
    let base = map.as_ptr() as usize;
    let pages = pages.min(map.len() / PAGE_SIZE);
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("static bounds");
    let mut sum = 0u64;
    for p in 0..pages {
        let t = Instant::now();
        // SAFETY: page `p` lies inside the mapping (`pages` is capped to its length), which
        // `map` keeps alive; the fault it takes is served before the read returns.
        sum += unsafe { ((base + p * PAGE_SIZE) as *const u8).read_volatile() } as u64;
        hist.saturating_record(t.elapsed().as_nanos().max(1) as u64);
    }
    if sum != 0x5a * pages as u64 {
        return Err(InstallError::ProbeWrongBytes.into());
    }
    Ok(FaultLatency {
        samples: hist.len(),
        p50_us: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

/// Touches `pages` fresh pages of a registered mapping, one at a time, each fault served on
/// the faulting thread (SIGBUS, as `FaultMode::Sigbus` serves them) with `UFFDIO_COPY` from
/// local memory; times each touch. No thread sleeps or is woken: the lowest floor there is.
pub fn measure_local_fault_self_served(pages: usize) -> Result<FaultLatency, PagerError> {
    let uffd = Uffd::open_with(true)?;
    let map = AnonMapping::new(pages.max(1) * PAGE_SIZE).map_err(PagerError::Mapping)?;
    let base = map.as_ptr() as usize;
    uffd.register(base, map.len())?;
    let probe = Arc::new(crate::fault::self_serving::Probe { uffd, page: vec![0x5au8; PAGE_SIZE] });
    let id = crate::fault::self_serving::register_probe(base, map.len(), probe)?;
    let timed = time_first_touches(&map, pages);
    crate::fault::self_serving::unregister(id);
    timed
}

/// A 4 KiB loopback TCP ping-pong where both ends busy-wait for data as the pager and the
/// memory server do (`spin_us`, non-blocking reads with `SocketMode`): the network floor
/// without any sleep or wake-up.
pub fn tcp_rtt_4k_spinning(round_trips: u32, spin_us: u64) -> std::io::Result<FaultLatency> {
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    let spin = Duration::from_micros(spin_us);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut mode = krak_client::SocketMode::default();
        let mut buf = vec![0u8; PAGE_SIZE];
        loop {
            if mode.read_exact_spinning(&s, &mut buf, spin).is_err() {
                return Ok(());
            }
            mode.write_all(&s, &buf)?;
        }
    });
    let c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let mut mode = krak_client::SocketMode::default();
    let mut buf = vec![7u8; PAGE_SIZE];
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("static bounds");
    let warmup = round_trips / 10;
    for i in 0..round_trips + warmup {
        let t = Instant::now();
        mode.write_all(&c, &buf)?;
        mode.read_exact_spinning(&c, &mut buf, spin)?;
        if i >= warmup {
            hist.saturating_record(t.elapsed().as_nanos().max(1) as u64);
        }
    }
    drop(c);
    echo.join().map_err(|_| std::io::Error::other("echo thread panicked"))??;
    Ok(FaultLatency {
        samples: hist.len(),
        p50_us: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1000.0,
    })
}
