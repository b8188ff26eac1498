//! Unmodified programs under `krak run` against kernel swap, side by side in one run
//! (BENCHMARKS.md, "krak run"). As root:
//!
//!   cargo build --release -p krak && cargo run --release -p krak --example run_bench [python3|sort|sqlite3|redis...]
//!
//! redis-server is driven from here over loopback (outside its cgroup): 900k SETs of 1000
//! bytes with `redis-cli --pipe`, DEBUG DIGEST, then 100k GETs of random keys, each checked;
//! its "output" is the digest. java (a 768 MiB long[] in a 1 GiB heap), node (a 512 MiB
//! Buffer and 3 million objects) and qemu (tests/vm.rs's 1 GiB guest writing and checking
//! 600 MiB; its output is the workload's console lines) run where installed. Each program
//! runs plain (its peak resident set is its footprint F), under `krak run --local` at 25% and
//! 50% of F (loopback memory servers), and in a memory cgroup holding the same total RSS as
//! that krak run (its measured peak) with a swap file on disk as the only swap, without and
//! with zswap in front of it. Every run's output must equal the plain run's; the table gives
//! wall-clock slowdowns against the plain run and the peak resident set under krak next to
//! its budget.
//!
//!   cargo run --release -p krak --example run_bench pager [python3|sort|...]
//!
//! compares where the pager runs instead (`krak run --pager in-process` against `--pager
//! separate`, at 25% of F, each twice, alternating; no swap runs).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use krak_bench::swap::{MemoryCgroup, Session, SwapFile, Zswap, DEFAULT_SWAP_FILE};

#[path = "../tests/common/guest.rs"]
mod guest;
#[path = "../tests/common/redis.rs"]
mod redis;

const MIB: u64 = 1 << 20;
const REDIS_KEYS: u64 = 900_000;
const REDIS_GETS: u64 = 100_000;

struct Program {
    name: &'static str,
    /// The program and its arguments; empty for redis-server, which is started by `run_redis`.
    argv: Vec<String>,
    stdin: Option<PathBuf>,
    /// krak run options beyond --local.
    krak_opts: Vec<&'static str>,
    /// The part of the output that must equal the plain run's.
    checked: fn(&[u8]) -> Vec<u8>,
    /// The two local budgets, in percent of the plain run's footprint.
    pcts: [u64; 2],
}

/// The budgets of most programs: a quarter and a half of their footprint.
const QUARTER_AND_HALF: [u64; 2] = [25, 50];

fn whole(output: &[u8]) -> Vec<u8> {
    output.to_vec()
}

fn guest_lines(output: &[u8]) -> Vec<u8> {
    guest::Guest::checked_lines(&String::from_utf8_lossy(output)).join("\n").into_bytes()
}

struct Outcome {
    seconds: f64,
    output: Vec<u8>,
    peak_bytes: u64,
}

fn command(argv: &[String], cgroup: Option<&MemoryCgroup>) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env("LC_ALL", "C");
    if let Some(cg) = cgroup {
        let procs = cg.procs_path();
        // SAFETY: only a write of our own pid to a file between fork and exec.
        unsafe {
            cmd.pre_exec(move || std::fs::write(&procs, std::process::id().to_string()));
        }
    }
    cmd
}

/// Runs a program to completion; None when the memory cgroup's OOM killer ended it.
/// `argv` is `prefix` (krak run ... --, or nothing) then the program's.
fn run(p: &Program, prefix: &[String], dir: &Path, cgroup: Option<&MemoryCgroup>) -> Option<Outcome> {
    if p.argv.is_empty() {
        return Some(run_redis(prefix, dir, cgroup));
    }
    let argv: Vec<String> = prefix.iter().chain(&p.argv).cloned().collect();
    let mut cmd = command(&argv, cgroup);
    cmd.stdout(Stdio::piped());
    match &p.stdin {
        Some(input) => cmd.stdin(std::fs::File::open(input).expect("stdin file")),
        None => cmd.stdin(Stdio::null()),
    };
    let started = Instant::now();
    let mut child = cmd.spawn().expect("run program");
    let mut output = Vec::new();
    std::io::Read::read_to_end(&mut child.stdout.take().unwrap(), &mut output).expect("read stdout");
    let output = (p.checked)(&output);
    let (status, peak_bytes) = wait_peak(child);
    let seconds = started.elapsed().as_secs_f64();
    if cgroup.is_some() && !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        // The cgroup's OOM killer (SIGKILL), or the program's own out-of-memory error.
        eprintln!("{argv:?} in a memory cgroup ended with status {status:#x}");
        return None;
    }
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{argv:?} failed: status {status:#x}");
    Some(Outcome { seconds, output, peak_bytes })
}

