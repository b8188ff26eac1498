//! The memory broker (issue 12, deliverable 4) on a rack of real processes: two `krak run`
//! programs on one host whose hot sets swap sizes every few seconds. Under `demand` the
//! controller moves local budget to whichever is hot, the budgets never sum past the
//! host's total, and both programs read back every page.

mod controller_common;

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use controller_common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const TOTAL_MIB: u64 = 128;
const HOT_MIB: u32 = 88;
const PERIOD_S: f64 = 10.0;
const PHASES: usize = 3;

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The budgets in the records of regions `ids` (what their pagers follow), from `krak status`.
fn budgets(status: &Value, ids: [u64; 2]) -> Option<[u64; 2]> {
    let of = |id: u64| status["regions"].as_array()?.iter().find(|r| r["id"] == id)?["local_budget_bytes"].as_u64();
    Some([of(ids[0])?, of(ids[1])?])
}

#[test]
fn demand_moves_budget_between_two_programs_whose_hot_sets_swap() {
    let dir = TempDir::new("broker");
    let store = dir.path().join("store");
    let (_ctl, url) = controller("127.0.0.1:0", &["--store", store.to_str().unwrap()]);
    let _servers: Vec<_> = (1..=2).map(|i| memserver(&url, &format!("rack1/host{i}"), "512MiB")).collect();
    wait_alive(&url, 2);
    let host = host_name();

    // Clear refusals, and nothing changed by them.
    let refused = |args: &[&str]| {
        let mut all = vec!["broker", "--controller", &url];
        all.extend_from_slice(args);
        let out = krak(&all);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(refused(&["--policy", "greedy"]).contains("known: static, demand"));
    assert!(refused(&["--host", "node7"]).contains("give NAME=SIZE"));
    assert!(refused(&["--floor", "4KiB"]).contains("floor is at least"));
    let shown = krak_ok(&["broker", "--controller", &url]);
    assert!(shown.contains("policy static") && shown.contains("hosts given: none"), "{shown}");

    let total = format!("{host}={TOTAL_MIB}MiB");
    let set = krak_ok(&["broker", "--policy", "demand", "--host", &total, "--floor", "16MiB", "--controller", &url]);
    assert!(set.contains("policy demand") && set.contains(&format!("{host}=128MiB")), "{set}");

    // Two programs of 96 MiB at 64 MiB each (half the host's total): one hot over 88 MiB
    // in even phases, the other in odd ones; 8 MiB hot otherwise.
    let args = ["--controller", &url, "--local", "64MiB"];
    let (mut a, mut a_lines, a_pid) = start_program(&args, Some(secret_file()), &phased_program(96, HOT_MIB, 8, 0));
    let (mut b, mut b_lines, b_pid) = start_program(&args, Some(secret_file()), &phased_program(96, HOT_MIB, 8, 1));
    let (ids, _) = wait_for(Duration::from_secs(10), "both regions reporting", || {
        let st = status(&url).ok()?;
        let id = |pid: u32| {
            st["regions"].as_array()?.iter().find(|r| r["live"]["pid"] == pid && r["live"]["host"] == host)?["id"]
                .as_u64()
        };
        Some([id(a_pid)?, id(b_pid)?])
    });
    // Start once the faults of the programs' fills have left the broker's memory (6 s).
    let t0 = unix_now() + 7.0;
    for p in [&mut a, &mut b] {
        writeln!(p.0.stdin.as_mut().unwrap(), "go {t0} {PERIOD_S} {PHASES}").unwrap();
    }

    // The budgets through the run: (seconds from t0, budgets).
    let mut samples: Vec<(f64, [u64; 2])> = Vec::new();
    while unix_now() < t0 + PERIOD_S * PHASES as f64 {
        if let Some(now) = status(&url).ok().and_then(|st| budgets(&st, ids)) {
            assert!(now.iter().sum::<u64>() <= TOTAL_MIB * MIB, "over the host's total: {now:?}");
            assert!(now.iter().all(|&b| b >= 16 * MIB), "under the floor: {now:?}");
            samples.push((unix_now() - t0, now));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let shown: Vec<String> = samples.iter().map(|(t, [x, y])| format!("{t:.1}s {}/{} MiB", x / MIB, y / MIB)).collect();
    println!("budgets (A/B): {shown:?}");
    for k in 0..PHASES {
        let hot = k % 2;
        let end = PERIOD_S * (k + 1) as f64;
        let late: Vec<_> = samples.iter().filter(|(t, _)| *t >= end - 2.5 && *t < end - 0.3).collect();
        assert!(!late.is_empty(), "no sample late in phase {k}: {shown:?}");
        for (_, budget) in late {
            assert!(
                budget[hot] >= u64::from(HOT_MIB) * MIB && budget[hot] > budget[1 - hot],
                "phase {k}: the hot program holds its hot set: {shown:?}"
            );
        }
    }

    for (p, lines) in [(&mut a, &mut a_lines), (&mut b, &mut b_lines)] {
        for k in 0..PHASES {
            let line = lines.next().expect("a phase line").unwrap();
            assert!(line.starts_with(&format!("phase {k} ")), "{line}");
        }
        assert_eq!(lines.next().expect("a verdict").unwrap(), "verified");
        writeln!(p.0.stdin.as_mut().unwrap()).unwrap();
        assert!(p.0.wait().unwrap().success());
    }
    let out = krak_ok(&["broker", "--json", "--controller", &url]);
    let broker: Value = serde_json::from_str(&out).unwrap();
    assert!(broker["budget_changes"].as_u64().unwrap() >= 4, "{broker:#}");
    let table = krak_ok(&["broker", "--controller", &url]);
    assert!(table.contains("budgets changed by the broker"), "{table}");
}
