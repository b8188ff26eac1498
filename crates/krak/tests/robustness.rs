//! A robustness run (issue 15): a verified workload (`krak demo --redundancy replicate:2` on
//! a rack of real processes) under a random schedule of faults: a memory server SIGKILLed,
//! memory servers paused (SIGSTOP, as a cut link) and resumed, the controller SIGKILLed
//! and restarted on its store, floods of idle connections on the controller and on memory
//! servers. Every schedule comes from a seed, printed with the line that replays it; the
//! outcome is checked: every page read back right, no fault failed, no live server
//! declared dead at the end.
//!
//! `.ci/run` runs the fixed seeds below; `KRAK_ROBUSTNESS_SEEDS=7,8,9` (or `random`) runs
//! others.

mod controller_common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use controller_common::*;
use serde_json::Value;

/// Seconds the workload runs; the faults fall within it.
const RUN_SECONDS: u64 = 12;
const SERVERS: usize = 4;
/// Seeds `.ci/run` replays: each schedules every kind of fault (one restarts the
/// controller twice).
const CI_SEEDS: [u64; 2] = [5, 7];

/// One fault of a schedule, at `at_ms` from the workload's start.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL memory server `i` (once per run: replication survives one loss at a time).
    KillServer(usize),
    /// SIGSTOP memory server `i` for `ms`, then SIGCONT.
    PauseServer(usize, u64),
    /// SIGKILL the controller and start it again on its store after `ms`.
    RestartController(u64),
    /// Hold `n` idle connections to the controller for `ms`.
    FloodController(usize, u64),
    /// Hold `n` idle connections to memory server `i` for `ms`.
    FloodServer(usize, usize, u64),
}

/// A small deterministic generator (xorshift64*), so a seed replays its schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The schedule of `seed`: 5 to 8 faults, at most one server killed, no two pauses at once
/// (nor a pause of the killed server).
fn schedule(seed: u64) -> Vec<(u64, Fault)> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut out = Vec::new();
    let mut killed = None;
    let mut paused_until = 0;
    for _ in 0..5 + rng.below(4) {
        let at_ms = 1_000 + rng.below((RUN_SECONDS - 4) * 1_000);
        let server = rng.below(SERVERS as u64) as usize;
        let fault = match rng.below(5) {
            0 if killed.is_none() => {
                killed = Some(server);
                Fault::KillServer(server)
            }
            1 if at_ms > paused_until && killed != Some(server) => {
                let ms = 300 + rng.below(1_200);
                paused_until = at_ms + ms;
                Fault::PauseServer(server, ms)
            }
            2 => Fault::RestartController(200 + rng.below(1_500)),
            3 => Fault::FloodController(64 + rng.below(192) as usize, 500 + rng.below(2_000)),
            _ => Fault::FloodServer(server, 16 + rng.below(48) as usize, 500 + rng.below(2_000)),
        };
        out.push((at_ms, fault));
    }
    // A kill scheduled before a pause of the same server would make it a pause of nothing.
    out.sort_by_key(|(at, _)| *at);
    let mut dead = None;
    out.retain(|(_, f)| match f {
        Fault::KillServer(i) => {
            dead = Some(*i);
            true
        }
        Fault::PauseServer(i, _) | Fault::FloodServer(i, _, _) => dead != Some(*i),
        _ => true,
    });
    out
}

/// A free loopback port, for a controller that must come back on the same URL.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child process this test started and has not reaped.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Idle connections to `addr`, closed when dropped.
fn flood(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()).collect()
}

