//! Rack memory reserved on demand (issue 12, deliverable 1) on a rack of real processes: a
//! `krak run` program under the default `--max-far` (32 GiB of address space) on a rack of
//! 3 GiB runs, the rack lends about what it uses (never more than one chunk per server
//! beyond it), every byte reads back, freeing its memory gives the rack's back while it
//! runs, and nothing stays reserved once it ends. The same
//! program with `--reserve up-front` is refused at once, saying why.

mod controller_common;

use std::io::Write;
use std::time::Duration;

use controller_common::*;

/// The tests' memory servers lend 1 MiB slabs: one chunk.
const CHUNK_BYTES: u64 = 1 << 20;

/// After its check, the program frees its block and says so.
const FREE_AFTER_CHECK: &str = "del b\nprint(\"freed\", flush=True)";

fn lent_bytes(status: &serde_json::Value) -> u64 {
    status["servers"].as_array().unwrap().iter().map(|s| s["lent_bytes"].as_u64().unwrap()).sum()
}

#[test]
fn a_program_under_the_default_max_far_holds_what_it_uses() {
    let dir = TempDir::new("reserve-on-demand");
    let store = dir.path().join("store");
    let (_ctl, url) = controller("127.0.0.1:0", &["--store", store.to_str().unwrap()]);
    let _servers: Vec<_> = (1..=3).map(|i| memserver(&url, &format!("rack1/host{i}"), "1GiB")).collect();
    wait_alive(&url, 3);

    // Up front, 32 GiB does not fit a 3 GiB rack: refused at the first large allocation
    // (where the arena is made).
    let out = std::process::Command::new(KRAK)
        .args(["run", "--controller", &url, "--local", "128MiB", "--reserve", "up-front", "--"])
        .args(["python3", "-c", "b = bytearray(4 << 20)"])
        .env("KRAK_SECRET_FILE", secret_file())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("no capacity"), "{err}");
    assert_eq!(lent_bytes(&status(&url).unwrap()), 0, "a refused arena holds nothing");
    assert_eq!(status(&url).unwrap()["regions"].as_array().unwrap().len(), 0);

    // On demand (the default): 300 MiB written through a 128 MiB budget.
    let (mut program, mut lines, pid) = start_program(
        &["--controller", &url, "--local", "128MiB"],
        Some(secret_file()),
        &pattern_program_then(300, FREE_AFTER_CHECK),
    );
    let (region, _) = wait_for(Duration::from_secs(30), "the region's report of its remote pages", || {
        let st = status(&url).ok()?;
        let r = st["regions"].as_array()?.iter().find(|r| r["live"]["pid"] == pid)?.clone();
        // 300 MiB written, at most 128 MiB of it resident.
        (r["live"]["used_bytes"].as_u64()? >= 172 << 20).then_some(r)
    });
    assert_eq!(region["size_bytes"], 32u64 << 30, "the default --max-far: {region:#}");
    // Reports lag a second; wait for one where the servers' loans and the report agree.
    let (figures, _) = wait_for(Duration::from_secs(10), "a report matching the servers' loans", || {
        let st = status(&url).ok()?;
        let live = st["regions"].as_array()?.iter().find(|r| r["live"]["pid"] == pid)?["live"].clone();
        let (reserved, used) = (live["reserved_bytes"].as_u64()?, live["used_bytes"].as_u64()?);
        (lent_bytes(&st) == reserved).then_some((reserved, used, live))
    });
    let (reserved, used, live) = figures;
    eprintln!("reserved {reserved} bytes for {used} used (region of 32 GiB)");
    // Reserved ≤ used + one chunk per server holding the region (the bound).
    assert!(reserved >= used && reserved <= used + 3 * CHUNK_BYTES, "reserved {reserved}, used {used}: {live:#}");
    assert!(live["resident_bytes"].as_u64().unwrap() <= 128 << 20, "{live:#}");

    program.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(lines.next().expect("a verdict").expect("readable"), "verified");
    assert_eq!(lines.next().expect("a line").expect("readable"), "freed");
    // Freed: its chunks go back to the rack while it runs (what the interpreter's own blocks
    // of 1 MiB or more hold stays: about 4 MiB).
    let (lent, took) = wait_for(Duration::from_secs(10), "the rack to take the freed memory back", || {
        let st = status(&url).ok()?;
        let live = st["regions"].as_array()?.iter().find(|r| r["live"]["pid"] == pid)?["live"].clone();
        let lent = lent_bytes(&st);
        (lent <= 16 * CHUNK_BYTES && live["reserved_bytes"].as_u64()? <= 16 * CHUNK_BYTES).then_some(lent)
    });
    eprintln!("after free: {lent} bytes lent, {took:?} after the program said so");
    drop(program.0.stdin.take());
    let exit = program.0.wait().unwrap();
    assert!(exit.success(), "krak run: {exit}");
    // Nothing left behind: the region is deleted, every slab is given back.
    wait_for(Duration::from_secs(10), "the servers to lend nothing", || {
        let st = status(&url).ok()?;
        (lent_bytes(&st) == 0 && st["regions"].as_array()?.is_empty()).then_some(())
    });
}
