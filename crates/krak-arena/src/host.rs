//! The pager process's end of the arena socket: accepts programs of its own user, takes
//! each one's memfd and userfaultfd from its hello, and serves the arena as a `FarMemory`
//! region ([`FarMemory::serve_other_process`]) until the program hangs up; then the region is
//! dropped and its slabs are given back. At most [`MAX_ARENAS`] programs at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use krak_pager::{FarMemory, PagerConfig, PagerError, PAGE_SIZE};
use krak_uffd::{MemfdView, OpenMode, PeerCredentials, SeqPacket, SeqPacketListener, Uffd, UffdError};

use crate::wire::{Answer, Request, WireError, MAX_MESSAGE_BYTES, VERSION};

/// Most arenas (programs) served at once; more are refused with the reason.
pub const MAX_ARENAS: usize = 64;
/// How often waiting loops look at the stop flag.
const POLL_MS: i32 = 100;
/// How long a program has to send its hello after connecting.
const HELLO_TIMEOUT_MS: u64 = 10_000;

/// Why a program's arena was not served.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("the program's socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("the program hung up before its hello")]
    NoHello,
    #[error("its hello: {0}")]
    Wire(#[from] WireError),
    #[error("the first message must be a hello")]
    NotHello,
    #[error("the program speaks version {0} of the arena protocol, this pager {VERSION}")]
    Version(u16),
    #[error("a hello carries 2 descriptors (memfd, userfaultfd), got {0}")]
    Descriptors(usize),
    #[error("an arena of {len} bytes is larger than --max-far ({max_len})")]
    TooLarge { len: u64, max_len: u64 },
    #[error("unknown userfaultfd mode {0}")]
    UnknownMode(u8),
    #[error("the program's userfaultfd serves user-mode faults only")]
    UserModeOnly,
    #[error("the arena's memfd: {0}")]
    Memfd(#[source] std::io::Error),
    #[error("the program's userfaultfd: {0}")]
    Uffd(#[from] UffdError),
    #[error("serving the arena: {0}")]
    Pager(#[from] PagerError),
}

/// The arenas being served, by the pid of their program (for `krak budget`).
type Served = Arc<Mutex<HashMap<u32, Arc<FarMemory>>>>;

/// Accepts programs on `listener` and serves their arenas, each on a thread of its own,
/// until `stop` is set; returns once every arena is dropped (its slabs freed).
pub fn serve(listener: &SeqPacketListener, config: Arc<PagerConfig>, stop: &Arc<AtomicBool>) {
    // SAFETY: geteuid takes nothing and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let arenas = Arc::new(AtomicUsize::new(0));
    let served: Served = Arc::default();
    let mut threads = Vec::new();
    while !stop.load(Relaxed) {
        let conn = match listener.accept_timeout(POLL_MS) {
            Ok(Some(conn)) => conn,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!("accepting a program: {e}");
                std::thread::sleep(std::time::Duration::from_millis(POLL_MS as u64));
                continue;
            }
        };
        let peer = match conn.peer_credentials() {
            Ok(peer) if peer.uid == uid => peer,
            Ok(peer) => {
                tracing::warn!("refusing a connection from uid {} (pid {})", peer.uid, peer.pid);
                let _ = conn.send(&Answer::Failed("the pager serves its own user only".into()).encode(), &[]);
                continue;
            }
            Err(e) => {
                tracing::warn!("refusing a connection without credentials: {e}");
                continue;
            }
        };
        if arenas.fetch_add(1, Relaxed) >= MAX_ARENAS {
            arenas.fetch_sub(1, Relaxed);
            let why = format!("the pager already serves {MAX_ARENAS} programs");
            let _ = conn.send(&Answer::Failed(why).encode(), &[]);
            continue;
        }
        let (config, stop, arenas, served) = (config.clone(), stop.clone(), arenas.clone(), served.clone());
        let t = std::thread::Builder::new().name(format!("krak-arena-{}", peer.pid)).spawn(move || {
            serve_arena(&conn, &config, &stop, peer, &served);
            arenas.fetch_sub(1, Relaxed);
        });
        match t {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!("starting a thread for pid {}: {e}", peer.pid),
        }
        threads.retain(|t| !t.is_finished());
    }
    // Every arena is dropped (its slabs freed) before we exit; programs still running then
    // see the hang-up and stop.
    for t in threads {
        let _ = t.join();
    }
}

/// Serves one program's arena until it hangs up or we are told to stop (or answers one
/// budget change, on a connection that opens with it).
fn serve_arena(conn: &SeqPacket, config: &PagerConfig, stop: &AtomicBool, peer: PeerCredentials, served: &Served) {
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
    let region = match accept_arena(conn, &mut buf, config, peer) {
        Ok(Opened::Arena(region)) => Arc::new(region),
        Ok(Opened::Budget { pid, local_budget_bytes }) => {
            let answer = set_budget(served, pid, local_budget_bytes);
            let _ = conn.send(&answer.encode(), &[]);
            return;
        }
        Err(e) => {
            tracing::warn!("cannot serve the arena of pid {}: {e}", peer.pid);
            let _ = conn.send(&Answer::Failed(e.to_string()).encode(), &[]);
            return;
        }
    };
    if let Err(e) = conn.send(&Answer::Ready.encode(), &[]) {
        tracing::warn!("pid {} left before its arena was ready: {e}", peer.pid);
        return;
    }
    tracing::info!("serving the arena of pid {}: {} bytes at {:#x}", peer.pid, region.len(), region.as_ptr() as usize);
    lock(served).insert(peer.pid.unsigned_abs(), region.clone());
    while !stop.load(Relaxed) {
        match conn.wait_readable(POLL_MS) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!("pid {}: {e}", peer.pid);
                break;
            }
        }
        let n = match conn.recv(&mut buf) {
            Ok(Some((n, _unexpected_fds))) => n,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("pid {}: bad message: {e}", peer.pid);
                let _ = conn.send(&Answer::Failed(format!("bad message: {e}")).encode(), &[]);
                continue;
            }
        };
        let answer = match Request::decode(&buf[..n]) {
            Ok(Request::Discard { offset, len }) => discard(&region, offset, len),
            Ok(Request::Stats) => Answer::Stats(stats_json(&region).to_string()),
            Ok(Request::Hello { .. } | Request::Budget { .. }) => {
                Answer::Failed("this connection already serves an arena".into())
            }
            Err(e) => Answer::Failed(format!("bad request: {e}")),
        };
        if let Answer::Failed(why) = &answer {
            tracing::warn!("pid {}: {why}", peer.pid);
        }
        if conn.send(&answer.encode(), &[]).is_err() {
            break;
        }
    }
    lock(served).remove(&peer.pid.unsigned_abs());
    drop(region);
    tracing::info!("pid {} hung up: its arena is released", peer.pid);
}

