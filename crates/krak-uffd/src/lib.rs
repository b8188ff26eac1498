//! The kernel interface of the krak pager, fenced in one small crate.
//!
//! [`Uffd`] wraps a userfaultfd: open (as root or in user-mode-only for unprivileged
//! processes), register ranges for missing and write-protect faults, read fault events,
//! resolve them with `UFFDIO_COPY`, change write protection and wake waiters.
//! [`AnonMapping`] is the anonymous memory those ranges live in; [`SharedMapping`] a memfd
//! mapped shared, which a pager in another process serves through [`MemfdView`], the
//! memfd and the userfaultfd handed over a [`SeqPacket`] socket.
//!
//! Every other krak crate calls these safe-where-possible wrappers; the few raw-memory
//! operations that stay `unsafe` say which invariant their caller must keep.

mod mapping;
mod seqpacket;
mod shmem;
pub mod sigbus;
mod sys;
mod uffd;

pub use mapping::AnonMapping;
pub use seqpacket::{PeerCredentials, SeqPacket, SeqPacketListener, MAX_FDS};
pub use shmem::{MemfdView, SharedMapping};
pub use uffd::{signal_process, signal_thread, signal_thread_of, CopyError, Event, OpenMode, Uffd, UffdError};

/// The base page size the pager works in.
pub const PAGE_SIZE: usize = 4096;
