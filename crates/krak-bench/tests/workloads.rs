//! Workloads on plain RAM, in-process and in a worker child: every read verifies, and the
//! verification can fail.

use krak_bench::workload::{run_workload, RunLength, Runner};
use krak_bench::{spawn_worker, Backend, LocalRegion, Region, WorkerArgs, Workload, PAGE_SIZE_BYTES};

const REGION_BYTES: usize = 16 << 20;

fn limits() -> RunLength {
    RunLength { max_ops: Some(300_000), duration_ms: 2_000 }
}

#[test]
fn every_workload_runs_clean_on_local_memory() {
    for workload in Workload::ALL {
        let region = LocalRegion::new(REGION_BYTES).unwrap();
        let r = run_workload(&region, workload, 42, limits(), true, &[], 1).unwrap();
        println!(
            "{workload}: {} ops, {:.0} ops/s, p50 {:.3} us, p99 {:.3} us, fill {} ms, check {} ms",
            r.ops, r.ops_per_s, r.p50_us, r.p99_us, r.fill_ms, r.final_check_ms
        );
        assert_eq!(r.mismatches, 0, "{workload}");
        assert!(r.ops > 0 && r.ops <= 300_000);
        let words = (REGION_BYTES / 8) as u64;
        assert!(r.verified_ops >= words, "final check covers every word");
        assert_eq!(r.region_bytes, REGION_BYTES as u64);
    }
}

#[test]
fn several_threads_run_one_workload_clean_and_their_checks_still_catch_corruption() {
    for workload in Workload::ALL {
        let region = LocalRegion::new(REGION_BYTES).unwrap();
        let r = run_workload(&region, workload, 42, limits(), true, &[], 4).unwrap();
        assert_eq!(r.mismatches, 0, "{workload}");
        assert!(r.ops > 0 && r.ops <= 300_000, "{workload}: {} ops", r.ops);
        assert!(r.verified_ops >= (REGION_BYTES / 8) as u64, "final check covers every word");
    }
    // Every thread checks its own pages: a page spoiled under any of them is found.
    let region = LocalRegion::new(REGION_BYTES).unwrap();
    let mut runner = Runner::new(&region, 9).unwrap();
    runner.fill();
    for page in 0..8 {
        corrupt_page(&region, page, 0x5a);
    }
    let pages = runner.pages();
    let (r, _) =
        runner.run_threads(Workload::SeqRead, RunLength { max_ops: Some(pages * 2), duration_ms: 10_000 }, 4).unwrap();
    assert!(r.mismatches >= 8, "{} mismatches", r.mismatches);
}

fn corrupt_page(region: &LocalRegion, page: usize, value: u8) {
    assert!((page + 1) * PAGE_SIZE_BYTES <= region.len());
    // SAFETY: the page is inside the live mapping and nothing else accesses it now.
    unsafe { region.as_mut_ptr().add(page * PAGE_SIZE_BYTES).write_bytes(value, PAGE_SIZE_BYTES) };
}

#[test]
fn a_corrupted_page_is_detected_by_reads() {
    let region = LocalRegion::new(REGION_BYTES).unwrap();
    let mut runner = Runner::new(&region, 7).unwrap();
    runner.fill();
    corrupt_page(&region, 3, 0);
    corrupt_page(&region, 100, 0xAB);
    let pages = runner.pages();
    let r = runner.run(Workload::SeqRead, RunLength { max_ops: Some(pages), duration_ms: 60_000 }).unwrap().0;
    assert_eq!(r.ops, pages);
    assert_eq!(r.mismatches, 2, "one read per page, two bad pages");
    let (verified, mismatches) = runner.final_check();
    assert_eq!(verified, (REGION_BYTES / 8) as u64);
    assert_eq!(mismatches, 2 * (PAGE_SIZE_BYTES / 8) as u64);
}

#[test]
fn a_lost_write_is_detected_by_the_final_check() {
    let region = LocalRegion::new(REGION_BYTES).unwrap();
    let mut runner = Runner::new(&region, 9).unwrap();
    runner.fill();
    // Snapshot the filled region, write for a while, then bring back one stale page, like
    // a pager that dropped a dirty page and re-fetched the old copy.
    let len = region.len();
    // SAFETY: the mapping is live for `len` bytes and not written during this borrow.
    let snapshot = unsafe { std::slice::from_raw_parts(region.as_mut_ptr(), len) }.to_vec();
    let r = runner.run(Workload::RandRw, limits()).unwrap().0;
    assert_eq!(r.mismatches, 0);
    assert_eq!(runner.final_check().1, 0);
    let stale_pages = (0..len / PAGE_SIZE_BYTES)
        .filter(|p| {
            let range = p * PAGE_SIZE_BYTES..(p + 1) * PAGE_SIZE_BYTES;
            // SAFETY: as above; the range is inside the mapping.
            let now = unsafe { std::slice::from_raw_parts(region.as_mut_ptr(), len) };
            now[range.clone()] != snapshot[range]
        })
        .take(1)
        .collect::<Vec<_>>();
    let page = stale_pages[0];
    // SAFETY: the page is inside the mapping; nothing else accesses it.
    unsafe {
        region
            .as_mut_ptr()
            .add(page * PAGE_SIZE_BYTES)
            .copy_from_nonoverlapping(snapshot[page * PAGE_SIZE_BYTES..].as_ptr(), PAGE_SIZE_BYTES)
    };
    let (_, mismatches) = runner.final_check();
    assert!(mismatches >= 1, "stale page {page} must be detected");
}

#[test]
fn worker_child_runs_local_and_reports_json() {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_krak-bench-worker"));
    let mut args = WorkerArgs::new(Backend::Local, Workload::RandRw, 8 << 20, 500);
    args.max_ops = Some(100_000);
    args.seed = 5;
    let r = spawn_worker(exe, &args).unwrap();
    println!("child: {r:?}");
    assert_eq!(r.workload, Workload::RandRw);
    assert_eq!(r.mismatches, 0);
    assert!(r.ops > 0);
}

#[test]
fn worker_krak_hook_error_is_reported() {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_krak-bench-worker"));
    let args = WorkerArgs::new(Backend::Krak, Workload::RandRead, 8 << 20, 100);
    let err = spawn_worker(exe, &args).unwrap_err();
    assert!(format!("{err:#}").contains("exited"), "{err:#}");
}

#[test]
fn worker_args_round_trip_through_clap() {
    use clap::Parser;
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: WorkerArgs,
    }
    let mut args = WorkerArgs::new(Backend::Swap, Workload::SeqRead, 1 << 30, 5_000);
    args.cgroup = Some("/sys/fs/cgroup/memory/krak-bench-x".into());
    args.local_bytes = Some(256 << 20);
    args.servers = vec!["127.0.0.1:7000".into(), "127.0.0.1:7001".into()];
    args.max_ops = Some(10);
    args.skip_final_check = true;
    let parsed = Cli::try_parse_from(std::iter::once("x".to_string()).chain(args.to_args())).unwrap();
    assert_eq!(parsed.args, args);
}
