//! Shared helpers of the pager's integration tests: real memory servers on loopback and
//! a region accessed through raw pointers against a shadow copy.

#![allow(dead_code)]

pub mod oracle;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use krak_memserver::{spawn, ServerConfig, ServerHandle};
use krak_pager::{FarMemory, FaultMode, PagerConfig, PAGE_SIZE};

pub const SLAB_BYTES: u64 = 1 << 20;

pub fn servers(n: usize, capacity_bytes: u64) -> Vec<ServerHandle> {
    servers_with(n, capacity_bytes, |_| {})
}

/// Like [`servers`], each config changed by `tune` first.
pub fn servers_with(n: usize, capacity_bytes: u64, tune: impl Fn(&mut ServerConfig)) -> Vec<ServerHandle> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KRAK_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    (0..n)
        .map(|_| {
            let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), capacity_bytes);
            cfg.slab_size_bytes = SLAB_BYTES;
            tune(&mut cfg);
            spawn(cfg).expect("memory server starts")
        })
        .collect()
}

pub fn addrs(servers: &[ServerHandle]) -> Vec<SocketAddr> {
    servers.iter().map(|s| s.addr()).collect()
}

pub fn region(servers: &[ServerHandle], region_bytes: u64, budget_bytes: u64) -> FarMemory {
    region_in(FaultMode::Threads, servers, region_bytes, budget_bytes)
}

pub fn region_in(mode: FaultMode, servers: &[ServerHandle], region_bytes: u64, budget_bytes: u64) -> FarMemory {
    FarMemory::new(PagerConfig {
        region_bytes,
        local_budget_bytes: budget_bytes,
        servers: addrs(servers),
        fault_mode: mode,
        ..Default::default()
    })
    .expect("region")
}

/// Reads the u64 at `offset` of the region.
pub fn read_u64(region: &FarMemory, offset: usize) -> u64 {
    assert!(offset + 8 <= region.len() && offset.is_multiple_of(8));
    // SAFETY: in bounds and aligned (asserted); the pager serves the page if it is absent.
    unsafe { (region.as_ptr().add(offset) as *const u64).read_volatile() }
}

pub fn write_u64(region: &FarMemory, offset: usize, value: u64) {
    assert!(offset + 8 <= region.len() && offset.is_multiple_of(8));
    // SAFETY: in bounds and aligned (asserted); the pager serves the page if it is absent.
    unsafe { (region.as_ptr().add(offset) as *mut u64).write_volatile(value) }
}

/// Compares every page of the region with the shadow, counting pages that differ.
pub fn verify_all(region: &FarMemory, shadow: &[u64]) -> usize {
    let words_per_page = PAGE_SIZE / 8;
    let mut bad = 0;
    for page in 0..shadow.len() / words_per_page {
        let ok = (0..words_per_page).all(|w| {
            let i = page * words_per_page + w;
            read_u64(region, i * 8) == shadow[i]
        });
        if !ok {
            bad += 1;
        }
    }
    bad
}

/// Samples the kernel's resident set of the region until stopped; returns the peak.
pub struct ResidentSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    over: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ResidentSampler {
    /// `limit` returns the budget in force; a sample above it (plus 1%) is counted.
    pub fn start(region: Arc<FarMemory>) -> ResidentSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let over = Arc::new(AtomicU64::new(0));
        let (s, p, o) = (stop.clone(), peak.clone(), over.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let sample = region.sample_residency().unwrap();
                let (budget, resident) = (sample.budget_bytes, sample.kernel_resident_bytes);
                assert!(resident <= sample.counted_resident_bytes, "the kernel maps no page the pager does not count");
                p.fetch_max(resident, Ordering::Relaxed);
                if resident > budget + budget / 100 {
                    o.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        });
        ResidentSampler { stop, peak, over, thread: Some(thread) }
    }

    /// Stops sampling: (peak resident bytes, samples over budget).
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (self.peak.load(Ordering::Relaxed), self.over.load(Ordering::Relaxed))
    }
}
