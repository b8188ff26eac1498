//! `krak bench`: krak side by side with local RAM and kernel swap, in one run.

use std::path::PathBuf;

use anyhow::Context;
use krak_bench::plan::BenchBackend;
use krak_bench::{BenchPlan, KrakTarget, Region, WorkerArgs, Workload};
use krak_pager::{FarMemory, PagerConfig};
use krak_proto::units::ByteSize;

use crate::pager_opts::{self, FaultModeArg};
use crate::rack::LocalRack;

/// Measure krak against plain RAM and Linux kernel swap, side by side, in one run.
///
/// Runs the access patterns rand_read (random 4 KiB reads), rand_rw (random reads and
/// writes), seq_read (sequential scan) and thrash (every page touched is read and
/// rewritten, so every eviction writes back) over one region, with the local memory limited to
/// 25% and 50% of it, on: local (plain RAM, no limit), krak (the pager, memory servers on
/// loopback), swap-disk and swap-zram (kernel swap to a swap file / to zram under a memory
/// cgroup with the same limit; root only, skipped with the reason otherwise). Every read is
/// checked against what was written. Reports the CPU each run took per operation and per
/// fault (the workload's thread, the pager's threads, the loopback memory servers). Also
/// measures the physical limits in the same run: the 4 KiB loopback TCP round trip and a
/// userfaultfd fault served from local memory.
///
/// Swap and cgroups are set up only for the run and removed afterwards, also on Ctrl-C.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  krak bench --quick\n  krak bench --json bench.json --markdown\n  \
                        krak bench --backends local,krak --workloads rand_read")]
pub struct BenchArgs {
    /// Small and short (256 MiB, 1.5 s per run): about 3 minutes in all.
    #[arg(long)]
    quick: bool,
    /// Region size (default 1GiB, or 256MiB with --quick).
    #[arg(long, value_name = "SIZE")]
    region: Option<ByteSize>,
    /// Timed phase of each run in milliseconds.
    #[arg(long, value_name = "MS")]
    duration_ms: Option<u64>,
    /// Only these backends (local, krak, swap-disk, swap-zram).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    backends: Vec<String>,
    /// Only these workloads (rand_read, rand_rw, seq_read, thrash).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    workloads: Vec<Workload>,
    /// Threads running each workload at once, each on its own part of the region (krak and
    /// kernel swap alike): faults in flight together, as a guest's vCPUs or a JVM's threads
    /// take them.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// Who serves the pager's faults in the krak runs.
    #[arg(long, value_enum, default_value_t = FaultModeArg::Sigbus)]
    fault_mode: FaultModeArg,
    /// Run the krak backend on this existing rack (its controller places the regions)
    /// instead of starting memory servers on loopback.
    #[arg(long, value_name = "URL", env = "KRAK_CONTROLLER")]
    controller: Option<String>,
    /// The existing rack's secret (with --controller; the embedded rack makes its own).
    #[command(flatten)]
    secret: crate::secret_opts::SecretArgs,
    /// Memory servers of the embedded rack (at least one per fragment of --redundancy,
    /// plus a spare).
    #[arg(long, value_name = "N", default_value_t = 3)]
    servers: usize,
    /// Redundancy of the krak regions: none, replicate:N or ec:K+M (with --controller, the
    /// controller places the fragments).
    #[arg(long, value_name = "SCHEME", default_value = "none")]
    redundancy: krak_pager::Redundancy,
    /// A pager option for the krak runs, KEY=VALUE (repeatable): spin_us (how long a fault
    /// busy-waits for the server's answer), handler_threads. The loopback memory servers'
    /// own spin follows KRAK_MEMSERVER_SPIN_US.
    #[arg(long = "pager-option", value_name = "KEY=VALUE")]
    pager_options: Vec<String>,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also print the table as Markdown (for BENCHMARKS.md).
    #[arg(long)]
    markdown: bool,
}

/// The far-memory region a bench worker runs on.
struct PagedRegion(FarMemory);

impl Region for PagedRegion {
    fn as_mut_ptr(&self) -> *mut u8 {
        self.0.as_ptr()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn faults_served(&self) -> Option<u64> {
        Some(self.0.stats().missing_faults)
    }
    fn writebacks(&self) -> Option<u64> {
        Some(self.0.stats().remote_writes)
    }
}

/// The hidden `krak bench-worker`: one run in a fresh process.
pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    Ok(krak_bench::worker_main(args, |args| krak_region(args).map_err(Into::into))?)
}

