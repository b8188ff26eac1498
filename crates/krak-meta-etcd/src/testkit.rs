//! Real etcd members for tests: [`EtcdCluster::start`] runs `n` `etcd` processes on free
//! loopback ports, each with its own data directory, waits until the cluster serves
//! linearizable reads, and kills them (SIGKILL) and removes the directories on drop.
//!
//! ```no_run
//! use krak_meta_etcd::testkit::EtcdCluster;
//! let mut etcd = EtcdCluster::start(3); // panics, saying how to install etcd, if it is missing
//! let store = etcd.store(); // an EtcdStore on every member, short timeouts
//! // ... hand `etcd.endpoints()` ("http://127.0.0.1:P1,...") to a controller ...
//! etcd.kill(0); // member 0 dies (SIGKILL); etcd.pause(1) / resume(1) freeze one
//! ```
//!
//! The binary is `$KRAK_ETCD` if set, else `etcd` on `PATH`, else `/usr/bin/etcd`. When
//! there is none, [`EtcdCluster::start`] **panics** with a message saying to install
//! Debian's `etcd-server` (CI's `.ci/run` does): tests that need etcd fail rather than pass
//! silently. Members use a 50 ms heartbeat and a 500 ms election timeout, so leases can be
//! as short as 1 s and a new leader is elected within about a second. Each member's output
//! goes to `member-N.log` in the cluster's directory; a member that fails to start is
//! reported with the end of its log. The processes are children of the test process: if
//! the test process itself is SIGKILLed, they outlive it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use krak_meta::MetaError;

use crate::{EtcdOptions, EtcdStore};

/// Environment variable naming the etcd binary to use.
pub const ETCD_ENV: &str = "KRAK_ETCD";

/// How to get etcd, for error messages.
pub const INSTALL_HINT: &str =
    "etcd is not installed: install Debian's etcd-server (apt-get install -y etcd-server; .ci/run does it in CI) \
     or point $KRAK_ETCD at an etcd 3.4+ binary";

/// Why a test cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("${ETCD_ENV}={} is not a file; {INSTALL_HINT}", .path.display())]
    NotAFile { path: PathBuf },
    #[error("{INSTALL_HINT}")]
    NotInstalled,
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run {}: {source}", .bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to a member: {0}")]
    Connect(#[source] MetaError),
    #[error("etcd member {member} exited ({status}) at start; its log ends with:\n{log_tail}")]
    Exited { member: usize, status: std::process::ExitStatus, log_tail: String },
    #[error("etcd member {member} not ready within {timeout:?} ({source}); its log ends with:\n{log_tail}")]
    NotReady {
        member: usize,
        timeout: Duration,
        log_tail: String,
        #[source]
        source: MetaError,
    },
}

/// The etcd binary, or why there is none.
pub fn etcd_binary() -> Result<PathBuf, TestkitError> {
    if let Some(p) = std::env::var_os(ETCD_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(TestkitError::NotAFile { path: p }) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|p| p.is_file())
        .ok_or(TestkitError::NotInstalled)
}

/// One etcd process.
#[derive(Debug)]
struct Member {
    client_url: String,
    log: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster of real processes; see the module documentation.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: PathBuf,
}

/// `n` distinct free ports on 127.0.0.1 (held together while picking, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    ls.iter().map(|l| l.local_addr().expect("local addr").port()).collect()
}

