//! Physical floors measured in the same run as the backends: what one 4 KiB page costs
//! over loopback TCP, and (optionally) copying it in memory. The userfaultfd fault cost is
//! filled in by the pager crate.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::workload::PAGE_SIZE_BYTES;
use crate::BenchError;

/// Floors a far-memory access cannot beat on this machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Floors {
    /// Median loopback TCP round trip of a 4 KiB message (TCP_NODELAY).
    pub tcp_rtt_4k_p50_us: f64,
    /// 99th percentile of the same.
    pub tcp_rtt_4k_p99_us: f64,
    /// Median cost of a userfaultfd fault served from local memory (set by the pager).
    pub uffd_fault_p50_us: Option<f64>,
    /// 99th percentile of the same.
    pub uffd_fault_p99_us: Option<f64>,
    /// Median cost of copying 4 KiB in memory.
    pub memcpy_4k_p50_us: Option<f64>,
    /// Median loopback 4 KiB round trip when both ends busy-wait instead of sleeping (set
    /// by the pager): the network floor without scheduler wake-ups.
    #[serde(default)]
    pub tcp_rtt_4k_spinning_p50_us: Option<f64>,
    /// Median userfaultfd fault served from local memory on the faulting thread itself
    /// (SIGBUS, as krak's default fault mode serves them; set by the pager): no wake-up.
    #[serde(default)]
    pub uffd_fault_self_served_p50_us: Option<f64>,
}

/// Latency percentiles of a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// Samples taken (after warm-up).
    pub samples: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
}

fn stats(hist: &Histogram<u64>) -> LatencyStats {
    LatencyStats {
        samples: hist.len(),
        p50_us: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1000.0,
    }
}

fn histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).map_err(|e| BenchError::Invalid(format!("histogram: {e}")))
}

/// Loopback TCP ping-pong of 4 KiB messages between two threads: `warmup` untimed round
/// trips, then `round_trips` timed ones.
pub fn tcp_rtt_4k(warmup: u32, round_trips: u32) -> Result<LatencyStats, BenchError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e| BenchError::io(what, e)
    };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind loopback"))?;
    let addr = listener.local_addr().map_err(io("local_addr"))?;
    let total = warmup + round_trips;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut sock, _) = listener.accept()?;
        sock.set_nodelay(true)?;
        let mut buf = vec![0u8; PAGE_SIZE_BYTES];
        for _ in 0..total {
            sock.read_exact(&mut buf)?;
            sock.write_all(&buf)?;
        }
        Ok(())
    });
    let mut sock = TcpStream::connect(addr).map_err(io("connect loopback"))?;
    sock.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
    let mut hist = histogram()?;
    let out = vec![0x5Au8; PAGE_SIZE_BYTES];
    let mut back = vec![0u8; PAGE_SIZE_BYTES];
    for i in 0..total {
        let start = Instant::now();
        sock.write_all(&out).map_err(io("send"))?;
        sock.read_exact(&mut back).map_err(io("receive"))?;
        if i >= warmup {
            hist.saturating_record(start.elapsed().as_nanos().max(1) as u64);
        }
    }
    server.join().map_err(|_| BenchError::Invalid("echo thread panicked".into()))?.map_err(io("echo thread"))?;
    Ok(stats(&hist))
}

/// Copies 4 KiB between two buffers (cycling through 64 MiB so the source is not cached).
pub fn memcpy_4k(copies: u32) -> Result<LatencyStats, BenchError> {
    const POOL_BYTES: usize = 64 << 20;
    let src = vec![0xA5u8; POOL_BYTES];
    let mut dst = vec![0u8; PAGE_SIZE_BYTES];
    let mut hist = histogram()?;
    let pages = POOL_BYTES / PAGE_SIZE_BYTES;
    for i in 0..copies as usize {
        let off = (i.wrapping_mul(7919) % pages) * PAGE_SIZE_BYTES;
        let start = Instant::now();
        dst.copy_from_slice(&src[off..off + PAGE_SIZE_BYTES]);
        std::hint::black_box(&mut dst);
        hist.saturating_record(start.elapsed().as_nanos().max(1) as u64);
    }
    Ok(stats(&hist))
}

/// Measures every limit this crate can (TCP round trip, memcpy); the uffd fields are left
/// `None` for the pager to fill.
pub fn measure() -> Result<Floors, BenchError> {
    let rtt = tcp_rtt_4k(1_000, 5_000)?;
    let copy = memcpy_4k(20_000)?;
    Ok(Floors {
        tcp_rtt_4k_p50_us: rtt.p50_us,
        tcp_rtt_4k_p99_us: rtt.p99_us,
        uffd_fault_p50_us: None,
        uffd_fault_p99_us: None,
        memcpy_4k_p50_us: Some(copy.p50_us),
        tcp_rtt_4k_spinning_p50_us: None,
        uffd_fault_self_served_p50_us: None,
    })
}
