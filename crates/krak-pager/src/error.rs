//! What can go wrong in a region, for its callers: one enum, whose variants carry what
//! caused them (an I/O error, a memory server's or the controller's refusal, a coding
//! failure) rather than its text.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::remote::redundancy::Redundancy;

/// Why a region could not be made or a page could not be served.
#[derive(Debug, thiserror::Error)]
pub enum PagerError {
    /// A configuration or an argument the region cannot take.
    #[error("invalid pager configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("no memory servers given")]
    NoServers,
    #[error("redundancy {scheme} stores each chunk on {} distinct memory servers; {servers} given", scheme.width())]
    TooFewServers { scheme: Redundancy, servers: usize },
    #[error("unknown placement policy {name:?}; known: {}", krak_placement::POLICY_NAMES.join(", "))]
    UnknownPolicy { name: String },
    /// A list's placement policy was set on a region the controller places.
    #[error("the rack controller places this region's slabs: change its policy with `krak policy`")]
    PlacedByController,
    #[error("no server to move fragment {frag} of chunk {chunk} to: every target given holds a fragment of that chunk, is lost or is full ({scheme} needs {} distinct servers per chunk)", scheme.width())]
    NoDrainTarget { chunk: usize, frag: usize, scheme: Redundancy },
    #[error("the rack is full: the region needs {needed_bytes} bytes of remote memory, the {servers} servers could lend only {got_bytes}")]
    RackFull { needed_bytes: u64, got_bytes: u64, servers: usize },
    /// The controller has no room to place the region (its answer says how far it got).
    #[error("the rack is full: the region needs {needed_bytes} bytes of remote memory ({source})")]
    RackFullAtController { needed_bytes: u64, source: krak_api::ApiError },
    #[error(transparent)]
    Remote(#[from] krak_client::ClientError),
    #[error(transparent)]
    Uffd(#[from] krak_uffd::UffdError),
    #[error("region memory: {0}")]
    Mapping(#[source] std::io::Error),
    #[error("installing a page: {0}")]
    Install(#[from] InstallError),
    /// The write-back buffer is full of pages no server takes; the last failure.
    #[error("write-back to the memory servers keeps failing: {0}")]
    WritebackFailed(#[source] Arc<PagerError>),
    #[error("rack controller: {0}")]
    Controller(#[from] krak_api::ApiError),
    #[error("the rack controller's answer: {0}")]
    ControllerAnswer(#[from] BadAnswer),
    #[error("moving chunk {chunk} to {to}: {source}")]
    MoveChunk { chunk: usize, to: SocketAddr, source: MoveFailure },
    #[error("moving fragment {frag} of chunk {chunk} to {to}: {source}")]
    MoveFragment { chunk: usize, frag: usize, to: SocketAddr, source: MoveFailure },
    #[error("page {page} of the region cannot be read: {source} survive under {scheme} (servers lost for this region: {lost})")]
    Unrecoverable { page: usize, scheme: Redundancy, lost: String, source: CodingError },
    /// Pages written to fewer fragments than a read needs, or not to the slab a fragment of
    /// theirs moves to; `source` is the first write of the batch that failed.
    #[error("{} pages could not be written to enough fragments: as few as {fewest_written} fragments of a page written, {scheme} needs {}{}", pages.len(), scheme.needed(), cause(source))]
    Unwritable {
        pages: Vec<usize>,
        fewest_written: usize,
        scheme: Redundancy,
        #[source]
        source: Option<Box<krak_client::ClientError>>,
    },
    #[error("erasure coding: {0}")]
    Coding(#[from] CodingError),
    #[error("starting a pager thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl PagerError {
    /// Whether this says the rack (or the region's servers) has no room for more slabs.
    pub fn is_rack_full(&self) -> bool {
        matches!(self, PagerError::RackFull { .. } | PagerError::RackFullAtController { .. })
    }
}

/// What is wrong with a region's configuration, or with an argument it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("region_bytes must be above 0")]
    EmptyRegion,
    #[error("a region holds at most {max_pages} pages")]
    RegionTooLarge { max_pages: u64 },
    #[error("thread and buffer counts must be above 0")]
    ZeroCount,
    #[error("{domains} server domains given for {servers} servers (one per server, or none)")]
    DomainsMismatch { domains: usize, servers: usize },
    #[error("redundancy {scheme} keeps each fragment on a different server; {server} is listed twice")]
    ServerListedTwice { scheme: Redundancy, server: SocketAddr },
    #[error("another process's faults are served by handler threads only")]
    OtherProcessNeedsThreads,
    #[error("discard of {len} bytes at {offset} is unaligned or outside the region")]
    BadDiscard { offset: usize, len: usize },
    #[error("no fragment {frag} of chunk {chunk}: the region has {chunks} chunks of {width} fragments")]
    NoSuchFragment { chunk: usize, frag: usize, chunks: usize, width: usize },
    #[error("{server} lends slabs smaller than this region's chunks")]
    SlabsTooSmall { server: SocketAddr },
}

/// ": why" after a message, when there is a why.
fn cause(source: &Option<Box<krak_client::ClientError>>) -> String {
    source.as_ref().map(|e| format!(" (first failure: {e})")).unwrap_or_default()
}

/// Why pages could not be installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    #[error("the mapping kept changing ({copied} bytes copied before it gave up)")]
    MappingUnstable { copied: usize },
    #[error("pages being discarded stayed in flight")]
    DiscardRaced,
    /// `[start, start+len)` is not inside one registered mapping: the program changed or
    /// replaced its mapping there.
    #[error("[{start:#x}, +{len:#x}) is not inside one registered mapping")]
    OutsideMapping { start: usize, len: usize },
    /// A window of pages ran into a part of the region the program mapped otherwise (its
    /// own protection, another mapping): the pages before it were installed.
    #[error("installed {copied} bytes of the window before another mapping")]
    EndOfMapping { copied: usize },
    #[error("fault inside the fault handler")]
    FaultInHandler,
    #[error("the fault handler thread of the measurement panicked")]
    ProbePanicked,
    #[error("the local fault measurement read the wrong bytes")]
    ProbeWrongBytes,
}

/// What the pager found wrong in an answer of the controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAnswer {
    #[error("bad server address {addr:?}: {source}")]
    Address { addr: String, source: std::net::AddrParseError },
    #[error("{addr} lends slabs smaller than the region's chunks")]
    SlabTooSmall { addr: SocketAddr },
    #[error("placement named {what} {index} of {count}")]
    OutOfRange { what: &'static str, index: u64, count: u64 },
    #[error("chunk {chunk} was left unplaced")]
    Unplaced { chunk: u64 },
    #[error("the controller put two fragments of chunk {chunk} on one server")]
    SameServer { chunk: u64 },
    #[error("the controller keeps {got} slabs per chunk, the region needs {want}")]
    WrongWidth { got: u32, want: u32 },
    #[error("no server to move slot {slot} to")]
    NoTarget { slot: u64 },
}

/// Why a chunk or fragment move did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MoveFailure {
    #[error("the new slab's server was lost meanwhile")]
    TargetLost,
    #[error("it did not finish in {secs} s")]
    TimedOut { secs: u64 },
    #[error("a copy step failed: {0}")]
    Step(#[source] Box<PagerError>),
    #[error(transparent)]
    Refused(#[from] MoveRefused),
    #[error("a region with redundancy {scheme} moves its chunks' fragments one at a time (move_fragment)")]
    Redundant { scheme: Redundancy },
}

/// Why the stripe table refuses to start moving a fragment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveRefused {
    #[error("the target is lost for this region")]
    TargetLost,
    #[error("fragment {frag} of chunk {chunk} is not live or already moving")]
    NotLive { chunk: usize, frag: usize },
    #[error("the target already holds fragment {held} of chunk {chunk}")]
    TargetHolds { chunk: usize, held: usize },
    #[error("chunk {chunk} has no slabs yet (reserved when its first page is written back): nothing to move")]
    Unreserved { chunk: usize },
}

/// Why fragments could not be encoded or a page rebuilt from them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodingError {
    #[error("{have} of the {needed} fragments needed")]
    TooFewFragments { have: usize, needed: usize },
    #[error("batch decoding is for erasure codes")]
    NotErasureCoded,
    #[error("Reed-Solomon: {0}")]
    ReedSolomon(#[from] reed_solomon_simd::Error),
    #[error("the decoder did not restore fragment {index}")]
    NotRestored { index: usize },
}
