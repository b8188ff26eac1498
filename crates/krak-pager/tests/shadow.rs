//! Random reads and writes through the pager against a shadow copy, with real memory
//! servers on loopback; every test checks page contents.

mod common;

use std::sync::Arc;

use common::*;
use krak_pager::{FaultMode, PAGE_SIZE};
use rand::{Rng, SeedableRng};

const REGION_BYTES: u64 = 32 << 20;

fn random_workload(budget_fraction: f64, ops: usize) {
    random_workload_in(FaultMode::Threads, budget_fraction, ops)
}

fn random_workload_in(mode: FaultMode, budget_fraction: f64, ops: usize) {
    let servers = servers(3, 64 << 20);
    let budget = (REGION_BYTES as f64 * budget_fraction) as u64;
    let region = Arc::new(region_in(mode, &servers, REGION_BYTES, budget));
    let sampler = ResidentSampler::start(region.clone());
    let words = REGION_BYTES as usize / 8;
    let mut shadow = vec![0u64; words];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut mismatches = 0;
    for _ in 0..ops {
        let i = rng.gen_range(0..words);
        if rng.gen_bool(0.5) {
            let v = rng.gen();
            write_u64(&region, i * 8, v);
            shadow[i] = v;
        } else if read_u64(&region, i * 8) != shadow[i] {
            mismatches += 1;
        }
    }
    assert_eq!(mismatches, 0, "reads during the run differ from the shadow");
    assert_eq!(verify_all(&region, &shadow), 0, "pages differ from the shadow at the end");
    let (peak, over) = sampler.finish();
    let stats = region.stats();
    eprintln!("budget {budget_fraction}: peak resident {peak} of budget {} ; {stats:?}", region.local_budget_bytes());
    assert_eq!(over, 0, "resident set exceeded the budget");
    assert!(stats.remote_reads > 0 && stats.remote_writes > 0, "pages really went remote and came back");
    assert_eq!(stats.failed_faults, 0);
    drop(region);
    for s in &servers {
        assert_eq!(s.stats().lent_bytes, 0, "dropping the region gives back every remote byte");
    }
}

#[test]
fn random_rw_at_1_percent_budget() {
    random_workload(0.01, 20_000);
}

#[test]
fn random_rw_at_10_percent_budget() {
    random_workload(0.10, 40_000);
}

#[test]
fn random_rw_at_50_percent_budget() {
    random_workload(0.50, 40_000);
}

#[test]
fn self_serving_random_rw_at_1_and_10_percent_budget() {
    random_workload_in(FaultMode::Sigbus, 0.01, 20_000);
    random_workload_in(FaultMode::Sigbus, 0.10, 40_000);
}

#[test]
fn four_threads_fault_at_once() {
    four_threads_in(FaultMode::Threads);
}

#[test]
fn four_self_serving_threads_fault_at_once() {
    four_threads_in(FaultMode::Sigbus);
}

fn four_threads_in(mode: FaultMode) {
    let servers = servers(3, 64 << 20);
    let region = Arc::new(region_in(mode, &servers, REGION_BYTES, REGION_BYTES / 10));
    let sampler = ResidentSampler::start(region.clone());
    let pages = REGION_BYTES as usize / PAGE_SIZE;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let region = region.clone();
            std::thread::spawn(move || {
                // Thread t owns the pages p with p % 4 == t, so its shadow is its own.
                let mine: Vec<usize> = (0..pages).filter(|p| p % 4 == t as usize).collect();
                let mut shadow = vec![0u64; mine.len()];
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                let mut bad = 0;
                for _ in 0..10_000 {
                    let k = rng.gen_range(0..mine.len());
                    let offset = mine[k] * PAGE_SIZE + 8 * (k % 512);
                    if rng.gen_bool(0.5) {
                        let v = rng.gen::<u64>() | 1;
                        write_u64(&region, offset, v);
                        shadow[k] = v;
                    } else if read_u64(&region, offset) != shadow[k] {
                        bad += 1;
                    }
                }
                for (k, page) in mine.iter().enumerate() {
                    if read_u64(&region, page * PAGE_SIZE + 8 * (k % 512)) != shadow[k] {
                        bad += 1;
                    }
                }
                bad
            })
        })
        .collect();
    let bad: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let (_, over) = sampler.finish();
    assert_eq!(bad, 0, "a thread read back something it did not write");
    assert_eq!(over, 0, "resident set exceeded the budget");
}

