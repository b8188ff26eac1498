//! `krak run` on real programs: their output under the pager must be byte-identical to a
//! plain run, with a local budget of a quarter of the plain run's peak resident set, and
//! their peak resident set within that budget plus the overhead docs/design.md states.
//! Memory calls (realloc, munmap, mremap, madvise, fork, threads, system calls) are checked
//! by contents in a C program compiled here; redis-server, which brings its own allocator
//! (jemalloc), is checked by its contents' digest. The pager runs in a process of its own
//! (the default, `--pager separate`) unless a test says `--pager in-process`; the separate
//! pager's own cases (children sharing it, its death, bad messages) are at the end. Needs
//! root (userfaultfd for kernel faults).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "controller_common/mod.rs"]
mod rack;
#[path = "common/redis.rs"]
mod redis;

const KRAK: &str = env!("CARGO_BIN_EXE_krak");
const MIB: u64 = 1 << 20;
/// Peak resident set allowed above the local budget: the program's own small memory and
/// binaries, and the pager's (page table, write-back buffer, thread stacks). docs/design.md.
const OVERHEAD_BYTES: u64 = 64 * MIB;
/// The same for node, whose own binary is 36 MiB resident and whose small blocks (glibc's
/// heap, 23 MiB here) stay local: measured 71 MiB above budget. docs/design.md.
const NODE_OVERHEAD_BYTES: u64 = 96 * MIB;

/// The preload library cargo built for this test run (`cargo build` also copies it beside
/// the binary, but `cargo test` leaves it in deps/).
fn preload_lib() -> PathBuf {
    Path::new(KRAK).with_file_name("deps").join("libkrak_preload.so")
}

fn krak() -> Command {
    let mut cmd = Command::new(KRAK);
    cmd.env("KRAK_PRELOAD", preload_lib());
    cmd
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn skip(why: &str) -> bool {
    eprintln!("skipped: {why}");
    true
}

fn unprivileged() -> bool {
    !is_root() && skip("krak run needs a userfaultfd that serves kernel faults: run as root")
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/run").join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("krak-run-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs `cmd` to completion: (exit code, stdout, peak resident set of the process in bytes).
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which also gives its peak RSS
fn run_measured(cmd: &mut Command) -> (Option<i32>, Vec<u8>, u64) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn");
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let (code, peak) = wait_peak(&child);
    (code, out, peak)
}

/// Reaps `child`: (exit code, its own peak resident set in bytes, from wait4).
fn wait_peak(child: &std::process::Child) -> (Option<i32>, u64) {
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills, for our own child.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage), child.id() as libc::pid_t);
        usage
    };
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, usage.ru_maxrss as u64 * 1024)
}

/// `krak run --local BUDGET --stats FILE -- program...`: (exit code, stdout, stats).
fn krak_run(local_bytes: u64, opts: &[&str], program: &[&str], stdin: Option<&Path>) -> (Option<i32>, Vec<u8>, Value) {
    let stats_path = scratch(&format!("stats-{}.json", rand_suffix()));
    let mut cmd = krak();
    cmd.args(["run", "--local", &local_bytes.to_string(), "--stats", stats_path.to_str().unwrap()])
        .args(opts)
        .arg("--")
        .args(program)
        .env("LC_ALL", "C");
    if let Some(input) = stdin {
        cmd.stdin(std::fs::File::open(input).unwrap());
    }
    let started = Instant::now();
    let (code, out, _) = run_measured(&mut cmd);
    eprintln!("krak run {program:?} at {} MiB local: {:.1} s", local_bytes / MIB, started.elapsed().as_secs_f64());
    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(&stats_path).expect("krak run wrote --stats")).unwrap();
    let _ = std::fs::remove_file(&stats_path);
    (code, out, stats)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Runs `program` plain, then under krak run at a quarter of its plain peak: same output,
/// peak within budget + overhead, and the arena really paged (pages came back from servers).
fn matches_plain_run_at_quarter_budget(opts: &[&str], program: &[&str], stdin: Option<&Path>) -> Value {
    matches_plain_run_within(opts, program, stdin, OVERHEAD_BYTES)
}

