//! The arena when its pager runs in a process of its own (`krak run --pager separate`): a
//! memfd mapped shared here, registered with a userfaultfd here, both handed to the pager
//! process over its Unix socket (served by [`crate::host`], messages in [`crate::wire`]).
//! Only discards and the closing counters go over the socket, one request at a time.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use krak_uffd::{OpenMode, SeqPacket, SharedMapping, Uffd, UffdError};
use parking_lot::Mutex;

use crate::wire::{Answer, Request, WireError, MAX_MESSAGE_BYTES, VERSION};

/// Bound on any answer of the pager (a discard waits at most a minute for pages in flight).
const ANSWER_TIMEOUT_MS: u64 = 120_000;

/// What the program says when its pager process is gone (the watcher and a request that
/// finds the socket closed say the same).
fn gone_message(pid: i32) -> String {
    format!("the pager process (pid {pid}) is gone: far memory cannot be served; stopping the program")
}

/// Why the arena could not be handed over, or a request about it failed.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("mapping a memfd of {len} bytes: {source}")]
    Map { len: usize, source: std::io::Error },
    #[error("MADV_DONTFORK on the arena: {0}")]
    ExcludeFromFork(#[source] std::io::Error),
    #[error("mapping the arena back over another mapping: {0}")]
    Restore(#[source] std::io::Error),
    #[error("userfaultfd: {0}")]
    Uffd(#[from] UffdError),
    #[error("userfaultfd here serves user-mode faults only (run as root)")]
    UserModeOnly,
    #[error("connecting to the pager process at {path}: {source}")]
    Connect { path: std::path::PathBuf, source: std::io::Error },
    #[error("the pager socket belongs to uid {0}, not ours")]
    ForeignPager(u32),
    #[error("the pager socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{}: {source}", gone_message(*.pid))]
    Gone { pid: i32, source: std::io::Error },
    #[error("{} (hung up)", gone_message(*.0))]
    HungUp(i32),
    #[error("the pager process's answer: {0}")]
    BadAnswer(#[from] WireError),
    #[error("the pager process refused: {0}")]
    Refused(String),
    #[error("unexpected answer to {request}: {answer:?}")]
    Unexpected { request: &'static str, answer: Answer },
    #[error("the pager's counters are not JSON: {0}")]
    Counters(#[source] serde_json::Error),
    #[error("starting the pager watcher: {0}")]
    Watcher(#[source] std::io::Error),
}

/// The program's end of an arena served by a pager process.
#[derive(Debug)]
pub struct Separate {
    map: SharedMapping,
    /// Kept open for the arena's life: with the pager process gone, a fault then waits (and
    /// the watcher stops the program) instead of the kernel filling in zero pages.
    uffd: Uffd,
    conn: Arc<SeqPacket>,
    pager_pid: i32,
    /// One request in flight at a time; the buffer its answer lands in.
    exchange: Mutex<Vec<u8>>,
}

impl Separate {
    /// Maps the arena, registers it and hands it to the pager process at `socket`; returns
    /// once the pager serves it. Should the pager process go away later, `on_gone` is
    /// called with the reason (from a watcher thread) and must end the program: nobody
    /// serves its faults any more.
    pub fn start(len: usize, socket: &Path, on_gone: fn(&str) -> !) -> Result<Separate, ProgramError> {
        let map = SharedMapping::new(len).map_err(|source| ProgramError::Map { len, source })?;
        map.exclude_from_fork().map_err(ProgramError::ExcludeFromFork)?;
        let uffd = Uffd::open_for_shmem()?;
        if uffd.mode() == OpenMode::UserModeOnly {
            return Err(ProgramError::UserModeOnly);
        }
        uffd.register(map.as_ptr() as usize, map.len())?;
        let conn = SeqPacket::connect(socket)
            .map_err(|source| ProgramError::Connect { path: socket.to_path_buf(), source })?;
        let peer = conn.peer_credentials().map_err(ProgramError::Socket)?;
        // SAFETY: geteuid takes nothing and cannot fail.
        if peer.uid != unsafe { libc::geteuid() } {
            return Err(ProgramError::ForeignPager(peer.uid));
        }
        conn.set_recv_timeout_ms(ANSWER_TIMEOUT_MS).map_err(ProgramError::Socket)?;
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
            uffd,
            exchange: Mutex::new(vec![0; MAX_MESSAGE_BYTES]),
        };
        match sep.ask(&hello, &[sep.map.memfd().as_raw_fd(), sep.uffd.as_raw_fd()])? {
            Answer::Ready => {}
            Answer::Failed(why) => return Err(ProgramError::Refused(why)),
            answer => return Err(ProgramError::Unexpected { request: "a hello", answer }),
        }
        let conn = sep.conn.clone();
        let pid = sep.pager_pid;
        std::thread::Builder::new()
            .name("krak-pager-watch".into())
            .spawn(move || {
                conn.wait_hangup();
                // Nobody serves the arena's faults any more: stop, never read a wrong page.
                on_gone(&gone_message(pid));
            })
            .map_err(ProgramError::Watcher)?;
        Ok(sep)
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Never true: an arena is at least a page.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    pub fn pager_pid(&self) -> i32 {
        self.pager_pid
    }

    fn ask(&self, request: &Request, fds: &[std::os::fd::RawFd]) -> Result<Answer, ProgramError> {
        let mut buf = self.exchange.lock();
        let pid = self.pager_pid;
        let gone = |source| ProgramError::Gone { pid, source };
        self.conn.send(&request.encode(), fds).map_err(gone)?;
        let (n, _fds) = self.conn.recv(&mut buf).map_err(gone)?.ok_or(ProgramError::HungUp(pid))?;
        Ok(Answer::decode(&buf[..n])?)
    }

    /// Forgets `[offset, offset+len)` of the arena; complete (the pages read as zeros) when
    /// this returns.
    pub fn discard(&self, offset: usize, len: usize) -> Result<(), ProgramError> {
        match self.ask(&Request::Discard { offset: offset as u64, len: len as u64 }, &[])? {
            Answer::Done => Ok(()),
            Answer::Failed(why) => Err(ProgramError::Refused(why)),
            answer => Err(ProgramError::Unexpected { request: "a discard", answer }),
        }
    }

    /// Puts the arena back at `[offset, offset+len)` after another mapping of the program's
    /// covered it: mapped read-write again and registered with the userfaultfd. The pages
    /// read as the memfd holds them (the caller discarded them when it gave them up).
    pub fn restore(&self, offset: usize, len: usize) -> Result<(), ProgramError> {
        self.map.restore(offset, len).map_err(ProgramError::Restore)?;
        self.uffd.register(self.map.as_ptr() as usize + offset, len)?;
        Ok(())
    }

    /// The pager's counters for this arena.
    pub fn stats(&self) -> Result<serde_json::Value, ProgramError> {
        match self.ask(&Request::Stats, &[])? {
            Answer::Stats(json) => serde_json::from_str(&json).map_err(ProgramError::Counters),
            Answer::Failed(why) => Err(ProgramError::Refused(why)),
            answer => Err(ProgramError::Unexpected { request: "a stats request", answer }),
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
