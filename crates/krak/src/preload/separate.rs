//! The arena when its pager runs in a process of its own (`krak run --pager separate`): a
//! memfd mapped shared here, registered with a userfaultfd here, both handed to the pager
//! process over its Unix socket (see `cmd_pager.rs` and `krak_pager::arena_wire`). Only
//! discards and the closing counters go over the socket, one request at a time.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use krak_pager::arena_wire::{Answer, Request, MAX_MESSAGE_BYTES, VERSION};
use krak_uffd::{OpenMode, SeqPacket, SharedMapping, Uffd};
use parking_lot::Mutex;

/// Bound on any answer of the pager (a discard waits at most a minute for pages in flight).
const ANSWER_TIMEOUT_MS: u64 = 120_000;

/// What the program says when its pager process is gone (the watcher and a request that
/// finds the socket closed say the same).
fn gone_message(pid: i32) -> String {
    format!("the pager process (pid {pid}) is gone: far memory cannot be served; stopping the program")
}

pub struct Separate {
    map: SharedMapping,
    /// Kept open for the arena's life: with the pager process gone, a fault then waits (and
    /// the watcher stops the program) instead of the kernel filling in zero pages.
    _uffd: Uffd,
    conn: Arc<SeqPacket>,
    pager_pid: i32,
    /// One request in flight at a time; the buffer its answer lands in.
    exchange: Mutex<Vec<u8>>,
}

impl Separate {
    /// Maps the arena, registers it and hands it to the pager process at `socket`; returns
    /// once the pager serves it.
    pub fn start(len: usize, socket: &Path) -> Result<Separate, String> {
        let map = SharedMapping::new(len).map_err(|e| format!("mapping a memfd of {len} bytes: {e}"))?;
        map.exclude_from_fork().map_err(|e| format!("MADV_DONTFORK on the arena: {e}"))?;
        let uffd = Uffd::open_for_shmem().map_err(|e| e.to_string())?;
        if uffd.mode() == OpenMode::UserModeOnly {
            return Err("userfaultfd here serves user-mode faults only (run as root)".into());
        }
        uffd.register(map.as_ptr() as usize, map.len()).map_err(|e| e.to_string())?;
        let conn = SeqPacket::connect(socket)
            .map_err(|e| format!("connecting to the pager process at {}: {e}", socket.display()))?;
        let peer = conn.peer_credentials().map_err(|e| format!("the pager's credentials: {e}"))?;
        // SAFETY: geteuid takes nothing and cannot fail.
        if peer.uid != unsafe { libc::geteuid() } {
            return Err(format!("the pager socket belongs to uid {}, not ours", peer.uid));
        }
        conn.set_recv_timeout_ms(ANSWER_TIMEOUT_MS).map_err(|e| e.to_string())?;
        let hello = Request::Hello {
            version: VERSION,
            base: map.as_ptr() as u64,
            len: map.len() as u64,
            uffd_features: uffd.features(),
            uffd_mode: uffd.mode().code(),
        };
        let sep = Separate {
            conn: Arc::new(conn),
            pager_pid: peer.pid,
            map,
            _uffd: uffd,
            exchange: Mutex::new(vec![0; MAX_MESSAGE_BYTES]),
        };
        match sep.ask(&hello, &[sep.map.memfd().as_raw_fd(), sep._uffd.as_raw_fd()])? {
            Answer::Ready => {}
            other => return Err(format!("the pager process refused the arena: {other:?}")),
        }
        let conn = sep.conn.clone();
        let pid = sep.pager_pid;
        std::thread::Builder::new()
            .name("krak-pager-watch".into())
            .spawn(move || {
                conn.wait_hangup();
                // Nobody serves the arena's faults any more: stop, never read a wrong page.
                crate::far::die(&gone_message(pid));
            })
            .map_err(|e| format!("starting the pager watcher: {e}"))?;
        Ok(sep)
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn pager_pid(&self) -> i32 {
        self.pager_pid
    }

    fn ask(&self, request: &Request, fds: &[std::os::fd::RawFd]) -> Result<Answer, String> {
        let mut buf = self.exchange.lock();
        let gone = |e: std::io::Error| format!("{} ({e})", gone_message(self.pager_pid));
        self.conn.send(&request.encode(), fds).map_err(gone)?;
        let (n, _fds) = self
            .conn
            .recv(&mut buf)
            .map_err(gone)?
            .ok_or_else(|| format!("{} (hung up)", gone_message(self.pager_pid)))?;
        Answer::decode(&buf[..n]).map_err(|e| format!("the pager process's answer: {e}"))
    }

    /// Forgets `[offset, offset+len)` of the arena; complete (the pages read as zeros) when
    /// this returns.
    pub fn discard(&self, offset: usize, len: usize) -> Result<(), String> {
        match self.ask(&Request::Discard { offset: offset as u64, len: len as u64 }, &[])? {
            Answer::Done => Ok(()),
            Answer::Failed(why) => Err(why),
            other => Err(format!("unexpected answer to a discard: {other:?}")),
        }
    }

    /// The pager's counters for this arena.
    pub fn stats(&self) -> Result<serde_json::Value, String> {
        match self.ask(&Request::Stats, &[])? {
            Answer::Stats(json) => serde_json::from_str(&json).map_err(|e| format!("the pager's counters: {e}")),
            Answer::Failed(why) => Err(why),
            other => Err(format!("unexpected answer to a stats request: {other:?}")),
        }
    }

    /// In a `fork(2)` child: fences the arena and lets go of the parent's connection, so the
    /// pager sees the parent's hang-up when it exits. Async-signal-safe.
    pub fn in_fork_child(&self) {
        let _ = self.map.fence_in_child();
        // SAFETY: in the child the arena is never used again (forked_child() is set), so
        // neither is its connection, and statics are never dropped.
        unsafe { self.conn.close_in_child() };
    }
}