fn lock(served: &Served) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<FarMemory>>> {
    served.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Changes the local budget of program `pid`'s arena (shrinking evicts before answering).
fn set_budget(served: &Served, pid: u32, local_budget_bytes: u64) -> Answer {
    let Some(region) = lock(served).get(&pid).cloned() else {
        return Answer::Failed(format!("this pager serves no arena of pid {pid}"));
    };
    match region.set_local_budget(local_budget_bytes) {
        Ok(()) => {
            tracing::info!("pid {pid}: local budget now {local_budget_bytes} bytes (krak budget)");
            Answer::Stats(stats_json(&region).to_string())
        }
        Err(e) => Answer::Failed(format!("setting the local budget of pid {pid}'s arena: {e}")),
    }
}

/// What a connection opened with.
enum Opened {
    Arena(FarMemory),
    Budget { pid: u32, local_budget_bytes: u64 },
}

fn discard(region: &FarMemory, offset: u64, len: u64) -> Answer {
    let (Ok(offset), Ok(len)) = (usize::try_from(offset), usize::try_from(len)) else {
        return Answer::Failed("discard range out of bounds".into());
    };
    match region.discard(offset, len) {
        Ok(()) => Answer::Done,
        Err(e) => Answer::Failed(format!("discard of {len} bytes at {offset}: {e}")),
    }
}

fn stats_json(region: &FarMemory) -> serde_json::Value {
    serde_json::json!({
        "pager_pid": std::process::id(),
        "arena_bytes": region.len(),
        "local_budget_bytes": region.local_budget_bytes(),
        "resident_bytes": region.resident_bytes(),
        "peak_resident_bytes": region.peak_resident_bytes(),
        "pager": region.stats(),
    })
}

/// Reads the program's hello and starts serving its arena.
fn accept_arena(
    conn: &SeqPacket,
    buf: &mut [u8],
    config: &PagerConfig,
    peer: PeerCredentials,
) -> Result<Opened, HostError> {
    conn.set_recv_timeout_ms(HELLO_TIMEOUT_MS).map_err(HostError::Socket)?;
    let (n, fds) = conn.recv(buf).map_err(HostError::Socket)?.ok_or(HostError::NoHello)?;
    conn.set_recv_timeout_ms(0).map_err(HostError::Socket)?;
    let (version, base, len, uffd_features, uffd_mode) = match Request::decode(&buf[..n])? {
        Request::Hello { version, base, len, uffd_features, uffd_mode } => {
            (version, base, len, uffd_features, uffd_mode)
        }
        Request::Budget { pid, local_budget_bytes } if fds.is_empty() => {
            return Ok(Opened::Budget { pid, local_budget_bytes })
        }
        _ => return Err(HostError::NotHello),
    };
    if version != VERSION {
        return Err(HostError::Version(version));
    }
    let [memfd, uffd]: [std::os::fd::OwnedFd; 2] =
        fds.try_into().map_err(|fds: Vec<_>| HostError::Descriptors(fds.len()))?;
    let max_len = config.region_bytes.next_multiple_of(PAGE_SIZE as u64);
    if len > max_len {
        return Err(HostError::TooLarge { len, max_len });
    }
    let mode = OpenMode::from_code(uffd_mode).ok_or(HostError::UnknownMode(uffd_mode))?;
    if mode == OpenMode::UserModeOnly {
        return Err(HostError::UserModeOnly);
    }
    let map = MemfdView::new(memfd, base as usize, len as usize).map_err(HostError::Memfd)?;
    let uffd = Uffd::from_received(uffd, uffd_features, mode)?;
    Ok(Opened::Arena(FarMemory::serve_other_process(config.clone(), map, uffd, peer.pid)?))
}