/// redis-server (after `prefix`) loaded, digested and read back from here; its output is
/// the digest. An OOM kill ends the bench (the client's calls fail).
fn run_redis(prefix: &[String], dir: &Path, cgroup: Option<&MemoryCgroup>) -> Outcome {
    let port = redis::free_port();
    let mut argv: Vec<String> = prefix.to_vec();
    argv.push("redis-server".into());
    argv.extend(redis::server_args(port, dir));
    let started = Instant::now();
    let server = redis::Redis::spawn(&mut command(&argv, cgroup), port);
    server.load(REDIS_KEYS);
    let digest = server.digest(REDIS_KEYS);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let keys: Vec<u64> = (0..REDIS_GETS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % REDIS_KEYS
        })
        .collect();
    server.read_back(&keys);
    let child = server.stop();
    let (status, peak_bytes) = wait_peak(child);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{argv:?} failed: status {status:#x}");
    Outcome { seconds: started.elapsed().as_secs_f64(), output: digest, peak_bytes }
}

/// Reaps `child`: its wait status and its own peak resident set (wait4's ru_maxrss).
#[allow(clippy::zombie_processes)] // reaped by wait4 here
fn wait_peak(child: std::process::Child) -> (i32, u64) {
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills, for our own child.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage);
        usage
    };
    (status, usage.ru_maxrss as u64 * 1024)
}

