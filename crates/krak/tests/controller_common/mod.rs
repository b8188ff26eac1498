//! Real `krak controller` and `krak memserver` processes for the controller tests; every
//! child is killed (SIGKILL) and reaped on drop, also when a test fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const KRAK: &str = env!("CARGO_BIN_EXE_krak");

/// A child process, SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    pub fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!("krak-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Spawns `krak ARGS` and returns it with the first line it prints (within 10 s).
pub fn spawn_and_read_line(args: &[&str]) -> (Proc, String) {
    let mut command = Command::new(KRAK);
    command.args(args);
    spawn_command_and_read_line(command, &format!("krak {args:?}"))
}

/// Spawns `command` (named `what` in failures) and returns it with the first line it prints
/// (within 10 s).
pub fn spawn_command_and_read_line(mut command: Command, what: &str) -> (Proc, String) {
    // Every process of a test rack shares the test's secret.
    command.env("KRAK_SECRET_FILE", secret_file());
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("krak runs");
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // keep reading so the child never blocks on a full pipe
        let mut rest = String::new();
        while reader.read_line(&mut rest).is_ok_and(|n| n > 0) {
            rest.clear();
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("{what} printed nothing"));
    assert!(!line.is_empty(), "{what} exited without printing its address");
    (proc, line)
}

/// `krak controller --listen LISTEN EXTRA...`: the process and its URL.
pub fn controller(listen: &str, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["controller", "--listen", listen];
    args.extend_from_slice(extra);
    let (proc, line) = spawn_and_read_line(&args);
    let url = line.trim().strip_prefix("krak controller listening on ").unwrap_or_else(|| panic!("{line:?}"));
    assert!(url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"), "{line:?}");
    (proc, url.to_string())
}

/// One rack secret file per test process (mode 0600 in a private directory).
pub fn secret_file() -> &'static str {
    static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("krak-test-secret-{}-{:x}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("secret");
        krak_auth::write_new_secret_file(&path).unwrap();
        path.to_string_lossy().into_owned()
    })
}

/// `krak memserver` with 1 MiB slabs on a free loopback port, joined to `controller`.
pub fn memserver(controller: &str, domain: &str, capacity: &str) -> (Proc, SocketAddr) {
    memserver_with(controller, domain, capacity, &[])
}

/// [`memserver`] with `extra` arguments.
pub fn memserver_with(controller: &str, domain: &str, capacity: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut args = vec![
        "memserver",
        "--listen",
        "127.0.0.1:0",
        "--capacity",
        capacity,
        "--slab-size",
        "1MiB",
        "--controller",
        controller,
        "--domain",
        domain,
        "--secret-file",
        secret_file(),
    ];
    args.extend_from_slice(extra);
    let (proc, line) = spawn_and_read_line(&args);
    let addr = line.split_whitespace().nth(4).and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{line:?}"));
    (proc, addr)
}

/// Runs `krak ARGS` to completion (its calls to the controller time out after 5 s).
pub fn krak(args: &[&str]) -> Output {
    Command::new(KRAK)
        .args(args)
        .env_remove("KRAK_CONTROLLER")
        .env("KRAK_SECRET_FILE", secret_file())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `krak ARGS` that must succeed: its stdout.
pub fn krak_ok(args: &[&str]) -> String {
    let out = krak(args);
    assert!(out.status.success(), "krak {args:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `krak status --json`, or the error it printed.
pub fn status(controller: &str) -> Result<Value, String> {
    let out = krak(&["status", "--json", "--controller", controller]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).expect("status --json prints JSON"))
}

/// The server with address `addr` in a status.
pub fn server(status: &Value, addr: SocketAddr) -> Option<&Value> {
    status["servers"].as_array()?.iter().find(|s| s["addr"] == addr.to_string())
}

/// Polls `f` until it gives `Some` or `timeout` passes; returns it with the time it took.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, t0.elapsed());
        }
        assert!(t0.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a pipe to its end on a thread (so the child never blocks on a full pipe).
pub fn read_all(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    })
}

/// A `krak run` child, stopped on drop if a test fails before it ends: SIGTERM first, which
/// `krak run` passes to the program before it stops its pager and loopback rack (SIGKILL
/// would leave those behind), SIGKILL only if it is still there 10 s later.
pub struct Program(pub std::process::Child);