/// [`matches_plain_run_at_quarter_budget`], the peak allowed `overhead_bytes` above budget.
fn matches_plain_run_within(opts: &[&str], program: &[&str], stdin: Option<&Path>, overhead_bytes: u64) -> Value {
    let mut plain = Command::new(program[0]);
    plain.args(&program[1..]).env("LC_ALL", "C");
    if let Some(input) = stdin {
        plain.stdin(std::fs::File::open(input).unwrap());
    }
    let (code, expected, plain_peak) = run_measured(&mut plain);
    assert_eq!(code, Some(0), "plain run of {program:?} failed");
    assert!(plain_peak > 512 * MIB, "the plain run's footprint is {} MiB, not about 1 GiB", plain_peak / MIB);
    let budget = plain_peak / 4;
    let (code, got, stats) = krak_run(budget, opts, program, stdin);
    assert_eq!(code, Some(0), "{program:?} under krak run: {stats}");
    assert!(
        got == expected,
        "{program:?}: output differs from the plain run ({} vs {} bytes)",
        got.len(),
        expected.len()
    );
    let peak = stats["peak_rss_bytes"].as_u64().unwrap();
    eprintln!(
        "{program:?}: plain peak {} MiB, budget {} MiB, peak under krak {} MiB",
        plain_peak / MIB,
        budget / MIB,
        peak / MIB
    );
    assert!(peak <= budget + overhead_bytes, "peak RSS {peak} above budget {budget} + {overhead_bytes}: {stats}");
    let arena = &stats["arena"];
    assert_eq!(arena["pager_started"], true, "{stats}");
    // Nothing in ordinary memory but what another mapping put over far memory (the JVM's
    // class-data archive): a few MiB.
    let fallbacks = arena["fallbacks"].as_object().unwrap();
    assert!(fallbacks.keys().all(|k| k == "fixed_over_far"), "{stats}");
    let fixed = fallbacks.get("fixed_over_far").map_or(0, |f| f["bytes"].as_u64().unwrap());
    assert!(fixed <= 32 * MIB, "{stats}");
    assert!(
        arena["pager"]["remote_reads"].as_u64().unwrap() > 10_000,
        "pages never came back from the servers: {stats}"
    );
    assert_eq!(arena["pager"]["failed_faults"], 0, "{stats}");
    stats
}

#[test]
fn python_building_a_gib_prints_the_plain_checksum() {
    if unprivileged() {
        return;
    }
    // A 768 MiB bytearray and a list of 4M distinct ints (~180 MiB of objects and pointers).
    // The default: the pager in a process of its own.
    let script = data("big.py");
    let stats = matches_plain_run_at_quarter_budget(
        &[],
        &["/usr/bin/python3", script.to_str().unwrap(), "768", "4000000"],
        None,
    );
    assert_eq!(stats["pager_place"], "separate", "{stats}");
    let host = &stats["pager_process"];
    assert_eq!(host["exit_code"], 0, "the pager process did not stop cleanly: {stats}");
    assert_eq!(stats["arena"]["pager_pid"], host["pid"], "the arena was served by another process: {stats}");
}

#[test]
fn python_with_the_pager_in_process_prints_the_plain_checksum() {
    if unprivileged() {
        return;
    }
    let script = data("big.py");
    let stats = matches_plain_run_at_quarter_budget(
        &["--pager", "in-process"],
        &["/usr/bin/python3", script.to_str().unwrap(), "768", "4000000"],
        None,
    );
    assert_eq!(stats["pager_place"], "in-process", "{stats}");
    assert!(stats["pager_process"].is_null(), "{stats}");
}

/// 1 GiB of random printable lines of 4000 bytes each, from a fixed seed.
fn generate_lines(path: &Path, bytes: u64) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
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
        out.write_all(&line).unwrap();
    }
    out.flush().unwrap();
}

