//! A rack of real hosts on one machine: every memory server runs in its own network
//! namespace, joined by a veth pair to a bridge in the root namespace, where the controller
//! and the pager (`krak demo`) run. Pages cross the bridge, not loopback. A drain moves a
//! verified workload off one host; a host whose link is cut is declared dead while the others
//! stay alive, and comes back alive when its link does. Root only (skipped with a message
//! otherwise; CI runs as root).

mod controller_common;
mod netns;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use controller_common::*;
use netns::Net;

#[test]
fn drain_across_hosts() {
    let t0 = Instant::now();
    let Some(mut net) = Net::new(3) else { return };
    let dir = TempDir::new("netns-drain");
    let store = dir.path().join("store");
    let (url, servers) = net.rack(store.to_str().unwrap(), &[]);
    let drained = servers[0];

    let mut demo = Command::new(KRAK)
        .args(["demo", "--controller", &url, "--region", "48MiB", "--local", "12MiB", "--seconds", "4"])
        .args(["--secret-file", secret_file()])
        .args(["--no-baseline", "--json"])
        .env_remove("RUST_BACKTRACE")
        .env_remove("KRAK_CONTROLLER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo starts (it ends by itself after --seconds)");
    let stdout = read_all(demo.stdout.take().unwrap());
    let stderr = read_all(demo.stderr.take().unwrap());
    // SIGKILLed and reaped if the test fails before it ends
    let mut demo = Proc(demo);

    let (_, took) = wait_for(Duration::from_secs(10), "the demo's region placed on host1", || {
        let st = status(&url).ok()?;
        server(&st, drained).is_some_and(|s| s["mapped_slabs"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    eprintln!("region placed on host1 after {took:?}; draining {drained}");
    krak_ok(&["drain", "--controller", &url, &drained.to_string()]);

    // the demo runs for 4 s, then verifies every page: bounded wait
    let (status_code, took) = wait_for(Duration::from_secs(30), "the demo to end", || demo.0.try_wait().ok().flatten());
    eprintln!("demo ended {took:?} after the drain");
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(status_code.success(), "demo failed: {status_code}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(report["verified"], true, "{report:#}");
    assert_eq!(report["pages_verified"], 48 * 256, "{report:#}");
    assert!(report["pager"]["chunks_moved"].as_u64().unwrap() > 0, "the pager moved chunks: {report:#}");
    // pages crossed the bridge to the namespaces' addresses, not loopback
    for s in report["servers"].as_array().unwrap() {
        let addr = s["addr"].as_str().unwrap();
        assert!(servers.iter().any(|a| a.to_string() == addr), "server {addr} is not one of the hosts: {report:#}");
    }

    let st = status(&url).unwrap();
    let s = server(&st, drained).unwrap();
    assert_eq!(s["state"], "draining", "{s:#}");
    assert_eq!(s["mapped_slabs"], 0, "host1 ends with nothing: {s:#}");
    for other in &servers[1..] {
        assert_eq!(server(&st, *other).unwrap()["state"], "alive", "{st:#}");
    }
    eprintln!("drain_across_hosts took {:?}", t0.elapsed());
}

#[test]
fn cut_link_marks_server_dead() {
    let t0 = Instant::now();
    let Some(mut net) = Net::new(3) else { return };
    let dir = TempDir::new("netns-cut");
    let store = dir.path().join("store");
    let (url, servers) = net.rack(store.to_str().unwrap(), &["--dead-after-ms", "1500"]);
    let victim = servers[1];

    net.cut_link(1);
    let (st, took) = wait_for(Duration::from_secs(3), "host2's server dead after its link was cut", || {
        let st = status(&url).ok()?;
        (server(&st, victim)?["state"] == "dead").then_some(st)
    });
    eprintln!("host2 dead {took:?} after its link was cut (dead after 1500 ms)");
    for i in [0, 2] {
        assert_eq!(server(&st, servers[i]).unwrap()["state"], "alive", "{st:#}");
    }

    net.restore_link(1);
    // its heartbeats resume (a call cut off times out within 2 s; retries at most 1 s apart)
    let (st, took) = wait_for(Duration::from_secs(6), "host2's server alive again", || {
        let st = status(&url).ok()?;
        (server(&st, victim)?["state"] == "alive").then_some(st)
    });
    eprintln!("host2 alive {took:?} after its link was restored");
    for addr in &servers {
        assert_eq!(server(&st, *addr).unwrap()["state"], "alive", "{st:#}");
    }
    assert_eq!(server(&st, victim).unwrap()["failures"], 1, "{st:#}");
    eprintln!("cut_link_marks_server_dead took {:?}", t0.elapsed());
}
