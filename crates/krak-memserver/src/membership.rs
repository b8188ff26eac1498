//! A memory server's membership in a rack: register with the controller, heartbeat at the
//! interval it asks with the server's own figures, re-register when it forgot us, and keep
//! retrying with bounded backoff when it cannot be reached. The memory server keeps serving
//! its clients whatever the controller does.
//!
//! [`run`] keeps a calling thread (the `krak memserver` binary's main thread);
//! [`spawn`] runs the same loop on a thread of its own, stopped when its handle drops.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use krak_api::messages::{HeartbeatRequest, RegisterRequest};
use krak_api::{Api, ApiError, ControllerClient, ServerId, ServerState};
use krak_proto::units::ByteSize;
use krak_proto::ServerStats;

/// First wait after a failed call; doubled after each further failure.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest wait between attempts while the controller cannot be reached.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Bound on one call to the controller.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What the server tells the controller about itself.
#[derive(Debug, Clone)]
pub struct Membership {
    pub controller: String,
    /// Where pagers reach this server.
    pub addr: String,
    pub domain: String,
    pub headroom_bytes: u64,
    /// Signs every call to the controller.
    pub secret: Option<krak_proto::RackSecret>,
}

/// What each heartbeat reports: the server's own figures and its host's free memory.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub stats: ServerStats,
    /// `None` when the host's free memory is not known (no headroom path).
    pub host_free_bytes: Option<u64>,
}

impl Figures {
    /// `stats` with this host's free memory as `/proc/meminfo` tells it.
    pub fn of_this_host(stats: ServerStats) -> Figures {
        Figures { stats, host_free_bytes: host_free_bytes() }
    }
}

/// Runs until a message (or a hang-up) arrives on `stop`. The server's controller id, once
/// registered, is kept in `id` (0 before).
pub fn run(m: &Membership, figures: &dyn Fn() -> Figures, stop: &Receiver<()>) {
    run_noting(m, figures, stop, &AtomicU32::new(0));
}

/// A membership loop on a thread of its own.
#[derive(Debug)]
pub struct MemberHandle {
    stop: Option<Sender<()>>,
    id: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts [`run`] on a thread; dropping the handle (or [`MemberHandle::stop`]) stops the
/// heartbeats.
pub fn spawn(m: Membership, figures: Box<dyn Fn() -> Figures + Send>) -> std::io::Result<MemberHandle> {
    let (stop, stopped) = std::sync::mpsc::channel();
    let id = Arc::new(AtomicU32::new(0));
    let noted = id.clone();
    let thread = std::thread::Builder::new()
        .name("krak-member".into())
        .spawn(move || run_noting(&m, &*figures, &stopped, &noted))?;
    Ok(MemberHandle { stop: Some(stop), id, thread: Some(thread) })
}

impl MemberHandle {
    /// The id the controller gave this server, once it registered.
    pub fn server_id(&self) -> Option<ServerId> {
        let id = self.id.load(Ordering::Acquire);
        (id != 0).then_some(ServerId(id))
    }

