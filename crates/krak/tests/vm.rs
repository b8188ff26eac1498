//! A Linux VM on rack memory: an unmodified guest (Debian's cloud kernel, a busybox
//! initramfs built here) with 1 GiB of RAM boots under QEMU (TCG) in `krak run --local
//! 256MiB`, writes and checks 400 MiB and a 200 MiB file inside the guest, and prints
//! checksums on its serial console, which must be those the same programs print on this
//! host. With `--redundancy ec:4+2`, two of the memory servers are killed while the guest
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

use common::{secret_file, spawn_and_read_line, Proc, TempDir, KRAK};

const MIB: u64 = 1 << 20;
const GUEST_RAM: &str = "1024M";
const LOCAL_BYTES: u64 = 256 * MIB;
/// QEMU's own memory besides guest RAM and the TCG code buffer (which are far memory),
/// and the pager's: docs/design.md ("A Linux VM on rack memory").
const OVERHEAD_BYTES: u64 = 64 * MIB;
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

fn preload_lib() -> PathBuf {
    Path::new(KRAK).with_file_name("deps").join("libkrak_preload.so")
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// The newest kernel in /boot.
fn kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
        .collect();
    kernels.sort();
    kernels.pop()
}

/// What the guest needs, or why it cannot run here.
struct Guest {
    qemu: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    /// The lines the guest must print, as this host prints them.
    expected: Vec<String>,
    _dir: TempDir,
}

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Whether an ELF-64 executable has no program interpreter (PT_INTERP): it runs alone.
fn is_static_elf(elf: &[u8]) -> bool {
    let u = |at: usize, n: usize| elf.get(at..at + n).map(|b| b.iter().rev().fold(0u64, |v, &x| v << 8 | x as u64));
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u(0x20, 8), u(0x36, 2), u(0x38, 2)) else { return false };
    elf.starts_with(b"\x7fELF")
        && (0..phnum).all(|i| u((phoff + i * phentsize) as usize, 4).is_some_and(|p_type| p_type != 3))
}

fn guest() -> Result<Guest, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("krak run needs a userfaultfd that serves kernel faults: run as root".into());
    }
    let qemu = on_path("qemu-system-x86_64").ok_or("qemu-system-x86_64 is not installed (qemu-system-x86)")?;
    let kernel = kernel().ok_or("no kernel in /boot (linux-image-cloud-amd64)")?;
    let busybox = Path::new("/bin/busybox");
    if !std::fs::read(busybox).is_ok_and(|elf| is_static_elf(&elf)) {
        return Err("no static /bin/busybox (busybox-static)".into());
    }
    on_path("cpio").ok_or("cpio is not installed")?;
    let dir = TempDir::new("vm");
    let root = dir.path().join("root");
    for d in ["bin", "dev", "proc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm");
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    std::fs::copy(data.join("init"), root.join("init")).unwrap();
    let memcheck = root.join("bin/memcheck");
    let cc = Command::new("cc")
        .args(["-O2", "-static", "-o"])
        .arg(&memcheck)
        .arg(data.join("memcheck.c"))
        .output()
        .map_err(|e| format!("cc: {e}"))?;
    if !cc.status.success() {
        return Err(format!("cc -static failed: {}", String::from_utf8_lossy(&cc.stderr)));
    }
    sh(&root, "chmod 755 init && find . | cpio -o -H newc --quiet > ../initrd");
    // The guest's lines, as this host prints them for the same programs and data.
    let mut expected = Vec::new();
    expected.push(sh(dir.path(), "root/bin/memcheck 400").trim().to_string());
    let md5 = sh(dir.path(), "head -c 209715200 /dev/zero | tr '\\000' k | md5sum");
    expected.push(format!("{}  /tmp/f", md5.split_whitespace().next().unwrap()));
    expected.push(sh(dir.path(), "root/bin/memcheck 64").trim().to_string());
    expected.push("krak-guest: done".into());
    Ok(Guest { qemu, kernel, initrd: dir.path().join("initrd"), expected, _dir: dir })
}

/// The guest, or None (the reason printed) where it cannot run; under CI (which installs
/// everything it needs) a missing part is a failure, never a skip.
fn guest_or_skip() -> Option<Guest> {
    match guest() {
        Ok(g) => Some(g),
        Err(why) if std::env::var_os("CI").is_some() => panic!("{why} (.ci/run installs it)"),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

impl Guest {
    fn qemu_args(&self) -> Vec<String> {
        let mut args = vec![self.qemu.to_string_lossy().into_owned()];
        for a in ["-accel", "tcg", "-m", GUEST_RAM, "-nodefaults", "-no-user-config", "-display", "none"] {
            args.push(a.into());
        }
        for a in ["-serial", "stdio", "-monitor", "none", "-no-reboot", "-kernel"] {
            args.push(a.into());
        }
        args.push(self.kernel.to_string_lossy().into_owned());
        args.push("-initrd".into());
        args.push(self.initrd.to_string_lossy().into_owned());
        args.push("-append".into());
        args.push("console=ttyS0 quiet panic=-1".into());
        args
    }

    /// Boots the guest under `krak run OPTS`; `on_up` runs once the guest says it is up.
    /// Returns krak's exit code, the console's lines and the stats.
    fn boot(&self, opts: &[&str], on_up: impl FnOnce()) -> (Option<i32>, Vec<String>, Value) {
        let stats = self._dir.path().join(format!("stats-{}.json", opts.len()));
        let local = LOCAL_BYTES.to_string();
        let mut cmd = Command::new(KRAK);
        cmd.env("KRAK_PRELOAD", preload_lib())
            .args(["run", "--local", &local, "--stats", stats.to_str().unwrap()])
            .args(opts)
            .arg("--")
            .args(self.qemu_args())
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
        for want in &self.expected {
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
