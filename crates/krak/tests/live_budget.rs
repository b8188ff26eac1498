//! Live memory (issue 12, deliverables 2 and 3) on a rack of real processes: a `krak run`
//! program's region reports what it is doing (`krak status`, its JSON, `/metrics`), and
//! `krak budget pid:N` shrinks its local budget while it runs: its resident set follows
//! within seconds, and the program still reads back every byte it wrote. Without a
//! controller, `krak budget pid:N` asks the program's pager process over its socket. A
//! `krak demo` region on the rack is shrunk and grown the same way while its verified
//! workload runs.

mod controller_common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use controller_common::*;

/// The controller's `/metrics` (open to scrapers without the secret).
fn get_metrics(url: &str) -> String {
    use std::io::Read;
    let host = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn a_running_program_reports_its_region_and_follows_a_new_budget() {
    let dir = TempDir::new("live-budget");
    let store = dir.path().join("store");
    let (_ctl, url) = controller("127.0.0.1:0", &["--store", store.to_str().unwrap()]);
    let _servers: Vec<_> = (1..=2).map(|i| memserver(&url, &format!("rack1/host{i}"), "192MiB")).collect();
    wait_alive(&url, 2);

    let args = ["--controller", &url, "--local", "64MiB", "--max-far", "256MiB"];
    let (mut program, mut lines, pid) = start_program(&args, Some(secret_file()), &pattern_program(96));

    // The region's pager reports: the program's pid, its budget, its pages mostly remote.
    let (region, _) = wait_for(Duration::from_secs(10), "the region's report", || {
        let st = status(&url).ok()?;
        let r = st["regions"].as_array()?.iter().find(|r| r["live"]["pid"] == pid)?.clone();
        (r["live"]["used_bytes"].as_u64()? >= 32 << 20).then_some(r)
    });
    let live = &region["live"];
    assert_eq!(live["local_budget_bytes"], 64u64 << 20, "{region:#}");
    // Mapped pages never exceed the budget (docs/design.md, "The budget invariant").
    assert!(live["resident_bytes"].as_u64().unwrap() <= 64 << 20, "{region:#}");
    assert!(live["reserved_bytes"].as_u64().unwrap() >= 32 << 20, "{region:#}");
    assert!(region["live_age_ms"].as_u64().unwrap() <= 2_000, "{region:#}");
    let table = krak_ok(&["status", "--controller", &url]);
    assert!(table.contains("RESIDENT") && table.contains(&format!("{pid}@")), "{table}");
    let id = region["id"].as_u64().unwrap();

    // An unknown target is refused with the known ones.
    let out = krak(&["budget", "999", "16MiB", "--controller", &url]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no region \"999\"") && err.contains(&format!("pid:{pid}")), "{err}");

    // Shrink it by pid while the program runs: confirmed, and the resident set follows.
    let answer = krak_ok(&["budget", &format!("pid:{pid}"), "16MiB", "--json", "--controller", &url]);
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["region"], id, "{answer:#}");
    assert_eq!(
        (answer["previous_local_budget_bytes"].as_u64(), answer["confirmed"].as_bool()),
        (Some(64 << 20), Some(true))
    );
    wait_for(Duration::from_secs(10), "the resident set under the new budget", || {
        let st = status(&url).ok()?;
        let r = st["regions"].as_array()?.iter().find(|r| r["id"] == id)?.clone();
        (r["live"]["resident_bytes"].as_u64()? <= 16 << 20 && r["local_budget_bytes"] == 16u64 << 20).then_some(())
    });
    // And grow it again: the pager lets the region keep more (the program's check below
    // faults every page back in).
    let grown = krak_ok(&["budget", &id.to_string(), "48MiB", "--json", "--controller", &url]);
    let grown: serde_json::Value = serde_json::from_str(&grown).unwrap();
    assert_eq!(
        (grown["previous_local_budget_bytes"].as_u64(), grown["confirmed"].as_bool()),
        (Some(16 << 20), Some(true))
    );
    let metrics = get_metrics(&url);
    let series = format!("krak_region_local_budget_bytes{{region=\"{id}\"}} {}", 48u64 << 20);
    assert!(metrics.contains(&series) && metrics.contains("krak_region_resident_bytes{"), "{metrics}");

    // Every byte written is read back under the smaller budget.
    program.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let verdict = lines.next().expect("a verdict").expect("readable");
    assert_eq!(verdict, "verified");
    let (resident, _) = wait_for(Duration::from_secs(5), "a report of the grown region after the check", || {
        let st = status(&url).ok()?;
        let resident = st["regions"].as_array()?.iter().find(|r| r["id"] == id)?["live"]["resident_bytes"].as_u64()?;
        (resident > 16 << 20).then_some(resident)
    });
    assert!(resident <= 48 << 20, "within the grown budget: {resident}");
    let status = program.0.wait().unwrap();
    assert!(status.success(), "krak run: {status}");
}

