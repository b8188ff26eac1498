//! Admission of HTTP connections: at most so many open in all and per client address, with
//! the counters `/metrics` reports. The gate also keeps a handle on every open socket so a
//! shutdown can cut them all, whatever they are waiting for.
//!
//! Strangers cannot hold the slots: a connection that is not being answered (it has not sent
//! a whole request yet, or waits between kept-alive requests) is *waiting*, and when every
//! slot is taken a newcomer closes the one that has waited longest. A flood of idle or
//! dribbling connections then only churns itself, while a client that sends its request at
//! once (a heartbeat, a pager's call) is served: to close it before its request is read, a
//! flood would have to open as many connections as there are slots within that time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The bound on open connections in all.
    Total,
    /// The bound on open connections of one client address.
    PerClient,
    /// The server is shutting down.
    Closing,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::PerClient => "per_client",
            Refusal::Closing => "closing",
        }
    }
}

/// Counters of the HTTP front end.
#[derive(Debug, Default)]
pub struct HttpStats {
    open: AtomicU64,
    accepted: AtomicU64,
    refused_total: AtomicU64,
    refused_per_client: AtomicU64,
    refused_closing: AtomicU64,
    evicted: AtomicU64,
    timed_out_request: AtomicU64,
    timed_out_idle: AtomicU64,
    malformed: AtomicU64,
}

impl HttpStats {
    pub fn refused(&self, why: Refusal) {
        let counter = match why {
            Refusal::Total => &self.refused_total,
            Refusal::PerClient => &self.refused_per_client,
            Refusal::Closing => &self.refused_closing,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    /// A request was not complete within the request timeout.
    pub fn request_timed_out(&self) {
        self.timed_out_request.fetch_add(1, Ordering::Relaxed);
    }
    /// A kept-alive connection sent no new request within the idle timeout.
    pub fn idle_timed_out(&self) {
        self.timed_out_idle.fetch_add(1, Ordering::Relaxed);
    }
    /// A request was refused before reaching the API (bad framing, too large, unsupported).
    pub fn malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Registers the counters into one scrape.
    pub fn register(&self, s: &mut crate::metrics::Scrape) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.gauge("krak_http_connections_open", "HTTP connections open.", get(&self.open));
        s.count("krak_http_connections_accepted", "HTTP connections admitted.", get(&self.accepted));
        let refused = [
            (Refusal::Total, &self.refused_total),
            (Refusal::PerClient, &self.refused_per_client),
            (Refusal::Closing, &self.refused_closing),
        ]
        .map(|(reason, c)| (vec![("reason".to_string(), reason.as_str().to_string())], get(c)));
        s.counters("krak_http_connections_refused", "HTTP connections refused at once, by bound.", refused);
        let evicted = "Waiting HTTP connections closed to admit a newcomer.";
        s.count("krak_http_connections_evicted", evicted, get(&self.evicted));
        let timed_out = [("request", &self.timed_out_request), ("idle", &self.timed_out_idle)]
            .map(|(phase, c)| (vec![("phase".to_string(), phase.to_string())], get(c)));
        let what = "HTTP connections closed by a timeout, by what was awaited.";
        s.counters("krak_http_connections_timed_out", what, timed_out);
        let malformed = "HTTP requests refused before the API (framing, size, unsupported).";
        s.count("krak_http_malformed", malformed, get(&self.malformed));
    }
}

/// Connections closed to make room but not yet gone: past this many, newcomers are refused.
const MAX_OVER_BY_EVICTION: usize = 64;

#[derive(Debug, Default)]
struct Open {
    per_client: HashMap<IpAddr, usize>,
    /// A clone of every admitted socket, to cut them at shutdown.
    sockets: HashMap<u64, TcpStream>,
    /// The waiting connections by when they began to wait (a sequence number), oldest first.
    waiting: BTreeMap<u64, u64>,
    /// Each waiting connection's place in `waiting`.
    waiting_since: HashMap<u64, u64>,
    /// Connections closed to make room, until their threads end.
    evicted: HashSet<u64>,
    next_id: u64,
    next_seq: u64,
    closing: bool,
}

impl Open {
    fn start_waiting(&mut self, id: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(old) = self.waiting_since.insert(id, seq) {
            self.waiting.remove(&old);
        }
        self.waiting.insert(seq, id);
    }

