//! The pager works for an unprivileged process too: with
//! `/proc/sys/vm/unprivileged_userfaultfd` at 0 it opens its userfaultfd with
//! `UFFD_USER_MODE_ONLY`, which is all it needs since only user code touches the region.
//!
//! Run as root, the test re-executes this very test binary as uid/gid 65534 (nobody), with
//! no capabilities, filtered to [`nonroot_child_run_by_pager_works_unprivileged`]; run as
//! anyone else, it runs the same body in-process.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use krak_pager::{UffdMode, PAGE_SIZE};
use rand::{Rng, SeedableRng};

/// Set in the environment of the re-executed child.
const CHILD_ENV: &str = "KRAK_NONROOT_CHILD";
/// The child's test (it does nothing unless `CHILD_ENV` is set).
const CHILD_TEST: &str = "nonroot_child_run_by_pager_works_unprivileged";
/// Printed by the body when it has verified everything.
const DONE_MARKER: &str = "krak-nonroot-ok";
const NOBODY: u32 = 65534;

fn euid() -> u32 {
    std::fs::metadata("/proc/self").expect("procfs").uid()
}

/// "Key:\tvalue" of /proc/self/status.
fn status_field(key: &str) -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// A shadow-checked random workload on a small region with two in-process memory servers.
fn pager_body() {
    let servers = servers(2, 16 << 20);
    let region_bytes: u64 = 8 << 20;
    let region = region(&servers, region_bytes, 1 << 20);

    let expected_mode = match std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd") {
        Ok(s) if s.trim() == "0" && euid() != 0 => Some(UffdMode::UserModeOnly),
        _ => None,
    };
    if let Some(mode) = expected_mode {
        assert_eq!(region.uffd_mode(), mode, "unprivileged, the pager must open its userfaultfd user-mode-only");
    }

    let words = region_bytes as usize / 8;
    let mut shadow = vec![0u64; words];
    let mut rng = rand::rngs::StdRng::seed_from_u64(65534);
    let mut mismatches = 0;
    for _ in 0..20_000 {
        let i = rng.gen_range(0..words);
        if rng.gen_bool(0.5) {
            let v = rng.gen();
            write_u64(&region, i * 8, v);
            shadow[i] = v;
        } else if read_u64(&region, i * 8) != shadow[i] {
            mismatches += 1;
        }
    }
    assert_eq!(mismatches, 0, "reads during the run differ from the shadow");
    assert_eq!(verify_all(&region, &shadow), 0, "pages differ from the shadow at the end");
    let stats = region.stats();
    assert!(stats.remote_reads > 0 && stats.remote_writes > 0, "pages went remote and came back: {stats:?}");
    assert_eq!(stats.failed_faults, 0);
    println!(
        "{DONE_MARKER}: euid {} mode {:?} CapEff {} Groups [{}]; {} pages verified, {} remote reads, {} remote writes",
        euid(),
        region.uffd_mode(),
        status_field("CapEff"),
        status_field("Groups"),
        region_bytes as usize / PAGE_SIZE,
        stats.remote_reads,
        stats.remote_writes
    );
    drop(region);
    for s in &servers {
        assert_eq!(s.stats().lent_bytes, 0, "dropping the region gives back every remote byte");
    }
}

/// A private 0755 copy of this test binary that uid 65534 can execute wherever the build
/// tree lives (a checkout under /root is not reachable for nobody).
struct ExeCopy {
    dir: PathBuf,
    exe: PathBuf,
}

impl ExeCopy {
    fn new() -> ExeCopy {
        let src = std::env::current_exe().expect("current test binary");
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!("krak-nonroot-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).expect("temp dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = dir.join("nonroot-test");
        std::fs::copy(&src, &exe).expect("copying the test binary");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        ExeCopy { dir, exe }
    }

    fn path(&self) -> &Path {
        &self.exe
    }
}

impl Drop for ExeCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn pager_works_unprivileged() {
    if euid() != 0 {
        // Already unprivileged: the body itself is the test.
        pager_body();
        return;
    }
    let copy = ExeCopy::new();
    let out = Command::new(copy.path())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, "1")
        .current_dir(&copy.dir)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .output()
        .expect("running the test binary as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("child stdout:\n{stdout}\nchild stderr:\n{stderr}");
    assert!(out.status.success(), "the unprivileged child failed: {}", out.status);
    assert!(stdout.contains("1 passed"), "the child ran its test");
    // (The harness prints "test NAME ... " before the body's output, on the same line.)
    let line =
        stdout.lines().find_map(|l| l.find(DONE_MARKER).map(|at| &l[at..])).expect("the child's body ran to the end");
    assert!(line.contains(&format!("euid {NOBODY} ")), "the child ran as nobody: {line}");
    assert!(line.contains("CapEff 0000000000000000"), "the child had no capabilities: {line}");
    if std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").is_ok_and(|s| s.trim() == "0") {
        assert!(line.contains("mode UserModeOnly"), "user-mode-only userfaultfd: {line}");
    }
}

/// Only does something inside the child that [`pager_works_unprivileged`] starts.
#[test]
fn nonroot_child_run_by_pager_works_unprivileged() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    assert_ne!(euid(), 0, "the child runs without root");
    pager_body();
}