/// The pager's region for `--backend krak`.
fn krak_region(args: &WorkerArgs) -> anyhow::Result<Box<dyn krak_bench::Region>> {
    let servers = args
        .servers
        .iter()
        .map(|s| s.parse().with_context(|| format!("bad server address {s:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut config = PagerConfig {
        region_bytes: args.region_bytes,
        local_budget_bytes: args.local_bytes.context("--local-bytes is required for krak")?,
        servers,
        ..Default::default()
    };
    config.controller = args.krak_controller.clone();
    pager_opts::apply(&args.krak_options, &mut config)?;
    let region = FarMemory::new(config)?;
    Ok(Box::new(PagedRegion(region)))
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut plan = if args.quick { BenchPlan::quick() } else { BenchPlan::full() };
    if let Some(r) = args.region {
        plan.region_bytes = r.0;
    }
    if let Some(d) = args.duration_ms {
        plan.duration_ms = d;
    }
    if !args.workloads.is_empty() {
        plan.workloads = args.workloads.clone();
    }
    plan.threads = usize::from(args.threads);
    if !args.backends.is_empty() {
        plan.backends = args
            .backends
            .iter()
            .map(|b| {
                BenchBackend::ALL
                    .into_iter()
                    .find(|x| x.name() == b)
                    .with_context(|| format!("unknown backend {b:?} (local, krak, swap-disk, swap-zram)"))
            })
            .collect::<anyhow::Result<_>>()?;
    }
    eprintln!(
        "krak bench: {} region, {} ms per run, {} runs of {} thread(s), krak faults served by {}, redundancy {}",
        ByteSize(plan.region_bytes),
        plan.duration_ms,
        plan.run_count(),
        plan.threads,
        args.fault_mode.name(),
        args.redundancy
    );
    let rack = if plan.backends.contains(&BenchBackend::Krak) && args.controller.is_none() {
        let slab = ByteSize(16 << 20);
        let capacity = ByteSize(plan.region_bytes.div_ceil(slab.0) * slab.0);
        let servers = pager_opts::servers_for(args.redundancy, args.servers);
        Some(LocalRack::start(servers, capacity, slab, false)?)
    } else {
        None
    };
    let mut options = vec![format!("fault_mode={}", args.fault_mode.name()), format!("redundancy={}", args.redundancy)];
    for option in &args.pager_options {
        let mut probe = PagerConfig::default();
        pager_opts::apply(std::slice::from_ref(option), &mut probe).context("--pager-option")?;
        options.push(option.clone());
    }
    let secret_file = match &rack {
        Some(r) => Some(r.secret_file()),
        None if args.controller.is_some() && plan.backends.contains(&BenchBackend::Krak) => {
            args.secret.load()?; // checked here, read again by each worker
            args.secret.secret_file.clone()
        }
        None => None,
    };
    if let Some(path) = secret_file {
        options.push(format!("secret_file={}", path.display()));
    }
    let target = match (&args.controller, &rack) {
        (Some(url), _) => Some(KrakTarget {
            servers: Vec::new(),
            options: options.clone(),
            controller: Some(url.clone()),
            server_pids: Vec::new(),
        }),
        (None, Some(r)) => Some(KrakTarget {
            servers: r.addrs().iter().map(|a| a.to_string()).collect(),
            options: options.clone(),
            controller: None,
            server_pids: r.pids_and_addrs().iter().map(|(pid, _)| *pid).collect(),
        }),
        (None, None) => None,
    };
    let exe = std::env::current_exe().context("finding the krak binary")?;
    // The floors are measured before and after the runs and the lower of the two is kept:
    // on a shared virtual machine they swing with the host's load, and the lower floor is
    // the stricter yardstick for krak.
    let measure_floors = plan.measure_floors;
    plan.measure_floors = false;
    let before = if measure_floors { Some(measure_floors_now()) } else { None };
    let mut report = krak_bench::plan::run_bench(&plan, &exe, target.as_ref(), |line| eprintln!("{line}"))?;
    report.krak_options = target.as_ref().map(|t| t.options.clone()).unwrap_or_default();
    drop(rack);
    if let Some(before) = before {
        let after = measure_floors_now();
        report.floors = combine(before, after);
        if let Some(floors) = report.floors.as_mut() {
            floors.tcp_rtt_4k_spinning_p50_us = spinning_rtt();
            floors.uffd_fault_self_served_p50_us = krak_pager::floors::measure_local_fault_self_served(20_000)
                .map_err(|e| eprintln!("  self-served uffd limit: {e}"))
                .ok()
                .map(|l| l.p50_us);
        }
    }
    println!("{}", report.human_table());
    print_goals(&report);
    if args.markdown {
        println!("{}", report.markdown_table());
    }
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json()).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    if report.has_mismatches() {
        anyhow::bail!("some runs read back wrong data");
    }
    Ok(())
}

fn measure_floors_now() -> (Option<krak_bench::Floors>, Option<krak_pager::floors::FaultLatency>) {
    eprintln!("measuring the physical floors: loopback TCP 4 KiB round trip, memcpy, userfaultfd fault served from local memory");
    let tcp = krak_bench::floors::measure().map_err(|e| eprintln!("  tcp limit: {e}")).ok();
    let uffd = krak_pager::floors::measure_local_fault(20_000).map_err(|e| eprintln!("  uffd limit: {e}")).ok();
    (tcp, uffd)
}

type LimitSample = (Option<krak_bench::Floors>, Option<krak_pager::floors::FaultLatency>);

/// The spinning round trip is steady (no wake-ups), so one measurement at the end will do.
fn spinning_rtt() -> Option<f64> {
    krak_pager::floors::tcp_rtt_4k_spinning(5_000, krak_pager::DEFAULT_SPIN_US)
        .map_err(|e| eprintln!("  spinning tcp limit: {e}"))
        .ok()
        .map(|l| l.p50_us)
}

/// The lower of two measurements of each floor.
fn combine(a: LimitSample, b: LimitSample) -> Option<krak_bench::Floors> {
    let lower = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    let memcpy = lower(a.0.as_ref().and_then(|l| l.memcpy_4k_p50_us), b.0.as_ref().and_then(|l| l.memcpy_4k_p50_us));
    let tcp = match (a.0, b.0) {
        (Some(x), Some(y)) => Some(if x.tcp_rtt_4k_p50_us <= y.tcp_rtt_4k_p50_us { x } else { y }),
        (x, y) => x.or(y),
    };
    let mut floors = tcp?;
    let uffd = match (a.1, b.1) {
        (Some(x), Some(y)) => Some(if x.p50_us <= y.p50_us { x } else { y }),
        (x, y) => x.or(y),
    };
    floors.uffd_fault_p50_us = uffd.map(|u| u.p50_us);
    floors.uffd_fault_p99_us = uffd.map(|u| u.p99_us);
    floors.memcpy_4k_p50_us = memcpy;
    Some(floors)
}

/// The targets of the fabric, computed from this run's own numbers.
fn print_goals(report: &krak_bench::BenchReport) {
    let find = |w: Workload, b: BenchBackend, f: f64| {
        report.results.iter().find(|r| r.workload == w && r.backend == b && (r.local_fraction - f).abs() < 1e-6)
    };
    println!("goals (from this run):");
    if let (Some(limits), Some(k)) = (&report.floors, find(Workload::RandRead, BenchBackend::Krak, 0.25)) {
        if let (Some(uffd), Some(p50), Some(p99)) = (limits.uffd_fault_p50_us, k.fault_p50_us, k.fault_p99_us) {
            let floor = limits.tcp_rtt_4k_p50_us + uffd;
            println!(
                "  remote fault p50 {p50:.1} us = {:.2}x (TCP 4K RTT {:.1} + uffd fault by a handler thread {uffd:.1} = {floor:.1} us; goal <= 1.5x); p99 {p99:.1} us = {:.2}x (goal <= 3x)",
                p50 / floor,
                limits.tcp_rtt_4k_p50_us,
                p99 / floor
            );
            // The strictest yardstick: the faster round trip and a fault with no wake-up.
            let rtt =
                limits.tcp_rtt_4k_spinning_p50_us.map_or(limits.tcp_rtt_4k_p50_us, |s| s.min(limits.tcp_rtt_4k_p50_us));
            if let Some(own) = limits.uffd_fault_self_served_p50_us {
                let strict = rtt + own.min(uffd);
                println!(
                    "  strict floor: the faster TCP 4K RTT {rtt:.1} + a self-served uffd fault {own:.1} = {strict:.1} us; remote fault p50 = {:.2}x (goal <= 1.5x), p99 = {:.2}x (goal <= 3x)",
                    p50 / strict,
                    p99 / strict
                );
            }
        }
    }
    if let (Some(k), Some(d)) =
        (find(Workload::RandRead, BenchBackend::Krak, 0.25), find(Workload::RandRead, BenchBackend::SwapDisk, 0.25))
    {
        println!("  rand_read at 25%: krak / swap-disk = {:.2}x (goal >= 1x, aim 2x)", k.ops_per_s / d.ops_per_s);
    }
    if let (Some(s), Some(r)) =
        (find(Workload::SeqRead, BenchBackend::Krak, 0.25), find(Workload::RandRead, BenchBackend::Krak, 0.25))
    {
        println!("  krak at 25%: seq_read / rand_read = {:.2}x (goal >= 4x)", s.ops_per_s / r.ops_per_s);
    }
}
