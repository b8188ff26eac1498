//! Kernel swap baselines: a memory cgroup limit plus one swap device (a file on disk or a
//! zram device), as RAII guards that leave the machine as they found it.
//!
//! * Every guard undoes its change on drop, and on Ctrl-C/SIGTERM through a handler
//!   installed on first use (see [`cleanup_all`]).
//! * [`Session::begin`] takes a machine-wide lock (`/run/krak-bench/lock`) and removes
//!   leftovers of a crashed run: our swap file, zram devices recorded in
//!   `/run/krak-bench/`, and `krak-bench-*` cgroups (killing their tasks).
//! * Only the device under test is ever active: enabling a device fails if *any* other
//!   swap is active. Policy for pre-existing swap that is not ours: the swap backends are
//!   **skipped** (see [`availability`]) rather than turning the owner's swap off, because
//!   another active device would silently take part of the traffic.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use crate::cgroup::{memory_controller, CgroupVersion, MemoryCgroup, MemoryController};
use crate::cleanup::{self, Token};
pub use crate::cleanup::{cleanup_all, install_signal_cleanup};
use crate::sys::{have_program, is_root, read_trimmed, run, write_str};
use crate::BenchError;

/// Where the disk swap file goes by default.
pub const DEFAULT_SWAP_FILE: &str = "/var/tmp/krak-bench.swap";
/// Machine-wide state: the lock file and records of zram devices we created.
pub const STATE_DIR: &str = "/run/krak-bench";
/// Priority given to our swap devices.
const SWAP_PRIORITY: &str = "100";

/// One line of `/proc/swaps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveSwap {
    /// Device or file path.
    pub path: String,
    /// Size.
    pub size_bytes: u64,
    /// Used.
    pub used_bytes: u64,
}

/// Active swap areas, from `/proc/swaps`.
pub fn active_swaps() -> Vec<ActiveSwap> {
    let text = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(ActiveSwap {
                path: f.first()?.replace("\\040", " "),
                size_bytes: f.get(2)?.parse::<u64>().ok()? * 1024,
                used_bytes: f.get(3)?.parse::<u64>().ok()? * 1024,
            })
        })
        .collect()
}

fn ensure_no_swap_active() -> Result<(), BenchError> {
    let active = active_swaps();
    if active.is_empty() {
        return Ok(());
    }
    let names: Vec<_> = active.iter().map(|s| s.path.as_str()).collect();
    Err(BenchError::Unavailable(format!(
        "other swap is active ({}): it would take part of the traffic; swapoff it to \
         benchmark kernel swap",
        names.join(", ")
    )))
}

fn swapoff(path: &str) {
    if active_swaps().iter().any(|s| s.path == path) {
        if let Err(e) = run("swapoff", &[path]) {
            tracing::error!("{e}");
            eprintln!("krak-bench: {e}");
        }
    }
}

/// A swap file, active while this guard lives; swapped off and deleted on drop.
#[derive(Debug)]
pub struct SwapFile {
    path: PathBuf,
    size_bytes: u64,
    token: Token,
}

impl SwapFile {
    /// Creates `path` (which must not exist) of `size_bytes`, mode 0600, formats it with
    /// `mkswap` and enables it. Fails if any other swap is active.
    pub fn enable(path: &Path, size_bytes: u64) -> Result<Self, BenchError> {
        ensure_no_swap_active()?;
        let path_str = path.to_str().ok_or_else(|| BenchError::Invalid("non-UTF-8 path".into()))?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| BenchError::io(format!("create swap file {path_str}"), e))?;
        let undo_path = path.to_path_buf();
        let token = cleanup::register_undo(move || {
            if let Some(p) = undo_path.to_str() {
                swapoff(p);
            }
            let _ = std::fs::remove_file(&undo_path);
        });
        let guard = SwapFile { path: path.to_path_buf(), size_bytes, token };
        allocate(&file, size_bytes)
            .map_err(|e| BenchError::io(format!("allocate {size_bytes} bytes for {path_str}"), e))?;
        drop(file);
        run("mkswap", &[path_str])?;
        run("swapon", &["-p", SWAP_PRIORITY, path_str])?;
        Ok(guard)
    }

    /// The swap file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Swap currently used on it (`/proc/swaps`).
    pub fn used_bytes(&self) -> u64 {
        used_on(&self.path.to_string_lossy())
    }
}