#[test]
fn sort_of_a_gib_matches_the_plain_run() {
    if unprivileged() {
        return;
    }
    let input = scratch("sort-input.txt");
    generate_lines(&input, 1 << 30);
    matches_plain_run_at_quarter_budget(&[], &["sort", "-S", "1G", input.to_str().unwrap()], None);
    let _ = std::fs::remove_file(&input);
}

#[test]
fn sqlite3_in_memory_database_answers_as_a_plain_run() {
    if unprivileged() {
        return;
    }
    // ~1 GiB in 64 KiB pages: each page-cache allocation is one malloc above the threshold.
    let sql = data("db.sql");
    matches_plain_run_at_quarter_budget(&["--threshold", "64KiB"], &["sqlite3", ":memory:"], Some(&sql));
}

#[test]
fn memory_calls_keep_contents_under_the_pager() {
    if unprivileged() {
        return;
    }
    let exe = scratch("alloc_checks");
    let cc = Command::new("cc")
        .args(["-O2", "-Wall", "-Werror", "-pthread", "-o"])
        .arg(&exe)
        .arg(data("alloc_checks.c"))
        .status()
        .expect("cc");
    assert!(cc.success(), "compiling alloc_checks.c");
    // Plain first: the program checks itself, so this shows the checks are right.
    let (code, plain, _) = run_measured(&mut Command::new(&exe));
    assert_eq!(code, Some(0), "plain run: {}", String::from_utf8_lossy(&plain));
    // 32 MiB local for ~400 MiB touched: most checks read pages back from the servers; then
    // the same on an erasure-coded arena (7 loopback servers), and with the pager in the
    // program's own threads instead of a process of its own (the default).
    for opts in [&[][..], &["--redundancy", "ec:4+2"][..], &["--pager", "in-process"][..], &["--allocator", "far"][..]]
    {
        let (code, out, stats) = krak_run(32 * MIB, opts, &[exe.to_str().unwrap()], None);
        let out = String::from_utf8_lossy(&out);
        assert_eq!(code, Some(0), "{opts:?}: {out}\n{stats}");
        for check in [
            "malloc",
            "realloc",
            "calloc",
            "aligned",
            "madvise",
            "munmap",
            "mremap",
            "map_fixed",
            "syscalls",
            "threads",
            "fork",
        ] {
            assert!(out.contains(&format!("{check}: ok")), "{opts:?}: {check} not reported: {out}");
        }
        let pager = &stats["arena"]["pager"];
        assert!(pager["remote_reads"].as_u64().unwrap() > 10_000, "{stats}");
        assert!(pager["discarded_pages"].as_u64().unwrap() > 0, "{stats}");
        assert!(stats["peak_rss_bytes"].as_u64().unwrap() <= 32 * MIB + OVERHEAD_BYTES, "{stats}");
    }
    let _ = std::fs::remove_file(&exe);
}

#[test]
fn small_blocks_are_far_memory_with_allocator_far() {
    if unprivileged() {
        return;
    }
    // awk's array of 4M elements: every element a few small blocks (about 330 MiB plain).
    let program = "BEGIN { for (i = 0; i < 4000000; i++) a[i] = \"x\" i; s = 0; \
                   for (i = 0; i < 4000000; i += 7) s += length(a[i]); print s, length(a) }";
    let (code, expected, plain_peak) = run_measured(Command::new("awk").arg(program));
    assert_eq!(code, Some(0));
    let budget = plain_peak / 4;
    let (code, got, stats) = krak_run(budget, &["--allocator", "far"], &["awk", program], None);
    assert_eq!(code, Some(0), "{stats}");
    assert_eq!(got, expected, "output differs from the plain run");
    let peak = stats["peak_rss_bytes"].as_u64().unwrap();
    eprintln!("awk: plain peak {} MiB, budget {} MiB, under krak {} MiB", plain_peak / MIB, budget / MIB, peak / MIB);
    assert!(peak <= budget + OVERHEAD_BYTES, "{stats}");
    let arena = &stats["arena"];
    assert!(arena["small"]["spans"].as_u64().unwrap() > 1000, "awk's blocks are in small spans: {stats}");
    assert!(arena["pager"]["remote_reads"].as_u64().unwrap() > 10_000, "{stats}");
    assert_eq!(arena["fallback_allocations"], 0, "{stats}");
}

