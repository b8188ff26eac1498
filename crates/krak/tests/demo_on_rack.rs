//! `krak demo --controller URL` runs its verified workload on an existing rack (a real
//! controller and three real memory servers), and keeps verifying while an operator drains
//! one of the servers with `krak drain`: the region's chunks move off it, the demo still
//! reads back every page exactly, and the drained server ends up holding nothing.

mod controller_common;

use std::process::{Command, Stdio};

use std::time::Duration;

use controller_common::*;

#[test]
fn demo_on_an_existing_rack_survives_a_drain() {
    let dir = TempDir::new("demo-rack");
    let store = dir.path().join("store");
    let (_ctl, url) = controller("127.0.0.1:0", &["--store", store.to_str().unwrap()]);
    let servers: Vec<_> = (1..=3).map(|i| memserver(&url, &format!("rack1/host{i}"), "64MiB")).collect::<Vec<_>>();
    let drained = servers[0].1;
    wait_for(Duration::from_secs(5), "3 alive servers", || {
        let st = status(&url).ok()?;
        servers.iter().all(|(_, a)| server(&st, *a).is_some_and(|s| s["state"] == "alive")).then_some(())
    });

    let demo = Command::new(env!("CARGO_BIN_EXE_krak"))
        .args(["demo", "--controller", &url, "--region", "48MiB", "--local", "12MiB", "--seconds", "4"])
        .args(["--secret-file", secret_file()])
        .args(["--no-baseline", "--json"])
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo starts (it ends by itself after --seconds)");

    // Once the region is placed (some slabs on the server to drain), drain that server.
    wait_for(Duration::from_secs(10), "the demo's region placed on the server to drain", || {
        let st = status(&url).ok()?;
        server(&st, drained).is_some_and(|s| s["mapped_slabs"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    krak_ok(&["drain", "--controller", &url, &drained.to_string()]);

    let out = demo.wait_with_output().expect("demo ends");
    assert!(out.status.success(), "demo failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["verified"], true, "{report:#}");
    assert_eq!(report["pages_verified"], 48 * 256, "{report:#}");
    assert!(report["pager"]["chunks_moved"].as_u64().unwrap() > 0, "the pager moved chunks: {report:#}");
    let on_drained = report["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["addr"] == drained.to_string())
        .map_or(0, |s| s["reserved_bytes"].as_u64().unwrap());
    assert_eq!(on_drained, 0, "nothing of the region is left on the drained server: {report:#}");
    let st = status(&url).unwrap();
    let s = server(&st, drained).unwrap();
    assert_eq!(s["state"], "draining", "{s:#}");
    assert_eq!(s["mapped_slabs"], 0, "{s:#}");
}
