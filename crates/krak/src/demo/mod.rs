//! `krak demo`: an embedded rack on loopback and a workload that checks every page.

mod workload;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use krak_pager::{FarMemory, PagerConfig, PAGE_SIZE};
use krak_proto::units::ByteSize;
use serde::Serialize;

use crate::pager_opts::FaultModeArg;
use crate::rack::LocalRack;
use workload::{PhaseResult, Target, VerifiedPages};

/// Run a verified workload on rack memory, on an embedded rack started on loopback.
///
/// Starts --servers memory servers as child processes on free ports, makes a far-memory
/// region of --region bytes of which at most --local may be resident here, then:
/// writes every page with pseudo-random contents (remembering each page's CRC-32C), runs
/// --ops random page reads (checked) and rewrites, reads every page back and checks it,
/// and runs the same operations on plain local RAM for comparison.
///
/// Exits 0 only when every page read back was exactly what was written.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  krak demo\n  krak demo --region 4GiB --local 512MiB --servers 4\n  krak demo --json | jq .verified"
)]
pub struct DemoArgs {
    /// Size of the far-memory region.
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    region: ByteSize,
    /// Most of the region resident on this machine at any moment (the local budget).
    #[arg(long, value_name = "SIZE", default_value = "256MiB")]
    local: ByteSize,
    /// Run against this existing rack (its controller places the region) instead of
    /// starting one on loopback.
    #[arg(long, value_name = "URL", env = "KRAK_CONTROLLER")]
    controller: Option<String>,
    /// The existing rack's secret (with --controller; the embedded rack makes its own).
    #[command(flatten)]
    secret: crate::secret_opts::SecretArgs,
    /// Run the random phase for this many seconds instead of --ops operations.
    #[arg(long, value_name = "N")]
    seconds: Option<u64>,
    /// Memory servers to start on loopback (with --redundancy at least one per fragment of
    /// a stripe plus a spare: 7 for ec:4+2).
    #[arg(long, value_name = "N", default_value_t = 3)]
    servers: usize,
    /// How the region survives lost memory servers: none, replicate:N (N copies) or ec:K+M
    /// (Reed-Solomon, K data + M parity fragments per page). With --controller, the
    /// controller places every fragment and each replacement after a loss.
    #[arg(long, value_name = "SCHEME", default_value = "none")]
    redundancy: krak_pager::Redundancy,
    /// Stop this many of the embedded rack's memory servers (SIGKILL), one by one, during
    /// the random phase: with --redundancy the workload must go on and verify.
    #[arg(long, value_name = "N", default_value_t = 0)]
    kill_servers: usize,
    /// Slab size of the memory servers (the unit in which the region is spread over them).
    #[arg(long, value_name = "SIZE", default_value = "16MiB")]
    slab_size: ByteSize,
    /// Random page operations (70% read-and-check, 30% rewrite) after the fill.
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    ops: u64,
    /// Stop the random phase after this many seconds even if --ops are not done.
    #[arg(long, value_name = "S", default_value_t = 30)]
    max_seconds: u64,
    /// Seed of the random phase.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Skip the comparison run on plain local RAM.
    #[arg(long)]
    no_baseline: bool,
    /// Who serves the pager's faults.
    #[arg(long, value_enum, default_value_t = FaultModeArg::Sigbus)]
    fault_mode: FaultModeArg,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct ServerReport {
    addr: String,
    /// Bytes of the region's pages whose current copy lives on this server (for a
    /// redundant region: of their fragments or copies).
    bytes: u64,
    /// Bytes of slabs reserved on this server for the region.
    reserved_bytes: u64,
}

#[derive(Debug, Serialize)]
struct DemoReport {
    verified: bool,
    pages_verified: u64,
    pages_total: u64,
    mismatches: u64,
    region_bytes: u64,
    local_budget_bytes: u64,
    local_peak_bytes: u64,
    local_budget_exceeded_samples: u64,
    servers: Vec<ServerReport>,
    fault_p50_us: f64,
    fault_p99_us: f64,
    krak: PhaseResult,
    local_ram: Option<PhaseResult>,
    fill_s: f64,
    verify_s: f64,
    total_s: f64,
    uffd_mode: String,
    fault_mode: &'static str,
    redundancy: krak_pager::Redundancy,
    servers_killed: Vec<String>,
    pager: krak_pager::PagerStats,
    /// CPU of the random phase: this process's thread running it, the pager's threads, the
    /// embedded rack's memory servers.
    cpu: krak_bench::cpu::PhaseCpu,
    /// The fault path's share of it per fault of the random phase.
    cpu_per_fault_us: Option<f64>,
    /// The pager's write-back threads' share per page written back in the random phase.
    cpu_per_writeback_us: Option<f64>,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.servers == 0 {
        bail!("--servers must be at least 1");
    }
    if args.local.0 > args.region.0 {
        bail!("--local ({}) is larger than --region ({}): nothing would be remote", args.local, args.region);
    }
    if args.kill_servers > 0 && args.controller.is_some() {
        bail!("--kill-servers stops servers of the embedded rack; it cannot be used with --controller");
    }
    let servers_n = crate::pager_opts::servers_for(args.redundancy, args.servers);
    let say = |msg: String| {
        if !args.json {
            eprintln!("{msg}");
        }
    };
    say(format!(
        "krak demo: a {} region with {} of local memory, backed by {}",
        args.region,
        args.local,
        match &args.controller {
            Some(_) => "an existing rack".to_string(),
            None => format!("{servers_n} memory servers on loopback, redundancy {}", args.redundancy),
        }
    ));
    let capacity = ByteSize(args.region.0.div_ceil(args.slab_size.0) * args.slab_size.0);
    let rack = match &args.controller {
        Some(url) => {
            say(format!("  rack: the controller at {url} places the region"));
            None
        }
        None => {
            // The embedded rack hands a redundant region its servers directly (and --kill-servers
            // needs no controller); an existing rack's controller places the fragments.
            let rack = LocalRack::start(servers_n, capacity, args.slab_size, args.redundancy.is_none())?;
            say(format!(
                "  {} memory servers {}",
                rack.controller_url().map_or("rack of".to_string(), |u| format!("rack controller {u} with")),
                rack.addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
            ));
            Some(rack)
        }
    };
    let controller = args.controller.clone().or_else(|| rack.as_ref().and_then(|r| r.controller_url()));
    let secret = match &rack {
        Some(r) => Some(r.secret()),
        None => args.secret.load()?,
    };
    let servers = match (&rack, args.redundancy.is_none()) {
        (Some(r), false) => r.addrs(),
        _ => Vec::new(),
    };
    let region = Arc::new(
        FarMemory::new(PagerConfig {
            region_bytes: args.region.0,
            local_budget_bytes: args.local.0,
            controller: if servers.is_empty() { controller.clone() } else { None },
            servers,
            fault_mode: args.fault_mode.mode(),
            secret,
            redundancy: args.redundancy,
            ..Default::default()
        })
        .context("making the far-memory region")?,
    );
    let sampler = Sampler::start(region.clone());
    let target = Target { ptr: region.as_ptr(), pages: region.len() / PAGE_SIZE };
    let mut pages = VerifiedPages::new(target.pages);

