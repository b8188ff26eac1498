//! A TCP delay line: the stand-in for `tc netem delay`, which this machine's kernel is built
//! without (`CONFIG_NET_SCH_NETEM` is not set). Each accepted connection is forwarded to a
//! target, and every chunk of bytes is held for a fixed time in each direction before it is
//! sent on, so each request/answer round trip through it takes at least twice that.
//!
//! Bounded: at most `MAX_CONNECTIONS` connections, at most `QUEUE_CHUNKS` chunks of at most
//! 64 KiB queued per direction (a full queue stops reading, so TCP pushes back), and
//! everything stops when the proxy is dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MAX_CONNECTIONS: usize = 256;
const QUEUE_CHUNKS: usize = 256;
const CHUNK_BYTES: usize = 64 * 1024;

/// Bytes and when they may be sent on.
type Due = (Instant, Vec<u8>);

/// A running delay line; stops (closing every connection) on drop.
#[derive(Debug)]
pub struct DelayProxy {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl DelayProxy {
    /// Listens on `listen` (port 0: any) and forwards to `target`, holding every chunk for
    /// `one_way` in each direction.
    pub fn start(listen: SocketAddr, target: SocketAddr, one_way: Duration) -> DelayProxy {
        let listener = TcpListener::bind(listen).unwrap_or_else(|e| panic!("delay line bind {listen}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (stop, streams) = (stop.clone(), streams.clone());
            std::thread::spawn(move || accept_loop(listener, target, one_way, &stop, &streams))
        };
        DelayProxy { addr, stop, streams, acceptor: Some(acceptor) }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.streams.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    one_way: Duration,
    stop: &AtomicBool,
    streams: &Mutex<Vec<TcpStream>>,
) {
    let mut accepted = 0;
    while !stop.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        accepted += 1;
        if accepted > MAX_CONNECTIONS {
            continue; // dropped: the client sees the connection close
        }
        let _ = client.set_nonblocking(false);
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else { continue };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        {
            let mut list = streams.lock().unwrap();
            list.push(client.try_clone().unwrap());
            list.push(server.try_clone().unwrap());
        }
        pump(client.try_clone().unwrap(), server.try_clone().unwrap(), one_way);
        pump(server, client, one_way);
    }
}

/// Copies `from` to `to` with every chunk held for `delay`: a reader thread timestamps what
/// arrives, a writer thread sends each chunk once it is due.
fn pump(from: TcpStream, to: TcpStream, delay: Duration) {
    let (tx, rx): (SyncSender<Due>, Receiver<Due>) = sync_channel(QUEUE_CHUNKS);
    let mut reader = from;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        // dropping tx ends the writer once it has sent what was queued
    });
    let mut writer = to;
    std::thread::spawn(move || {
        while let Ok((due, bytes)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if writer.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = writer.shutdown(Shutdown::Write);
    });
}