#[test]
fn a_system_call_on_far_memory_that_cannot_be_served_stops_the_program() {
    if unprivileged() {
        return;
    }
    // A program with a SIGBUS handler (as QEMU has) writes far memory to a file after its
    // memory servers are gone: the kernel's access cannot be failed by a signal, so it
    // would fault for ever; the pager stops the program instead, saying why.
    let servers: Vec<(rack::Proc, String)> = (0..3)
        .map(|_| {
            let (p, line) = rack::spawn_and_read_line(&[
                "memserver",
                "--listen",
                "127.0.0.1:0",
                "--capacity",
                "256MiB",
                "--secret-file",
                rack::secret_file(),
            ]);
            (p, line.split_whitespace().nth(4).unwrap().to_string())
        })
        .collect();
    let list = servers.iter().map(|(_, a)| a.as_str()).collect::<Vec<_>>().join(",");
    let script = "import os, signal, sys\n\
                  signal.signal(signal.SIGBUS, lambda *a: None)\n\
                  b = bytearray(64 << 20)\n\
                  for i in range(0, len(b), 4096): b[i] = 1\n\
                  print('ready', flush=True)\n\
                  sys.stdin.readline()\n\
                  fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\n\
                  os.write(fd, b)\n\
                  print('written', flush=True)\n";
    let out_file = scratch("unserved.bin");
    let log = scratch("unserved.log");
    let mut child = krak()
        .args(["run", "--local", "16MiB", "--servers", &list, "--secret-file", rack::secret_file()])
        .args(["--log", log.to_str().unwrap(), "--", "/usr/bin/python3", "-c", script, out_file.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    for (mut proc, _) in servers {
        proc.kill();
    }
    let started = Instant::now();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGKILL), "stopped, not finished: {rest:?}");
    assert!(!rest.contains("written"), "the write cannot have completed: {rest:?}");
    eprintln!("the program was stopped {:.1} s after its servers were killed", started.elapsed().as_secs_f64());
    assert!(started.elapsed() < Duration::from_secs(60), "stopped in {:?}", started.elapsed());
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("stopping the program"), "the log says why: {log}");
    let _ = std::fs::remove_file(&out_file);
}

#[test]
fn runtime_memory_calls_keep_contents_under_the_pager() {
    if unprivileged() {
        return;
    }
    let exe = scratch("reserve_checks");
    let cc =
        Command::new("cc").args(["-O2", "-Wall", "-Werror", "-o"]).arg(&exe).arg(data("reserve_checks.c")).status();
    assert!(cc.expect("cc").success(), "compiling reserve_checks.c");
    let (code, plain, _) = run_measured(&mut Command::new(&exe));
    assert_eq!(code, Some(0), "plain run: {}", String::from_utf8_lossy(&plain));
    // The separate pager only: the one in the program refuses pages without PROT_READ.
    for opts in [&[][..], &["--redundancy", "ec:4+2"][..]] {
        let (code, out, stats) = krak_run(32 * MIB, opts, &[exe.to_str().unwrap()], None);
        let out = String::from_utf8_lossy(&out);
        assert_eq!(code, Some(0), "{opts:?}: {out}\n{stats}");
        for check in ["reserve", "syscalls", "guard", "protect", "exec", "fixed_file", "sparse"] {
            assert!(out.contains(&format!("{check}: ok")), "{opts:?}: {check} not reported: {out}");
        }
        let arena = &stats["arena"];
        // Everything far but the file mapped over far memory, which the kernel maps.
        assert_eq!(arena["fallback_allocations"], 1, "{stats}");
        assert_eq!(arena["fallbacks"]["fixed_over_far"]["count"], 1, "{stats}");
        assert!(arena["far_allocations"].as_u64().unwrap() >= 10, "{stats}");
        let pager = &arena["pager"];
        assert!(pager["remote_reads"].as_u64().unwrap() > 10_000, "{stats}");
        assert_eq!(pager["failed_faults"], 0, "{stats}");
        assert!(stats["peak_rss_bytes"].as_u64().unwrap() <= 32 * MIB + OVERHEAD_BYTES, "{stats}");
    }
    let _ = std::fs::remove_file(&exe);
}