    let bar = progress(args.json, target.pages as u64, "fill  ");
    let t = Instant::now();
    pages.fill(&target, &|n| bar.inc(n));
    let fill_s = t.elapsed().as_secs_f64();
    bar.finish();

    region.reset_fault_latency();
    let (ops, limit) = match args.seconds {
        Some(s) => (u64::MAX, Duration::from_secs(s)),
        None => (args.ops, Duration::from_secs(args.max_seconds)),
    };
    let bar = if args.seconds.is_some() && !args.json {
        let bar = ProgressBar::new_spinner();
        bar.set_message(format!("random phase for {} s", limit.as_secs()));
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        progress(args.json, args.ops, "random")
    };
    let killer = rack.as_ref().filter(|_| args.kill_servers > 0).map(|r| {
        // Kill one server a third of the way in, the next at two thirds, and so on.
        let victims: Vec<(u32, std::net::SocketAddr)> =
            r.pids_and_addrs().into_iter().take(args.kill_servers).collect();
        let gap = limit / (args.kill_servers as u32 + 1);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            let mut killed = Vec::new();
            for (pid, addr) in victims {
                let until = Instant::now() + gap;
                while Instant::now() < until && !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if crate::rack::kill_server(pid) {
                    killed.push(addr.to_string());
                }
            }
            killed
        });
        (stop, t)
    });
    let server_pids: Vec<u32> =
        rack.as_ref().map(|r| r.pids_and_addrs().into_iter().map(|(pid, _)| pid).collect()).unwrap_or_default();
    let before = region.stats();
    let cpu_probe = krak_bench::cpu::CpuProbe::start(&server_pids);
    let krak = pages.mixed(&target, ops, args.seed, Some(limit), &|n| bar.inc(n));
    let cpu = cpu_probe.finish();
    bar.finish();
    let servers_killed = match killer {
        Some((stop, t)) => {
            stop.store(true, Ordering::Relaxed);
            t.join().unwrap_or_default()
        }
        None => Vec::new(),
    };
    let latency = region.stats();
    let faults = latency.missing_faults.saturating_sub(before.missing_faults);
    let writebacks = latency.remote_writes.saturating_sub(before.remote_writes);
    let cpu_per_fault_us = (faults > 0).then(|| cpu.fault_path_ms() * 1000.0 / faults as f64);
    let cpu_per_writeback_us = (writebacks > 0).then(|| cpu.pager_writeback.total_ms() * 1000.0 / writebacks as f64);

    let bar = progress(args.json, target.pages as u64, "verify");
    let t = Instant::now();
    let pages_verified = pages.verify_all(&target, &|n| bar.inc(n));
    let verify_s = t.elapsed().as_secs_f64();
    bar.finish();
    let (local_peak_bytes, over) = sampler.finish();
    let stats = region.stats();

    let remote = region.remote_pages_per_server();
    let servers: Vec<ServerReport> = region
        .placement()
        .into_iter()
        .zip(remote)
        .map(|((addr, reserved), (_, pages))| ServerReport {
            addr: addr.to_string(),
            // A fragment (or copy) of each page whose current copy is remote.
            bytes: pages * region.redundancy().unit_bytes() as u64,
            reserved_bytes: reserved,
        })
        .collect();
    let uffd_mode = format!("{:?}", region.uffd_mode());
    drop(region);
    drop(rack);

    let local_ram = if args.no_baseline {
        None
    } else {
        let map = krak_uffd::AnonMapping::new(args.region.0 as usize).context("mapping local RAM for the baseline")?;
        let target = Target { ptr: map.as_ptr(), pages: map.len() / PAGE_SIZE };
        let mut local = VerifiedPages::new(target.pages);
        let bar = progress(args.json, target.pages as u64 + krak.ops, "local ");
        local.fill(&target, &|n| bar.inc(n));
        let r = local.mixed(&target, krak.ops, args.seed, None, &|n| bar.inc(n));
        bar.finish();
        if local.mismatches != 0 {
            bail!("the local-RAM baseline read back wrong data: this machine's memory is suspect");
        }
        Some(r)
    };

    let report = DemoReport {
        verified: pages.mismatches == 0 && pages_verified == target.pages as u64,
        pages_verified,
        pages_total: target.pages as u64,
        mismatches: pages.mismatches,
        region_bytes: args.region.0,
        local_budget_bytes: args.local.0,
        local_peak_bytes,
        local_budget_exceeded_samples: over,
        servers,
        fault_p50_us: latency.fault_p50_us,
        fault_p99_us: latency.fault_p99_us,
        krak,
        local_ram,
        fill_s,
        verify_s,
        total_s: started.elapsed().as_secs_f64(),
        uffd_mode,
        fault_mode: args.fault_mode.name(),
        redundancy: args.redundancy,
        servers_killed,
        pager: stats,
        cpu,
        cpu_per_fault_us,
        cpu_per_writeback_us,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report, pages.first_bad_page);
    }
    if !report.verified {
        bail!("{} page reads did not match what was written", report.mismatches);
    }
    Ok(())
}

