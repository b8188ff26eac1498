//! What one 4 KiB read from a memory server on loopback costs in CPU (both ends: the server
//! runs in this process) and in time, for each way the two ends wait. BENCHMARKS.md, issue 13:
//!
//!   cargo run --release -p krak-memserver --example read_cpu
//!
//! The client sleeps in `recv` (spin 0) or busy-waits 50 us (the pager's default); the server
//! sleeps wherever the scheduler wakes it, sleeps on the CPU its requests arrive on (the
//! default), or spins 50 us. Each configuration runs three times, alternating.

use std::time::Instant;

use krak_client::{ConnectOptions, Connection};
use krak_memserver::ServerConfig;
use krak_proto::{PageRef, PAGE_SIZE};

const READS: u32 = 20_000;

/// CPU time of this process (every thread: client and server), in microseconds.
fn cpu_us() -> f64 {
    // SAFETY: getrusage writes only the struct passed.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let t = |v: libc::timeval| v.tv_sec as f64 * 1e6 + v.tv_usec as f64;
    t(r.ru_utime) + t(r.ru_stime)
}

/// (wall us, CPU us) per read.
fn run(client_spin_us: u64, follow_cpu: bool, server_spin_us: u64) -> (f64, f64) {
    let config = ServerConfig {
        slab_size_bytes: 1 << 20,
        follow_cpu,
        spin_us: server_spin_us,
        ..ServerConfig::new("127.0.0.1:0".parse().unwrap(), 1 << 20)
    };
    let server = krak_memserver::spawn(config).expect("memory server");
    let opts = ConnectOptions { client_id: 1, timeout_ms: 5_000, spin_us: client_spin_us, secret: None };
    let mut conn = Connection::connect(server.addr(), opts).expect("connect");
    let slab = conn.alloc_slab().expect("slab");
    let page = PageRef { slab, page: 0 };
    let data = vec![0x5au8; PAGE_SIZE];
    conn.write_pages(&[(page, &data)]).expect("write");
    let mut out = vec![0u8; PAGE_SIZE];
    for _ in 0..1000 {
        conn.read_pages(&[page], &mut out).expect("read");
    }
    let (t0, c0) = (Instant::now(), cpu_us());
    for _ in 0..READS {
        conn.read_pages(&[page], &mut out).expect("read");
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64() * 1e6, cpu_us() - c0);
    assert_eq!(out, data, "the page read back is the page written");
    drop(conn);
    server.shutdown().expect("shutdown");
    (wall / f64::from(READS), cpu / f64::from(READS))
}

fn main() {
    let configs = [
        ("client sleeps, server sleeps anywhere", 0, false, 0),
        ("client sleeps, server sleeps on the request's CPU", 0, true, 0),
        ("client spins, server sleeps anywhere", 50, false, 0),
        ("client spins, server sleeps on the request's CPU (default)", 50, true, 0),
        ("client spins, server spins 50 us (the old default)", 50, false, 50),
    ];
    let mut results = vec![Vec::new(); configs.len()];
    for _ in 0..3 {
        for (i, &(_, client, follow, server)) in configs.iter().enumerate() {
            results[i].push(run(client, follow, server));
        }
    }
    println!("| how the ends wait | us per 4 KiB read (3 runs) | CPU us per read, both ends (3 runs) |");
    println!("|---|---|---|");
    for ((name, ..), r) in configs.iter().zip(&results) {
        let f = |v: Vec<f64>| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", ");
        println!("| {name} | {} | {} |", f(r.iter().map(|x| x.0).collect()), f(r.iter().map(|x| x.1).collect()));
    }
}