#[test]
fn a_programs_own_allocator_serves_it_from_far_memory() {
    if unprivileged() {
        return;
    }
    // A strict allocator of the program's (aborts on any block it did not hand out) and a
    // program linked with it, writing ~200 MiB of blocks from four threads.
    let lib = scratch("libownalloc.so");
    let exe = scratch("own_alloc_main");
    let (lib_s, exe_s) = (lib.to_str().unwrap(), exe.to_str().unwrap());
    let dir = lib.parent().unwrap().to_str().unwrap();
    let cc = |args: &[&str]| assert!(Command::new("cc").args(args).status().unwrap().success(), "cc {args:?}");
    cc(&[
        "-O2",
        "-Wall",
        "-Werror",
        "-pthread",
        "-fPIC",
        "-shared",
        "-o",
        lib_s,
        data("own_alloc.c").to_str().unwrap(),
    ]);
    cc(&["-O2", "-Wall", "-Werror", "-pthread", "-o", exe_s, data("own_alloc_main.c").to_str().unwrap()]
        .into_iter()
        .chain([&format!("-L{dir}")[..], "-lownalloc", &format!("-Wl,-rpath,{dir}")])
        .collect::<Vec<_>>());
    let (code, plain, _) = run_measured(&mut Command::new(&exe));
    assert_eq!(code, Some(0), "plain run: {}", String::from_utf8_lossy(&plain));

    let (code, out, stats) = krak_run(32 * MIB, &[], &[exe.to_str().unwrap()], None);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(code, Some(0), "{out}\n{stats}");
    assert!(out.starts_with("ownalloc: ok, 0 bad blocks, 25 chunks"), "{out}");
    let arena = &stats["arena"];
    assert_eq!(arena["malloc"]["allocator"], "program", "{stats}");
    assert!(arena["malloc"]["allocator_object"].as_str().unwrap().ends_with("libownalloc.so"), "{stats}");
    assert!(arena["far_allocations"].as_u64().unwrap() >= 25, "its chunks are far memory: {stats}");
    assert!(arena["pager"]["remote_reads"].as_u64().unwrap() > 10_000, "{stats}");
    assert_eq!(arena["pager"]["failed_faults"], 0, "{stats}");
    assert!(stats["peak_rss_bytes"].as_u64().unwrap() <= 32 * MIB + OVERHEAD_BYTES, "{stats}");

    // --allocator krak: krak serves the malloc family, the program's allocator sees nothing.
    let (code, out, stats) = krak_run(32 * MIB, &["--allocator", "krak"], &[exe.to_str().unwrap()], None);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(code, Some(0), "{out}\n{stats}");
    assert!(out.starts_with("ownalloc: ok, 0 bad blocks, 0 chunks"), "{out}");
    assert_eq!(stats["arena"]["malloc"]["allocator"], "krak", "{stats}");

    // Without its own posix_memalign, glibc's would hand out blocks the allocator cannot
    // free: forwarding is refused, with the reason, never half done.
    let partial = scratch("partial");
    std::fs::create_dir_all(&partial).unwrap();
    let partial_lib = partial.join("libownalloc.so");
    let own_alloc_c = data("own_alloc.c");
    cc(&["-O2", "-pthread", "-fPIC", "-shared", "-DOWNALLOC_NO_POSIX_MEMALIGN", "-o"]
        .into_iter()
        .chain([partial_lib.to_str().unwrap(), own_alloc_c.to_str().unwrap()])
        .collect::<Vec<_>>());
    let out = krak().args(["run", "--", exe_s]).env("LD_LIBRARY_PATH", &partial).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("posix_memalign"), "{out:?}");
    let _ = std::fs::remove_file(&exe);
    let _ = std::fs::remove_file(&lib);
    let _ = std::fs::remove_dir_all(&partial);
}

