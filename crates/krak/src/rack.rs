//! An embedded rack on loopback: memory servers (and optionally a controller) as child
//! processes of this one, on free ports, gone when this process ends (even when killed).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use krak_proto::units::ByteSize;

/// How long a memory server may take to print its address.
const START_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug)]
pub struct LocalRack {
    servers: Vec<(Child, SocketAddr)>,
    controller: Option<(Child, String)>,
    /// Private (0700) directory: the rack secret, the controller's store.
    dir: std::path::PathBuf,
    secret: krak_proto::RackSecret,
}

/// Starts `krak ARGS` as a child that dies with us, and reads the address from its first
/// line ("krak ROLE listening on ADDR ...").
fn start_child(exe: &std::path::Path, args: &[&str], what: &str) -> anyhow::Result<(Child, String)> {
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    // SAFETY: prctl, sigprocmask and setpgid are async-signal-safe and touch no memory of
    // the forked child. The kernel stops the child when this process dies, so no server
    // outlives a killed demo; with every signal unblocked (`krak run` blocks some) and in a
    // process group of its own, a terminal's ^C reaches this process, not the rack behind it.
    unsafe {
        cmd.pre_exec(|| {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 || libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    match read_address(&mut child) {
        Ok(addr) => Ok((child, addr)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e.context(format!("starting {what}")))
        }
    }
}

impl LocalRack {
    /// Starts `count` memory servers lending `capacity` each in slabs of `slab_size`; with
    /// `with_controller`, first a controller (its state in a temporary directory) that the
    /// servers join, and waits until all of them are alive there.
    pub fn start(
        count: usize,
        capacity: ByteSize,
        slab_size: ByteSize,
        with_controller: bool,
    ) -> anyhow::Result<LocalRack> {
        let exe = std::env::current_exe().context("finding the krak binary")?;
        // An unpredictable name, created by us alone (create_dir fails if it exists).
        let dir = std::env::temp_dir().join(format!("krak-rack-{}-{:016x}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        // A fresh secret for this rack alone, handed to its children by file.
        let secret_file = dir.join("secret");
        let secret = match krak_auth::write_new_secret_file(&secret_file) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e).context("writing the embedded rack's secret");
            }
        };
        let secret_path = secret_file.to_string_lossy().into_owned();
        let mut rack = LocalRack { servers: Vec::new(), controller: None, dir, secret };
        if with_controller {
            let store = rack.dir.join("store");
            std::fs::create_dir(&store).with_context(|| format!("creating {}", store.display()))?;
            let store = store.to_string_lossy().into_owned();
            let args = ["controller", "--listen", "127.0.0.1:0", "--store", &store, "--secret-file", &secret_path];
            let (child, url) = start_child(&exe, &args, "the controller")?;
            rack.controller = Some((child, url));
        }
        for i in 0..count {
            let (capacity, slab) = (capacity.to_string(), slab_size.to_string());
            let domain = format!("local/host{}", i + 1);
            let mut args = vec!["memserver", "--listen", "127.0.0.1:0", "--capacity", &capacity, "--slab-size", &slab];
            args.extend(["--secret-file", &secret_path]);
            if let Some((_, url)) = &rack.controller {
                args.extend(["--controller", url, "--domain", &domain]);
            }
            let (child, addr) = start_child(&exe, &args, "a memory server")?;
            let addr = addr.parse().with_context(|| format!("bad memory server address {addr:?}"))?;
            rack.servers.push((child, addr));
        }
        if let Some(url) = rack.controller_url() {
            rack.wait_alive(&url)?;
        }
        Ok(rack)
    }

    /// The controller's URL, when the rack has one.
    pub fn controller_url(&self) -> Option<String> {
        self.controller.as_ref().map(|(_, url)| url.clone())
    }

    /// The secret this rack's servers were given.
    pub fn secret(&self) -> krak_proto::RackSecret {
        self.secret
    }

    /// The file holding it (for child processes, e.g. bench workers).
    pub fn secret_file(&self) -> std::path::PathBuf {
        self.dir.join("secret")
    }

    fn wait_alive(&self, url: &str) -> anyhow::Result<()> {
        let mut client = krak_api::Client::new(url)?.with_secret(Some(self.secret));
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            let status = krak_api::Api::status(&mut client)?;
            let alive = status.servers.iter().filter(|s| s.record.state == krak_api::ServerState::Alive).count();
            if alive >= self.servers.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {alive} of {} memory servers joined the controller in time", self.servers.len());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|(_, a)| *a).collect()
    }

    /// Process id and address of each memory server, to kill some in a failure drill.
    pub fn pids_and_addrs(&self) -> Vec<(u32, SocketAddr)> {
        self.servers.iter().map(|(c, a)| (c.id(), *a)).collect()
    }
}

/// Sends SIGKILL to `pid` (a memory server this rack started); true when it was sent.
pub fn kill_server(pid: u32) -> bool {
    // SAFETY: kill(2) touches no memory of this process; `pid` is a child we started and
    // have not reaped (the rack waits for its children only when dropped).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) == 0 }
}

fn read_address(child: &mut Child) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("memory server stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        let _ = tx.send(reader.read_line(&mut line).map(|_| line));
        // Keep draining so the server never blocks on a full pipe.
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
    let line = rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .context("memory server did not report its address in time")?
        .context("reading the memory server's address")?;
    // "krak memserver listening on ADDR capacity SIZE slab SIZE", "krak controller listening on URL"
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next(), words.next()) {
        (Some("krak"), Some(_), Some("listening"), Some("on"), Some(addr)) => Ok(addr.to_string()),
        _ => bail!("unexpected first line: {line:?}"),
    }
}

impl Drop for LocalRack {
    fn drop(&mut self) {
        for (child, _) in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some((child, _)) = &mut self.controller {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
