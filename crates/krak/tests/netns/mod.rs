//! A rack of "hosts" on one machine: each host is a network namespace joined to a bridge in
//! the root namespace by a veth pair, on its own address in a /24 of the benchmarking range
//! 198.18.0.0/15 (never routed). The controller and the pager run in the root namespace on
//! the bridge's address (.1); memory servers run inside the hosts (.2, .3, ...), so a test
//! can kill a host or cut its link. Needs root; `Net::new` returns `None` (after saying why)
//! when not root, and panics when root cannot build it.
//!
//! Everything is torn down on drop, also when the test panics: processes are SIGKILLed and
//! reaped, then the namespaces (which takes their veth ends along) and the bridge are
//! deleted. Pieces left by a test process that was itself killed (named after its pid) are
//! removed by the next `Net::new`.

#![allow(dead_code)]

pub mod delay;
pub mod demo;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::controller_common::{server, spawn_command_and_read_line, status, wait_for, Proc, KRAK};

/// Makes `command`'s process die (SIGKILL) with the thread that spawns it, so a test
/// process that is itself killed leaves no servers behind.
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only makes prctl, an
    // async-signal-safe system call; it touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Bound on one `ip` command.
const IP_TIMEOUT: Duration = Duration::from_secs(10);
/// Prefix of every namespace and link alias this harness makes.
const TAG: &str = "krk";

/// Subnets handed out by this process, so parallel tests never share one.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// One host: a namespace with one end of a veth pair, the other end on the bridge.
#[derive(Debug)]
pub struct Host {
    pub ns: String,
    /// The veth end on the bridge, in the root namespace.
    pub veth_bridge: String,
    /// The veth end inside the namespace.
    pub veth_host: String,
    pub addr: Ipv4Addr,
    procs: Vec<Proc>,
}

/// The bridge, its hosts and the processes started on them.
#[derive(Debug)]
pub struct Net {
    pub bridge: String,
    /// The bridge's address in the root namespace (where controller and pager listen).
    pub gateway: Ipv4Addr,
    hosts: Vec<Host>,
    /// Processes in the root namespace (the controller), killed before the bridge goes.
    root_procs: Vec<Proc>,
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// Runs `ip ARGS` with a deadline; its stdout, or what went wrong.
pub fn ip(args: &[&str]) -> Result<String, String> {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if t0.elapsed() < IP_TIMEOUT => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("ip {args:?} did not finish within {IP_TIMEOUT:?}"));
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ip_ok(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("building the test network: {e}");
    }
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes namespaces and bridges of earlier test processes that died without dropping
/// their `Net` (recognised by the pid in their name or alias).
fn sweep_leftovers() {
    let prefix = format!("{TAG}-");
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let pid = name.strip_prefix(&prefix).and_then(|r| r.split('-').next()).and_then(|p| p.parse().ok());
            if pid.is_some_and(|pid| !pid_alive(pid)) {
                // processes still in it were started by that test: end them by pid
                for p in ip(&["netns", "pids", name]).unwrap_or_default().split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", p]).status();
                }
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(list) = ip(&["-o", "link", "show", "type", "bridge"]) {
        for line in list.lines() {
            let name = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n));
            let alias_pid = line
                .split_whitespace()
                .skip_while(|w| *w != "alias")
                .nth(1)
                .and_then(|a| a.strip_prefix(&format!("{TAG}-test-pid-")))
                .and_then(|p| p.parse().ok());
            if let (Some(name), Some(pid)) = (name, alias_pid) {
                if !pid_alive(pid) {
                    let _ = ip(&["link", "del", name]);
                }
            }
        }
    }
}

/// A /24 of 198.18.0.0/15 that no interface on this machine uses yet: (second octet, third).
fn free_subnet(seed: u32) -> (u8, u8) {
    let used = ip(&["-o", "-4", "addr", "show"]).unwrap_or_default();
    for i in 0..512u32 {
        let n = (seed + NEXT.fetch_add(1, Ordering::Relaxed) + i) % 512;
        let (b, c) = (18 + (n / 256) as u8, (n % 256) as u8);
        if !used.contains(&format!(" 198.{b}.{c}.")) {
            return (b, c);
        }
    }
    panic!("no free /24 in 198.18.0.0/15 for the test network");
}

