//! Where a remote fault's time goes, on this machine, in one run: the floors (a raw 4 KiB
//! loopback ping-pong with both ends spinning; a userfaultfd fault served from local memory
//! by a handler thread and by the faulting thread itself), one page read over the krak
//! protocol (handshake, MACs, CRCs) from an in-process memory server, and random reads of
//! a region at a 25% budget over `KRAK_PROBE_SERVERS` (default 1 and 3) in-process servers,
//! as the application sees each fault and as the pager times it. Every read is checked.
//!
//! `cargo run --release -p krak-pager --example fault_path`

use std::time::{Duration, Instant};

use krak_client::{ConnectOptions, Connection};
use krak_memserver::{spawn, ServerConfig, ServerHandle};
use krak_pager::{floors, FarMemory, FaultMode, PagerConfig, DEFAULT_SPIN_US, PAGE_SIZE};
use krak_proto::PageRef;

fn server() -> ServerHandle {
    let mut c = ServerConfig::new("127.0.0.1:0".parse().unwrap(), 4 << 30);
    c.slab_size_bytes = 16 << 20;
    spawn(c).expect("memory server starts")
}

fn us(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn protocol_round_trip() -> (f64, f64) {
    let s = server();
    let opts = ConnectOptions { client_id: 1, timeout_ms: 5_000, spin_us: DEFAULT_SPIN_US, secret: None };
    let mut conn = Connection::connect(s.addr(), opts).expect("connects");
    let slab = conn.alloc_slab().expect("slab");
    let pages: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; PAGE_SIZE]).collect();
    for (i, p) in pages.iter().enumerate() {
        conn.write_pages(&[(PageRef { slab, page: i as u32 }, p.as_slice())]).expect("write");
    }
    let mut out = vec![0u8; PAGE_SIZE];
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("static bounds");
    for i in 0..100_000u32 {
        let t = Instant::now();
        conn.read_pages(&[PageRef { slab, page: i % 64 }], &mut out).expect("read");
        h.saturating_record(t.elapsed().as_nanos() as u64);
        assert_eq!(out, pages[(i % 64) as usize], "page {} read back wrong", i % 64);
    }
    (us(&h, 0.5), us(&h, 0.99))
}

/// Random reads at a 25% budget: (faulting reads as the application saw them p50, p99;
/// the pager's own fault time p50, p99).
fn region_faults(servers: usize) -> (f64, f64, f64, f64) {
    let handles: Vec<ServerHandle> = (0..servers).map(|_| server()).collect();
    let region_bytes = 128u64 << 20;
    let region = FarMemory::new(PagerConfig {
        region_bytes,
        local_budget_bytes: region_bytes / 4,
        servers: handles.iter().map(|s| s.addr()).collect(),
        fault_mode: FaultMode::Sigbus,
        ..Default::default()
    })
    .expect("region");
    let pages = region_bytes as usize / PAGE_SIZE;
    let word = |p: usize| (p as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for p in 0..pages {
        // SAFETY: a word at the start of page `p`, inside the region; the pager serves it.
        unsafe { (region.as_ptr().add(p * PAGE_SIZE) as *mut u64).write_volatile(word(p)) };
    }
    region.reset_fault_latency();
    let before = region.stats().missing_faults;
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("static bounds");
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let (start, mut ops) = (Instant::now(), 0u64);
    while start.elapsed() < Duration::from_secs(3) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = x as usize % pages;
        let t = Instant::now();
        // SAFETY: as above.
        let v = unsafe { (region.as_ptr().add(p * PAGE_SIZE) as *const u64).read_volatile() };
        h.saturating_record(t.elapsed().as_nanos() as u64);
        assert_eq!(v, word(p), "page {p} read back wrong");
        ops += 1;
    }
    let stats = region.stats();
    // The faulting reads are the slowest ones: their quantile q sits at 1 - (1 - q) * share.
    let share = ((stats.missing_faults - before) as f64 / ops as f64).min(1.0);
    let at = |q: f64| us(&h, 1.0 - (1.0 - q) * share);
    (at(0.5), at(0.99), stats.fault_p50_us, stats.fault_p99_us)
}

fn main() {
    let raw = floors::tcp_rtt_4k_spinning(100_000, DEFAULT_SPIN_US).expect("ping-pong");
    let handler = floors::measure_local_fault(20_000).expect("local fault");
    let own = floors::measure_local_fault_self_served(20_000).expect("self-served fault");
    let (rtt50, rtt99) = protocol_round_trip();
    println!("raw 4 KiB ping-pong, both ends spinning: p50 {:.2} us, p99 {:.2} us", raw.p50_us, raw.p99_us);
    println!("krak protocol, one page read:           p50 {rtt50:.2} us, p99 {rtt99:.2} us");
    println!("local fault, handler thread:            p50 {:.2} us, p99 {:.2} us", handler.p50_us, handler.p99_us);
    println!("local fault, self-served (SIGBUS):      p50 {:.2} us, p99 {:.2} us", own.p50_us, own.p99_us);
    let counts: Vec<usize> = std::env::var("KRAK_PROBE_SERVERS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 3]);
    for n in counts {
        let (a50, a99, p50, p99) = region_faults(n.max(1));
        println!(
            "remote fault, {n} in-process server(s): application p50 {a50:.1} us, p99 {a99:.1} us; pager p50 {p50:.1} us, p99 {p99:.1} us"
        );
    }
}
