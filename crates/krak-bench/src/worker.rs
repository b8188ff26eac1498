//! One backend run in a fresh child process, so kernel memory accounting starts clean.
//!
//! The parent runs `<exe> bench-worker <WorkerArgs::to_args()>` ([`spawn_worker`]); the
//! child ([`worker_main`]) joins its cgroup first thing, builds the region, fills it, runs
//! the workload, checks the whole region and prints exactly one JSON [`RunResult`] line on
//! stdout. Diagnostics go to stderr (inherited from the parent).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cleanup;
use crate::local::LocalRegion;
use crate::workload::{run_workload, Region, RunLength, RunResult, Workload};
use crate::BenchError;

/// An error from a caller's hook (the krak region builder), whatever its type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a worker run failed, in the child ([`worker_main`]) or as the parent saw it
/// ([`spawn_worker`]).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("join cgroup: write pid to {}: {source}", .path.display())]
    JoinCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--backend swap needs --cgroup (without a limit nothing would be swapped)")]
    SwapNeedsCgroup,
    #[error("--region-bytes too large: {0}")]
    RegionTooLarge(#[source] std::num::TryFromIntError),
    /// Building the local region or running the workload failed.
    #[error(transparent)]
    Bench(#[from] BenchError),
    #[error("build the krak region: {0}")]
    KrakRegion(#[source] BoxError),
    #[error("encode the result: {0}")]
    EncodeResult(#[source] serde_json::Error),
    #[error("write the result: {0}")]
    WriteResult(#[source] std::io::Error),
    #[error("spawn {}: {source}", .exe.display())]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the worker's stdout is not piped")]
    NoStdout,
    #[error("wait for worker: {0}")]
    Wait(#[source] std::io::Error),
    #[error("stdout reader panicked")]
    ReaderPanicked,
    #[error("read the worker's stdout: {0}")]
    ReadStdout(#[source] std::io::Error),
    #[error("{workload} worker timed out after {timeout:?} and was killed")]
    TimedOut { workload: Workload, timeout: Duration },
    #[error("worker {backend} {workload} exited with {status} (killed by the OOM killer?)")]
    Exited { backend: &'static str, workload: Workload, status: ExitStatus },
    #[error("worker printed no result")]
    NoResult,
    #[error("worker result line {line:?}: {source}")]
    BadResult {
        line: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The subcommand name the parent passes before [`WorkerArgs::to_args`].
pub const WORKER_SUBCOMMAND: &str = "bench-worker";

/// How the worker builds its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Plain anonymous memory, no limit.
    Local,
    /// Plain anonymous memory inside a memory cgroup (`--cgroup`) with kernel swap on.
    Swap,
    /// The krak pager's far-memory region, built by the caller's hook.
    Krak,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Swap => "swap",
            Backend::Krak => "krak",
        }
    }
}

/// Arguments of one worker run; embed in a clap subcommand with `#[command(flatten)]` or
/// as the subcommand's `Args`.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct WorkerArgs {
    /// Backend that provides the region.
    #[arg(long, value_enum)]
    pub backend: Backend,
    /// Access pattern.
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// Size of the region (rounded up to 4 KiB pages).
    #[arg(long)]
    pub region_bytes: u64,
    /// Length of the timed phase.
    #[arg(long)]
    pub duration_ms: u64,
    /// Stop the timed phase after this many operations.
    #[arg(long)]
    pub max_ops: Option<u64>,
    /// Seed of the data pattern and of the access sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Cgroup directory to join before allocating (its `cgroup.procs` is written).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Local memory the krak pager may use for the region.
    #[arg(long)]
    pub local_bytes: Option<u64>,
    /// Memory servers for the krak backend (`host:port`, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Skip the untimed whole-region check after the timed phase.
    #[arg(long)]
    pub skip_final_check: bool,
    /// A rack controller that places the krak backend's region (instead of `--servers`).
    #[arg(long)]
    pub krak_controller: Option<String>,
    /// Threads running the workload at once, each on its own part of the pages.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Processes of the memory servers on this host, whose CPU the timed phase counts.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Options for the krak backend's pager, passed through as `key=value` (e.g.
    /// `fault_mode=sigbus`); the `krak` binary interprets them.
    #[arg(long, value_delimiter = ',')]
    pub krak_options: Vec<String>,
}

impl WorkerArgs {
    /// A run of `workload` on `backend` with defaults for the optional fields.
    pub fn new(backend: Backend, workload: Workload, region_bytes: u64, duration_ms: u64) -> Self {
        WorkerArgs {
            backend,
            workload,
            region_bytes,
            duration_ms,
            max_ops: None,
            seed: 1,
            cgroup: None,
            local_bytes: None,
            servers: Vec::new(),
            skip_final_check: false,
            krak_options: Vec::new(),
            krak_controller: None,
            server_pids: Vec::new(),
            threads: 1,
        }
    }

    /// The command-line arguments (after the subcommand) that parse back into `self`.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "--backend".into(),
            self.backend.name().into(),
            "--workload".into(),
            self.workload.name().into(),
            "--region-bytes".into(),
            self.region_bytes.to_string(),
            "--duration-ms".into(),
            self.duration_ms.to_string(),
            "--seed".into(),
            self.seed.to_string(),
            "--threads".into(),
            self.threads.to_string(),
        ];
        if let Some(n) = self.max_ops {
            a.extend(["--max-ops".into(), n.to_string()]);
        }
        if let Some(cg) = &self.cgroup {
            a.extend(["--cgroup".into(), cg.to_string_lossy().into_owned()]);
        }
        if let Some(n) = self.local_bytes {
            a.extend(["--local-bytes".into(), n.to_string()]);
        }
        if !self.servers.is_empty() {
            a.extend(["--servers".into(), self.servers.join(",")]);
        }
        if self.skip_final_check {
            a.push("--skip-final-check".into());
        }
        if let Some(url) = &self.krak_controller {
            a.extend(["--krak-controller".into(), url.clone()]);
        }
        if !self.server_pids.is_empty() {
            let pids: Vec<String> = self.server_pids.iter().map(u32::to_string).collect();
            a.extend(["--server-pids".into(), pids.join(",")]);
        }
        if !self.krak_options.is_empty() {
            a.extend(["--krak-options".into(), self.krak_options.join(",")]);
        }
        a
    }

    /// A generous bound on the whole child run: the timed phase, plus fill and final check
    /// at a pessimistic 8 MiB/s each (disk swap at 25 % local), plus 30 s of start-up.
    pub fn timeout(&self) -> Duration {
        let passes = if self.skip_final_check { 1 } else { 2 };
        let io_ms = passes * self.region_bytes / (8 << 20) * 1000;
        Duration::from_millis(self.duration_ms + io_ms + 30_000)
    }
}

/// The worker's body. `make_krak_region` builds the region for `--backend krak` (the
/// `krak` binary passes the pager; tests pass a closure that errors).
pub fn worker_main(
    args: WorkerArgs,
    make_krak_region: impl FnOnce(&WorkerArgs) -> Result<Box<dyn Region>, BoxError>,
) -> Result<(), WorkerError> {
    // Join the cgroup before allocating anything, so that every page of the region is
    // charged to it.
    if let Some(cg) = &args.cgroup {
        let path = cg.join("cgroup.procs");
        if let Err(source) = std::fs::write(&path, std::process::id().to_string()) {
            return Err(WorkerError::JoinCgroup { path, source });
        }
    } else if args.backend == Backend::Swap {
        return Err(WorkerError::SwapNeedsCgroup);
    }
    let region: Box<dyn Region> = match args.backend {
        Backend::Local | Backend::Swap => {
            let len = usize::try_from(args.region_bytes).map_err(WorkerError::RegionTooLarge)?;
            Box::new(LocalRegion::new(len)?)
        }
        Backend::Krak => make_krak_region(&args).map_err(WorkerError::KrakRegion)?,
    };
    let limits = RunLength { max_ops: args.max_ops, duration_ms: args.duration_ms };
    let check = !args.skip_final_check;
    let pids = &args.server_pids;
    let result = run_workload(region.as_ref(), args.workload, args.seed, limits, check, pids, args.threads)?;
    drop(region);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &result).map_err(WorkerError::EncodeResult)?;
    out.write_all(b"\n").and_then(|()| out.flush()).map_err(WorkerError::WriteResult)?;
    Ok(())
}

/// Runs `exe bench-worker <args>` and returns its result, killing it after
/// [`WorkerArgs::timeout`].
pub fn spawn_worker(exe: &Path, args: &WorkerArgs) -> Result<RunResult, WorkerError> {
    spawn_worker_with_timeout(exe, args, args.timeout())
}

/// [`spawn_worker`] with an explicit timeout.
pub fn spawn_worker_with_timeout(exe: &Path, args: &WorkerArgs, timeout: Duration) -> Result<RunResult, WorkerError> {
    let mut child = Command::new(exe)
        .arg(WORKER_SUBCOMMAND)
        .args(args.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| WorkerError::Spawn { exe: exe.to_path_buf(), source })?;
    let pid = child.id();
    let token = cleanup::register_child(pid);
    let mut stdout = child.stdout.take().ok_or(WorkerError::NoStdout)?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    loop {
        if exited_unreaped(pid) {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Deregister while the pid is still ours (unreaped), then reap.
    cleanup::finish(token);
    let status = child.wait().map_err(WorkerError::Wait)?;
    let text = reader.join().map_err(|_| WorkerError::ReaderPanicked)?.map_err(WorkerError::ReadStdout)?;
    if timed_out {
        return Err(WorkerError::TimedOut { workload: args.workload, timeout });
    }
    if !status.success() {
        return Err(WorkerError::Exited { backend: args.backend.name(), workload: args.workload, status });
    }
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).ok_or(WorkerError::NoResult)?;
    serde_json::from_str(line).map_err(|source| WorkerError::BadResult { line: line.to_string(), source })
}

/// Whether child `pid` has exited, without reaping it (`waitid` with `WNOWAIT`).
fn exited_unreaped(pid: u32) -> bool {
    // SAFETY: `siginfo_t` is plain old data, so all-zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid out-pointer; WNOHANG|WNOWAIT neither blocks nor reaps.
    let rc = unsafe {
        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
    };
    // SAFETY: after a successful `waitid` the kernel has filled `info`; `si_pid` is 0 when
    // the child has not changed state.
    rc != 0 || unsafe { info.si_pid() } != 0
}
