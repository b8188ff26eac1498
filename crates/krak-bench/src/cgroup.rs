//! A memory cgroup that limits one worker process's resident memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cleanup::{self, Token};
use crate::sys::{read_trimmed, write_str};
use crate::BenchError;

/// Prefix of every cgroup the bench creates; leftovers with it are removed at start.
pub const CGROUP_PREFIX: &str = "krak-bench-";

/// Which cgroup hierarchy holds the memory controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy hierarchy (`memory.limit_in_bytes`).
    V1,
    /// Unified hierarchy (`memory.max`).
    V2,
}

/// Where the memory controller is and where the bench creates its cgroups.
#[derive(Debug, Clone)]
pub struct MemoryController {
    /// Hierarchy version.
    pub version: CgroupVersion,
    /// Mount point of the hierarchy.
    pub mount: PathBuf,
    /// Directory new cgroups are created in. On v1 this is the cgroup of the current
    /// process (so that limits above it still apply), on v2 the root (the only place free
    /// of the no-internal-processes rule).
    pub parent: PathBuf,
}

/// Finds the memory controller: v1 `memory` mount first, else a v2 mount offering `memory`.
pub fn memory_controller() -> Option<MemoryController> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let fields = |line: &str| -> Option<(String, String, String)> {
        let mut it = line.split_whitespace();
        let (_, mnt, fstype, opts) = (it.next()?, it.next()?, it.next()?, it.next()?);
        Some((mnt.to_string(), fstype.to_string(), opts.to_string()))
    };
    let entries: Vec<_> = mounts.lines().filter_map(fields).collect();
    if let Some((mnt, _, _)) =
        entries.iter().find(|(_, fstype, opts)| fstype == "cgroup" && opts.split(',').any(|o| o == "memory"))
    {
        let mount = PathBuf::from(mnt);
        let own = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|s| {
            s.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers.split(',').any(|c| c == "memory").then(|| path.to_string())
            })
        });
        let parent = own
            .map(|p| mount.join(p.trim_start_matches('/')))
            .filter(|p| p.join("cgroup.procs").exists())
            .unwrap_or_else(|| mount.clone());
        return Some(MemoryController { version: CgroupVersion::V1, parent, mount });
    }
    entries.iter().find_map(|(mnt, fstype, _)| {
        let mount = PathBuf::from(mnt);
        let controllers = std::fs::read_to_string(mount.join("cgroup.controllers")).ok()?;
        (fstype == "cgroup2" && controllers.split_whitespace().any(|c| c == "memory")).then(|| MemoryController {
            version: CgroupVersion::V2,
            parent: mount.clone(),
            mount,
        })
    })
}

/// A memory cgroup `krak-bench-<name>` with a hard limit, removed on drop (its tasks are
/// moved to the parent cgroup first).
#[derive(Debug)]
pub struct MemoryCgroup {
    path: PathBuf,
    version: CgroupVersion,
    limit_bytes: u64,
    token: Token,
}

impl MemoryCgroup {
    /// Creates `krak-bench-<name>` limited to `limit_bytes` of memory (swap not limited),
    /// with swappiness 60 on v1. An existing cgroup of that name (a leftover) is removed.
    pub fn create(name: &str, limit_bytes: u64) -> Result<Self, BenchError> {
        if name.is_empty() || name.contains('/') || name.contains("..") {
            return Err(BenchError::Invalid(format!("bad cgroup name {name:?}")));
        }
        let ctl =
            memory_controller().ok_or_else(|| BenchError::Unavailable("no memory cgroup controller mounted".into()))?;
        let path = ctl.parent.join(format!("{CGROUP_PREFIX}{name}"));
        if path.exists() {
            remove_cgroup(&path);
        }
        if ctl.version == CgroupVersion::V2 {
            // Best effort: the root must delegate the memory controller to its children.
            let _ = write_str(&ctl.parent.join("cgroup.subtree_control"), "+memory");
        }
        std::fs::create_dir(&path).map_err(|e| BenchError::io(format!("mkdir {}", path.display()), e))?;
        let undo_path = path.clone();
        let token = cleanup::register_undo(move || remove_cgroup(&undo_path));
        let cgroup = MemoryCgroup { path, version: ctl.version, limit_bytes, token };
        cgroup.set_limit(limit_bytes)?;
        if ctl.version == CgroupVersion::V1 {
            if let Err(e) = write_str(&cgroup.path.join("memory.swappiness"), "60") {
                tracing::debug!("cannot set swappiness: {e}");
            }
        }
        Ok(cgroup)
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file a process writes its pid into to join.
    pub fn procs_path(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// The hierarchy version.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The current memory limit.
    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// Changes the memory limit.
    pub fn set_limit(&self, limit_bytes: u64) -> Result<(), BenchError> {
        let file = match self.version {
            CgroupVersion::V1 => "memory.limit_in_bytes",
            CgroupVersion::V2 => "memory.max",
        };
        write_str(&self.path.join(file), &limit_bytes.to_string())
    }

    /// Memory currently charged to the cgroup.
    pub fn usage_bytes(&self) -> Result<u64, BenchError> {
        let file = match self.version {
            CgroupVersion::V1 => "memory.usage_in_bytes",
            CgroupVersion::V2 => "memory.current",
        };
        parse_u64(&self.path.join(file))
    }

    /// Swap currently used by the cgroup, if the kernel accounts it (v1 needs swap
    /// accounting: `memory.memsw.*`).
    pub fn swap_bytes(&self) -> Option<u64> {
        match self.version {
            CgroupVersion::V1 => {
                let memsw = parse_u64(&self.path.join("memory.memsw.usage_in_bytes")).ok()?;
                Some(memsw.saturating_sub(self.usage_bytes().ok()?))
            }
            CgroupVersion::V2 => parse_u64(&self.path.join("memory.swap.current")).ok(),
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        cleanup::finish(self.token);
    }
}

fn parse_u64(path: &Path) -> Result<u64, BenchError> {
    let text = read_trimmed(path)?;
    text.parse().map_err(|_| BenchError::Invalid(format!("{}: not a number: {text}", path.display())))
}

/// Moves every task of the cgroup at `path` to its parent and removes it (retrying while
/// the kernel still holds it busy). Errors are logged, not returned: this runs on drop.
pub(crate) fn remove_cgroup(path: &Path) {
    let parent_procs = match path.parent() {
        Some(parent) => parent.join("cgroup.procs"),
        None => return,
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(procs) = std::fs::read_to_string(path.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                // Moving may fail for a task that is exiting; the retry loop covers it.
                let _ = std::fs::write(&parent_procs, pid);
            }
        }
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() > deadline => {
                tracing::error!("cannot remove cgroup {}: {e}", path.display());
                eprintln!("krak-bench: cannot remove cgroup {}: {e}", path.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Directories that may hold leftover `krak-bench-*` cgroups.
pub(crate) fn leftover_cgroups() -> Vec<PathBuf> {
    let Some(ctl) = memory_controller() else { return Vec::new() };
    let mut dirs = vec![ctl.parent.clone()];
    if ctl.mount != ctl.parent {
        dirs.push(ctl.mount.clone());
    }
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(CGROUP_PREFIX))
        .map(|e| e.path())
        .collect()
}
