//! A Linux VM on rack memory: an unmodified guest (Debian's cloud kernel, a busybox
//! initramfs built here) with 1 GiB of RAM boots under QEMU (TCG) in `krak run --local
//! 256MiB`, writes and checks 400 MiB and a 200 MiB file inside the guest, reads a 64 MiB
//! virtio disk (QEMU's preadv into far guest RAM), and prints checksums on its serial
//! console, which must be those the same programs print on this host. With `--redundancy ec:4+2`, two of the memory servers are killed while the guest
//! runs: it keeps running and its checksums stay right. Peak RSS is checked against the
//! budget plus the overhead docs/design.md states. Needs root, qemu-system-x86, a kernel
//! in /boot, busybox-static, cpio and a C compiler with static libc (`.ci/run` installs
//! them).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "controller_common/mod.rs"]
mod common;
#[path = "common/guest.rs"]
mod guest;

use common::{secret_file, spawn_and_read_line, Proc, TempDir, KRAK};
use guest::Guest;

const MIB: u64 = 1 << 20;
const LOCAL_BYTES: u64 = 256 * MIB;
/// QEMU's own memory besides guest RAM and the TCG code buffer (which are far memory),
/// and the pager's: docs/design.md ("A Linux VM on rack memory").
const OVERHEAD_BYTES: u64 = 64 * MIB;
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

fn preload_lib() -> PathBuf {
    Path::new(KRAK).with_file_name("deps").join("libkrak_preload.so")
}

/// The guest, or None (the reason printed) where it cannot run; under CI (which installs
/// everything it needs) a missing part is a failure, never a skip.
fn guest_or_skip() -> Option<Vm> {
    let dir = TempDir::new("vm");
    // SAFETY: geteuid has no preconditions.
    let built = if unsafe { libc::geteuid() } != 0 {
        Err("krak run needs a userfaultfd that serves kernel faults: run as root".into())
    } else {
        guest::build(dir.path())
    };
    match built {
        Ok(guest) => Some(Vm { guest, dir }),
        Err(why) if std::env::var_os("CI").is_some() => panic!("{why} (.ci/run installs it)"),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// The guest and the directory its initramfs and stats are in.
struct Vm {
    guest: Guest,
    dir: TempDir,
}

impl Vm {
    /// Boots the guest under `krak run OPTS`; `on_up` runs once the guest says it is up.
    /// Returns krak's exit code, the console's lines and the stats.
    fn boot(&self, opts: &[&str], on_up: impl FnOnce()) -> (Option<i32>, Vec<String>, Value) {
        let stats = self.dir.path().join(format!("stats-{}.json", opts.len()));
        let local = LOCAL_BYTES.to_string();
        let mut cmd = Command::new(KRAK);
        cmd.env("KRAK_PRELOAD", preload_lib())
            .args(["run", "--local", &local, "--stats", stats.to_str().unwrap()])
            .args(opts)
            .arg("--")
            .args(self.guest.qemu_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().expect("krak run starts");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let mut on_up = Some(on_up);
        let deadline = started + BOOT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("guest: {line}");
                    if line.contains("krak-guest: up") {
                        eprintln!("guest up after {:.1} s", started.elapsed().as_secs_f64());
                        if let Some(f) = on_up.take() {
                            f();
                        }
                    }
                    lines.push(line.trim_end_matches('\r').to_string());
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    panic!("the guest did not finish within {BOOT_TIMEOUT:?}: {lines:?}");
                }
            }
        }
        let status = child.wait().unwrap();
        eprintln!("krak run {opts:?}: the guest ran {:.1} s", started.elapsed().as_secs_f64());
        let stats: Value = serde_json::from_str(&std::fs::read_to_string(&stats).expect("--stats written")).unwrap();
        (status.code(), lines, stats)
    }

    /// The guest's checksums are this host's, and its memory was far memory within budget.
    fn check(&self, code: Option<i32>, lines: &[String], stats: &Value) {
        assert_eq!(code, Some(0), "krak run exit status; console: {lines:?}");
        for want in &self.guest.expected {
            assert!(lines.iter().any(|l| l.ends_with(want.as_str())), "the guest did not print {want:?}: {lines:?}");
        }
        let peak = stats["peak_rss_bytes"].as_u64().unwrap();
        let arena = &stats["arena"];
        eprintln!(
            "peak RSS {} MiB, arena resident peak {} MiB, fallbacks {}",
            peak / MIB,
            arena["peak_resident_bytes"].as_u64().unwrap_or(0) / MIB,
            arena["fallbacks"]
        );
        assert!(peak <= LOCAL_BYTES + OVERHEAD_BYTES, "QEMU's peak RSS {} MiB over budget + overhead", peak / MIB);
        assert_eq!(arena["fallback_allocations"], 0, "{stats}");
        assert!(arena["peak_resident_bytes"].as_u64().unwrap() <= LOCAL_BYTES, "{stats}");
        // The guest's RAM went to the servers and came back.
        let pager = &arena["pager"];
        assert!(pager["evictions_dirty"].as_u64().unwrap() > 50_000, "{stats}");
        assert!(pager["remote_reads"].as_u64().unwrap() > 10_000, "{stats}");
        assert_eq!(pager["failed_faults"], 0, "{stats}");
        assert_eq!(pager["over_budget_faults"], 0, "{stats}");
    }
}

#[test]
fn a_linux_guest_boots_on_rack_memory_and_its_checksums_hold() {
    let Some(guest) = guest_or_skip() else { return };
    let (code, lines, stats) = guest.boot(&[], || {});
    guest.check(code, &lines, &stats);
}

/// `krak memserver` on a free loopback port, with no controller: the process and its address.
fn memserver() -> (Proc, String) {
    let (proc, line) = spawn_and_read_line(&[
        "memserver",
        "--listen",
        "127.0.0.1:0",
        "--capacity",
        "1GiB",
        "--secret-file",
        secret_file(),
    ]);
    let addr = line.split_whitespace().nth(4).unwrap_or_else(|| panic!("{line:?}")).to_string();
    (proc, addr)
}

#[test]
fn an_erasure_coded_guest_survives_two_memory_servers_killed_while_it_runs() {
    let Some(guest) = guest_or_skip() else { return };
    // Six fragments per chunk, and two spares: chunks reserved after the kills still find six.
    let mut servers: Vec<(Proc, String)> = (0..8).map(|_| memserver()).collect();
    let list = servers.iter().map(|(_, a)| a.as_str()).collect::<Vec<_>>().join(",");
    let killed = &mut servers[..2];
    let opts = ["--servers", &list, "--secret-file", secret_file(), "--redundancy", "ec:4+2"];
    let (code, lines, stats) = guest.boot(&opts, || {
        // While the guest writes its 400 MiB: its pages are on the servers by then.
        std::thread::sleep(Duration::from_secs(3));
        for (proc, addr) in killed.iter_mut() {
            eprintln!("killing memory server {addr}");
            proc.kill();
        }
    });
    guest.check(code, &lines, &stats);
    let pager = &stats["arena"]["pager"];
    eprintln!("degraded reads {}, lost servers {}", pager["degraded_reads"], pager["lost_servers"]);
    assert_eq!(pager["lost_servers"], 2, "both killed servers were found lost: {stats}");
    assert!(pager["degraded_reads"].as_u64().unwrap() > 0, "pages were read around the lost servers: {stats}");
}
