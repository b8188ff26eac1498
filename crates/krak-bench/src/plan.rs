//! The bench plan (sizes, durations, what runs) and the driver that runs it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::report::{BenchReport, Failure, ResultRow, Skipped};
use crate::swap::{self, Availability, MemoryCgroup, Session, SwapFile, Zram};
use crate::worker::{spawn_worker, Backend, WorkerArgs};
use crate::workload::{Workload, PAGE_SIZE_BYTES};
use crate::BenchError;

/// A backend as it appears in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BenchBackend {
    /// Plain RAM, no limit.
    #[serde(rename = "local")]
    Local,
    /// The krak pager over memory servers.
    #[serde(rename = "krak")]
    Krak,
    /// Kernel swap to a file on disk, under a memory cgroup limit.
    #[serde(rename = "swap-disk")]
    SwapDisk,
    /// Kernel swap to zram, under a memory cgroup limit.
    #[serde(rename = "swap-zram")]
    SwapZram,
}

impl BenchBackend {
    /// Every backend, in report order.
    pub const ALL: [BenchBackend; 4] =
        [BenchBackend::Local, BenchBackend::Krak, BenchBackend::SwapDisk, BenchBackend::SwapZram];

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            BenchBackend::Local => "local",
            BenchBackend::Krak => "krak",
            BenchBackend::SwapDisk => "swap-disk",
            BenchBackend::SwapZram => "swap-zram",
        }
    }
}

impl fmt::Display for BenchBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the krak backend's far memory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KrakTarget {
    /// Memory servers, `host:port`.
    pub servers: Vec<String>,
    /// Pager options passed to each krak worker (`key=value`).
    pub options: Vec<String>,
    /// A rack controller that places the regions instead (`servers` is then empty).
    pub controller: Option<String>,
    /// Processes of the memory servers when they run on this host (their CPU is counted).
    pub server_pids: Vec<u32>,
}

/// What one bench runs.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchPlan {
    /// Region size of every run.
    pub region_bytes: u64,
    /// Timed phase of every run.
    pub duration_ms: u64,
    /// Local memory as fractions of the region (for krak, swap-disk, swap-zram).
    pub local_fractions: Vec<f64>,
    /// Workloads, each run on every backend.
    pub workloads: Vec<Workload>,
    /// Backends to run.
    pub backends: Vec<BenchBackend>,
    /// Seed of data and access sequences.
    pub seed: u64,
    /// Where the disk swap file goes.
    pub swap_file: PathBuf,
    /// Added to the cgroup limit for the worker's own memory (binary, heap, histogram);
    /// the `rand_rw` shadow (region / 512) is added on top.
    pub cgroup_overhead_bytes: u64,
    /// Measure the physical floors (TCP round trip, memcpy, local userfaultfd fault).
    pub measure_floors: bool,
    /// Threads running each workload at once (every backend alike).
    pub threads: usize,
}

impl BenchPlan {
    /// `--quick`: 256 MiB, 1.5 s per run. Measured on 2 cores: the 15 runs without krak
    /// take about 80 s with fills and checks; krak's 6 runs should keep it under 2 min.
    pub fn quick() -> Self {
        BenchPlan { region_bytes: 256 << 20, duration_ms: 1_500, ..Self::full() }
    }

    /// Default: 1 GiB, 5 s per run.
    pub fn full() -> Self {
        BenchPlan {
            region_bytes: 1 << 30,
            duration_ms: 5_000,
            local_fractions: vec![0.25, 0.5],
            workloads: Workload::ALL.to_vec(),
            backends: BenchBackend::ALL.to_vec(),
            seed: 1,
            swap_file: PathBuf::from(swap::DEFAULT_SWAP_FILE),
            cgroup_overhead_bytes: 4 << 20,
            measure_floors: true,
            threads: 1,
        }
    }

    /// Local memory for one fraction, rounded down to whole pages.
    pub fn local_bytes(&self, fraction: f64) -> u64 {
        let bytes = (self.region_bytes as f64 * fraction) as u64;
        bytes / PAGE_SIZE_BYTES as u64 * PAGE_SIZE_BYTES as u64
    }

    /// The cgroup limit for one fraction: local bytes + worker overhead + shadow.
    pub fn cgroup_limit_bytes(&self, fraction: f64) -> u64 {
        self.local_bytes(fraction) + self.cgroup_overhead_bytes + self.region_bytes / 512
    }

    /// Number of worker runs (local once per workload, the others once per fraction).
    pub fn run_count(&self) -> usize {
        self.backends
            .iter()
            .map(|b| if *b == BenchBackend::Local { 1 } else { self.local_fractions.len() })
            .sum::<usize>()
            * self.workloads.len()
    }

