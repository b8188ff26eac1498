//! Redundant regions on a rack of hosts (network namespaces on a bridge, see `netns/`),
//! placed by `krak controller`: `krak demo --controller URL --redundancy SCHEME` runs its
//! verified workload while hosts die under it. Every page is checked against its recorded
//! checksum at the end; no fault may fail.
//!
//! - `ec:4+2` over 7 hosts: one host killed, later a second host's link cut for good.
//! - `replicate:2` over 3 hosts: one host killed; the controller shows the dead host's
//!   slots as degraded until re-protection (placed by the controller on the spare host)
//!   commits their replacements, then 0.
//!
//! Root only (skipped with a message otherwise; CI runs as root).

mod controller_common;
mod netns;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use controller_common::*;
use netns::demo::Demo;
use netns::Net;

const REGION_MIB: u64 = 32;

/// A `krak demo` with redundancy `scheme` on the rack at `url`, for `seconds`.
fn start_demo(url: &str, scheme: &str, seconds: u32) -> Demo {
    let region = format!("{REGION_MIB}MiB");
    let seconds = seconds.to_string();
    Demo::start(url, &["--redundancy", scheme, "--region", &region, "--local", "8MiB", "--seconds", &seconds])
}

/// Waits at most `bound` for the demo to end; asserts it verified every page without a
/// failed fault, and returns its report.
fn verified(demo: Demo, bound: Duration, scheme: &str) -> serde_json::Value {
    let (status, stdout, stderr) = demo.wait(bound);
    assert!(status.success(), "demo failed: {status}\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["verified"], true, "{report:#}");
    assert_eq!(report["pages_verified"], REGION_MIB * 256, "every page checked: {report:#}");
    assert_eq!(report["mismatches"], 0, "{report:#}");
    assert_eq!(report["redundancy"], scheme, "{report:#}");
    assert_eq!(report["pager"]["failed_faults"], 0, "{report:#}");
    assert!(report["pager"]["degraded_reads"].as_u64().unwrap_or(0) > 0, "reads went around lost hosts");
    report
}

/// Starts a controller and `n` hosts' memory servers (each its own domain); the URL and
/// the servers once all are alive.
fn rack(net: &mut Net, store: &str, n: usize) -> (String, Vec<SocketAddr>) {
    let url = net.controller(&["--store", store, "--dead-after-ms", "2000"]);
    let servers: Vec<_> = (0..n).map(|i| net.memserver(i, &url, &format!("host{}", i + 1), "64MiB")).collect();
    net.wait_alive(&url, &servers);
    (url, servers)
}

/// The demo's region in a status, once there is one.
fn region(status: &serde_json::Value) -> Option<&serde_json::Value> {
    status["regions"].as_array()?.first()
}

/// Waits until the region is placed (every slot committed) and on `addr`; returns the
/// region's stripe width.
fn wait_placed_on(url: &str, addr: SocketAddr) -> u64 {
    let (width, took) = wait_for(Duration::from_secs(20), "the demo's region placed on the host", || {
        let st = status(url).ok()?;
        let r = region(&st)?;
        let width = r["stripe_width"].as_u64()?;
        let slots = r["size_bytes"].as_u64()?.div_ceil(r["chunk_bytes"].as_u64()?) * width;
        let on = server(&st, addr).is_some_and(|s| s["mapped_slabs"].as_u64().unwrap_or(0) > 0);
        (r["placed_chunks"].as_u64() == Some(slots) && on).then_some(width)
    });
    eprintln!("region placed ({width} slots per chunk) on {addr} after {took:?}");
    width
}

#[test]
fn ec_4_2_region_across_hosts_survives_a_host_killed_and_another_cut_off() {
    let t0 = Instant::now();
    let Some(mut net) = Net::new(7) else { return };
    let dir = TempDir::new("netns-ec");
    let store = dir.path().join("store");
    let (url, servers) = rack(&mut net, store.to_str().unwrap(), 7);

    let demo = start_demo(&url, "ec:4+2", 16);
    assert_eq!(wait_placed_on(&url, servers[0]), 6);
    let st = status(&url).unwrap();
    assert_eq!(region(&st).unwrap()["redundancy"], "ec:4+2");
    assert_eq!(region(&st).unwrap()["degraded_slots"], 0, "{st:#}");
    std::thread::sleep(Duration::from_secs(2));
    net.kill_host(0);
    eprintln!("host1 killed");
    std::thread::sleep(Duration::from_secs(4));
    net.cut_link(1);
    eprintln!("host2's link cut");
    let report = verified(demo, Duration::from_secs(90), "ec:4+2");
    let lost = report["pager"]["lost_servers"].as_u64().unwrap();
    assert!(lost >= 2, "both hosts lost for the region: {report:#}");
    assert!(report["pager"]["reprotected_pages"].as_u64().unwrap_or(0) > 0, "re-protection ran: {report:#}");
    eprintln!(
        "ec:4+2 over 7 hosts, 2 lost: {} pages verified, {} degraded reads; test took {:?}",
        report["pages_verified"],
        report["pager"]["degraded_reads"],
        t0.elapsed()
    );
}

#[test]
fn replicate_2_region_across_hosts_is_reprotected_through_the_controller() {
    let t0 = Instant::now();
    let Some(mut net) = Net::new(3) else { return };
    let dir = TempDir::new("netns-rep");
    let store = dir.path().join("store");
    let (url, servers) = rack(&mut net, store.to_str().unwrap(), 3);

    let demo = start_demo(&url, "replicate:2", 14);
    assert_eq!(wait_placed_on(&url, servers[0]), 2);
    std::thread::sleep(Duration::from_secs(1));
    net.kill_host(0);
    eprintln!("host1 killed");
    // The controller declares it dead; every slot of the region that was there is then
    // re-placed and committed on a survivor.
    let waited = Instant::now();
    let mut last = serde_json::Value::Null;
    loop {
        let st = status(&url).unwrap_or_default();
        let dead = server(&st, servers[0]).is_some_and(|s| s["state"] == "dead");
        let on_dead = server(&st, servers[0]).and_then(|s| s["mapped_slabs"].as_u64());
        if dead && on_dead == Some(0) && region(&st).is_some_and(|r| r["degraded_slots"] == 0) {
            break;
        }
        if region(&st).is_some() {
            last = st;
        }
        if waited.elapsed() > Duration::from_secs(30) {
            let stderr = demo.kill();
            panic!("the dead host's slots were not re-protected within 30 s; last status {last:#}\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = last;
    eprintln!("host1 dead and its slots re-protected {:?} after the kill", waited.elapsed());
    let text = krak_ok(&["status", "--controller", &url]);
    assert!(text.contains("replicate:2"), "krak status shows the region's redundancy:\n{text}");
    let report = verified(demo, Duration::from_secs(90), "replicate:2");
    assert_eq!(report["pager"]["lost_servers"], 1, "{report:#}");
    assert!(report["pager"]["reprotected_pages"].as_u64().unwrap_or(0) > 0, "{report:#}");
    eprintln!("replicate:2 over 3 hosts, 1 killed; test took {:?}", t0.elapsed());
}
