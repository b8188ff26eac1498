//! Network faults between the pager and memory servers on other "hosts" (network
//! namespaces on a bridge, see `netns/`), under `krak demo`'s verified workload: every page
//! is checked against its recorded checksum at the end, and nothing may hang.
//!
//! - 5 ms of delay each way and 1% packet loss each way on every host: every page correct.
//!   This kernel has no `netem` qdisc (`CONFIG_NET_SCH_NETEM` is unset), so the delay is a
//!   userspace delay line in front of each server (`netns/delay.rs`) and the loss an
//!   nftables rule in each host's namespace (real TCP loss and retransmission).
//! - A host's link cut for 2 s mid-workload (shorter than the pager's 5 s request bound):
//!   the requests wait or are retried, every page correct.
//! - A host's link cut for good mid-workload, with no redundancy: the pages it held cannot
//!   be had, so the workload must fail loudly (the faulting thread gets SIGBUS, the reason
//!   is logged) within a bound, never report success or read a made-up page.
//!
//! Root only (skipped with a message otherwise; CI runs as root).

mod controller_common;
mod netns;

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use controller_common::*;
use netns::delay::DelayProxy;
use netns::demo::Demo;
use netns::Net;

/// Asserts the demo ended verified with all `pages` checked; its report.
fn assert_verified(status: std::process::ExitStatus, stdout: &str, stderr: &str, pages: u64) -> serde_json::Value {
    assert!(status.success(), "demo failed: {status}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout).expect("one JSON object");
    assert_eq!(report["verified"], true, "{report:#}");
    assert_eq!(report["pages_verified"], pages, "{report:#}");
    report
}

/// Waits until the controller shows slabs of a region on `addr`.
fn wait_placed_on(url: &str, addr: SocketAddr) {
    let (_, took) = wait_for(Duration::from_secs(20), "the demo's region placed on the server", || {
        let st = status(url).ok()?;
        server(&st, addr).is_some_and(|s| s["mapped_slabs"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    eprintln!("region placed on {addr} after {took:?}");
}

#[test]
fn delay_and_loss_cost_no_page() {
    let t0 = Instant::now();
    let Some(mut net) = Net::new(3) else { return };
    let dir = TempDir::new("netns-delay");
    let store = dir.path().join("store");
    let url = net.controller(&["--store", store.to_str().unwrap()]);
    let one_way = Duration::from_millis(5);
    let mut proxies = Vec::new();
    for i in 0..3 {
        // each namespace has its own ports: a fixed one is free there
        let listen: SocketAddr = format!("{}:7070", net.host(i).addr).parse().unwrap();
        let proxy = DelayProxy::start(SocketAddr::new(net.gateway.into(), 0), listen, one_way);
        let advertise = proxy.addr.to_string();
        net.memserver_with(
            i,
            &listen.to_string(),
            &url,
            &format!("host{}", i + 1),
            "64MiB",
            &["--advertise", &advertise],
        );
        net.add_loss(i, 1);
        proxies.push(proxy);
    }
    let advertised: Vec<SocketAddr> = proxies.iter().map(|p| p.addr).collect();
    net.wait_alive(&url, &advertised);

    let demo = Demo::start(&url, &["--region", "32MiB", "--local", "8MiB", "--seconds", "3"]);
    let (status, stdout, stderr) = demo.wait(Duration::from_secs(180));
    let report = assert_verified(status, &stdout, &stderr, 32 * 256);
    // the pages went through the delay lines, not around them
    for s in report["servers"].as_array().unwrap() {
        let addr = s["addr"].as_str().unwrap();
        assert!(advertised.iter().any(|a| a.to_string() == addr), "server {addr} is not a delay line: {report:#}");
    }
    eprintln!(
        "5 ms each way + 1% loss each way: {} pages verified, fault p50 {} us p99 {} us; test took {:?}",
        report["pages_verified"],
        report["fault_p50_us"],
        report["fault_p99_us"],
        t0.elapsed()
    );
}

#[test]
fn brief_link_cut_costs_no_page() {
    let t0 = Instant::now();
    let Some(mut net) = Net::new(3) else { return };
    let dir = TempDir::new("netns-blip");
    let store = dir.path().join("store");
    let (url, servers) = net.rack(store.to_str().unwrap(), &[]);

    let demo = Demo::start(&url, &["--region", "48MiB", "--local", "12MiB", "--seconds", "8"]);
    wait_placed_on(&url, servers[0]);
    std::thread::sleep(Duration::from_secs(1));
    net.cut_link(0);
    std::thread::sleep(Duration::from_secs(2));
    net.restore_link(0);
    eprintln!("host1's link was down for 2 s");
    let (status, stdout, stderr) = demo.wait(Duration::from_secs(90));
    let report = assert_verified(status, &stdout, &stderr, 48 * 256);
    assert_eq!(report["pager"]["failed_faults"], 0, "{report:#}");
    eprintln!("brief_link_cut_costs_no_page took {:?}", t0.elapsed());
}

#[test]
fn lasting_link_cut_fails_loudly_within_a_bound() {
    let t0 = Instant::now();
    let Some(mut net) = Net::new(3) else { return };
    let dir = TempDir::new("netns-cut-for-good");
    let store = dir.path().join("store");
    let (url, servers) = net.rack(store.to_str().unwrap(), &[]);

    let demo = Demo::start(&url, &["--region", "48MiB", "--local", "12MiB", "--seconds", "60"]);
    wait_placed_on(&url, servers[0]);
    std::thread::sleep(Duration::from_secs(1));
    net.cut_link(0);
    let cut = Instant::now();
    // Bound: 3 attempts of at most 5 s each per read, plus write-back giving up; far less
    // than the 60 s the demo would otherwise run.
    let (status, stdout, stderr) = demo.wait(Duration::from_secs(50));
    let took = cut.elapsed();
    eprintln!("demo ended {took:?} after the cut: {status}\n{stderr}");
    assert!(!status.success(), "a demo whose pages were cut off cannot succeed: {stdout}");
    assert!(!stdout.contains("\"verified\": true") && !stdout.contains("\"verified\":true"), "{stdout}");
    assert_eq!(status.signal(), Some(libc::SIGBUS), "the faulting thread gets SIGBUS: {status}\n{stderr}");
    assert!(stderr.contains("SIGBUS") || stderr.contains("cannot serve page"), "the reason is logged:\n{stderr}");
    eprintln!("lasting_link_cut_fails_loudly_within_a_bound took {:?}", t0.elapsed());
}
