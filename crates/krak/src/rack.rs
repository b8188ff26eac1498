//! An embedded rack on loopback: memory servers as child processes of this one, on free
//! ports, gone when this process ends (even when it is killed).

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
}

impl LocalRack {
    /// Starts `count` memory servers lending `capacity` each in slabs of `slab_size`.
    pub fn start(count: usize, capacity: ByteSize, slab_size: ByteSize) -> anyhow::Result<LocalRack> {
        let exe = std::env::current_exe().context("finding the krak binary")?;
        let mut rack = LocalRack { servers: Vec::new() };
        for _ in 0..count {
            let mut cmd = Command::new(&exe);
            cmd.args(["memserver", "--listen", "127.0.0.1:0"])
                .args(["--capacity", &capacity.to_string(), "--slab-size", &slab_size.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            // SAFETY: prctl is async-signal-safe and touches no memory of the forked child; it
            // asks the kernel to stop the server when this process dies, so no server outlives
            // a killed demo.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = cmd.spawn().context("starting a memory server")?;
            let addr = match read_address(&mut child) {
                Ok(addr) => addr,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
            };
            rack.servers.push((child, addr));
        }
        Ok(rack)
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|(_, a)| *a).collect()
    }
}

fn read_address(child: &mut Child) -> anyhow::Result<SocketAddr> {
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
    // "krak memserver listening on ADDR capacity SIZE slab SIZE"
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next(), words.next()) {
        (Some("krak"), Some("memserver"), Some("listening"), Some("on"), Some(addr)) => {
            addr.parse().with_context(|| format!("bad address in {line:?}"))
        }
        _ => bail!("unexpected first line from the memory server: {line:?}"),
    }
}

impl Drop for LocalRack {
    fn drop(&mut self) {
        for (child, _) in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
