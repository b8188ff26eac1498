//! `krak demo --redundancy SCHEME --kill-servers N`: the real binary on memory server
//! processes, SIGKILLed one by one mid-run; the verified workload must go on and every page
//! read back right.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const KRAK: &str = env!("CARGO_BIN_EXE_krak");

fn demo(scheme: &str, kills: usize) -> Value {
    let kills_arg = kills.to_string();
    let args = [
        "demo",
        "--json",
        "--region",
        "64MiB",
        "--local",
        "16MiB",
        "--slab-size",
        "4MiB",
        "--seconds",
        "6",
        "--no-baseline",
        "--redundancy",
        scheme,
        "--kill-servers",
        &kills_arg,
    ];
    let mut child = Command::new(KRAK)
        .args(args)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("krak runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("krak demo {scheme} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "krak demo {scheme} failed: {}\n{stdout}\n{}",
        out.status,
        stderr.chars().take(4000).collect::<String>()
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn check(r: &Value, scheme: &str, kills: usize, servers: usize) {
    let p = &r["pager"];
    let u = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} is not a number: {r}"));
    assert_eq!(r["verified"], Value::Bool(true), "{r}");
    assert_eq!(u(r, "mismatches"), 0);
    assert_eq!(u(r, "pages_verified"), u(r, "pages_total"), "every page was read back");
    assert_eq!(r["redundancy"].as_str(), Some(scheme));
    assert_eq!(p["redundancy"].as_str(), Some(scheme));
    assert_eq!(r["servers"].as_array().map(|s| s.len()), Some(servers), "{r}");
    assert_eq!(r["servers_killed"].as_array().map(|k| k.len()), Some(kills), "{r}");
    assert_eq!(u(p, "lost_servers"), kills as u64, "{r}");
    assert!(u(p, "degraded_reads") > 0, "reads went around the killed servers: {r}");
    assert_eq!(u(p, "failed_faults"), 0, "{r}");
}

#[test]
fn ec_4_2_demo_survives_two_server_processes_killed() {
    // One server per fragment plus a spare.
    check(&demo("ec:4+2", 2), "ec:4+2", 2, 7);
}

#[test]
fn replicate_2_demo_survives_one_server_process_killed() {
    check(&demo("replicate:2", 1), "replicate:2", 1, 3);
}

#[test]
fn demo_refuses_a_bad_scheme_with_a_clear_error() {
    let out = Command::new(KRAK).args(["demo", "--redundancy", "ec:3+2"]).stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("expected none, replicate:N"), "{stderr}");
}