#[test]
fn without_a_controller_the_program_s_pager_is_asked_directly() {
    let (mut program, mut lines, pid) =
        start_program(&["--local", "64MiB", "--max-far", "256MiB"], None, &pattern_program(96));
    let answer = krak_ok(&["budget", &format!("pid:{pid}"), "16MiB", "--json"]);
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["confirmed"], true, "{answer:#}");
    assert_eq!(answer["stats"]["local_budget_bytes"], 16u64 << 20, "{answer:#}");
    assert!(answer["stats"]["resident_bytes"].as_u64().unwrap() <= 16 << 20, "evicted before answering: {answer:#}");
    program.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(lines.next().expect("a verdict").expect("readable"), "verified");
    assert!(program.0.wait().unwrap().success());

    // Clear refusals: a process krak run did not start, a region id without a controller,
    // and a program whose pager runs inside it.
    let refused = |args: &[&str]| {
        let out = krak(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let me = std::process::id().to_string();
    let err = refused(&["budget", &format!("pid:{me}"), "16MiB"]);
    assert!(err.contains("is not a program `krak run` started"), "{err}");
    let err = refused(&["budget", "3", "16MiB"]);
    assert!(err.contains("needs --controller"), "{err}");
    let (mut program, mut lines, pid) = start_program(
        &["--pager", "in-process", "--local", "64MiB", "--max-far", "256MiB"],
        None,
        &pattern_program(96),
    );
    let err = refused(&["budget", &format!("pid:{pid}"), "16MiB"]);
    assert!(err.contains("runs its pager in-process"), "{err}");
    program.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(lines.next().expect("a verdict").expect("readable"), "verified");
    assert!(program.0.wait().unwrap().success());
}

#[test]
fn a_demo_region_is_shrunk_and_grown_while_its_verified_workload_runs() {
    let dir = TempDir::new("demo-budget");
    let store = dir.path().join("store");
    let (_ctl, url) = controller("127.0.0.1:0", &["--store", store.to_str().unwrap()]);
    let _servers: Vec<_> = (1..=3).map(|i| memserver(&url, &format!("rack1/host{i}"), "128MiB")).collect();
    wait_alive(&url, 3);
    let demo = Command::new(KRAK)
        .args(["demo", "--controller", &url, "--region", "96MiB", "--local", "48MiB", "--seconds", "8"])
        .args(["--secret-file", secret_file(), "--no-baseline", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo starts (it ends by itself after --seconds)");
    let pid = demo.id();
    let (id, _) = wait_for(Duration::from_secs(15), "the demo's region reporting", || {
        let st = status(&url).ok()?;
        let r = st["regions"].as_array()?.iter().find(|r| r["live"]["pid"] == pid)?.clone();
        (r["live"]["resident_bytes"].as_u64()? > 16 << 20).then(|| r["id"].as_u64()).flatten()
    });
    let shrunk = krak_ok(&["budget", &id.to_string(), "8MiB", "--json", "--controller", &url]);
    let shrunk: serde_json::Value = serde_json::from_str(&shrunk).unwrap();
    assert_eq!(shrunk["confirmed"], true, "{shrunk:#}");
    wait_for(Duration::from_secs(10), "the demo's resident set under 8 MiB", || {
        let st = status(&url).ok()?;
        let r = st["regions"].as_array()?.iter().find(|r| r["id"] == id)?.clone();
        (r["live"]["resident_bytes"].as_u64()? <= 8 << 20).then_some(())
    });
    let grown = krak_ok(&["budget", &id.to_string(), "64MiB", "--json", "--controller", &url]);
    let grown: serde_json::Value = serde_json::from_str(&grown).unwrap();
    assert_eq!(
        (grown["previous_local_budget_bytes"].as_u64(), grown["confirmed"].as_bool()),
        (Some(8 << 20), Some(true))
    );
    wait_for(Duration::from_secs(10), "the demo's region keeping more than 8 MiB again", || {
        let st = status(&url).ok()?;
        let r = st["regions"].as_array()?.iter().find(|r| r["id"] == id)?.clone();
        (r["live"]["resident_bytes"].as_u64()? > 8 << 20).then_some(())
    });
    // The demo checks every read and every page at the end: all of it right.
    let out = demo.wait_with_output().expect("demo ends");
    assert!(out.status.success(), "demo failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["verified"], true, "{report:#}");
    assert_eq!(report["pages_verified"], 96 * 256, "{report:#}");
}
