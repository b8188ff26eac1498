//! A short `krak bench` on plain RAM and on krak: every workload runs, every read checks
//! out, and the JSON report carries the physical limits of this machine.
//! (The kernel-swap backends have their own tests in krak-bench.)

use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

#[test]
fn quick_bench_on_local_and_krak_reports_verified_results() {
    let dir = std::env::temp_dir().join(format!("krak-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_krak"))
        .args(["bench", "--quick", "--backends", "local,krak", "--region", "32MiB", "--duration-ms", "300"])
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .expect("krak runs");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "krak bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(elapsed.as_secs() < 60, "the smoke bench took {elapsed:?}");

    let text = std::fs::read_to_string(&json).expect("the JSON report was written");
    let _ = std::fs::remove_dir_all(&dir);
    let report: Value = serde_json::from_str(&text).expect("the report is JSON");
    assert_eq!(report["region_bytes"].as_u64(), Some(32 << 20));
    assert_eq!(report["duration_ms"].as_u64(), Some(300));
    assert_eq!(report["failures"].as_array().map(Vec::len), Some(0), "no run failed: {report}");

    let results = report["results"].as_array().expect("results");
    for row in results {
        assert_eq!(row["mismatches"].as_u64(), Some(0), "a run read back wrong data: {row}");
        assert!(row["ops"].as_u64().unwrap_or(0) > 0, "a run did no work: {row}");
        assert!(row["ops_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
    }
    let has = |workload: &str, backend: &str, fraction: Option<f64>| {
        results.iter().any(|r| {
            r["workload"] == workload
                && r["backend"] == backend
                && match fraction {
                    None => true,
                    Some(f) => (r["local_fraction"].as_f64().unwrap_or(-1.0) - f).abs() < 1e-9,
                }
        })
    };
    for workload in ["rand_read", "rand_rw", "seq_read", "thrash"] {
        assert!(has(workload, "local", None), "{workload} on local RAM is reported");
        for fraction in [0.25, 0.5] {
            assert!(has(workload, "krak", Some(fraction)), "{workload} on krak at {fraction} is reported");
        }
    }
    assert_eq!(results.len(), 12, "4 workloads on local + 4 x 2 fractions on krak");
    // The krak rows really used the pager, and say what it cost in CPU.
    for r in results.iter().filter(|r| r["backend"] == "krak") {
        assert!(r["faults"].as_u64().unwrap_or(0) > 0, "krak served no faults: {r}");
        let per_fault = r["cpu_per_fault_us"].as_f64().unwrap_or(0.0);
        assert!(per_fault > 0.0, "no CPU per fault: {r}");
        assert!(r["cpu"]["servers"]["system_ms"].as_f64().is_some(), "the memory servers' CPU is counted: {r}");
    }

    let limits = &report["limits"];
    let rtt = limits["tcp_rtt_4k_p50_us"].as_f64().expect("tcp_rtt_4k_p50_us");
    assert!(rtt > 0.0, "TCP round trip {rtt}");
    assert!(limits.get("uffd_fault_p50_us").is_some(), "uffd_fault_p50_us is present: {limits}");
    if let Some(uffd) = limits["uffd_fault_p50_us"].as_f64() {
        assert!(uffd > 0.0);
    }
}