impl Net {
    /// A bridge and `hosts` namespaces joined to it, or `None` when not root (the reason is
    /// printed). As root, any failure panics with what `ip` said.
    pub fn new(hosts: usize) -> Option<Net> {
        if !is_root() {
            eprintln!("skipped: network namespaces (ip netns) need root; run the tests as root (CI does)");
            return None;
        }
        sweep_leftovers();
        let rand = (RandomState::new().build_hasher().finish() & 0xff_ffff) as u32;
        let (b, c) = free_subnet(rand);
        let pid = std::process::id();
        let tag = format!("{rand:06x}");
        let mut net = Net {
            bridge: format!("{TAG}{tag}"),
            gateway: Ipv4Addr::new(198, b, c, 1),
            hosts: Vec::new(),
            root_procs: Vec::new(),
        };
        ip_ok(&["link", "add", &net.bridge, "type", "bridge"]);
        let alias = format!("{TAG}-test-pid-{pid}");
        ip_ok(&["link", "set", "dev", &net.bridge, "alias", &alias]);
        ip_ok(&["addr", "add", &format!("{}/24", net.gateway), "dev", &net.bridge]);
        ip_ok(&["link", "set", "dev", &net.bridge, "up"]);
        for i in 1..=hosts {
            let host = Host {
                ns: format!("{TAG}-{pid}-{tag}-h{i}"),
                veth_bridge: format!("{TAG}{tag}b{i}"),
                veth_host: format!("{TAG}{tag}h{i}"),
                addr: Ipv4Addr::new(198, b, c, 1 + i as u8),
                procs: Vec::new(),
            };
            if let Err(e) = ip(&["netns", "add", &host.ns]) {
                panic!("running as root, yet cannot make a network namespace: {e}");
            }
            // pushed before it is complete, so that drop removes whatever was made
            net.hosts.push(host);
            let h = net.hosts.last().unwrap();
            ip_ok(&["link", "add", &h.veth_bridge, "type", "veth", "peer", "name", &h.veth_host]);
            ip_ok(&["link", "set", "dev", &h.veth_host, "netns", &h.ns]);
            ip_ok(&["link", "set", "dev", &h.veth_bridge, "master", &net.bridge]);
            ip_ok(&["link", "set", "dev", &h.veth_bridge, "up"]);
            ip_ok(&["-n", &h.ns, "link", "set", "dev", "lo", "up"]);
            ip_ok(&["-n", &h.ns, "addr", "add", &format!("{}/24", h.addr), "dev", &h.veth_host]);
            ip_ok(&["-n", &h.ns, "link", "set", "dev", &h.veth_host, "up"]);
        }
        Some(net)
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// `krak controller --listen GATEWAY:0 EXTRA...` in the root namespace, owned by the
    /// net (killed before it is torn down); its URL.
    pub fn controller(&mut self, extra: &[&str]) -> String {
        let url = self.start_controller(&format!("{}:0", self.gateway), extra);
        assert!(url.starts_with(&format!("http://{}:", self.gateway)) && !url.ends_with(":0"), "{url}");
        url
    }

    /// `krak controller --listen GATEWAY:PORT EXTRA...` in the root namespace (a controller
    /// that can come back on the same URL after [`Net::kill_controllers`]); its URL.
    pub fn controller_on(&mut self, port: u16, extra: &[&str]) -> String {
        let listen = format!("{}:{port}", self.gateway);
        let url = self.start_controller(&listen, extra);
        assert_eq!(url, format!("http://{listen}"));
        url
    }

    /// `krak controller --listen LISTEN EXTRA...` in the root namespace, owned by the net;
    /// the URL it says it listens on.
    fn start_controller(&mut self, listen: &str, extra: &[&str]) -> String {
        let mut command = Command::new(KRAK);
        command.args(["controller", "--listen", listen]).args(extra);
        die_with_parent(&mut command);
        let (proc, line) = spawn_command_and_read_line(command, "krak controller");
        let url = line.trim().strip_prefix("krak controller listening on ").unwrap_or_else(|| panic!("{line:?}"));
        self.root_procs.push(proc);
        url.to_string()
    }

    /// A free port on the bridge's address.
    pub fn free_port(&self) -> u16 {
        std::net::TcpListener::bind((self.gateway, 0)).unwrap().local_addr().unwrap().port()
    }

    /// SIGKILLs every controller the net started.
    pub fn kill_controllers(&mut self) {
        for p in &mut self.root_procs {
            p.kill();
        }
        self.root_procs.clear();
    }

    /// `krak ARGS` inside host `i`'s namespace (`ip netns exec`), owned by the host; the
    /// first line it printed.
    pub fn spawn_on(&mut self, i: usize, args: &[&str]) -> String {
        let host = &mut self.hosts[i];
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &host.ns, KRAK]).args(args);
        die_with_parent(&mut command);
        let (proc, line) = spawn_command_and_read_line(command, &format!("krak {args:?} in {}", host.ns));
        host.procs.push(proc);
        line
    }

    /// `krak memserver` with 1 MiB slabs on host `i`'s address, joined to `controller`; the
    /// address it listens on (and advertises).
    pub fn memserver(&mut self, i: usize, controller: &str, domain: &str, capacity: &str) -> SocketAddr {
        let listen = format!("{}:0", self.hosts[i].addr);
        self.memserver_with(i, &listen, controller, domain, capacity, &[])
    }

    /// `krak memserver` with 1 MiB slabs on `listen` in host `i`, joined to `controller`,
    /// with `extra` arguments (e.g. `--advertise`); the address it listens on.
    pub fn memserver_with(
        &mut self,
        i: usize,
        listen: &str,
        controller: &str,
        domain: &str,
        capacity: &str,
        extra: &[&str],
    ) -> SocketAddr {
        let mut args = vec![
            "memserver",
            "--listen",
            listen,
            "--capacity",
            capacity,
            "--slab-size",
            "1MiB",
            "--controller",
            controller,
            "--domain",
            domain,
            "--secret-file",
            super::controller_common::secret_file(),
        ];
        args.extend_from_slice(extra);
        let line = self.spawn_on(i, &args);
        let addr: SocketAddr =
            line.split_whitespace().nth(4).and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{line:?}"));
        assert_eq!(addr.ip(), self.hosts[i].addr, "{line:?}");
        addr
    }

    /// Drops `percent` of the packets entering and of those leaving host `i` at random (an
    /// nftables `numgen random` rule in its namespace: the stand-in for `tc netem loss`,
    /// which this kernel lacks). Gone with the namespace.
    pub fn add_loss(&self, i: usize, percent: u32) {
        let rules = format!(
            "table inet krakloss {{\n\
             chain input {{ type filter hook input priority 0; policy accept; numgen random mod 100 < {percent} drop; }}\n\
             chain output {{ type filter hook output priority 0; policy accept; numgen random mod 100 < {percent} drop; }}\n\
             }}\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.hosts[i].ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nft (Debian's nftables; .ci/run installs it): {e}"));
        use std::io::Write;
        child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "nft in {}: {}", self.hosts[i].ns, String::from_utf8_lossy(&out.stderr));
    }

    /// Three hosts' memory servers (64 MiB each, domain hostN) joined to a controller on the
    /// bridge started with `--store STORE EXTRA...`; returns its URL and the servers once
    /// all three heartbeat as alive.
    pub fn rack(&mut self, store: &str, extra: &[&str]) -> (String, Vec<SocketAddr>) {
        let mut args = vec!["--store", store];
        args.extend_from_slice(extra);
        let url = self.controller(&args);
        let servers: Vec<_> = (0..3).map(|i| self.memserver(i, &url, &format!("host{}", i + 1), "64MiB")).collect();
        self.wait_alive(&url, &servers);
        (url, servers)
    }

    /// Waits (at most 5 s) until every one of `servers` heartbeats to `url` as alive.
    pub fn wait_alive(&self, url: &str, servers: &[SocketAddr]) {
        let (_, took) = wait_for(Duration::from_secs(5), "the hosts' servers alive across the bridge", || {
            let st = status(url).ok()?;
            let heard = |s: &serde_json::Value| s["state"] == "alive" && !s["host_free_bytes"].is_null();
            servers.iter().all(|a| server(&st, *a).is_some_and(heard)).then_some(())
        });
        eprintln!("{} servers in namespaces alive after {took:?}: {servers:?}", servers.len());
    }

    /// Kills every process on host `i` (the host "dies"; its namespace stays).
    pub fn kill_host(&mut self, i: usize) {
        for p in &mut self.hosts[i].procs {
            p.kill();
        }
    }

    /// Takes host `i`'s link down on the bridge side: its processes keep running but
    /// nothing reaches it and nothing leaves it.
    pub fn cut_link(&self, i: usize) {
        ip_ok(&["link", "set", "dev", &self.hosts[i].veth_bridge, "down"]);
    }

    /// Brings host `i`'s link back up.
    pub fn restore_link(&self, i: usize) {
        ip_ok(&["link", "set", "dev", &self.hosts[i].veth_bridge, "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            for p in &mut host.procs {
                p.kill();
            }
        }
        for p in &mut self.root_procs {
            p.kill();
        }
        for host in &self.hosts {
            // deleting the namespace destroys the veth pair; delete the bridge end too in
            // case it never got moved
            let _ = ip(&["netns", "del", &host.ns]);
            let _ = ip(&["link", "del", &host.veth_bridge]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