#[test]
fn exit_status_signals_and_stdio_pass_through() {
    if unprivileged() {
        return;
    }
    let status = |args: &[&str]| krak().arg("run").arg("--").args(args).status().unwrap().code();
    assert_eq!(status(&["sh", "-c", "exit 7"]), Some(7));
    let in_process = krak().args(["run", "--pager", "in-process", "--", "sh", "-c", "exit 9"]).status().unwrap();
    assert_eq!(in_process.code(), Some(9));
    assert_eq!(status(&["sh", "-c", "kill -TERM $$"]), Some(128 + libc::SIGTERM));

    // stdin to the program, its stdout and stderr back, unchanged.
    let mut child = krak()
        .args(["run", "--", "sh", "-c", "tr a-z A-Z; echo to-stderr >&2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello far memory\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.stdout, b"HELLO FAR MEMORY\n");
    assert_eq!(out.stderr, b"to-stderr\n");
    assert_eq!(out.status.code(), Some(0));

    // A signal sent to krak reaches the program, whose death by it is krak's status.
    let mut child = krak().args(["run", "--", "sleep", "60"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill to our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(started.elapsed() < Duration::from_secs(20), "the program did not get the signal");
}

#[test]
fn bad_settings_are_refused_with_a_reason() {
    let out = krak().args(["run", "--redundancy", "rep3", "--", "true"]).output().unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("rep3"), "{out:?}");
    // The library on its own, unconfigured: an error, not a silent fallback.
    let lib = preload_lib();
    let out = Command::new("true").env("LD_PRELOAD", &lib).env_remove("KRAK_RUN_SERVERS").output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("krak run"), "{out:?}");
    let out = Command::new("true")
        .env("LD_PRELOAD", &lib)
        .env("KRAK_RUN_SERVERS", "127.0.0.1:1")
        .env("KRAK_RUN_LOCAL_BYTES", "lots")
        .env("KRAK_RUN_MAX_FAR_BYTES", "1073741824")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("KRAK_RUN_LOCAL_BYTES"), "{out:?}");
}

/// The program's path in $PATH, if installed.
fn installed(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// 900k keys of 1000 bytes: about 1 GiB resident in a plain run.
/// `name` on PATH, or None with the reason printed; under CI (which installs it) a failure.
fn runtime(name: &str, package: &str) -> Option<PathBuf> {
    let found = installed(name);
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "{name} is not installed ({package}; .ci/run installs it)");
        skip(&format!("{name} is not installed ({package})"));
    }
    found
}