    fn worker_args(&self, backend: Backend, workload: Workload) -> WorkerArgs {
        let mut args = WorkerArgs::new(backend, workload, self.region_bytes, self.duration_ms);
        args.seed = self.seed;
        args.threads = self.threads;
        args
    }
}

/// Runs `plan`: the physical floors first, then every backend, each run in a child `exe bench-worker`.
/// A backend that cannot run is recorded in `skipped`, a run that fails in `failures`;
/// only a failure to restore the machine's state is an error. `log` gets progress lines.
pub fn run_bench(
    plan: &BenchPlan,
    exe: &Path,
    krak: Option<&KrakTarget>,
    mut log: impl FnMut(&str),
) -> Result<BenchReport, BenchError> {
    let mut report = BenchReport::new(plan.region_bytes, plan.duration_ms);
    report.threads = plan.threads;
    if plan.measure_floors {
        log("measuring the physical floors (loopback TCP 4 KiB round trip, memcpy)");
        match crate::floors::measure() {
            Ok(l) => report.floors = Some(l),
            Err(e) => log(&format!("limits: {e}")),
        }
    }
    let mut run = |report: &mut BenchReport, backend: BenchBackend, fraction: f64, args: WorkerArgs| {
        log(&format!(
            "{} on {backend} at {:.0}% local ({} MiB region)",
            args.workload,
            fraction * 100.0,
            plan.region_bytes >> 20
        ));
        match spawn_worker(exe, &args) {
            Ok(r) => {
                if r.mismatches > 0 {
                    log(&format!("  DATA MISMATCHES: {} of {}", r.mismatches, r.verified_ops));
                }
                log(&format!("  {:.0} ops/s, p50 {:.2} us, p99 {:.2} us", r.ops_per_s, r.p50_us, r.p99_us));
                report.results.push(ResultRow::new(backend, fraction, plan.local_bytes(fraction), r));
            }
            Err(e) => {
                log(&format!("  failed: {e}"));
                report.failures.push(Failure {
                    workload: args.workload,
                    backend,
                    local_fraction: fraction,
                    error: e.to_string(),
                });
            }
        }
    };
    for &backend in &plan.backends {
        match backend {
            BenchBackend::Local => {
                for &w in &plan.workloads {
                    run(&mut report, backend, 1.0, plan.worker_args(Backend::Local, w));
                }
            }
            BenchBackend::Krak => {
                let Some(target) = krak.filter(|t| !t.servers.is_empty() || t.controller.is_some()) else {
                    report.skipped.push(Skipped::new(backend, "no memory servers or controller given"));
                    continue;
                };
                for &f in &plan.local_fractions {
                    for &w in &plan.workloads {
                        let mut args = plan.worker_args(Backend::Krak, w);
                        args.local_bytes = Some(plan.local_bytes(f));
                        args.servers = target.servers.clone();
                        args.krak_options = target.options.clone();
                        args.krak_controller = target.controller.clone();
                        args.server_pids = target.server_pids.clone();
                        run(&mut report, backend, f, args);
                    }
                }
            }
            BenchBackend::SwapDisk | BenchBackend::SwapZram => {
                let swap_bytes = plan.region_bytes + (64 << 20);
                let avail = swap::availability(&plan.swap_file, swap_bytes);
                let avail = if backend == BenchBackend::SwapDisk { avail.disk } else { avail.zram };
                if let Availability::Skipped(reason) = avail {
                    report.skipped.push(Skipped::new(backend, &reason));
                    continue;
                }
                let _session = Session::begin(10_000)?;
                // Exactly one of these lives at a time: the device under test.
                let device = if backend == BenchBackend::SwapDisk {
                    SwapFile::enable(&plan.swap_file, swap_bytes).map(|d| (Some(d), None))
                } else {
                    Zram::enable(swap_bytes).map(|z| (None, Some(z)))
                };
                let (disk, zram) = match device {
                    Ok(d) => d,
                    Err(e) => {
                        report.skipped.push(Skipped::new(backend, &e.to_string()));
                        continue;
                    }
                };
                for &f in &plan.local_fractions {
                    for &w in &plan.workloads {
                        let name = format!("{}-{:.0}", backend.name(), f * 100.0);
                        let cgroup = match MemoryCgroup::create(&name, plan.cgroup_limit_bytes(f)) {
                            Ok(c) => c,
                            Err(e) => {
                                report.skipped.push(Skipped::new(backend, &e.to_string()));
                                break;
                            }
                        };
                        let mut args = plan.worker_args(Backend::Swap, w);
                        args.cgroup = Some(cgroup.path().to_path_buf());
                        run(&mut report, backend, f, args);
                        drop(cgroup);
                    }
                }
                drop((disk, zram));
            }
        }
    }
    Ok(report)
}