impl Drop for SwapFile {
    fn drop(&mut self) {
        cleanup::finish(self.token);
    }
}

fn used_on(path: &str) -> u64 {
    active_swaps().iter().find(|s| s.path == path).map_or(0, |s| s.used_bytes)
}

/// Allocates real blocks (swapon refuses files with holes): `fallocate`, or zero writes.
fn allocate(file: &std::fs::File, size_bytes: u64) -> std::io::Result<()> {
    // SAFETY: `file` is an open, writable file descriptor for the duration of the call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size_bytes as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    use std::io::Write;
    let chunk = vec![0u8; 1 << 20];
    let mut writer = std::io::BufWriter::new(file);
    let mut left = size_bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        writer.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    writer.flush()?;
    file.sync_all()
}

/// Compression statistics of a zram device (`mm_stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZramStats {
    /// Uncompressed bytes stored.
    pub orig_data_bytes: u64,
    /// Compressed bytes stored.
    pub compr_data_bytes: u64,
    /// Memory the device uses, overhead included.
    pub mem_used_total_bytes: u64,
}

/// A zram swap device, active while this guard lives; swapped off, reset and (if we added
/// it) removed on drop.
#[derive(Debug)]
pub struct Zram {
    id: u32,
    size_bytes: u64,
    token: Token,
}

impl Zram {
    /// Finds or adds a free zram device, sizes it to `size_bytes` (uncompressed), formats
    /// it and enables it as swap with high priority. Fails if any other swap is active.
    pub fn enable(size_bytes: u64) -> Result<Self, BenchError> {
        ensure_no_swap_active()?;
        ensure_zram_module()?;
        let control = Path::new("/sys/class/zram-control/hot_add");
        let (id, hot_added) = if control.exists() {
            let id = read_trimmed(control)?;
            let id = id.parse().map_err(|_| BenchError::Invalid(format!("hot_add gave {id:?}")))?;
            (id, true)
        } else if read_trimmed(Path::new("/sys/block/zram0/disksize")).is_ok_and(|s| s == "0") {
            (0, false)
        } else {
            return Err(BenchError::Unavailable("no free zram device".into()));
        };
        let record = Path::new(STATE_DIR).join(format!("zram{id}"));
        let _ = std::fs::create_dir_all(STATE_DIR);
        if let Err(e) = write_str(&record, if hot_added { "hot_added" } else { "existing" }) {
            tracing::warn!("cannot record zram{id} for leftover cleanup: {e}");
        }
        let token = cleanup::register_undo(move || {
            release_zram(id, hot_added);
            let _ = std::fs::remove_file(&record);
        });
        let guard = Zram { id, size_bytes, token };
        let dev = guard.device();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !dev.exists() {
            if Instant::now() > deadline {
                return Err(BenchError::Unavailable(format!("{} did not appear", dev.display())));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        write_str(&guard.sysfs("disksize"), &size_bytes.to_string())?;
        let dev_str = dev.to_string_lossy().into_owned();
        run("mkswap", &[&dev_str])?;
        run("swapon", &["-p", SWAP_PRIORITY, &dev_str])?;
        Ok(guard)
    }

    /// The block device, e.g. `/dev/zram1`.
    pub fn device(&self) -> PathBuf {
        PathBuf::from(format!("/dev/zram{}", self.id))
    }

    fn sysfs(&self, file: &str) -> PathBuf {
        PathBuf::from(format!("/sys/block/zram{}/{file}", self.id))
    }

    /// Its uncompressed capacity.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Swap currently used on it (`/proc/swaps`).
    pub fn used_bytes(&self) -> u64 {
        used_on(&self.device().to_string_lossy())
    }

    /// Compression statistics.
    pub fn stats(&self) -> Result<ZramStats, BenchError> {
        let text = read_trimmed(&self.sysfs("mm_stat"))?;
        let v: Vec<u64> = text.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        Ok(ZramStats {
            orig_data_bytes: v.first().copied().unwrap_or(0),
            compr_data_bytes: v.get(1).copied().unwrap_or(0),
            mem_used_total_bytes: v.get(2).copied().unwrap_or(0),
        })
    }
}

impl Drop for Zram {
    fn drop(&mut self) {
        cleanup::finish(self.token);
    }
}

fn release_zram(id: u32, hot_added: bool) {
    swapoff(&format!("/dev/zram{id}"));
    let _ = std::fs::write(format!("/sys/block/zram{id}/reset"), "1");
    if hot_added {
        if let Err(e) = std::fs::write("/sys/class/zram-control/hot_remove", id.to_string()) {
            tracing::warn!("cannot hot_remove zram{id}: {e}");
        }
    }
}

fn ensure_zram_module() -> Result<(), BenchError> {
    let present = || Path::new("/sys/class/zram-control").exists() || Path::new("/sys/block/zram0").exists();
    if present() {
        return Ok(());
    }
    if !have_program("modprobe") {
        return Err(BenchError::Unavailable("zram not loaded and no modprobe".into()));
    }
    run("modprobe", &["zram"]).map_err(|e| BenchError::Unavailable(format!("zram module: {e}")))?;
    if present() {
        Ok(())
    } else {
        Err(BenchError::Unavailable("zram module loaded but no device appeared".into()))
    }
}

/// Whether a backend can run here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// It can run.
    Ok,
    /// It cannot; the reason is printed and the bench moves on.
    Skipped(String),
}

impl Availability {
    /// Whether it can run.
    pub fn is_ok(&self) -> bool {
        matches!(self, Availability::Ok)
    }
}

/// Availability of the two kernel-swap backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapAvailability {
    /// `swap-disk`.
    pub disk: Availability,
    /// `swap-zram`.
    pub zram: Availability,
}