    fn stop_waiting(&mut self, id: u64) {
        if let Some(seq) = self.waiting_since.remove(&id) {
            self.waiting.remove(&seq);
        }
    }

    /// Closes the connection that has waited longest; false if none waits.
    fn evict_oldest_waiting(&mut self) -> bool {
        let Some((_, id)) = self.waiting.pop_first() else { return false };
        self.waiting_since.remove(&id);
        self.evicted.insert(id);
        if let Some(s) = self.sockets.get(&id) {
            let _ = s.shutdown(Shutdown::Both);
        }
        true
    }
}

/// Admits connections within the bounds.
#[derive(Debug)]
pub struct ConnectionGate {
    max_total: usize,
    max_per_client: usize,
    open: Mutex<Open>,
    drained: Condvar,
    stats: Arc<HttpStats>,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admission {
    gate: Arc<ConnectionGate>,
    id: u64,
    client: IpAddr,
}

impl ConnectionGate {
    pub fn new(max_total: usize, max_per_client: usize, stats: Arc<HttpStats>) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate { max_total, max_per_client, open: Mutex::default(), drained: Condvar::new(), stats })
    }

    /// Admits `socket` from `client`, or says which bound refuses it (and counts that).
    pub fn admit(self: &Arc<Self>, socket: &TcpStream, client: IpAddr) -> Result<Admission, Refusal> {
        let refused = |why| {
            self.stats.refused(why);
            Err(why)
        };
        let mut open = self.open.lock();
        if open.closing {
            return refused(Refusal::Closing);
        }
        // The per-client bound first: a newcomer refused anyway must not close anyone.
        if open.per_client.get(&client).copied().unwrap_or(0) >= self.max_per_client {
            return refused(Refusal::PerClient);
        }
        if open.sockets.len() >= self.max_total {
            let room = open.sockets.len() < self.max_total + MAX_OVER_BY_EVICTION && open.evict_oldest_waiting();
            if !room {
                return refused(Refusal::Total);
            }
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        // without a clone the socket could not be cut at shutdown: refuse rather than risk
        // a shutdown waiting on it
        let Ok(clone) = socket.try_clone() else { return refused(Refusal::Total) };
        let id = open.next_id;
        open.next_id += 1;
        open.sockets.insert(id, clone);
        open.start_waiting(id);
        *open.per_client.entry(client).or_insert(0) += 1;
        self.stats.open.store(open.sockets.len() as u64, Ordering::Relaxed);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Admission { gate: self.clone(), id, client })
    }

    /// Refuses new connections and cuts the reading side of the open ones: a connection waiting
    /// for a request ends at once, one answering still writes its answer.
    pub fn close_all(&self) {
        let mut open = self.open.lock();
        open.closing = true;
        for s in open.sockets.values() {
            // reads end at once; answers being written still go out
            let _ = s.shutdown(Shutdown::Read);
        }
    }

    /// Waits up to `timeout` for every connection to end; false if some are still open.
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut open = self.open.lock();
        while !open.sockets.is_empty() {
            if self.drained.wait_until(&mut open, deadline).timed_out() {
                return open.sockets.is_empty();
            }
        }
        true
    }
}

impl Admission {
    /// A whole request was read: it is being answered, and may not be closed for room.
    /// False if it was closed for room meanwhile: its request must not be served (its
    /// answer could not be sent, and the client takes it for not served).
    pub fn answering(&self) -> bool {
        let mut open = self.gate.open.lock();
        open.stop_waiting(self.id);
        !open.evicted.contains(&self.id)
    }