fn main() -> anyhow::Result<()> {
    // Optional arguments: `pager` first to compare the pager's places, then which programs
    // to run, by the start of their name (python3, sort, sqlite3).
    let mut only: Vec<String> = std::env::args().skip(1).collect();
    let compare_pagers = only.first().is_some_and(|a| a == "pager");
    if compare_pagers {
        only.remove(0);
    }
    let krak = std::env::current_exe()?.parent().unwrap().parent().unwrap().join("krak");
    let dir = std::env::temp_dir().join(format!("krak-run-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sort_input = dir.join("lines.txt");
    generate_lines(&sort_input, 1 << 30)?;
    let sql = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/run/db.sql");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/run/big.py");
    let programs = vec![
        Program {
            name: "python3 (768 MiB bytearray + 4M-int list)",
            argv: vec!["/usr/bin/python3".into(), script.display().to_string(), "768".into(), "4000000".into()],
            stdin: None,
            krak_opts: vec![],
            checked: whole,
            pcts: QUARTER_AND_HALF,
        },
        Program {
            // Issue 13's case: a 512 MiB bytearray written and read back, at 64 MiB local
            // (12% of its footprint) and at 25%.
            name: "python3 (512 MiB bytearray; at 12% and 25%)",
            argv: vec!["/usr/bin/python3".into(), script.display().to_string(), "512".into(), "0".into()],
            stdin: None,
            krak_opts: vec![],
            checked: whole,
            pcts: [12, 25],
        },
        Program {
            name: "sort -S 1G, 1 GiB of 4000-byte lines",
            argv: vec!["sort".into(), "-S".into(), "1G".into(), sort_input.display().to_string()],
            stdin: None,
            krak_opts: vec![],
            checked: whole,
            pcts: QUARTER_AND_HALF,
        },
        Program {
            name: "sqlite3 :memory:, ~1 GiB table, 64 KiB pages",
            argv: vec!["sqlite3".into(), ":memory:".into()],
            stdin: Some(sql.clone()),
            krak_opts: vec!["--threshold", "64KiB"],
            checked: whole,
            pcts: QUARTER_AND_HALF,
        },
        Program {
            name: "redis-server (jemalloc), 900k SETs of 1000 bytes, DEBUG DIGEST, 100k random GETs",
            argv: vec![],
            stdin: None,
            krak_opts: vec![],
            checked: whole,
            pcts: QUARTER_AND_HALF,
        },
    ];
    let mut programs = programs;
    programs.extend(runtimes(&dir));
    if compare_pagers {
        let table = pager_places(&programs, &only, &krak, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        print!("{table}");
        return Ok(());
    }
    let _session = Session::begin(5_000)?;
    let _swap = SwapFile::enable(Path::new(DEFAULT_SWAP_FILE), 4 << 30)?;
    let mut table = String::from(
        "| program | plain | krak 25% | krak 50% | swap-disk 25% | swap-disk 50% | zswap 25% | zswap 50% | peak RSS under krak 25% (budget) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    // (A program's name says when its budgets are not 25% and 50%.)
    for p in &programs {
        if !only.is_empty() && !only.iter().any(|o| p.name.starts_with(o.as_str())) {
            continue;
        }
        let plain = run(p, &[], &dir, None).expect("plain run");
        let footprint = plain.peak_bytes;
        eprintln!("{}: plain {:.1} s, footprint {} MiB", p.name, plain.seconds, footprint / MIB);
        let mut cells = vec![format!("{:.1} s, {} MiB", plain.seconds, footprint / MIB)];
        let mut krak_peak = String::new();
        // The RSS each krak run held: the swap runs' cgroups hold the same.
        let mut held = Vec::new();
        for pct in p.pcts {
            let budget = footprint * pct / 100;
            let stats = dir.join(format!("stats-{pct}.json"));
            let mut prefix = vec![krak.display().to_string(), "run".into(), "--local".into(), budget.to_string()];
            prefix.extend(p.krak_opts.iter().map(|s| s.to_string()));
            prefix.extend(["--stats".into(), stats.display().to_string(), "--".into()]);
            let mut o = run(p, &prefix, &dir, None).expect("krak run");
            assert!(o.output == plain.output, "{}: output under krak run at {pct}% differs", p.name);
            let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats)?)?;
            o.peak_bytes = s["peak_rss_bytes"].as_u64().unwrap_or(0);
            eprintln!("{}: krak {pct}% {:.1} s, peak {} MiB", p.name, o.seconds, o.peak_bytes / MIB);
            cells.push(format!("{:.1} s ({:.2}x)", o.seconds, o.seconds / plain.seconds));
            held.push(o.peak_bytes);
            if pct == p.pcts[0] {
                krak_peak = format!("{} MiB ({} MiB)", o.peak_bytes / MIB, budget / MIB);
            }
        }
        for zswap in [false, true] {
            let _zswap = zswap.then(Zswap::enable).transpose()?;
            let kind = if zswap { "zswap" } else { "swap-disk" };
            for (pct, &limit) in p.pcts.iter().zip(&held) {
                let cg = MemoryCgroup::create(&format!("run-{kind}-{pct}"), limit)?;
                let Some(o) = run(p, &[], &dir, Some(&cg)) else {
                    eprintln!("{}: {kind} {pct}%: out of memory (killed or failed)", p.name);
                    cells.push("out of memory".into());
                    continue;
                };
                assert!(o.output == plain.output, "{}: output under {kind} at {pct}% differs", p.name);
                eprintln!("{}: {kind} {pct}% ({} MiB) {:.1} s", p.name, limit / MIB, o.seconds);
                cells.push(format!("{:.1} s ({:.2}x)", o.seconds, o.seconds / plain.seconds));
            }
        }
        table.push_str(&format!("| {} | {} | {} |\n", p.name, cells.join(" | "), krak_peak));
        std::io::stderr().write_all(table.as_bytes())?;
    }
    drop(_swap);
    let _ = std::fs::remove_dir_all(&dir);
    print!("{table}");
    Ok(())
}

/// java, node and the QEMU guest, each where this machine has it (else said and left out).
fn runtimes(dir: &Path) -> Vec<Program> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/run");
    let mut out = Vec::new();
    let javac = Command::new("javac").arg("-d").arg(dir).arg(data.join("Big.java")).status();
    if javac.is_ok_and(|s| s.success()) {
        out.push(Program {
            name: "java -Xmx1g -Xms1g, a 768 MiB long[]",
            // G1 named: under a small cgroup limit the JVM would pick SerialGC, whose old
            // generation cannot hold the array.
            argv: ["java", "-XX:+UseG1GC", "-Xmx1g", "-Xms1g", "-cp", &dir.display().to_string(), "Big"]
                .map(String::from)
                .to_vec(),
            stdin: None,
            krak_opts: vec![],
            checked: whole,
            pcts: QUARTER_AND_HALF,
        });
    } else {
        eprintln!("java left out: javac is missing or failed");
    }
    if guest::on_path("node").is_some() {
        out.push(Program {
            name: "node, a 512 MiB Buffer and 3M objects",
            // The heap limit named: under a small cgroup limit V8 would size its heap to it.
            argv: vec!["node".into(), "--max-old-space-size=4096".into(), data.join("big.js").display().to_string()],
            stdin: None,
            krak_opts: vec![],
            checked: whole,
            pcts: QUARTER_AND_HALF,
        });
    } else {
        eprintln!("node left out: not installed");
    }
    let guest_dir = dir.join("guest");
    std::fs::create_dir_all(&guest_dir).expect("guest dir");
    match guest::build(&guest_dir) {
        Ok(g) => out.push(Program {
            name: "qemu (TCG), 1 GiB Linux guest writing and checking 600 MiB",
            argv: g.qemu_args(),
            stdin: None,
            krak_opts: vec![],
            checked: guest_lines,
            pcts: QUARTER_AND_HALF,
        }),
        Err(why) => eprintln!("qemu left out: {why}"),
    }
    out
}

