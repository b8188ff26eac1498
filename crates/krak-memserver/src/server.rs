//! The listening side: accepting (bounded) connections, the grace-period reaper, stats,
//! and shutting all of it down.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use krak_proto::units::ByteSize;
use krak_proto::ServerStats;
use parking_lot::{Condvar, Mutex};

use crate::connection;
use crate::registry::Registry;
use crate::{ServerConfig, ServerError};

/// Connections past `max_connections` are answered by short-lived threads; this bounds them.
const MAX_REJECTING: usize = 16;
/// A full server admits a new connection by closing the oldest one still in its handshake;
/// until that one's thread has gone, up to this many more than `max_connections` are served.
const MAX_OVER_BY_EVICTION: usize = 16;
/// How long `run` waits for connection threads to notice a shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters reported by stats.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pages_read: AtomicU64,
    pages_written: AtomicU64,
    units_discarded: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    pub(crate) fn add_pages_read(&self, n: usize) {
        self.pages_read.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_units_discarded(&self, n: usize) {
        self.units_discarded.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_pages_written(&self, n: usize) {
        self.pages_written.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// State shared by the accept loop, the reaper and every connection thread.
#[derive(Debug)]
pub(crate) struct ServerShared {
    pub(crate) config: ServerConfig,
    pub(crate) local_addr: SocketAddr,
    /// Random per process, so clients can tell a restarted server from the one they knew.
    pub(crate) server_id: u64,
    /// What clients must prove they know (the insecure key when the config has none).
    pub(crate) secret: krak_proto::RackSecret,
    pub(crate) registry: Registry,
    pub(crate) counters: Counters,
    /// Connections being served (not counting ones being refused).
    pub(crate) active: AtomicUsize,
    rejecting: AtomicUsize,
    stopping: AtomicBool,
    /// A clone of every served stream, so shutdown can unblock their threads.
    streams: Mutex<HashMap<u64, TcpStream>>,
    /// Served connections still in their handshake, oldest first: the slots a full server
    /// takes back. Lock order: never held with `streams`.
    in_handshake: Mutex<BTreeSet<u64>>,
    next_conn: AtomicU64,
    /// Wakes the reaper early on shutdown.
    wake: (Mutex<()>, Condvar),
}

impl ServerShared {
    pub(crate) fn new(config: ServerConfig, local_addr: SocketAddr) -> ServerShared {
        let registry = Registry::new(config.capacity_bytes, config.slab_size_bytes, config.mlock)
            .with_client_limits(config.max_connections_per_client, config.max_bytes_per_client.unwrap_or(u64::MAX));
        ServerShared {
            secret: config.secret.unwrap_or_else(krak_proto::RackSecret::insecure),
            config,
            local_addr,
            server_id: rand::random(),
            registry,
            counters: Counters::default(),
            active: AtomicUsize::new(0),
            rejecting: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            streams: Mutex::new(HashMap::new()),
            in_handshake: Mutex::new(BTreeSet::new()),
            next_conn: AtomicU64::new(0),
            wake: (Mutex::new(()), Condvar::new()),
        }
    }

    pub(crate) fn stats(&self) -> ServerStats {
        ServerStats {
            capacity_bytes: self.config.capacity_bytes,
            lent_bytes: self.registry.lent_bytes(),
            slab_size_bytes: self.config.slab_size_bytes,
            slabs: self.registry.slab_count(),
            clients: self.registry.client_count(),
            connections: self.active.load(Ordering::Relaxed) as u64,
            pages_read: self.counters.pages_read.load(Ordering::Relaxed),
            pages_written: self.counters.pages_written.load(Ordering::Relaxed),
            errors: self.counters.errors.load(Ordering::Relaxed),
            units_discarded: self.counters.units_discarded.load(Ordering::Relaxed),
        }
    }

    /// Connection `conn_id` finished its handshake: its slot is no longer taken back.
    pub(crate) fn authenticated(&self, conn_id: u64) {
        self.in_handshake.lock().remove(&conn_id);
    }

    /// Closes the oldest connection still in its handshake, if any, to make room.
    fn evict_oldest_handshake(&self) -> bool {
        let Some(victim) = self.in_handshake.lock().pop_first() else { return false };
        if let Some(stream) = self.streams.lock().get(&victim) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        true
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn stop(&self) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // Taking the lock orders this with the reaper's check of `stopping`: no lost wakeup.
        drop(self.wake.0.lock());
        self.wake.1.notify_all();
        // Unblock `accept` by connecting to ourselves; the accept loop then sees `stopping`.
        let mut addr = self.local_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() });
        }
        let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    }
}

/// A bound memory server, not yet serving.
#[derive(Debug)]
pub struct MemServer {
    listener: TcpListener,
    shared: Arc<ServerShared>,
}

/// Stops a running server from another thread (e.g. a signal handler thread).
#[derive(Debug, Clone)]
pub struct Stopper {
    shared: Arc<ServerShared>,
}

impl Stopper {
    /// Asks the server to stop: `run` closes every connection, frees every slab and returns.
    pub fn stop(&self) {
        self.shared.stop();
    }
}