/// Checks, without changing anything except loading the zram module if needed, whether
/// `swap-disk` (a file of `swap_bytes` at `swap_file`) and `swap-zram` can run.
pub fn availability(swap_file: &Path, swap_bytes: u64) -> SwapAvailability {
    let common = common_reason();
    let disk = match &common {
        Some(reason) => Availability::Skipped(reason.clone()),
        None => disk_reason(swap_file, swap_bytes).map_or(Availability::Ok, Availability::Skipped),
    };
    let zram = match common {
        Some(reason) => Availability::Skipped(reason),
        None => match ensure_zram_module() {
            Ok(()) => Availability::Ok,
            Err(e) => Availability::Skipped(e.to_string()),
        },
    };
    SwapAvailability { disk, zram }
}

fn common_reason() -> Option<String> {
    if !is_root() {
        return Some("not root (swapon and cgroups need root)".into());
    }
    if memory_controller().is_none() {
        return Some("no memory cgroup controller mounted".into());
    }
    if let Some(p) = ["mkswap", "swapon", "swapoff"].into_iter().find(|p| !have_program(p)) {
        return Some(format!("`{p}` not found (util-linux)"));
    }
    ensure_no_swap_active().err().map(|e| e.to_string())
}

fn disk_reason(swap_file: &Path, swap_bytes: u64) -> Option<String> {
    let dir = swap_file.parent().unwrap_or(Path::new("/"));
    let c_dir = std::ffi::CString::new(dir.to_string_lossy().as_bytes()).ok()?;
    // SAFETY: `statvfs` is plain old data, so all-zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_dir` is a valid NUL-terminated string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c_dir.as_ptr(), &mut st) } != 0 {
        return Some(format!("{} not usable for a swap file", dir.display()));
    }
    let free_bytes = st.f_bavail as u64 * st.f_frsize as u64;
    let margin_bytes = 1 << 30;
    (free_bytes < swap_bytes + margin_bytes)
        .then(|| format!("{} has {} MiB free, need {} MiB", dir.display(), free_bytes >> 20, swap_bytes >> 20))
}

