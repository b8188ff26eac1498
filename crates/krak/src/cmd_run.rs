//! `krak run`: an unmodified program with its large anonymous memory on rack memory.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use krak_proto::units::ByteSize;

use krak_arena::contract::{AllocatorChoice, Backing, Reserve, RunConfig, SecretSource};

use crate::rack::LocalRack;

/// Signals passed on to the program when sent to krak alone (a terminal's ^C or ^\ reaches
/// the program directly: it is in krak's process group).
const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Run a program with its large memory on rack memory, within a local budget.
///
/// The program is started with libkrak_preload.so preloaded (LD_PRELOAD): allocations of at
/// least --threshold bytes (malloc, calloc, realloc, posix_memalign and friends) and
/// anonymous private mappings of at least --map-threshold bytes, whatever their protection
/// (so QEMU's guest RAM, the JVM's and V8's heaps, JIT code), are served from a far-memory
/// arena of --max-far bytes, of which at
/// most --local bytes are resident on this machine; the rest lives on memory servers. The
/// pager runs in a krak process of its own (or, with --pager in-process, inside the
/// program's process); the program's code is unchanged. Smaller
/// allocations, files, stacks and the program itself stay in ordinary memory. A program
/// linked with its own allocator (redis-server with jemalloc) keeps it, and that
/// allocator's large mappings are far memory (see --allocator).
///
/// With no rack given (--servers or --controller), 3 memory servers are started on loopback
/// for the run, as `krak demo` does. stdin, stdout and stderr are the program's; SIGINT,
/// SIGTERM, SIGHUP and SIGQUIT sent to krak are passed on; krak exits with the program's
/// status (128+N if signal N ended it), or 125 if the program could not be run under the
/// pager. A forked child (without exec) cannot touch its parent's far memory (it crashes
/// with SIGSEGV if it does); programs it execs get their own arena, with the same budget
/// each (served by the same pager process). See docs/design.md.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  krak run --local 256MiB -- python3 big.py\n  krak run --local 1GiB --servers 10.0.0.5:7070,10.0.0.6:7070 -- sort -S 4G huge.txt\n  krak run --local 512MiB --stats run.json -- sqlite3 :memory: < queries.sql\n  krak run --local 256MiB -- redis-server --save '' --appendonly no"
)]
pub struct RunArgs {
    /// Most of the program's far memory resident on this machine at any moment.
    #[arg(long, value_name = "SIZE", default_value = "512MiB")]
    local: ByteSize,
    /// Size of the far-memory arena: the most large memory the program can have. Address
    /// space only (with --reserve on-demand, the default): the rack lends memory as the
    /// program's pages first go to it. Larger requests fall back to local memory.
    #[arg(long, value_name = "SIZE", default_value = "32GiB")]
    max_far: ByteSize,
    /// When rack memory is reserved for the arena. on-demand: a chunk (one slab per
    /// fragment) when its first page is written back, so the rack lends about what the
    /// program uses; if the rack is full then, the pages stay on this machine over the
    /// budget (logged, counted as over_budget_faults in --stats) until room is found.
    /// up-front: all of --max-far when the arena is made (the run fails at once, exit 125,
    /// if the rack cannot hold it).
    #[arg(long, value_enum, value_name = "WHEN", default_value = "on-demand")]
    reserve: ReserveArg,
    /// Allocations (malloc and friends) of at least this size go to far memory.
    #[arg(long, value_name = "SIZE", default_value = "1MiB")]
    threshold: ByteSize,
    /// Anonymous private mappings (mmap) of at least this size go to far memory, whatever
    /// their protection: reservations made PROT_NONE and committed later (QEMU's guest RAM,
    /// the JVM's heap, V8's 256 KiB heap pages, Go's arenas), JIT code, allocators' extents.
    #[arg(long, value_name = "SIZE", default_value = "64KiB")]
    map_threshold: ByteSize,
    /// Who serves malloc and friends. auto: the program's own allocator when malloc resolves
    /// to a library other than glibc (redis-server with libjemalloc), else krak. krak: krak
    /// serves them (large blocks in far memory, the rest from glibc). program: forward them
    /// to the program's allocator. When the program's allocator serves them, its own large
    /// mappings (jemalloc's extents) are far memory, so its small blocks are too; a forked
    /// child (without exec) of such a program dies with SIGSEGV when it allocates (its
    /// allocator's state is far memory, which the child does not have). far: krak serves
    /// them all from far memory, small blocks too (size classes in 64 KiB spans of the
    /// arena), so a program made of small blocks (interpreters, awk) is far memory; a forked
    /// child dies with SIGSEGV as soon as it touches a block its parent made, even to exec (its
    /// environment and arguments are such blocks): programs that fork (shells) do not run
    /// under it; posix_spawn and vfork work.
    #[arg(long, value_enum, value_name = "WHO", default_value = "auto")]
    allocator: Allocator,
    /// Memory servers to use (HOST:PORT,...), instead of starting some on loopback.
    #[arg(long, value_name = "ADDRS", value_delimiter = ',', conflicts_with = "controller")]
    servers: Vec<std::net::SocketAddr>,
    /// A rack controller that places the arena (URL[,URL...]), instead of loopback servers.
    #[arg(long, value_name = "URL")]
    controller: Option<String>,
    /// Redundancy of the far memory: none, replicate:N or ec:K+M (the loopback rack then
    /// starts one server per fragment plus a spare).
    #[arg(long, value_name = "SCHEME", default_value = "none")]
    redundancy: krak_pager::Redundancy,
    /// The existing rack's secret (with --servers or --controller; the loopback rack makes
    /// its own).
    #[command(flatten)]
    secret: crate::secret_opts::SecretArgs,
    /// Write the run's figures as JSON to FILE: exit status, peak resident set of the program
    /// (VmHWM, from wait4), the pager's counters.
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    /// Let the pager log (info and above) to FILE; by default it logs nothing.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Where the pager runs. separate: in a krak process of its own, which each program
    /// (and every program it execs) hands its arena to, a memfd and its userfaultfd over a
    /// Unix socket in a 0700 directory; the program holds no pager state and no pager
    /// threads. Needs Linux 6.0+ (write-protection of shared memory). If the pager process
    /// dies, the program is stopped (exit 125, with the reason), never served a wrong page.
    /// in-process: in the program's own threads, over private anonymous memory; use it on
    /// older kernels, and for programs that change their uid, chroot or close descriptors
    /// they did not open before their first large allocation (they could not reach, or
    /// would lose, the pager's socket). Measured as fast or faster separate
    /// (BENCHMARKS.md).
    #[arg(long, value_enum, value_name = "WHERE", default_value = "separate")]
    pager: PagerPlace,
    /// The program and its arguments.
    #[arg(required = true, last = true, value_name = "PROGRAM")]
    program: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PagerPlace {
    InProcess,
    Separate,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ReserveArg {
    OnDemand,
    UpFront,
}

impl ReserveArg {
    fn reserve(self) -> Reserve {
        match self {
            ReserveArg::OnDemand => Reserve::OnDemand,
            ReserveArg::UpFront => Reserve::UpFront,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Allocator {
    Auto,
    Krak,
    Program,
    Far,
}

impl Allocator {
    fn choice(self) -> AllocatorChoice {
        match self {
            Allocator::Auto => AllocatorChoice::Auto,
            Allocator::Krak => AllocatorChoice::Krak,
            Allocator::Program => AllocatorChoice::Program,
            Allocator::Far => AllocatorChoice::Far,
        }
    }
}

/// The preload library (crate krak-preload): $KRAK_PRELOAD, or beside the krak binary, or
/// in cargo's `deps/` beside it (where a build of the workspace's tests leaves it); the
/// newer of the two when both are there, since a build of the tests refreshes only `deps/`
/// and a stale copy would not speak the protocol of the rest.
fn preload_path() -> anyhow::Result<PathBuf> {
    const NAME: &str = "libkrak_preload.so";
    if let Some(p) = std::env::var_os("KRAK_PRELOAD") {
        let path = PathBuf::from(p);
        if !path.is_file() {
            bail!("$KRAK_PRELOAD names {}, which is not a file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("finding the krak binary")?;
    let beside = exe.with_file_name(NAME);
    let in_deps = exe.with_file_name("deps").join(NAME);
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match [beside, in_deps].into_iter().filter(|p| p.is_file()).max_by_key(modified) {
        Some(path) => Ok(path),
        None => bail!(
            "preload library {NAME} not found beside {} (build it with `cargo build --release`, which \
             builds the whole workspace, or set $KRAK_PRELOAD)",
            exe.display()
        ),
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: a sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Runs the program; returns the exit status krak should end with.
pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    let preload = preload_path()?;
    // Refuse early, with the reason, where system calls on far memory could not be served.
    let uffd = krak_uffd::Uffd::open().context("opening a userfaultfd")?;
    if uffd.mode() == krak_uffd::OpenMode::UserModeOnly {
        bail!("userfaultfd serves user-mode faults only here (not root, vm.unprivileged_userfaultfd = 0): a program's system calls on far memory would fail with EFAULT; run as root or set vm.unprivileged_userfaultfd = 1");
    }
    drop(uffd);
    if args.pager == PagerPlace::Separate {
        krak_uffd::Uffd::open_for_shmem()
            .context("--pager separate (the default) needs userfaultfd write-protection on shared memory (Linux 6.0+); run with --pager in-process")?;
    }
    // Block the forwarded signals before any thread exists, so that only the forwarding
    // thread takes them; children get an unblocked mask back before exec.
    let set = signal_set();
    // SAFETY: changes this thread's signal mask only.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let rack = if args.servers.is_empty() && args.controller.is_none() {
        // Each server could hold a whole arena: a program's children may each start one.
        let capacity = ByteSize(args.max_far.0.max(1 << 30));
        let servers = 3.max(args.redundancy.width() + 1);
        Some(LocalRack::start(servers, capacity, ByteSize(64 << 20), false).context("starting the loopback rack")?)
    } else {
        None
    };
    let stats_base =
        std::env::temp_dir().join(format!("krak-run-{}-{:016x}", std::process::id(), rand::random::<u64>()));

    let mut cmd = Command::new(&args.program[0]);
    cmd.args(&args.program[1..]);
    let mut run_config = run_config(&args, rack.as_ref(), &stats_base)?;
    let host = match args.pager {
        PagerPlace::InProcess => None,
        PagerPlace::Separate => {
            let dir = SocketDir::new()?;
            let mut host_cmd = Command::new(std::env::current_exe().context("finding the krak binary")?);
            host_cmd.envs(run_config.to_vars());
            // SAFETY: as for the program below: only the child's own signal mask.
            unsafe {
                host_cmd.pre_exec(move || {
                    libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                    Ok(())
                });
            }
            let child = crate::cmd_pager::spawn_host(host_cmd, &dir.socket())?;
            run_config.pager_socket = Some(dir.socket());
            Some((child, dir))
        }
    };
    cmd.envs(run_config.to_vars());
    let ld_preload = match std::env::var("LD_PRELOAD") {
        Ok(old) if !old.is_empty() => format!("{}:{old}", preload.display()),
        _ => preload.display().to_string(),
    };
    cmd.env("LD_PRELOAD", ld_preload);
    // SAFETY: sigprocmask is async-signal-safe and touches only the child's own mask.
    unsafe {
        cmd.pre_exec(move || {
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {}", args.program[0]))?;
    let pid = child.id() as libc::pid_t;
    std::thread::Builder::new().name("krak-signals".into()).spawn(move || forward_signals(pid))?;
    let status = child.wait().context("waiting for the program")?;
    let peak_rss_bytes = peak_child_rss_bytes();
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        _ => 1,
    };
    let pager_process = host.map(|(child, _dir)| stop_host(child));
    drop(rack);
    let stats_file = format!("{}.{pid}", stats_base.display());
    let pager: serde_json::Value =
        std::fs::read_to_string(&stats_file).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
    // The program's children write theirs too: remove every file of this run.
    remove_stats_files(&stats_base);
    if let Some(path) = &args.stats {
        let report = serde_json::json!({
            "program": args.program,
            "exit_code": status.code(),
            "signal": status.signal(),
            "local_budget_bytes": args.local.0,
            "max_far_bytes": args.max_far.0,
            "reserve": args.reserve.reserve().as_str(),
            "threshold_bytes": args.threshold.0,
            "map_threshold_bytes": args.map_threshold.0,
            "allocator": args.allocator.choice().as_str(),
            "pager_place": if args.pager == PagerPlace::Separate { "separate" } else { "in-process" },
            "pager_process": pager_process,
            "peak_rss_bytes": peak_rss_bytes,
            "arena": pager,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(code)
}

/// Most time the pager process gets to release its arenas once the program is done.
const HOST_STOP_MS: u64 = 30_000;

/// Tells the pager process to stop (closes its stdin), waits for it (bounded), and returns
/// its figures: its peak resident set (VmHWM, read before it exits) and how it ended.
fn stop_host(mut child: std::process::Child) -> serde_json::Value {
    let peak = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
    });
    match child.try_wait() {
        Ok(Some(status)) => {
            eprintln!("krak: the pager process (pid {}) ended before the program: {status}", child.id())
        }
        _ => drop(child.stdin.take()),
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(HOST_STOP_MS);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => {
                eprintln!("krak: the pager process did not stop within {HOST_STOP_MS} ms; killed");
                let _ = child.kill();
                break child.wait().ok();
            }
        }
    };
    serde_json::json!({
        "pid": child.id(),
        "peak_rss_bytes": peak,
        "exit_code": status.and_then(|s| s.code()),
        "signal": status.and_then(|s| s.signal()),
    })
}

/// A directory only this user can enter, holding the pager's socket; removed on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new() -> anyhow::Result<SocketDir> {
        use std::os::unix::fs::DirBuilderExt;
        let path =
            std::env::temp_dir().join(format!("krak-pager-{}-{:016x}", std::process::id(), rand::random::<u64>()));
        std::fs::DirBuilder::new().mode(0o700).create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(SocketDir(path))
    }

    fn socket(&self) -> PathBuf {
        self.0.join("pager.sock")
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `KRAK_RUN_*` configuration, for the program's library and the pager process alike.
fn run_config(args: &RunArgs, rack: Option<&LocalRack>, stats_base: &std::path::Path) -> anyhow::Result<RunConfig> {
    let secret = match rack {
        Some(rack) => SecretSource::File(rack.secret_file()),
        None => match (args.secret.load()?, &args.secret.secret_file) {
            (Some(_), Some(path)) => SecretSource::File(path.clone()),
            _ => SecretSource::Insecure,
        },
    };
    let backing = match (rack, &args.controller) {
        (Some(rack), _) => Backing::Servers(rack.addrs()),
        (None, Some(url)) => Backing::Controller(url.clone()),
        (None, None) => Backing::Servers(args.servers.clone()),
    };
    Ok(RunConfig {
        backing,
        local_bytes: args.local.0,
        max_far_bytes: args.max_far.0,
        threshold_bytes: args.threshold.0,
        map_threshold_bytes: args.map_threshold.0,
        stats_file: Some(stats_base.to_path_buf()),
        log_file: args.log.clone(),
        secret,
        redundancy: args.redundancy,
        allocator: args.allocator.choice(),
        pager_socket: None,
        reserve: args.reserve.reserve(),
    })
}

fn remove_stats_files(base: &std::path::Path) {
    let (Some(dir), Some(prefix)) = (base.parent(), base.file_name().and_then(|n| n.to_str())) else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.file_name().to_str().is_some_and(|n| n.starts_with(prefix)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Peak resident set of the waited-for program (ru_maxrss of RUSAGE_CHILDREN, the largest
/// child waited for so far: the program, as the rack's servers are still running).
fn peak_child_rss_bytes() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage.ru_maxrss as u64 * 1024
    }
}

/// Passes SIGINT/SIGTERM/SIGHUP/SIGQUIT sent to krak on to the program, except those the
/// kernel sent the whole foreground process group (a terminal's ^C), which it already got.
fn forward_signals(pid: libc::pid_t) {
    let set = signal_set();
    loop {
        // SAFETY: siginfo_t is plain data that sigwaitinfo fills; the set is blocked in every
        // thread of this process (blocked before any was started).
        let (sig, code) = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let sig = libc::sigwaitinfo(&set, &mut info);
            (sig, info.si_code)
        };
        if sig > 0 && code != libc::SI_KERNEL {
            // SAFETY: kill sends a signal to our own child.
            unsafe { libc::kill(pid, sig) };
        }
    }
}