impl MemServer {
    /// Checks the config and binds the listening socket.
    pub fn bind(config: ServerConfig) -> Result<MemServer, ServerError> {
        config.validate()?;
        let listener =
            TcpListener::bind(config.listen).map_err(|source| ServerError::Bind { addr: config.listen, source })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Io { what: "local address", source })?;
        Ok(MemServer { listener, shared: Arc::new(ServerShared::new(config, local_addr)) })
    }

    /// The address actually bound (with the OS-chosen port when the config said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    pub fn stats(&self) -> ServerStats {
        self.shared.stats()
    }

    pub fn stopper(&self) -> Stopper {
        Stopper { shared: self.shared.clone() }
    }

    /// Serves until [`Stopper::stop`]; then closes all connections and returns.
    pub fn run(self) -> Result<(), ServerError> {
        let shared = self.shared;
        let c = &shared.config;
        tracing::info!(
            "serving on {} capacity {} slab {} grace {} ms max {} connections",
            shared.local_addr,
            ByteSize(c.capacity_bytes),
            ByteSize(c.slab_size_bytes),
            c.grace_ms,
            c.max_connections
        );
        let reaper = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("krak-reaper".into())
                .spawn(move || reap_loop(&shared))
                .map_err(|source| ServerError::Io { what: "spawning the reaper thread", source })?
        };
        for stream in self.listener.incoming() {
            if shared.stopping() {
                break;
            }
            match stream {
                Ok(stream) => admit(&shared, stream),
                Err(e) => {
                    // Typically out of file descriptors: back off rather than spin.
                    tracing::warn!("accept failed: {e}");
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
        drop(self.listener);
        for stream in shared.streams.lock().values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let _ = reaper.join();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while shared.active.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// Serves on a background thread; the handle stops it.
    pub fn spawn(self) -> Result<ServerHandle, ServerError> {
        let addr = self.local_addr();
        let stopper = self.stopper();
        let thread = thread::Builder::new()
            .name("krak-memserver".into())
            .spawn(move || self.run())
            .map_err(|source| ServerError::Io { what: "spawning the server thread", source })?;
        Ok(ServerHandle { addr, stopper, thread: Some(thread) })
    }
}

/// Binds and serves on a background thread: `spawn(config)?.addr()` is ready for clients.
pub fn spawn(config: ServerConfig) -> Result<ServerHandle, ServerError> {
    MemServer::bind(config)?.spawn()
}

/// A server running on a background thread. Dropping it stops the server too.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    stopper: Stopper,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
}

impl ServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> ServerStats {
        self.stopper.shared.stats()
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Test support, never reachable from the wire: damages every unit this server stores
    /// behind its CRC (the bytes change, the stored checksum does not), as a failing disk
    /// or memory would. Returns the slabs damaged.
    #[doc(hidden)]
    pub fn corrupt_stored_units(&self) -> usize {
        self.stopper.shared.registry.corrupt_every_unit()
    }

    /// Stops the server and waits for it.
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), ServerError> {
        self.stopper.stop();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ServerError::Io { what: "server thread", source: std::io::Error::other("panicked") }),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Hands an accepted stream to its own thread, or refuses it when the server is full.
fn admit(shared: &Arc<ServerShared>, stream: TcpStream) {
    let peer = match stream.peer_addr() {
        Ok(p) => p,
        Err(_) => return, // already gone
    };
    let active = shared.active.load(Ordering::Acquire);
    let max = shared.config.max_connections;
    // Strangers cannot hold the slots: the oldest handshake makes room for a newcomer.
    let room = active < max || (active < max + MAX_OVER_BY_EVICTION && shared.evict_oldest_handshake());
    if !room {
        if shared.rejecting.fetch_add(1, Ordering::AcqRel) >= MAX_REJECTING {
            shared.rejecting.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("{peer}: too many connections, closed without an answer");
            return;
        }
        tracing::warn!("{peer}: refused, already serving {} connections", shared.config.max_connections);
        let s = shared.clone();
        let spawned = thread::Builder::new().name("krak-refuse".into()).spawn(move || {
            connection::refuse(stream, &s, peer);
            s.rejecting.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            shared.rejecting.fetch_sub(1, Ordering::AcqRel);
        }
        return;
    }
    let clone = match stream.try_clone() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("{peer}: cannot clone the stream: {e}");
            return;
        }
    };
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    shared.active.fetch_add(1, Ordering::AcqRel);
    shared.streams.lock().insert(conn_id, clone);
    shared.in_handshake.lock().insert(conn_id);
    let guard = ActiveGuard { shared: shared.clone(), conn_id };
    let spawned = thread::Builder::new().name("krak-conn".into()).spawn(move || {
        connection::serve(stream, &guard.shared, peer, conn_id);
        drop(guard);
    });
    if let Err(e) = spawned {
        // The closure (and its guard) was dropped, undoing the registration.
        tracing::error!("{peer}: cannot spawn a connection thread: {e}");
    }
}

/// Unregisters a connection however its thread ends.
struct ActiveGuard {
    shared: Arc<ServerShared>,
    conn_id: u64,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.shared.in_handshake.lock().remove(&self.conn_id);
        self.shared.streams.lock().remove(&self.conn_id);
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
    }
}

fn reap_loop(shared: &ServerShared) {
    let grace = Duration::from_millis(shared.config.grace_ms);
    // Check often enough that a slab outlives its grace period by at most ~10%.
    let tick = Duration::from_millis((shared.config.grace_ms / 10).clamp(10, 1000));
    loop {
        {
            let mut lock = shared.wake.0.lock();
            if shared.stopping() {
                return;
            }
            shared.wake.1.wait_for(&mut lock, tick);
        }
        if shared.stopping() {
            return;
        }
        for r in shared.registry.reap(Instant::now(), grace) {
            if r.slabs > 0 {
                tracing::info!(
                    "client {:#x} gone for over {} ms: freed its {} slabs ({})",
                    r.client_id,
                    shared.config.grace_ms,
                    r.slabs,
                    ByteSize(r.slabs as u64 * shared.config.slab_size_bytes)
                );
            }
        }
    }
}