    /// Waits up to `timeout_ms` for the registration; its id, or `None` when it took longer.
    pub fn wait_registered(&self, timeout_ms: u64) -> Option<ServerId> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if let Some(id) = self.server_id() {
                return Some(id);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the heartbeats and waits for the thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MemberHandle {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run_noting(m: &Membership, figures: &dyn Fn() -> Figures, stop: &Receiver<()>, id: &AtomicU32) {
    let mut client = match ControllerClient::new(&m.controller, CALL_TIMEOUT) {
        Ok(c) => c.with_secret(m.secret),
        Err(e) => {
            tracing::error!("not joining a rack: {e:#}");
            let _ = stop.recv();
            return;
        }
    };
    let mut agent = Agent { id: None, state: None, interval: Duration::from_secs(1), failing: None, shed: 0 };
    let mut backoff = BACKOFF_START;
    loop {
        let wait = match agent.step(m, &mut client, &figures()) {
            Ok(wait) => {
                id.store(agent.id.map_or(0, |i| i.0), Ordering::Release);
                backoff = BACKOFF_START;
                wait
            }
            Err(e) => {
                let message = e.to_string();
                if agent.failing.as_deref() != Some(message.as_str()) {
                    tracing::warn!(
                        "no leading controller answers at {} ({message}); retrying, still serving clients",
                        m.controller
                    );
                    agent.failing = Some(message);
                }
                let wait = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX.max(agent.interval));
                wait
            }
        };
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

#[derive(Debug)]
struct Agent {
    id: Option<ServerId>,
    state: Option<ServerState>,
    interval: Duration,
    /// The last error logged, so a controller that stays down is reported once.
    failing: Option<String>,
    shed: u64,
}

impl Agent {
    /// Registers or heartbeats once; returns how long to wait before the next step.
    fn step(&mut self, m: &Membership, client: &mut ControllerClient, figures: &Figures) -> Result<Duration, ApiError> {
        let stats = &figures.stats;
        let Some(id) = self.id else {
            let request = RegisterRequest {
                addr: m.addr.clone(),
                capacity_bytes: stats.capacity_bytes,
                slab_size_bytes: stats.slab_size_bytes,
                domain: m.domain.clone(),
                headroom_bytes: m.headroom_bytes,
            };
            let reply = client.register(&request)?;
            self.recovered(client);
            tracing::info!(
                "registered with the controller at {} as server {} ({}; heartbeat every {} ms)",
                client.url(),
                reply.id.0,
                reply.state.as_str(),
                reply.heartbeat_interval_ms
            );
            self.id = Some(reply.id);
            self.interval = Duration::from_millis(reply.heartbeat_interval_ms.clamp(10, 60_000));
            self.note_state(reply.id, reply.state);
            // heartbeat at once, so the controller has our figures
            return Ok(Duration::ZERO);
        };
        let request = HeartbeatRequest {
            lent_bytes: stats.lent_bytes,
            free_bytes: stats.capacity_bytes.saturating_sub(stats.lent_bytes),
            slabs: stats.slabs,
            host_free_bytes: figures.host_free_bytes,
        };
        match client.heartbeat(id, &request) {
            Ok(reply) => {
                self.recovered(client);
                self.note_state(id, reply.state);
                if reply.shed_bytes != self.shed {
                    if reply.shed_bytes > 0 {
                        tracing::warn!(
                            "host free memory is below the headroom: the controller is to move {} away",
                            ByteSize(reply.shed_bytes)
                        );
                    } else {
                        tracing::info!("host free memory is back above the headroom");
                    }
                    self.shed = reply.shed_bytes;
                }
                Ok(self.interval)
            }
            Err(ApiError::Status { status: 404, .. }) => {
                tracing::warn!("the controller at {} forgot server {}; registering again", client.url(), id.0);
                self.id = None;
                self.state = None;
                Ok(BACKOFF_START)
            }
            Err(e) => Err(e),
        }
    }

    fn recovered(&mut self, client: &ControllerClient) {
        if self.failing.take().is_some() {
            tracing::warn!("controller {} answers again", client.url());
        }
    }

    fn note_state(&mut self, id: ServerId, state: ServerState) {
        if let Some(before) = self.state.filter(|&s| s != state) {
            tracing::warn!("the controller moved server {} from {} to {}", id.0, before.as_str(), state.as_str());
        }
        self.state = Some(state);
    }
}

/// The host's own available memory (MemAvailable in /proc/meminfo).
pub fn host_free_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(value * 1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// The address pagers should use: `listen`, or when it is a wildcard (0.0.0.0), this host's
/// address on the route to the controller.
pub fn advertised(listen: SocketAddr, controller: &str) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    let first = controller.split(',').next().unwrap_or_default().trim();
    let host = first.strip_prefix("http://").unwrap_or(first).trim_end_matches('/');
    let local = std::net::ToSocketAddrs::to_socket_addrs(host).ok().and_then(|mut a| a.next()).and_then(|peer| {
        let any: SocketAddr = if peer.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        // connect() on UDP sends nothing: it only picks the route and the source address
        let socket = UdpSocket::bind(any).ok()?;
        socket.connect(peer).ok()?;
        socket.local_addr().ok()
    });
    match local {
        Some(a) if !a.ip().is_unspecified() => SocketAddr::new(a.ip(), listen.port()),
        _ => listen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available() {
        let text = "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(parse_mem_available(text), Some(8_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert!(host_free_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn advertises_the_route_to_the_controller_for_a_wildcard() {
        let fixed: SocketAddr = "10.1.2.3:7070".parse().unwrap();
        assert_eq!(advertised(fixed, "http://127.0.0.1:1"), fixed);
        let any: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        assert_eq!(advertised(any, "http://127.0.0.1:1"), "127.0.0.1:7070".parse::<SocketAddr>().unwrap());
    }
}