#[test]
fn the_jvm_heap_is_far_memory_and_prints_the_plain_checksum() {
    if unprivileged() {
        return;
    }
    let (Some(javac), Some(java)) = (runtime("javac", "default-jdk-headless"), runtime("java", "default-jdk-headless"))
    else {
        return;
    };
    let dir = scratch("jvm");
    std::fs::create_dir_all(&dir).unwrap();
    let built = Command::new(javac).arg("-d").arg(&dir).arg(data("Big.java")).status().expect("javac");
    assert!(built.success(), "javac Big.java");
    // -Xms: the whole 1 GiB heap committed at start, as services run it.
    let stats = matches_plain_run_at_quarter_budget(
        &[],
        &[java.to_str().unwrap(), "-XX:+UseG1GC", "-Xmx1g", "-Xms1g", "-cp", dir.to_str().unwrap(), "Big"],
        None,
    );
    assert!(stats["arena"]["far_allocations"].as_u64().unwrap() >= 5, "{stats}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn node_with_its_v8_heap_in_far_memory_prints_the_plain_output() {
    if unprivileged() {
        return;
    }
    let Some(node) = runtime("node", "nodejs") else { return };
    // A 512 MiB Buffer (one mapping) and 3 million objects on V8's heap (256 KiB pages).
    let script = data("big.js");
    let program = [node.to_str().unwrap(), "--max-old-space-size=4096", script.to_str().unwrap()];
    let stats = matches_plain_run_within(&[], &program, None, NODE_OVERHEAD_BYTES);
    assert!(stats["arena"]["far_allocations"].as_u64().unwrap() > 1000, "V8's heap pages are far: {stats}");
}

const REDIS_KEYS: u64 = 900_000;

/// redis-server on a free port, plain or under `krak run --local BUDGET --stats FILE`.
fn start_redis(krak_run: Option<(u64, &Path)>) -> redis::Redis {
    let port = redis::free_port();
    let dir = scratch(&format!("redis-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = match krak_run {
        Some((local_bytes, stats)) => {
            let mut cmd = krak();
            cmd.args(["run", "--local", &local_bytes.to_string(), "--stats", stats.to_str().unwrap(), "--"]);
            cmd.arg("redis-server");
            cmd
        }
        None => Command::new("redis-server"),
    };
    cmd.args(redis::server_args(port, &dir));
    redis::Redis::spawn(&mut cmd, port)
}

/// The data set's digest, after reading back 4000 keys spread over it and the last one.
fn redis_contents(r: &redis::Redis) -> Vec<u8> {
    let digest = r.digest(REDIS_KEYS);
    let keys: Vec<u64> = (0..REDIS_KEYS).step_by((REDIS_KEYS / 4000) as usize).chain([REDIS_KEYS - 1]).collect();
    r.read_back(&keys);
    digest
}

#[test]
fn redis_with_its_own_allocator_keeps_its_data_in_far_memory() {
    if unprivileged() {
        return;
    }
    if installed("redis-server").is_none() || installed("redis-cli").is_none() {
        skip("redis-server or redis-cli is not installed (Debian package redis-server)");
        return;
    }
    // ~1 GiB resident plain: 900k keys of 1000 bytes in jemalloc's small blocks.
    let started = Instant::now();
    let plain = start_redis(None);
    plain.load(REDIS_KEYS);
    let expected = redis_contents(&plain);
    let (code, plain_peak) = wait_peak(&plain.stop());
    assert_eq!(code, Some(0), "plain redis-server");
    assert!(plain_peak > 768 * MIB, "plain redis-server peaked at {} MiB, not about 1 GiB", plain_peak / MIB);
    eprintln!("plain redis-server: {:.1} s, peak {} MiB", started.elapsed().as_secs_f64(), plain_peak / MIB);

    let budget = plain_peak / 4;
    let stats_path = scratch("redis-stats.json");
    let started = Instant::now();
    let under_krak = start_redis(Some((budget, &stats_path)));
    under_krak.load(REDIS_KEYS);
    assert!(redis_contents(&under_krak) == expected, "DEBUG DIGEST under krak run differs from the plain run's");
    let (code, _) = wait_peak(&under_krak.stop());
    assert_eq!(code, Some(0), "krak run redis-server");
    let stats: Value = serde_json::from_str(&std::fs::read_to_string(&stats_path).unwrap()).unwrap();
    let peak = stats["peak_rss_bytes"].as_u64().unwrap();
    eprintln!(
        "redis-server under krak run: {:.1} s, budget {} MiB, peak {} MiB",
        started.elapsed().as_secs_f64(),
        budget / MIB,
        peak / MIB
    );
    let arena = &stats["arena"];
    assert_eq!(arena["malloc"]["allocator"], "program", "{stats}");
    assert!(arena["malloc"]["allocator_object"].as_str().unwrap().contains("jemalloc"), "{stats}");
    assert!(peak <= budget + OVERHEAD_BYTES, "peak RSS {peak} above budget {budget} + {OVERHEAD_BYTES}: {stats}");
    assert_eq!(arena["fallback_allocations"], 0, "{stats}");
    assert!(arena["pager"]["remote_reads"].as_u64().unwrap() > 10_000, "{stats}");
    assert_eq!(arena["pager"]["failed_faults"], 0, "{stats}");
}

/// `krak run --pager separate` with `--log`: (the child, the log's path).
fn spawn_separate(local_bytes: u64, program: &[&str]) -> (std::process::Child, PathBuf) {
    let log = scratch(&format!("pager-{}.log", rand_suffix()));
    let child = krak()
        .args(["run", "--pager", "separate", "--local", &local_bytes.to_string(), "--log", log.to_str().unwrap()])
        .arg("--")
        .args(program)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, log)
}

/// The pids whose arenas the pager process served, and those it released.
fn served_and_released(log: &Path) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let pids = |marker: &str, end: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.split(marker).nth(1))
            .filter_map(|rest| rest.split(end).next().map(str::to_owned))
            .collect()
    };
    (pids("serving the arena of pid ", ":"), pids("krak_arena::host: pid ", " hung up"))
}

