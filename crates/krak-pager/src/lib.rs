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

mod error;
mod fault;
pub mod floors;
mod follow;
mod moves;
mod policy;
mod region;
mod remote;
mod state;

pub use error::{ConfigError, PagerError};
pub use moves::fragment::DrainReport;
pub use policy::eviction::{self, Clock, EvictionPolicy, Fifo};
pub use policy::prefetch::{self, NoPrefetch, PrefetchPolicy, StrideDetector};
pub use region::{
    FarMemory, FaultMode, PagerConfig, ResidencySample, DEFAULT_SCRUB_INTERVAL_MS, DEFAULT_SPIN_US, MIN_BUDGET_PAGES,
};
pub use remote::redundancy::{self, ParseRedundancyError, Redundancy};
pub use state::stats::PagerStats;

pub use krak_uffd::OpenMode as UffdMode;
pub use krak_uffd::PAGE_SIZE;