impl Drop for Program {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while matches!(self.0.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `krak run ARGS -- python3 -c PROGRAM` (which prints `ready PID` first; with the rack
/// secret `secret_file` where it runs on a rack of ours), after its `ready`: the child, its
/// stdout lines and the program's pid.
pub fn start_program(
    args: &[&str],
    secret_file: Option<&str>,
    program: &str,
) -> (Program, std::io::Lines<BufReader<std::process::ChildStdout>>, u32) {
    let mut command = Command::new(KRAK);
    if let Some(file) = secret_file {
        command.env("KRAK_SECRET_FILE", file);
    }
    let mut program = Program(
        command
            .arg("run")
            .args(args)
            .args(["--", "python3", "-c", program])
            .env_remove("KRAK_CONTROLLER")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("krak run starts"),
    );
    let mut lines = BufReader::new(program.0.stdout.take().unwrap()).lines();
    let ready = lines.next().expect("a line").expect("readable");
    let pid = ready.strip_prefix("ready ").and_then(|p| p.trim().parse().ok()).unwrap_or_else(|| panic!("{ready:?}"));
    (program, lines, pid)
}

/// A Python program for [`start_program`]: fills `mib` MiB with a pattern, says `ready PID`,
/// waits for a line on stdin, then checks every byte, says `verified` (or how many pages
/// were wrong), and exits at the next line (or the end of its stdin).
pub fn pattern_program(mib: u32) -> String {
    pattern_program_then(mib, "")
}

/// [`pattern_program`] that runs the Python statements `after_check` after `verified`.
pub fn pattern_program_then(mib: u32, after_check: &str) -> String {
    format!(
        r#"
import os, sys
n = {mib} << 20
b = bytearray(n)
pattern = bytes((i * 7 + 3) & 0xff for i in range(4096))
for off in range(0, n, 4096):
    b[off:off + 4096] = pattern
print("ready", os.getpid(), flush=True)
sys.stdin.readline()
bad = sum(1 for off in range(0, n, 4096) if b[off:off + 4096] != pattern)
print("verified" if bad == 0 else f"BAD {{bad}} pages", flush=True)
{after_check}
sys.stdin.readline()
"#
    )
}

/// A Python program for [`start_program`] whose hot set changes size over time, for the
/// memory broker: fills `mib` MiB (page `i` holds `i` over and over), says `ready PID`,
/// then at a line `go T0 PERIOD_S PHASES` reads random pages of its hot set, checking each,
/// for PHASES phases of PERIOD_S seconds from the Unix time T0: `hot_mib` MiB in the phases
/// of parity `hot_parity`, `cold_mib` in the others. It prints `phase K OPS` after each,
/// checks every page (`verified`, or how many were wrong) and exits at the next line.
pub fn phased_program(mib: u32, hot_mib: u32, cold_mib: u32, hot_parity: u32) -> String {
    format!(
        r#"
import os, sys, time, random
pages = {mib} * 256
b = bytearray(pages * 4096)
for i in range(pages):
    b[i * 4096:(i + 1) * 4096] = i.to_bytes(4, "little") * 1024
print("ready", os.getpid(), flush=True)
_, t0, period, phases = sys.stdin.readline().split()
t0, period, phases = float(t0), float(period), int(phases)
wrong = 0
while time.time() < t0:
    time.sleep(0.01)
for k in range(phases):
    hot = ({hot_mib} if k % 2 == {hot_parity} else {cold_mib}) * 256
    end = t0 + (k + 1) * period
    ops = 0
    while True:
        for _ in range(256):
            i = random.randrange(hot)
            off = i * 4096 + random.randrange(1024) * 4
            if b[off:off + 4] != i.to_bytes(4, "little"):
                wrong += 1
        ops += 256
        if time.time() >= end:
            break
    print("phase", k, ops, flush=True)
bad = sum(1 for i in range(pages) if b[i * 4096:(i + 1) * 4096] != i.to_bytes(4, "little") * 1024)
print("verified" if bad == 0 and wrong == 0 else f"BAD {{bad}} pages, {{wrong}} reads", flush=True)
sys.stdin.readline()
"#
    )
}

/// This host's name as pagers report it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}

/// Waits (10 s at most) until the controller at `url` counts `n` servers alive.
pub fn wait_alive(url: &str, n: usize) {
    wait_for(Duration::from_secs(10), &format!("{n} alive servers"), || {
        let st = status(url).ok()?;
        (st["servers"].as_array()?.iter().filter(|s| s["state"] == "alive").count() == n).then_some(())
    });
}
