//! When the page a thread touches cannot be had (its memory server is gone), the access
//! fails with SIGBUS: the thread never sees a zero or stale page. Checked in both fault
//! modes, in a child process (this test binary re-executed) that the parent expects to die
//! by SIGBUS after it proved its pages were remote.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use common::*;
use krak_pager::{FaultMode, PAGE_SIZE};

const CHILD_ENV: &str = "KRAK_SERVER_LOSS_CHILD";
const READY_MARKER: &str = "krak-server-loss: pages are remote, server stopped";

/// The child: fill a region 8x its budget, stop the only memory server, touch page 0
/// (long evicted). It must die of SIGBUS at that touch.
fn child_body(mode: FaultMode) {
    let mut servers = servers(1, 16 << 20);
    let region_bytes: u64 = 4 << 20;
    let region = region_in(mode, &servers, region_bytes, region_bytes / 8);
    let pages = region_bytes as usize / PAGE_SIZE;
    for p in 0..pages {
        write_u64(&region, p * PAGE_SIZE, p as u64 + 1);
    }
    // Let write-back finish so page 0 (evicted first) lives only on the server: every page
    // outside the budget written, none left in the write-back buffer, which would serve it.
    let evicted = (pages - pages / 8) as u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while region.stats().remote_writes < evicted && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(region.stats().remote_writes >= evicted, "{:?}", region.stats());
    servers.pop().expect("one server").shutdown().expect("server stops");
    println!("{READY_MARKER}");
    let value = read_u64(&region, 0);
    // Reaching this line means a page was made up: the test fails in the parent.
    println!("krak-server-loss: read {value} from page 0 with no server");
}

fn run_child(mode: &str) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &format!("server_loss_child_{mode}"), "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains(READY_MARKER), "child did not reach the touch:\n{stdout}\n{stderr}");
    assert!(!stdout.contains("krak-server-loss: read"), "a page was served with no server behind it:\n{stdout}");
    assert_eq!(out.status.signal(), Some(libc::SIGBUS), "child must die by SIGBUS: {:?}\n{stderr}", out.status);
    assert!(
        stdout.contains("cannot serve page") || stderr.contains("cannot serve page"),
        "the reason is logged:\n{stdout}\n{stderr}"
    );
}

#[test]
fn a_lost_server_fails_the_access_with_sigbus_handler_threads() {
    run_child("threads");
}

#[test]
fn a_lost_server_fails_the_access_with_sigbus_self_serving() {
    run_child("sigbus");
}

#[test]
fn server_loss_child_threads() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child_body(FaultMode::Threads);
    }
}

#[test]
fn server_loss_child_sigbus() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child_body(FaultMode::Sigbus);
    }
}
