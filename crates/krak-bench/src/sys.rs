//! Small helpers over /proc and external commands.

use std::path::Path;
use std::process::Command;

use crate::BenchError;

/// Major page faults of this process so far (`getrusage`).
pub(crate) fn major_faults() -> u64 {
    // SAFETY: `rusage` is plain old data, so all-zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage` for the duration of the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc == 0 {
        usage.ru_majflt as u64
    } else {
        0
    }
}

/// `VmSwap` of this process, in bytes.
pub(crate) fn vm_swap_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmSwap:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Whether this process runs as root (needed for swap and cgroups).
pub(crate) fn is_root() -> bool {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `program args...`, turning a non-zero exit into [`BenchError::Command`].
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, BenchError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| BenchError::Spawn { command: command.clone(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(BenchError::Command { command, status: out.status, stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `program` is found in `PATH` (or the usual sbin directories).
pub(crate) fn have_program(program: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .any(|dir| Path::new(dir).join(program).is_file());
    found
}

pub(crate) fn read_trimmed(path: &Path) -> Result<String, BenchError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| BenchError::io(format!("read {}", path.display()), e))
}

pub(crate) fn write_str(path: &Path, value: &str) -> Result<(), BenchError> {
    std::fs::write(path, value).map_err(|e| BenchError::io(format!("write {value:?} to {}", path.display()), e))
}
