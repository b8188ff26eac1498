//! A rack of real processes: `krak controller` on its embedded store and three
//! `krak memserver --controller`; membership, liveness, policy, drain, and a controller
//! SIGKILLed and restarted on its store.

mod controller_common;

use std::time::Duration;

use controller_common::*;

const DEAD_AFTER_MS: u64 = 1500;

#[test]
fn membership_liveness_policy_drain_and_controller_restart() {
    let dir = TempDir::new("ctl-rack");
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let dead_after = DEAD_AFTER_MS.to_string();
    let (mut ctl, url) = controller("127.0.0.1:0", &["--store", store, "--dead-after-ms", &dead_after]);

    let capacities = [(32u64, "rack1/host1"), (64, "rack1/host2"), (96, "rack2/host3")];
    let mut servers: Vec<_> = capacities
        .iter()
        .map(|&(mib, domain)| {
            let (proc, addr) = memserver(&url, domain, &format!("{mib}MiB"));
            (proc, addr, mib << 20, domain)
        })
        .collect();

    // all three register and are alive, with their own capacity and domain
    let (st, took) = wait_for(Duration::from_secs(5), "3 alive servers that heartbeat", || {
        let st = status(&url).ok()?;
        let heard = |s: &serde_json::Value| s["state"] == "alive" && !s["host_free_bytes"].is_null();
        servers.iter().all(|(_, addr, _, _)| server(&st, *addr).is_some_and(heard)).then_some(st)
    });
    eprintln!("3 servers alive after {took:?}");
    assert_eq!(st["servers"].as_array().unwrap().len(), 3, "{st:#}");
    for (_, addr, capacity, domain) in &servers {
        let s = server(&st, *addr).unwrap();
        assert_eq!(s["capacity_bytes"], *capacity, "{s:#}");
        assert_eq!(s["lent_bytes"], 0, "{s:#}");
        assert_eq!(s["slabs"], 0, "{s:#}");
        assert_eq!(s["domain"], *domain, "{s:#}");
        assert!(s["host_free_bytes"].as_u64().is_some_and(|b| b > 0), "{s:#}");
    }
    // the table names them too
    let table = krak_ok(&["status", "--controller", &url]);
    for (_, addr, _, domain) in &servers {
        assert!(table.contains(&addr.to_string()) && table.contains(domain), "{table}");
    }

    // a memory server SIGKILLed is declared dead within the timeout; the others stay alive
    let victim = servers[1].1;
    servers[1].0.kill();
    let (_, took) = wait_for(Duration::from_secs(6), "the killed server to be dead", || {
        let st = status(&url).ok()?;
        (server(&st, victim)?["state"] == "dead").then_some(())
    });
    eprintln!("killed server dead after {took:?} (dead after {DEAD_AFTER_MS} ms)");
    assert!(took < Duration::from_millis(DEAD_AFTER_MS + 1500), "dead only after {took:?}");
    let st = status(&url).unwrap();
    for i in [0, 2] {
        assert_eq!(server(&st, servers[i].1).unwrap()["state"], "alive", "{st:#}");
    }

    // policy
    assert_eq!(krak_ok(&["policy", "set", "pack", "--controller", &url]).trim(), "pack");
    assert_eq!(krak_ok(&["policy", "get", "--controller", &url]).trim(), "pack");
    let bad = krak(&["policy", "set", "nonsense", "--controller", &url]);
    assert!(!bad.status.success());

    // drain by address: the server becomes draining and stays so while it heartbeats
    let drained = servers[2].1;
    let out = krak_ok(&["drain", &drained.to_string(), "--controller", &url]);
    assert!(out.contains("requested"), "{out}");
    let st = status(&url).unwrap();
    assert_eq!(server(&st, drained).unwrap()["state"], "draining", "{st:#}");
    assert!(st["drains"].as_array().unwrap().len() == 1, "{st:#}");
    let unknown = krak(&["drain", "127.0.0.1:1", "--controller", &url]);
    assert!(!unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("knows no server"));

    // the controller dies (SIGKILL); the memory servers keep running
    ctl.kill();
    std::thread::sleep(Duration::from_millis(300));
    assert!(status(&url).is_err());
    for i in [0, 2] {
        assert!(servers[i].0.running(), "memory server {i} died with the controller");
    }

    // restarted on the same store and address, it knows every server, the policy and the
    // drain, and the live servers heartbeat to it again
    let listen = url.strip_prefix("http://").unwrap();
    let (_ctl, url2) = controller(listen, &["--store", store, "--dead-after-ms", &dead_after]);
    assert_eq!(url2, url);
    let st = status(&url).unwrap();
    assert_eq!(st["servers"].as_array().unwrap().len(), 3, "servers kept over a restart: {st:#}");
    assert_eq!(st["policy"], "pack", "{st:#}");
    assert_eq!(server(&st, drained).unwrap()["state"], "draining", "{st:#}");
    let alive_one = servers[0].1;
    let (st, took) = wait_for(Duration::from_secs(5), "heartbeats to the restarted controller", || {
        let st = status(&url).ok()?;
        let fresh = |addr| {
            let s = server(&st, addr)?;
            let last = s["last_heartbeat_unix_ms"].as_u64()?;
            Some(s["registered_unix_ms"].as_u64()? <= last && now_ms().saturating_sub(last) < 1000)
        };
        (fresh(alive_one)? && fresh(drained)? && server(&st, victim)?["state"] == "dead").then_some(st)
    });
    eprintln!("servers heartbeat to the restarted controller after {took:?}");
    assert_eq!(server(&st, alive_one).unwrap()["state"], "alive", "{st:#}");
    assert_eq!(server(&st, drained).unwrap()["state"], "draining", "{st:#}");
    assert_eq!(server(&st, alive_one).unwrap()["capacity_bytes"], 32u64 << 20);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn commands_say_which_rack_is_missing_or_down() {
    let out = krak(&["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KRAK_CONTROLLER"), "{out:?}");
    let out = krak(&["status", "--controller", "http://127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"), "{out:?}");
    let out = krak(&["controller", "--listen", "127.0.0.1:0", "--store", "/nonexistent/x", "--policy", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown placement policy"), "{out:?}");
}

/// A store directory written by an older krak (krak-meta-file's log) is converted at start,
/// once; a damaged store is a refusal to start that names the file and what to do.
#[test]
fn an_old_store_is_converted_once_and_a_damaged_one_refused() {
    use krak_meta::MetaStore;
    let dir = TempDir::new("ctl-convert");
    let store = dir.path().join("store");
    let old = krak_meta_file::FileStore::open(&store).unwrap();
    old.put("/krak/policy", br#"{"name":"pack"}"#).unwrap();
    drop(old);
    let path = store.to_str().unwrap();
    let (mut ctl, url) = controller("127.0.0.1:0", &["--store", path]);
    assert_eq!(status(&url).unwrap()["policy"], "pack", "the old store's policy is kept");
    ctl.kill();
    assert!(store.join("old-log-format/wal").exists() && !store.join("wal").exists());
    let (mut ctl, url) = controller("127.0.0.1:0", &["--store", path]);
    assert_eq!(status(&url).unwrap()["policy"], "pack", "and kept over a restart of the converted store");
    ctl.kill();

    // a flipped byte in the stored policy (every copy of it in the database's pages)
    let db = store.join("store.redb");
    let mut bytes = std::fs::read(&db).unwrap();
    let needle = br#""pack""#;
    let at: Vec<usize> = (0..bytes.len() - needle.len()).filter(|&i| &bytes[i..i + needle.len()] == needle).collect();
    assert!(!at.is_empty(), "the policy is stored in the database file");
    for i in at {
        bytes[i + 2] ^= 0x20;
    }
    std::fs::write(&db, &bytes).unwrap();
    let out = krak(&["controller", "--listen", "127.0.0.1:0", "--store", path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a damaged store must stop the controller from starting: {err}");
    assert!(err.contains("store.redb") && err.contains("corrupt") && err.contains("backup"), "{err}");
    std::fs::remove_file(&db).unwrap();
    let out = krak(&["controller", "--listen", "127.0.0.1:0", "--store", path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("deleted"), "a deleted database is a refusal: {err}");
}
