//! Regions owned by leases (issue 15, finding 7; issue 12): a `krak run` program whose
//! pager is SIGKILLed, and one whose in-process pager exits with the program, leave no
//! region in the controller beyond the lease, and no slab on the servers beyond their
//! grace; a program whose pager keeps reporting keeps its region and reads back every byte.

mod controller_common;

use std::io::Write;
use std::time::{Duration, Instant};

use controller_common::*;
use serde_json::Value;

const LEASE_MS: u64 = 3_000;
const GRACE_MS: u64 = 2_000;

/// The region a program of pid `pid` reports for, if the controller lists it.
fn region_of(status: &Value, pid: u32) -> Option<Value> {
    status["regions"].as_array()?.iter().find(|r| r["live"]["pid"] == pid).cloned()
}

/// The children of process `pid` (every thread's).
fn children(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

fn sigkill(pid: u32) {
    // SAFETY: kill(2) on a pid this test started (a child of its own `krak run` child).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

#[test]
fn regions_whose_pager_is_gone_are_reclaimed_and_a_live_one_is_kept() {
    let dir = TempDir::new("region-lease");
    let store = dir.path().join("store");
    let lease = LEASE_MS.to_string();
    let (_ctl, url) = controller("127.0.0.1:0", &["--store", store.to_str().unwrap(), "--region-lease-ms", &lease]);
    let grace = GRACE_MS.to_string();
    let _servers: Vec<_> =
        (1..=2).map(|i| memserver_with(&url, &format!("rack1/host{i}"), "256MiB", &["--grace-ms", &grace])).collect();
    wait_alive(&url, 2);

    let run = |extra: &[&str]| {
        let mut args = vec!["--controller", url.as_str(), "--local", "16MiB", "--max-far", "64MiB"];
        args.extend_from_slice(extra);
        start_program(&args, Some(secret_file()), &pattern_program(48))
    };
    let (mut victim, _victim_lines, victim_pid) = run(&[]);
    let (mut survivor, mut survivor_lines, survivor_pid) = run(&[]);
    let (mut in_process, mut in_process_lines, in_process_pid) = run(&["--pager", "in-process"]);
    let (st, _) = wait_for(Duration::from_secs(10), "all three regions reporting", || {
        let st = status(&url).ok()?;
        [victim_pid, survivor_pid, in_process_pid].iter().all(|p| region_of(&st, *p).is_some()).then_some(st)
    });
    let survivor_region = region_of(&st, survivor_pid).unwrap()["id"].clone();

    // The victim's pager dies without a word (SIGKILL), and its program with it.
    let pager = children(victim.0.id()).into_iter().find(|p| *p != victim_pid).expect("the pager process");
    sigkill(pager);
    sigkill(victim_pid);
    let _ = victim.0.wait();
    let killed = Instant::now();
    // Not reclaimed at once: the lease runs from the pager's last report.
    let st = status(&url).unwrap();
    if killed.elapsed() < Duration::from_millis(LEASE_MS - 1_000) {
        assert!(region_of(&st, victim_pid).is_some(), "reclaimed before its lease ran out: {st:#}");
    }
    // The in-process pager's program ends normally: nothing deletes its region.
    in_process.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(in_process_lines.next().expect("a verdict").expect("readable"), "verified");
    assert!(in_process.0.wait().unwrap().success());

    // Both regions are reclaimed within the lease (plus a report interval and a tick).
    wait_for(Duration::from_millis(LEASE_MS + 5_000), "both regions reclaimed", || {
        let st = status(&url).ok()?;
        (region_of(&st, victim_pid).is_none() && region_of(&st, in_process_pid).is_none()).then_some(())
    });
    assert!(killed.elapsed() < Duration::from_millis(LEASE_MS + 5_000), "reclaimed late: {:?}", killed.elapsed());
    let st = status(&url).unwrap();
    let regions = st["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 1, "only the survivor is left: {st:#}");
    assert_eq!(regions[0]["id"], survivor_region, "{st:#}");

    // The servers free the dead pagers' slabs after their grace: what they lend is what
    // the survivor holds, and what the controller maps on them is its slabs alone.
    wait_for(Duration::from_millis(GRACE_MS + 10_000), "the servers lending only the survivor's slabs", || {
        let st = status(&url).ok()?;
        let region = region_of(&st, survivor_pid)?;
        let reserved = region["live"]["reserved_bytes"].as_u64()?;
        let servers = st["servers"].as_array()?;
        let lent: u64 = servers.iter().filter_map(|s| s["lent_bytes"].as_u64()).sum();
        let mapped: u64 = servers.iter().filter_map(|s| s["mapped_slabs"].as_u64()).sum();
        (lent == reserved && mapped << 20 == reserved).then_some(())
    });

    // The survivor, well past a lease, is still placed and reads back every byte.
    survivor.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(survivor_lines.next().expect("a verdict").expect("readable"), "verified");
    assert!(survivor.0.wait().unwrap().success());
}

#[test]
fn a_lease_shorter_than_the_pagers_reports_is_refused() {
    let out = krak(&["controller", "--listen", "127.0.0.1:0", "--region-lease-ms", "500"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--region-lease-ms) must be at least 2000"), "{err}");
}