/// Exclusive right to change swap and bench cgroups on this machine, held for the whole
/// bench (`flock` on `/run/krak-bench/lock`, released when dropped or on exit).
#[derive(Debug)]
pub struct Session {
    _lock: std::fs::File,
}

impl Session {
    /// Waits up to `wait_ms` for the lock, installs the cleanup signal handler, then removes
    /// leftovers of a previous crashed run.
    pub fn begin(wait_ms: u64) -> Result<Self, BenchError> {
        std::fs::create_dir_all(STATE_DIR).map_err(|e| BenchError::io(format!("mkdir {STATE_DIR}"), e))?;
        let path = Path::new(STATE_DIR).join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| BenchError::io(format!("open {}", path.display()), e))?;
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        loop {
            // SAFETY: `file` is an open descriptor; LOCK_NB makes the call non-blocking.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(BenchError::Unavailable("another krak bench holds /run/krak-bench/lock".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        install_signal_cleanup();
        cleanup_leftovers();
        Ok(Session { _lock: file })
    }
}

/// Removes what a crashed run may have left: tasks and `krak-bench-*` cgroups, our swap
/// file, and zram devices recorded in [`STATE_DIR`]. Only call it holding a [`Session`].
pub fn cleanup_leftovers() {
    let cgroups = crate::cgroup::leftover_cgroups();
    for cg in &cgroups {
        if let Ok(procs) = std::fs::read_to_string(cg.join("cgroup.procs")) {
            for pid in procs.split_whitespace().filter_map(|p| p.parse::<libc::pid_t>().ok()) {
                eprintln!("krak-bench: killing leftover worker {pid} in {}", cg.display());
                // SAFETY: `kill` has no memory-safety preconditions; the pid is a task of a
                // krak-bench cgroup, i.e. an orphaned bench worker.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    if Path::new(DEFAULT_SWAP_FILE).exists() {
        eprintln!("krak-bench: removing leftover {DEFAULT_SWAP_FILE}");
        swapoff(DEFAULT_SWAP_FILE);
        let _ = std::fs::remove_file(DEFAULT_SWAP_FILE);
    }
    for entry in std::fs::read_dir(STATE_DIR).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("zram").and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let hot_added = std::fs::read_to_string(entry.path()).is_ok_and(|s| s == "hot_added");
        eprintln!("krak-bench: releasing leftover zram{id}");
        release_zram(id, hot_added);
        let _ = std::fs::remove_file(entry.path());
    }
    for cg in &cgroups {
        eprintln!("krak-bench: removing leftover cgroup {}", cg.display());
        crate::cgroup::remove_cgroup(cg);
    }
}

const ZSWAP_ENABLED: &str = "/sys/module/zswap/parameters/enabled";

/// zswap (a compressed cache in RAM in front of the swap devices) turned on while held, and
/// put back as it was when dropped. Only with a [`Session`].
#[derive(Debug)]
pub struct Zswap {
    was: String,
}

impl Zswap {
    pub fn enable() -> Result<Zswap, BenchError> {
        let was = std::fs::read_to_string(ZSWAP_ENABLED)
            .map_err(|e| BenchError::io(format!("read {ZSWAP_ENABLED} (a kernel without zswap?)"), e))?;
        std::fs::write(ZSWAP_ENABLED, "Y").map_err(|e| BenchError::io(format!("write Y to {ZSWAP_ENABLED}"), e))?;
        Ok(Zswap { was: was.trim().to_string() })
    }
}

impl Drop for Zswap {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(ZSWAP_ENABLED, &self.was) {
            eprintln!("krak-bench: could not put zswap back to {:?}: {e}", self.was);
        }
    }
}