    /// The answer went out: the connection waits for its next request (and may be closed
    /// to admit a newcomer).
    pub fn waiting(&self) {
        self.gate.open.lock().start_waiting(self.id);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock();
        open.sockets.remove(&self.id);
        open.stop_waiting(self.id);
        open.evicted.remove(&self.id);
        if let Some(n) = open.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.per_client.remove(&self.client);
            }
        }
        self.gate.stats.open.store(open.sockets.len() as u64, Ordering::Relaxed);
        if open.sockets.is_empty() {
            self.gate.drained.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    fn scrape(stats: &super::HttpStats) -> String {
        let mut s = crate::metrics::Scrape::default();
        stats.register(&mut s);
        s.encode()
    }

    use super::*;
    use std::net::TcpListener;

    fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn bounds_total_and_per_client_and_frees_on_drop() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let stats = Arc::new(HttpStats::default());
        let gate = ConnectionGate::new(3, 2, stats.clone());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let socks: Vec<_> = (0..5).map(|_| pair(&l)).collect();
        let a1 = gate.admit(&socks[0].1, a).unwrap();
        let a2 = gate.admit(&socks[1].1, a).unwrap();
        assert_eq!(gate.admit(&socks[2].1, a).unwrap_err(), Refusal::PerClient);
        let b1 = gate.admit(&socks[2].1, b).unwrap();
        // All being answered: none can make room.
        assert!([&a1, &a2, &b1].iter().all(|c| c.answering()));
        assert_eq!(gate.admit(&socks[3].1, b).unwrap_err(), Refusal::Total);
        assert_eq!(stats.open(), 3);
        drop(a1);
        assert_eq!(stats.open(), 2);
        let _a3 = gate.admit(&socks[3].1, a).unwrap();
        let text = scrape(&stats);
        assert!(text.contains("krak_http_connections_refused_total{reason=\"per_client\"} 1"), "{text}");
        assert!(text.contains("krak_http_connections_refused_total{reason=\"total\"} 1"), "{text}");
        assert!(text.contains("krak_http_connections_open 3"), "{text}");
    }

    #[test]
    fn a_newcomer_closes_the_longest_waiting_connection_never_one_being_answered() {
        use std::io::Read;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let stats = Arc::new(HttpStats::default());
        let gate = ConnectionGate::new(2, 2, stats.clone());
        let ip = |i: u8| IpAddr::from([10, 0, 0, i]);
        let socks: Vec<_> = (0..4).map(|_| pair(&l)).collect();
        let busy = gate.admit(&socks[0].1, ip(1)).unwrap();
        assert!(busy.answering());
        let idle = gate.admit(&socks[1].1, ip(2)).unwrap();
        // Full: the newcomer closes the waiting one, not the one being answered.
        let _new = gate.admit(&socks[2].1, ip(3)).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!((&socks[1].0).read(&mut buf).unwrap(), 0, "the waiting connection was closed");
        assert!(!idle.answering(), "a request read on a closed connection is not served");
        socks[0].0.set_nonblocking(true).unwrap();
        assert!((&socks[0].0).read(&mut buf).is_err(), "the answered one is still open");
        // Once answered, the busy one waits again and is the next to go after the newcomer.
        busy.waiting();
        let _newer = gate.admit(&socks[3].1, ip(4)).unwrap();
        assert_eq!((&socks[2].0).read(&mut buf).unwrap(), 0, "the newcomer had waited longer");
        let text = scrape(&stats);
        assert!(text.contains("krak_http_connections_evicted_total 2"), "{text}");
    }

    #[test]
    fn close_all_cuts_open_sockets_and_refuses_new_ones() {
        use std::io::Read;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let gate = ConnectionGate::new(8, 8, Arc::default());
        let (_client, server) = pair(&l);
        let admitted = gate.admit(&server, "127.0.0.1".parse().unwrap()).unwrap();
        gate.close_all();
        let mut buf = [0u8; 1];
        // the cut socket reads end-of-stream instead of blocking
        assert_eq!((&server).read(&mut buf).unwrap(), 0);
        assert_eq!(gate.admit(&server, "127.0.0.1".parse().unwrap()).unwrap_err(), Refusal::Closing);
        assert!(!gate.wait_drained(Duration::from_millis(10)));
        drop(admitted);
        assert!(gate.wait_drained(Duration::from_millis(10)));
    }
}