#[test]
fn budget_shrinks_and_grows_mid_run() {
    budget_changes_in(FaultMode::Threads);
}

#[test]
fn budget_shrinks_and_grows_mid_run_self_serving() {
    budget_changes_in(FaultMode::Sigbus);
}

fn budget_changes_in(mode: FaultMode) {
    let servers = servers(2, 64 << 20);
    let region = Arc::new(region_in(mode, &servers, REGION_BYTES, REGION_BYTES / 2));
    let sampler = ResidentSampler::start(region.clone());
    let words = REGION_BYTES as usize / 8;
    let mut shadow = vec![0u64; words];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for (phase, fraction) in [0.5, 0.05, 0.3, 0.02, 0.6].into_iter().enumerate() {
        region.set_local_budget((REGION_BYTES as f64 * fraction) as u64).unwrap();
        assert!(
            region.sample_residency().unwrap().kernel_resident_bytes <= region.local_budget_bytes(),
            "shrinking evicts at once (phase {phase})"
        );
        for _ in 0..10_000 {
            let i = rng.gen_range(0..words);
            let v = rng.gen();
            write_u64(&region, i * 8, v);
            shadow[i] = v;
            let j = rng.gen_range(0..words);
            assert_eq!(read_u64(&region, j * 8), shadow[j], "phase {phase}");
        }
    }
    assert_eq!(verify_all(&region, &shadow), 0);
    let (_, over) = sampler.finish();
    assert_eq!(over, 0, "resident set exceeded the budget in force");
}

#[test]
fn sequential_scan_is_prefetched() {
    let servers = servers(3, 64 << 20);
    let region = region(&servers, REGION_BYTES, REGION_BYTES / 4);
    let pages = REGION_BYTES as usize / PAGE_SIZE;
    for p in 0..pages {
        write_u64(&region, p * PAGE_SIZE, p as u64 * 3 + 1);
    }
    for _ in 0..2 {
        for p in 0..pages {
            assert_eq!(read_u64(&region, p * PAGE_SIZE), p as u64 * 3 + 1);
        }
    }
    let stats = region.stats();
    eprintln!("{stats:?}");
    assert!(stats.prefetched > pages as u64, "the scans were prefetched: {stats:?}");
    assert!(stats.prefetch_hits > pages as u64 / 2, "prefetched pages were used: {stats:?}");
    // Both the fill (never-written pages come in windows) and the read-backs (prefetch)
    // take far fewer faults than pages: 3 x pages touched in all.
    assert!(stats.missing_faults < pages as u64 / 4, "far fewer faults than pages touched: {stats:?}");
    assert_eq!(stats.zero_fills, pages as u64, "every page was zero-filled once: {stats:?}");
}

#[test]
fn clean_pages_are_dropped_without_write_back() {
    let servers = servers(2, 64 << 20);
    let region = region(&servers, REGION_BYTES, REGION_BYTES / 8);
    let pages = REGION_BYTES as usize / PAGE_SIZE;
    for p in 0..pages {
        write_u64(&region, p * PAGE_SIZE + 16, !(p as u64));
    }
    // let the first round of write-backs finish, then only read
    std::thread::sleep(std::time::Duration::from_millis(200));
    let written_before = region.stats().remote_writes;
    for _ in 0..2 {
        for p in (0..pages).rev() {
            assert_eq!(read_u64(&region, p * PAGE_SIZE + 16), !(p as u64));
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let stats = region.stats();
    // Only pages still dirty from the fill may be written; read-only passes write nothing more.
    assert!(
        stats.remote_writes <= written_before + REGION_BYTES / 8 / PAGE_SIZE as u64,
        "read-only passes wrote pages back: {stats:?} (before: {written_before})"
    );
    assert!(stats.evictions_clean > pages as u64, "{stats:?}");
}

#[test]
fn a_full_rack_is_a_clear_error() {
    let servers = servers(2, 4 * SLAB_BYTES);
    let started = std::time::Instant::now();
    let err = krak_pager::FarMemory::new(krak_pager::PagerConfig {
        region_bytes: 16 * SLAB_BYTES,
        local_budget_bytes: SLAB_BYTES,
        servers: addrs(&servers),
        ..Default::default()
    })
    .expect_err("a region larger than the rack must be refused");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "no hang");
    let msg = err.to_string();
    assert!(msg.contains("rack is full"), "{msg}");
    for s in &servers {
        assert_eq!(s.stats().lent_bytes, 0, "partial allocations are given back");
    }
}
