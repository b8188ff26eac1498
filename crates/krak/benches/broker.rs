//! The memory broker against fixed budgets (issue 12): two `krak run` programs on this host
//! whose hot sets swap sizes every period, on a rack of real processes, run once with the
//! `static` policy (equal budgets) and once with `demand`, in the same run. Prints each
//! run's summed reads (every read checked) and the ratio.
//!
//! `cargo bench -p krak --bench broker` (env: `KRAK_BROKER_PERIOD_S`, default 10;
//! `KRAK_BROKER_PHASES`, default 6).

#[path = "../tests/controller_common/mod.rs"]
mod controller_common;

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use controller_common::*;

const TOTAL_MIB: u64 = 128;

fn env_or(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Outcome {
    ops: [u64; 2],
    per_phase: Vec<[u64; 2]>,
    changes: u64,
}

fn run(policy: &str, period_s: f64, phases: usize) -> Outcome {
    let dir = TempDir::new("broker-bench");
    let store = dir.path().join("store");
    let (_ctl, url) = controller("127.0.0.1:0", &["--store", store.to_str().unwrap()]);
    let _servers: Vec<_> = (1..=3).map(|i| memserver(&url, &format!("rack1/host{i}"), "512MiB")).collect();
    wait_alive(&url, 3);
    let host = format!("{}={TOTAL_MIB}MiB", host_name());
    krak_ok(&["broker", "--policy", policy, "--host", &host, "--floor", "16MiB", "--controller", &url]);
    let local = format!("{}MiB", TOTAL_MIB / 2);
    let args = ["--controller", &url, "--local", &local];
    let mut programs: Vec<_> =
        (0..2).map(|parity| start_program(&args, Some(secret_file()), &phased_program(96, 88, 8, parity))).collect();
    wait_for(Duration::from_secs(10), "both regions reporting", || {
        let st = status(&url).ok()?;
        (st["regions"].as_array()?.iter().filter(|r| r["live"]["pid"].is_u64()).count() == 2).then_some(())
    });
    // Start once the faults of the programs' fills have left the broker's memory (6 s).
    let t0 = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() + 7.0;
    for (p, _, _) in &mut programs {
        writeln!(p.0.stdin.as_mut().unwrap(), "go {t0} {period_s} {phases}").unwrap();
    }
    let mut per_phase = vec![[0u64; 2]; phases];
    for (i, (p, lines, _)) in programs.iter_mut().enumerate() {
        for (k, counts) in per_phase.iter_mut().enumerate() {
            let line = lines.next().expect("a phase line").unwrap();
            let ops: u64 = line.strip_prefix(&format!("phase {k} ")).and_then(|n| n.parse().ok()).expect(&line);
            counts[i] = ops;
        }
        let verdict = lines.next().expect("a verdict").unwrap();
        assert_eq!(verdict, "verified", "{policy}: program {i}");
        writeln!(p.0.stdin.as_mut().unwrap()).unwrap();
        assert!(p.0.wait().unwrap().success());
    }
    let broker: serde_json::Value =
        serde_json::from_str(&krak_ok(&["broker", "--json", "--controller", &url])).unwrap();
    let ops = [per_phase.iter().map(|p| p[0]).sum(), per_phase.iter().map(|p| p[1]).sum()];
    Outcome { ops, per_phase, changes: broker["budget_changes"].as_u64().unwrap_or(0) }
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let period_s = env_or("KRAK_BROKER_PERIOD_S", 10.0);
    let phases = env_or("KRAK_BROKER_PHASES", 6.0) as usize;
    println!(
        "two programs of 96 MiB on one host, {TOTAL_MIB} MiB for both; hot set 88 MiB / 8 MiB, swapped every \
         {period_s} s, {phases} phases"
    );
    let mut results = Vec::new();
    for policy in ["static", "demand"] {
        let out = run(policy, period_s, phases);
        let per_s = |ops: u64| ops as f64 / (period_s * phases as f64);
        println!(
            "{policy:>7}: {:>10.0} reads/s in all ({:.0} + {:.0}), {} budget changes; per phase {:?}",
            per_s(out.ops[0] + out.ops[1]),
            per_s(out.ops[0]),
            per_s(out.ops[1]),
            out.changes,
            out.per_phase
        );
        results.push(out.ops[0] + out.ops[1]);
    }
    println!("demand / static: {:.2}x", results[1] as f64 / results[0] as f64);
}
