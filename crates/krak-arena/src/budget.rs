//! `krak budget pid:N`'s end of the pager socket, for a program whose pager runs in a
//! process of its own and follows no controller: the socket is found in the program's own
//! environment (`KRAK_RUN_PAGER_SOCKET`, as `krak run` gave it), and one
//! [`Request::Budget`] on a connection of its own is answered with the arena's stats once
//! the new budget is in force.

use std::path::{Path, PathBuf};

use krak_uffd::SeqPacket;

use crate::contract::{LOCAL_BYTES, PAGER_SOCKET};
use crate::wire::{Answer, Request, WireError, MAX_MESSAGE_BYTES};

/// Bound on the pager's answer (a shrink evicts before it answers).
const ANSWER_TIMEOUT_MS: u64 = 60_000;

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("no process {pid} (or its environment cannot be read: run as its user or root): {source}")]
    NoProcess { pid: u32, source: std::io::Error },
    #[error("process {pid} is not a program `krak run` started")]
    NotKrakRun { pid: u32 },
    #[error(
        "process {pid} runs its pager in-process (krak run --pager in-process): change its budget through its \
         controller (krak budget --controller URL), or run it with --pager separate"
    )]
    InProcess { pid: u32 },
    #[error("connecting to the pager of process {pid} at {path}: {source}")]
    Connect { pid: u32, path: PathBuf, source: std::io::Error },
    #[error("the pager's socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("the pager hung up without an answer")]
    NoAnswer,
    #[error("the pager's answer: {0}")]
    Wire(#[from] WireError),
    #[error("the pager refused: {0}")]
    Refused(String),
    #[error("the pager answered something else than the arena's stats")]
    Unexpected,
}

/// The pager socket of program `pid`, from its environment.
pub fn pager_socket_of(pid: u32) -> Result<PathBuf, BudgetError> {
    let environ =
        std::fs::read(format!("/proc/{pid}/environ")).map_err(|source| BudgetError::NoProcess { pid, source })?;
    let var = |name: &str| {
        environ.split(|b| *b == 0).find_map(|kv| kv.strip_prefix(format!("{name}=").as_bytes()).map(<[u8]>::to_vec))
    };
    match var(PAGER_SOCKET) {
        Some(path) if !path.is_empty() => Ok(PathBuf::from(String::from_utf8_lossy(&path).into_owned())),
        // every krak run program has its local budget in its contract, with or without a socket
        _ if var(LOCAL_BYTES).is_some() => Err(BudgetError::InProcess { pid }),
        _ => Err(BudgetError::NotKrakRun { pid }),
    }
}

/// Asks the pager at `socket` to keep `local_budget_bytes` of program `pid`'s arena local;
/// the arena's stats (JSON) once it does.
pub fn set_budget(socket: &Path, pid: u32, local_budget_bytes: u64) -> Result<String, BudgetError> {
    let conn = SeqPacket::connect(socket).map_err(|source| BudgetError::Connect {
        pid,
        path: socket.to_path_buf(),
        source,
    })?;
    conn.send(&Request::Budget { pid, local_budget_bytes }.encode(), &[]).map_err(BudgetError::Socket)?;
    conn.set_recv_timeout_ms(ANSWER_TIMEOUT_MS).map_err(BudgetError::Socket)?;
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
    let (n, _) = conn.recv(&mut buf).map_err(BudgetError::Socket)?.ok_or(BudgetError::NoAnswer)?;
    match Answer::decode(&buf[..n])? {
        Answer::Stats(json) => Ok(json),
        Answer::Failed(why) => Err(BudgetError::Refused(why)),
        _ => Err(BudgetError::Unexpected),
    }
}
