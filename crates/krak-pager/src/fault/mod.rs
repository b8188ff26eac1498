//! The page life cycle, in and out: the fault handlers (threads, or the faulting thread
//! itself), the reclaimer that evicts ahead of need, the write-back thread, and discards.
//! A newcomer reads `handler.rs` first: it is the fault path.

pub(crate) mod discard;
pub(crate) mod handler;
pub(crate) mod reclaim;
pub(crate) mod reserve;
pub(crate) mod self_serving;
pub(crate) mod writeback;