fn log_tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl EtcdCluster {
    /// Starts an `n`-member cluster and waits until it serves; panics with the reason
    /// (etcd missing: how to install it) otherwise.
    pub fn start(n: usize) -> EtcdCluster {
        match Self::try_start(n) {
            Ok(c) => c,
            Err(e) => panic!("cannot start an etcd cluster of {n}: {e}"),
        }
    }

    /// Starts an `n`-member cluster (retrying with other ports if one was taken meanwhile).
    pub fn try_start(n: usize) -> Result<EtcdCluster, TestkitError> {
        assert!(n >= 1, "a cluster has at least one member");
        let bin = etcd_binary()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(&bin, n) {
                Ok(c) => return Ok(c),
                Err(e) if attempt == 3 => return Err(e),
                Err(_) => {}
            }
        }
    }

    fn start_once(bin: &Path, n: usize) -> Result<EtcdCluster, TestkitError> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("krak-etcd-{}-{seq}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| TestkitError::Io {
            what: "create",
            path: dir.clone(),
            source,
        })?;
        let ports = free_ports(2 * n);
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let client = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i]);
        let initial: Vec<String> = (0..n).map(|i| format!("n{i}={}", peer(i))).collect();
        let initial = initial.join(",");
        let mut cluster = EtcdCluster { members: Vec::new(), dir: dir.clone() };
        for i in 0..n {
            let log = dir.join(format!("member-{i}.log"));
            let out = std::fs::File::create(&log).map_err(|source| TestkitError::Io {
                what: "create",
                path: log.clone(),
                source,
            })?;
            let err = out.try_clone().map_err(|source| TestkitError::Io {
                what: "duplicate the handle of",
                path: log.clone(),
                source,
            })?;
            let child = Command::new(bin)
                .arg("--name")
                .arg(format!("n{i}"))
                .arg("--data-dir")
                .arg(dir.join(format!("n{i}.etcd")))
                .args(["--listen-client-urls", &client(i), "--advertise-client-urls", &client(i)])
                .args(["--listen-peer-urls", &peer(i), "--initial-advertise-peer-urls", &peer(i)])
                .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &format!("krak-test-{}-{seq}", std::process::id())])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|source| TestkitError::Spawn { bin: bin.to_path_buf(), source })?;
            cluster.members.push(Member { client_url: client(i), log, child: Some(child) });
        }
        cluster.wait_ready(Duration::from_secs(20))?;
        Ok(cluster)
    }

    /// Waits until every running member answers a linearizable read.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), TestkitError> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            let store = EtcdStore::connect_with(
                &self.members[i].client_url,
                EtcdOptions {
                    request_timeout: Duration::from_millis(500),
                    connect_timeout: Duration::from_millis(200),
                },
            )
            .map_err(TestkitError::Connect)?;
            loop {
                if let Some(status) = self.members[i].child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    return Err(TestkitError::Exited { member: i, status, log_tail: log_tail(&self.members[i].log) });
                }
                match krak_meta::MetaStore::get(&store, "/krak-testkit-ready") {
                    Ok(_) => break,
                    Err(source) if Instant::now() > deadline => {
                        return Err(TestkitError::NotReady {
                            member: i,
                            timeout,
                            log_tail: log_tail(&self.members[i].log),
                            source,
                        })
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Ok(())
    }

    /// Number of members (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client URL of member `i`.
    pub fn client_url(&self, i: usize) -> &str {
        &self.members[i].client_url
    }

    /// Every member's client URL, comma-separated: the `--etcd` argument.
    pub fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.client_url.as_str()).collect::<Vec<_>>().join(",")
    }

    /// The directory holding the members' data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Options for stores in tests: 3 s per call, 300 ms to connect.
    pub fn test_options() -> EtcdOptions {
        EtcdOptions { request_timeout: Duration::from_secs(3), connect_timeout: Duration::from_millis(300) }
    }

    /// A store on every member with [`EtcdCluster::test_options`].
    pub fn store(&self) -> EtcdStore {
        EtcdStore::connect_with(&self.endpoints(), Self::test_options()).expect("valid endpoints")
    }

    /// Kills member `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether member `i` was not killed.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// Freezes member `i` (SIGSTOP): it keeps its port open but answers nothing. Returns
    /// once every thread of it is stopped: kill(2) only queues the signal, and a thread
    /// running on another CPU can still answer a request for a moment after it returns.
    pub fn pause(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        if let Some(c) = &self.members[i].child {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !all_threads_stopped(c.id()) {
                assert!(Instant::now() < deadline, "etcd member {i} (pid {}) did not stop within 5 s", c.id());
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Lets a paused member `i` go on (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    fn signal(&self, i: usize, sig: libc::c_int) {
        if let Some(c) = &self.members[i].child {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped; no memory
            // is involved.
            let r = unsafe { libc::kill(c.id() as libc::pid_t, sig) };
            assert_eq!(r, 0, "signal {sig} to etcd member {i}: {}", std::io::Error::last_os_error());
        }
    }
}

/// Whether every thread of process `pid` is in state `T` (stopped) per `/proc`.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    let mut seen = 0;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // "tid (comm) S ...": the state follows the last ')', as comm may hold any byte.
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
        if state != Some('T') {
            return false;
        }
        seen += 1;
    }
    seen > 0
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            // A paused member must be able to die.
            self.resume(i);
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