fn run(seed: u64) {
    let plan = schedule(seed);
    eprintln!("robustness seed {seed:#x} (replay: KRAK_ROBUSTNESS_SEEDS={seed:#x}): {plan:?}");
    let dir = TempDir::new("robustness");
    let store = dir.path().join("store");
    let listen = format!("127.0.0.1:{}", free_port());
    let ctl_args = ["--store", store.to_str().unwrap(), "--dead-after-ms", "4000"];
    let (ctl, url) = controller(&listen, &ctl_args);
    let mut ctl = Some(ctl);
    let ctl_addr: SocketAddr = listen.parse().unwrap();
    let mut servers: Vec<_> = (0..SERVERS).map(|i| memserver(&url, &format!("rack1/host{i}"), "128MiB")).collect();
    wait_for(Duration::from_secs(10), "the servers alive", || {
        let st = status(&url).ok()?;
        (st["servers"].as_array()?.iter().filter(|s| s["state"] == "alive").count() == SERVERS).then_some(())
    });

    let seconds = RUN_SECONDS.to_string();
    let mut demo = Command::new(KRAK)
        .args(["demo", "--controller", &url, "--secret-file", secret_file(), "--redundancy", "replicate:2"])
        .args(["--region", "48MiB", "--local", "12MiB", "--seconds", &seconds, "--no-baseline", "--json"])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo starts");
    let stdout = read_all(demo.stdout.take().unwrap());
    let stderr = read_all(demo.stderr.take().unwrap());
    let start = Instant::now();
    let mut killed = None;
    let mut floods: Vec<(Instant, Vec<TcpStream>)> = Vec::new();
    let mut resumes: Vec<(Instant, u32)> = Vec::new();
    for (at_ms, fault) in &plan {
        let at = start + Duration::from_millis(*at_ms);
        while Instant::now() < at {
            let now = Instant::now();
            floods.retain(|(until, _)| *until > now);
            for (_, pid) in resumes.iter().filter(|(until, _)| *until <= now) {
                signal(*pid, libc::SIGCONT);
            }
            resumes.retain(|(until, _)| *until > now);
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("  {:>5} ms: {fault:?}", start.elapsed().as_millis());
        match *fault {
            Fault::KillServer(i) => {
                servers[i].0.kill();
                killed = Some(servers[i].1);
            }
            Fault::PauseServer(i, ms) => {
                signal(servers[i].0 .0.id(), libc::SIGSTOP);
                resumes.push((Instant::now() + Duration::from_millis(ms), servers[i].0 .0.id()));
            }
            Fault::RestartController(ms) => {
                drop(ctl.take());
                std::thread::sleep(Duration::from_millis(ms));
                ctl = Some(controller(&listen, &ctl_args).0);
            }
            Fault::FloodController(n, ms) => {
                floods.push((Instant::now() + Duration::from_millis(ms), flood(ctl_addr, n)))
            }
            Fault::FloodServer(i, n, ms) => {
                floods.push((Instant::now() + Duration::from_millis(ms), flood(servers[i].1, n)))
            }
        }
    }
    // Every paused server goes on before the workload's final check.
    for (until, pid) in resumes.drain(..) {
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(pid, libc::SIGCONT);
    }
    drop(floods);
    let deadline = Instant::now() + Duration::from_secs(RUN_SECONDS + 120);
    while demo.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "seed {seed:#x}: the demo did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let exit = demo.wait().unwrap();
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let tail: String = stderr.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
    assert!(exit.success(), "seed {seed:#x}: krak demo failed: {exit}\n{stdout}\n{tail}");
    let r: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    let u = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}: {r}"));
    assert_eq!(r["verified"], true, "seed {seed:#x}: {r}");
    assert_eq!(u(&r, "mismatches"), 0, "seed {seed:#x}: {r}");
    assert_eq!(u(&r, "pages_verified"), u(&r, "pages_total"), "seed {seed:#x}: every page read back");
    assert_eq!(u(&r["pager"], "failed_faults"), 0, "seed {seed:#x}: {r}");
    // No server that is still running is dead in the controller's eyes.
    let (st, _) = wait_for(Duration::from_secs(10), "the rack's status", || status(&url).ok());
    for s in st["servers"].as_array().unwrap() {
        let addr: SocketAddr = s["addr"].as_str().unwrap().parse().unwrap();
        if Some(addr) != killed {
            assert_ne!(s["state"], "dead", "seed {seed:#x}: live server {addr} declared dead: {st:#}");
        }
    }
    eprintln!("seed {seed:#x}: every page right after {} faults", plan.len());
}

fn seeds() -> Vec<u64> {
    let parse = |s: &str| {
        let s = s.trim();
        s.strip_prefix("0x").map_or_else(|| s.parse(), |h| u64::from_str_radix(h, 16)).expect("a seed")
    };
    match std::env::var("KRAK_ROBUSTNESS_SEEDS") {
        Ok(s) if s == "random" => vec![rand::random()],
        Ok(s) => s.split(',').map(parse).collect(),
        Err(_) => CI_SEEDS.to_vec(),
    }
}

#[test]
fn a_verified_workload_survives_random_fault_schedules() {
    for seed in seeds() {
        run(seed);
    }
}

#[test]
fn a_seed_replays_its_schedule() {
    let a = format!("{:?}", schedule(42));
    assert_eq!(a, format!("{:?}", schedule(42)));
    assert_ne!(a, format!("{:?}", schedule(43)));
    for seed in 0..200 {
        let plan = schedule(seed);
        assert!(plan.iter().filter(|(_, f)| matches!(f, Fault::KillServer(_))).count() <= 1, "{plan:?}");
    }
    for seed in CI_SEEDS {
        let kinds: std::collections::HashSet<_> =
            schedule(seed).iter().map(|(_, f)| std::mem::discriminant(f)).collect();
        assert_eq!(kinds.len(), 5, "seed {seed} schedules every kind of fault: {:?}", schedule(seed));
    }
}
