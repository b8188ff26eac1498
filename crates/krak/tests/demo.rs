//! The real `krak demo` binary: a small verified run, its JSON report, its argument checks,
//! its help, and that it leaves no memory server running behind it.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const KRAK: &str = env!("CARGO_BIN_EXE_krak");
const PAGE: u64 = 4096;

/// Pids of live (not zombie) processes whose parent is `parent` and whose command line is
/// `krak memserver ...`.
fn memserver_children(parent: u32) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Some((ppid, state)) = parent_and_state(pid) {
            if ppid == parent && state != 'Z' && is_memserver(pid) {
                out.insert(pid);
            }
        }
    }
    out
}

/// (parent pid, state letter) from /proc/PID/stat.
fn parent_and_state(pid: u32) -> Option<(u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses, so split at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

fn is_memserver(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.len() >= 2 && args[0].ends_with(b"krak") && args[1] == b"memserver"
}

/// Still running (and not a zombie)?
fn alive(pid: u32) -> bool {
    parent_and_state(pid).is_some_and(|(_, state)| state != 'Z')
}

#[test]
fn demo_verifies_every_page_keeps_to_its_budget_and_cleans_up() {
    let region: u64 = 64 << 20;
    let mut child = Command::new(KRAK)
        .args(["demo", "--json", "--region", "64MiB", "--local", "16MiB", "--ops", "20000", "--slab-size", "4MiB"])
        // every op is run however slow a busy host makes them (the 120 s deadline below bounds it)
        .args(["--max-seconds", "110"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("krak runs");
    let demo_pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).map(|_| s)
    });

    // Watch the demo's children while it runs: its memory servers.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut servers_seen = BTreeSet::new();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        servers_seen.extend(memserver_children(demo_pid));
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("krak demo did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_reader.join().unwrap().unwrap();
    let stderr = err_reader.join().unwrap().unwrap();
    assert!(status.success(), "krak demo failed: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}");

    // No memory server outlives the demo.
    assert_eq!(servers_seen.len(), 3, "the demo ran 3 memory servers as its children: {servers_seen:?}");
    let gone_by = Instant::now() + Duration::from_secs(5);
    while servers_seen.iter().any(|p| alive(*p) && is_memserver(*p)) && Instant::now() < gone_by {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<u32> = servers_seen.iter().copied().filter(|p| alive(*p) && is_memserver(*p)).collect();
    assert!(left.is_empty(), "memory servers still running after the demo exited: {left:?}");

    let r: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    let u = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} is not a number: {r}"));
    let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} is not a number: {r}"));
    assert_eq!(r["verified"], Value::Bool(true), "{r}");
    assert_eq!(u("mismatches"), 0);
    assert_eq!(u("region_bytes"), region);
    assert_eq!(u("pages_verified"), region / PAGE, "every page was read back");
    assert_eq!(u("pages_total"), region / PAGE);

    let budget = u("local_budget_bytes");
    let peak = u("local_peak_bytes");
    assert_eq!(budget, 16 << 20);
    assert!(peak > 0, "the sampler saw the region resident at all");
    assert!(peak as f64 <= budget as f64 * 1.01, "local peak {peak} above the budget {budget}");
    assert_eq!(u("local_budget_exceeded_samples"), 0);

    let servers = r["servers"].as_array().expect("servers is an array");
    assert_eq!(servers.len(), 3, "{r}");
    let mut remote = 0;
    for s in servers {
        let addr: SocketAddr = s["addr"].as_str().expect("addr").parse().expect("addr is host:port");
        assert!(addr.ip().is_loopback());
        let bytes = s["bytes"].as_u64().expect("bytes");
        assert!(bytes <= s["reserved_bytes"].as_u64().expect("reserved_bytes"), "{s}");
        remote += bytes;
    }
    // Every page was written; at most the budget is resident, so the rest lives remotely.
    assert!(remote > 0 && remote <= region, "remote bytes {remote}");
    assert!(remote >= region - budget, "remote bytes {remote}: pages outside the budget must be remote");

    let (p50, p99) = (f("fault_p50_us"), f("fault_p99_us"));
    assert!(p50 > 0.0, "fault p50 {p50}");
    assert!(p99 >= p50, "fault p99 {p99} < p50 {p50}");
    assert_eq!(r["krak"]["ops"].as_u64(), Some(20_000));
    assert_eq!(r["pager"]["failed_faults"].as_u64(), Some(0), "{r}");
}

#[test]
fn demo_refuses_a_budget_larger_than_the_region() {
    let out = Command::new(KRAK)
        .args(["demo", "--local", "2GiB", "--region", "1GiB"])
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .expect("krak runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a --local above --region must fail");
    assert!(stderr.contains("--local"), "the error names --local: {stderr}");
    assert!(stderr.contains("--region"), "the error names --region: {stderr}");
    assert!(stderr.lines().count() <= 3, "a short message, not a backtrace: {stderr}");
}

#[test]
fn demo_help_explains_the_flags() {
    let out = Command::new(KRAK).args(["demo", "--help"]).output().expect("krak runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--region", "--local", "--servers", "--slab-size", "--ops", "--seed", "--json", "--no-baseline"] {
        assert!(help.contains(flag), "demo --help mentions {flag}:\n{help}");
    }
    assert!(help.contains("local budget"), "--local is explained:\n{help}");
    assert!(help.contains("Exits 0 only when every page"), "the exit status is explained:\n{help}");
}

#[test]
fn top_level_help_lists_every_command_with_a_description() {
    let out = Command::new(KRAK).arg("--help").output().expect("krak runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["memserver", "demo", "bench"] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{command} ")))
            .unwrap_or_else(|| panic!("krak --help lists {command}:\n{help}"));
        assert!(line.split_whitespace().count() > 3, "{command} has a one-line description: {line:?}");
    }
    assert!(!help.contains("bench-worker"), "the internal worker stays hidden:\n{help}");
}
