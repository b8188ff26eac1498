//! What can go wrong in a region, for its callers.

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