#[test]
fn programs_a_program_starts_share_the_separate_pager_and_release_their_arenas() {
    if unprivileged() {
        return;
    }
    // Two children at once, each ~150 MiB of far memory at a 48 MiB budget of their own,
    // then one killed mid-allocation: its arena is released all the same.
    let script = data("big.py");
    let s = script.to_str().unwrap();
    let shell = format!(
        "python3 {s} 128 100000 & python3 {s} 128 100000; \
         python3 -c 'import os; b = bytearray(300 << 20); os.kill(os.getpid(), 9)'; wait"
    );
    let plain = Command::new("python3").args([s, "128", "100000"]).output().unwrap();
    assert!(plain.status.success());
    let (child, log) = spawn_separate(48 * MIB, &["sh", "-c", &shell]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, [plain.stdout.clone(), plain.stdout].concat(), "{out:?}");
    let (mut served, mut released) = served_and_released(&log);
    served.sort();
    released.sort();
    assert_eq!(served.len(), 3, "three programs, three arenas: {served:?}");
    assert_eq!(served, released, "every arena released when its program ended");
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_killed_pager_process_stops_the_program_with_the_reason() {
    if unprivileged() {
        return;
    }
    let script = data("big.py");
    let (mut child, log) = spawn_separate(64 * MIB, &["python3", script.to_str().unwrap(), "768", "4000000"]);
    // Wait for the arena to be served, then a little more so that pages are in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    let host_pid: libc::pid_t = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let pid = text
            .lines()
            .find_map(|l| l.split("served by the pager process (pid ").nth(1))
            .and_then(|rest| rest.split(')').next()?.parse().ok());
        if let Some(pid) = pid {
            break pid;
        }
        assert!(Instant::now() < deadline, "the arena was never served: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill to the pager process krak run started for this test.
    assert_eq!(unsafe { libc::kill(host_pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the program hangs after its pager died");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains(&format!("the pager process (pid {host_pid}) is gone")), "{stderr}");
    assert!(out.stdout.is_empty(), "no checksum may be printed: {:?}", String::from_utf8_lossy(&out.stdout));
    let _ = std::fs::remove_file(&log);
}

#[test]
fn the_separate_pager_refuses_bad_messages_and_keeps_serving() {
    if unprivileged() {
        return;
    }
    let stats_path = scratch(&format!("stats-{}.json", rand_suffix()));
    let out = krak()
        .args(["run", "--pager", "separate", "--local", "16MiB", "--max-far", "1GiB"])
        .args(["--stats", stats_path.to_str().unwrap(), "--", "python3"])
        .arg(data("bad_peer.py"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for case in [
        "unknown tag",
        "empty hello",
        "discard before hello",
        "hello without fds",
        "wrong version",
        "a file for the memfd",
        "a memfd for the userfaultfd",
        "arena larger than the memfd",
        "unaligned arena",
        "arena larger than --max-far",
    ] {
        assert!(stdout.contains(&format!("{case}: refused: ")), "{case} not refused: {stdout}");
    }
    assert!(stdout.contains("still served"), "{stdout}");
    let stats: Value = serde_json::from_str(&std::fs::read_to_string(&stats_path).unwrap()).unwrap();
    assert_eq!(stats["pager_process"]["exit_code"], 0, "{stats}");
    assert!(stats["arena"]["pager"]["remote_reads"].as_u64().unwrap() > 1000, "64 MiB at 16 MiB local: {stats}");
    let _ = std::fs::remove_file(&stats_path);
}