/// Each program plain, then under `krak run` at 25% of its footprint with the pager in
/// process and in a process of its own, twice each, alternating: the table of medians (of
/// two: the mean) and the ratio separate / in-process.
fn pager_places(programs: &[Program], only: &[String], krak: &Path, dir: &Path) -> String {
    let mut table = String::from(
        "| program | plain | in-process 25% | separate 25% | separate / in-process | peak RSS in-process / separate (budget) | pager process peak RSS |\n|---|---|---|---|---|---|---|\n",
    );
    for p in programs {
        if !only.is_empty() && !only.iter().any(|o| p.name.starts_with(o.as_str())) {
            continue;
        }
        let plain = run(p, &[], dir, None).expect("plain run");
        let budget = plain.peak_bytes / 4;
        let mut secs = [Vec::new(), Vec::new()];
        let mut peaks = [0u64; 2];
        let mut host_peak = 0u64;
        for round in 0..2 {
            for (i, place) in ["in-process", "separate"].into_iter().enumerate() {
                let stats = dir.join(format!("stats-{place}-{round}.json"));
                let mut prefix = vec![krak.display().to_string(), "run".into(), "--local".into(), budget.to_string()];
                prefix.extend(["--pager".into(), place.into()]);
                prefix.extend(p.krak_opts.iter().map(|s| s.to_string()));
                prefix.extend(["--stats".into(), stats.display().to_string(), "--".into()]);
                let o = run(p, &prefix, dir, None).expect("krak run");
                assert!(o.output == plain.output, "{}: output under --pager {place} differs", p.name);
                let s: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&stats).expect("stats")).expect("stats JSON");
                peaks[i] = peaks[i].max(s["peak_rss_bytes"].as_u64().unwrap_or(0));
                host_peak = host_peak.max(s["pager_process"]["peak_rss_bytes"].as_u64().unwrap_or(0));
                eprintln!("{}: --pager {place} round {round}: {:.1} s", p.name, o.seconds);
                secs[i].push(o.seconds);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (inp, sep) = (mean(&secs[0]), mean(&secs[1]));
        let runs = |v: &[f64]| v.iter().map(|s| format!("{s:.1}")).collect::<Vec<_>>().join(", ");
        table.push_str(&format!(
            "| {} | {:.1} s, {} MiB | {inp:.1} s ({}) | {sep:.1} s ({}) | {:.2}x | {} / {} MiB ({} MiB) | {} MiB |\n",
            p.name,
            plain.seconds,
            plain.peak_bytes / MIB,
            runs(&secs[0]),
            runs(&secs[1]),
            sep / inp,
            peaks[0] / MIB,
            peaks[1] / MIB,
            budget / MIB,
            host_peak / MIB,
        ));
        std::io::stderr().write_all(table.as_bytes()).expect("stderr");
    }
    table
}

fn generate_lines(path: &Path, bytes: u64) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut line = vec![0u8; 4000];
    for _ in 0..bytes / 4000 {
        for b in line[..3999].iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = b'!' + (x % 94) as u8;
        }
        line[3999] = b'\n';
        out.write_all(&line)?;
    }
    out.flush()
}