fn progress(hidden: bool, len: u64, phase: &'static str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("  {prefix} [{bar:40}] {percent:>3}% {per_sec:>12} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(phase);
    bar
}

fn print_report(r: &DemoReport, first_bad: Option<usize>) {
    let mib = |b: u64| ByteSize(b).to_string();
    if r.verified {
        println!(
            "\nverified: all {} pages read back exactly as written ({} checked reads)",
            r.pages_verified, r.krak.ops
        );
    } else {
        println!("\nNOT VERIFIED: {} mismatches, first at page {:?}", r.mismatches, first_bad);
    }
    println!("\nwhere the pages live at the end:");
    println!(
        "  {:<22} {:>10}   (budget {}, peak {})",
        "this machine",
        mib(r.local_peak_bytes.min(r.region_bytes)),
        mib(r.local_budget_bytes),
        mib(r.local_peak_bytes)
    );
    for s in &r.servers {
        println!("  {:<22} {:>10}   (slabs reserved {})", s.addr, mib(s.bytes), mib(s.reserved_bytes));
    }
    let p = &r.pager;
    println!("\npager:");
    println!(
        "  faults: {} missing ({} served remotely, {} zero-filled, {} from the write-back buffer), {} first writes",
        p.missing_faults,
        p.remote_reads - p.prefetched,
        p.zero_fills,
        p.staged_hits,
        p.write_protect_faults
    );
    println!(
        "  evictions: {} clean (dropped), {} dirty (written back); {} pages prefetched, {} used",
        p.evictions_clean, p.evictions_dirty, p.prefetched, p.prefetch_hits
    );
    println!("  remote fault latency in the random phase: p50 {:.1} us, p99 {:.1} us", r.fault_p50_us, r.fault_p99_us);
    let c = &r.cpu;
    let servers = c.servers.map_or("not measured".to_string(), |s| format!("{:.0} ms", s.total_ms()));
    println!(
        "  CPU in the random phase: {:.0} ms on the workload's thread ({:.0} ms in the kernel), {:.0} ms fault handlers, \
         {:.0} ms write-back, memory servers {servers}",
        c.app.total_ms(),
        c.app.system_ms,
        c.pager_faults.total_ms(),
        c.pager_writeback.total_ms()
    );
    let us = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} us"));
    println!(
        "  CPU per fault {} (workload thread, handlers, servers), per page written back {}",
        us(r.cpu_per_fault_us),
        us(r.cpu_per_writeback_us)
    );
    if !r.redundancy.is_none() || !r.servers_killed.is_empty() {
        println!(
            "  redundancy {}: servers killed {:?}, lost {}, {} degraded reads, {} pages re-protected{}, {} corrupt fragments repaired",
            r.redundancy,
            r.servers_killed,
            p.lost_servers,
            p.degraded_reads,
            p.reprotected_pages,
            if p.reprotect_ms > 0 { format!(" (full redundancy back in {} ms)", p.reprotect_ms) } else { String::new() },
            p.corrupt_fragments_repaired
        );
    }
    println!("\nthroughput of the random phase (4 KiB pages, 70% read-and-check, 30% rewrite):");
    println!(
        "  krak, {} local of {}: {:>12.0} ops/s",
        mib(r.local_budget_bytes),
        mib(r.region_bytes),
        r.krak.ops_per_s
    );
    if let Some(l) = &r.local_ram {
        println!(
            "  plain local RAM:       {:>12.0} ops/s   (krak runs at {:.1}% of local RAM)",
            l.ops_per_s,
            100.0 * r.krak.ops_per_s / l.ops_per_s.max(1e-9)
        );
    }
    println!("\ntotal {:.1} s (fill {:.1} s, verify {:.1} s)", r.total_s, r.fill_s, r.verify_s);
}

/// Watches the region's resident set (as the kernel sees it) while the workload runs.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    over: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    const PERIOD_MS: u64 = 50;

    fn start(region: Arc<FarMemory>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let over = Arc::new(AtomicU64::new(0));
        let (s, p, o) = (stop.clone(), peak.clone(), over.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match region.sample_residency() {
                    Ok(sample) => {
                        p.fetch_max(sample.kernel_resident_bytes, Ordering::Relaxed);
                        if sample.kernel_resident_bytes > sample.budget_bytes + sample.budget_bytes / 100 {
                            o.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => tracing::warn!("sampling the resident set: {e}"),
                }
                std::thread::sleep(Duration::from_millis(Self::PERIOD_MS));
            }
        });
        Sampler { stop, peak, over, thread: Some(thread) }
    }

    /// (peak resident bytes, samples above the budget + 1%)
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.peak.load(Ordering::Relaxed), self.over.load(Ordering::Relaxed))
    }
}
