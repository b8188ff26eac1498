//! Live moves: drain a memory server while application threads keep reading and writing
//! the region against shadow copies; every page must survive and the server must end empty.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use krak_pager::{FarMemory, FaultMode, PagerConfig, PAGE_SIZE};
use rand::{Rng, SeedableRng};

const REGION_BYTES: u64 = 32 << 20;
const THREADS: usize = 2;

/// With `push`, the drained server copies its chunks to the others itself; without, the
/// servers refuse to push and the pager relays every page.
fn drain_under_load(mode: FaultMode, push: bool) {
    let servers = servers_with(4, 64 << 20, |c| c.push = push);
    let first_three: Vec<_> = servers[..3].iter().map(|s| s.addr()).collect();
    let region = Arc::new(
        FarMemory::new(PagerConfig {
            region_bytes: REGION_BYTES,
            local_budget_bytes: REGION_BYTES / 4,
            servers: first_three,
            fault_mode: mode,
            ..Default::default()
        })
        .unwrap(),
    );
    let pages = REGION_BYTES as usize / PAGE_SIZE;
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (region, stop, ops) = (region.clone(), stop.clone(), ops.clone());
            std::thread::spawn(move || {
                // Thread t owns pages p with p % THREADS == t: its shadow is its own.
                let mine: Vec<usize> = (0..pages).filter(|p| p % THREADS == t).collect();
                let mut shadow = vec![0u64; mine.len()];
                for (k, p) in mine.iter().enumerate() {
                    shadow[k] = (*p as u64) << 8 | 1;
                    write_u64(&region, p * PAGE_SIZE + 64, shadow[k]);
                }
                let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                let mut bad = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let k = rng.gen_range(0..mine.len());
                    let at = mine[k] * PAGE_SIZE + 64;
                    if rng.gen_bool(0.5) {
                        shadow[k] = rng.gen::<u64>() | 1;
                        write_u64(&region, at, shadow[k]);
                    } else if read_u64(&region, at) != shadow[k] {
                        bad += 1;
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                for (k, p) in mine.iter().enumerate() {
                    if read_u64(&region, p * PAGE_SIZE + 64) != shadow[k] {
                        bad += 1;
                    }
                }
                bad
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(500));
    let rate = |d: Duration| {
        let before = ops.load(Ordering::Relaxed);
        std::thread::sleep(d);
        (ops.load(Ordering::Relaxed) - before) as f64 / d.as_secs_f64()
    };
    let undisturbed = rate(Duration::from_millis(700));

    let drained = servers[0].addr();
    let targets: Vec<_> = servers[1..].iter().map(|s| s.addr()).collect();
    let during = {
        let ops = ops.clone();
        let sampling = Arc::new(AtomicBool::new(true));
        let s2 = sampling.clone();
        let sampler = std::thread::spawn(move || {
            let start = (Instant::now(), ops.load(Ordering::Relaxed));
            while s2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            (ops.load(Ordering::Relaxed) - start.1) as f64 / start.0.elapsed().as_secs_f64()
        });
        let report = region.drain_server(drained, &targets).expect("drain");
        sampling.store(false, Ordering::Relaxed);
        (report, sampler.join().unwrap())
    };
    let (report, during_rate) = during;
    stop.store(true, Ordering::Relaxed);
    let bad: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();

    let stats = region.stats();
    eprintln!(
        "{mode:?}: drained {} chunks, {} MiB in {} ms ({:.0} MiB/s); workload {:.0} ops/s undisturbed, {:.0} ops/s during the drain; max fault {:.0} us",
        report.chunks_moved,
        report.bytes_copied >> 20,
        report.elapsed_ms,
        report.bytes_copied as f64 / (1 << 20) as f64 / (report.elapsed_ms.max(1) as f64 / 1000.0),
        undisturbed,
        during_rate,
        stats.fault_max_us
    );
    assert_eq!(bad, 0, "a page read back wrong during or after the drain");
    assert!(report.chunks_moved > 0 && report.pages_copied > 0, "{report:?}");
    assert!(region.chunk_servers().iter().all(|a| *a != drained), "a chunk still lives on the drained server");
    assert_eq!(servers[0].stats().lent_bytes, 0, "the drained server ends with nothing lent");
    assert!(servers[3].stats().lent_bytes > 0, "the server that was not in the region took chunks");
    assert_eq!(stats.failed_faults, 0);
    let refused = servers[0].stats().errors;
    // Without pushes, one refused move per target (up to 4 pushes in flight each): later
    // moves to it relay at once.
    let ok = if push { refused == 0 } else { refused > 0 && refused <= 4 * targets.len() as u64 };
    assert!(ok, "push {push}: {refused} refusals on the drained server");
    drop(region);
    for s in &servers {
        assert_eq!(s.stats().lent_bytes, 0, "dropping the region gives every slab back, moved or not");
    }
}

#[test]
fn drain_a_server_under_a_verified_workload_handler_threads() {
    drain_under_load(FaultMode::Threads, true);
}

#[test]
fn drain_a_server_under_a_verified_workload_self_serving() {
    drain_under_load(FaultMode::Sigbus, true);
}

#[test]
fn drain_relays_the_pages_when_servers_do_not_push() {
    drain_under_load(FaultMode::Sigbus, false);
}
