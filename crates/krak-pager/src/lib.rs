//! krak's pager: far-memory regions on userfaultfd, the external pager of Mach in user space.
//!
//! A [`FarMemory`] is an address range of any size whose pages live partly in a bounded
//! local cache (the region's resident pages) and partly on krak memory servers. Touching a
//! page that is not resident raises a userfaultfd fault that a handler thread serves by
//! fetching the page; the first write to a clean page raises a write-protect fault that
//! marks it dirty, so that clean pages are dropped without write-back. Eviction and
//! prefetch are policies behind traits ([`EvictionPolicy`], [`PrefetchPolicy`]) that can
//! be swapped while the region is in use.
//!
//! The fault path is described in `docs/design.md`.

mod chunk_copy;
mod core;
mod discard;
pub mod eviction;
mod frag_move;
mod handler;
pub mod limits;
mod lock_order;
mod memory;
mod migrate;
mod page_table;
pub mod prefetch;
mod rack;
mod rack_moves;
mod rack_stripes;
mod reclaim;
pub mod redundancy;
mod region;
mod remote;
mod remote_discard;
mod reprotect;
mod self_serving;
mod stats;
mod stripe;
mod writeback;

pub use eviction::{Clock, EvictionPolicy, Fifo};
pub use migrate::DrainReport;
pub use prefetch::{NoPrefetch, PrefetchPolicy, StrideDetector};
pub use redundancy::{ParseRedundancyError, Redundancy};
pub use region::{
    FarMemory, FaultMode, PagerConfig, ResidencySample, DEFAULT_SCRUB_INTERVAL_MS, DEFAULT_SPIN_US, MIN_BUDGET_PAGES,
};
pub use stats::PagerStats;

pub use krak_uffd::OpenMode as UffdMode;
pub use krak_uffd::PAGE_SIZE;

/// Why a region could not be made or a page could not be served.
#[derive(Debug, thiserror::Error)]
pub enum PagerError {
    #[error("invalid pager configuration: {0}")]
    Config(String),
    #[error("no memory servers given")]
    NoServers,
    #[error("the rack is full: the region needs {needed_bytes} bytes of remote memory, the {servers} servers could lend only {got_bytes}")]
    RackFull { needed_bytes: u64, got_bytes: u64, servers: usize },
    #[error(transparent)]
    Remote(#[from] krak_client::ClientError),
    #[error(transparent)]
    Uffd(#[from] krak_uffd::UffdError),
    #[error("region memory: {0}")]
    Mapping(std::io::Error),
    #[error("installing a page: {0}")]
    Install(String),
    #[error("write-back to the memory servers keeps failing: {0}")]
    WritebackFailed(String),
    #[error("rack controller: {0}")]
    Controller(String),
    #[error("moving a chunk: {0}")]
    Move(String),
    #[error("page {page} of the region cannot be read: {detail}")]
    Unrecoverable { page: usize, detail: String },
    #[error("{} pages could not be written to enough fragments: {detail}", pages.len())]
    Unwritable { pages: Vec<usize>, detail: String },
    #[error("erasure coding: {0}")]
    Coding(String),
    #[error("starting a pager thread: {0}")]
    Thread(std::io::Error),
}
