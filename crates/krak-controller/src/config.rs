//! The controller's settings and limits.

use std::net::SocketAddr;

/// Default chunk (slab) size of a region: the memory server's default slab size.
pub const DEFAULT_CHUNK_BYTES: u64 = 64 << 20;

/// Bounds on what the controller holds (what one request may ask for: `krak_api::limits`).
pub const MAX_SERVERS: usize = 65_536;
pub const MAX_REGIONS: usize = 65_536;
/// Most HTTP connections a controller may be configured to keep open (a thread each).
pub const MAX_HTTP_CONNECTIONS: usize = 4096;

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub listen: SocketAddr,
    /// A server not heard from for this long is suspect: placement avoids it.
    pub suspect_after_ms: u64,
    /// A server not heard from for this long is dead.
    pub dead_after_ms: u64,
    /// What registration tells servers about heartbeat frequency.
    pub heartbeat_interval_ms: u64,
    /// How often liveness is checked.
    pub tick_ms: u64,
    /// Threads answering HTTP requests.
    pub http_workers: usize,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Most HTTP connections open at once; more are refused at once with 503.
    pub http_max_connections: usize,
    /// Most HTTP connections open at once from one client address.
    pub http_max_connections_per_client: usize,
    /// A request (head and body) must arrive within this long, and its answer be taken
    /// within this long; a slower connection is closed.
    pub http_request_timeout_ms: u64,
    /// A kept-alive connection without a new request for this long is closed.
    pub http_idle_timeout_ms: u64,
    /// Longest wait of a `map?since_epoch=` long-poll.
    pub long_poll_max_ms: u64,
    /// Most long-polls waiting at once; more are answered at once (so they never take every
    /// worker).
    pub max_long_polls: usize,
    /// A region whose pager has not been heard from for this long (no report, map poll,
    /// placement or commit) is reclaimed: its record and map are deleted, its servers'
    /// capacity counted free again (the servers free its slabs after their own grace).
    pub region_lease_ms: u64,
    /// Policy when the store names none.
    pub default_policy: String,
    /// Chunk size of a region whose creation names none.
    pub default_chunk_bytes: u64,
    /// The rack secret every request but `GET /metrics` must be signed with, and every
    /// answer is signed with; `None` answers everyone, unsigned (tests, `--insecure`).
    pub secret: Option<krak_auth::RackSecret>,
    /// TLS on the API (`crate::tls::server_config`); `None` serves plain HTTP.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl ControllerConfig {
    pub fn new(listen: SocketAddr) -> ControllerConfig {
        ControllerConfig {
            listen,
            suspect_after_ms: 3_000,
            dead_after_ms: 10_000,
            heartbeat_interval_ms: 1_000,
            tick_ms: 100,
            http_workers: 8,
            max_body_bytes: 1 << 20,
            http_max_connections: 256,
            http_max_connections_per_client: 32,
            http_request_timeout_ms: 5_000,
            http_idle_timeout_ms: 15_000,
            long_poll_max_ms: 10_000,
            max_long_polls: 4,
            region_lease_ms: DEFAULT_REGION_LEASE_MS,
            default_policy: "spread".to_string(),
            default_chunk_bytes: DEFAULT_CHUNK_BYTES,
            secret: None,
            tls: None,
        }
    }

    /// Checks the settings; the error says what is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.dead_after_ms == 0 || self.suspect_after_ms == 0 || self.tick_ms == 0 {
            return Err(ConfigError::Timeouts);
        }
        if self.suspect_after_ms > self.dead_after_ms {
            return Err(ConfigError::SuspectAfterDead);
        }
        if self.http_workers == 0 || self.http_workers > MAX_HTTP_WORKERS {
            return Err(ConfigError::Workers);
        }
        if self.max_long_polls >= self.http_workers {
            return Err(ConfigError::LongPolls);
        }
        if self.http_max_connections == 0 || self.http_max_connections > MAX_HTTP_CONNECTIONS {
            return Err(ConfigError::Connections);
        }
        if self.http_max_connections_per_client == 0 || self.http_max_connections_per_client > self.http_max_connections
        {
            return Err(ConfigError::PerClient);
        }
        if self.http_request_timeout_ms == 0 || self.http_idle_timeout_ms == 0 {
            return Err(ConfigError::HttpTimeouts);
        }
        if self.region_lease_ms < MIN_REGION_LEASE_MS {
            return Err(ConfigError::RegionLease);
        }
        if self.max_body_bytes < MIN_BODY_BYTES {
            return Err(ConfigError::BodyTooSmall);
        }
        if krak_placement::by_name(&self.default_policy).is_none() {
            return Err(ConfigError::UnknownPolicy(self.default_policy.clone()));
        }
        if self.default_chunk_bytes == 0 || !self.default_chunk_bytes.is_multiple_of(4096) {
            return Err(ConfigError::ChunkBytes);
        }
        Ok(())
    }
}

/// Default `region_lease_ms`: 30 pagers' reports (each reports every second).
pub const DEFAULT_REGION_LEASE_MS: u64 = 30_000;
/// Smallest `region_lease_ms`: a pager reports every second and polls its map at least
/// that often, so a shorter lease would reclaim regions whose pager merely paused.
pub const MIN_REGION_LEASE_MS: u64 = 2_000;

/// Most HTTP workers.
const MAX_HTTP_WORKERS: usize = 256;
/// Smallest `max_body_bytes`.
const MIN_BODY_BYTES: usize = 1024;

/// What is wrong with a [`ControllerConfig`], one variant per check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("suspect_after_ms, dead_after_ms and tick_ms must be positive")]
    Timeouts,
    #[error("suspect_after_ms must not exceed dead_after_ms")]
    SuspectAfterDead,
    #[error("http_workers must be 1..={MAX_HTTP_WORKERS}")]
    Workers,
    #[error("max_long_polls must leave at least one HTTP worker free")]
    LongPolls,
    #[error("http_max_connections must be 1..={MAX_HTTP_CONNECTIONS}")]
    Connections,
    #[error("http_max_connections_per_client must be 1..=http_max_connections")]
    PerClient,
    #[error("http_request_timeout_ms and http_idle_timeout_ms must be positive")]
    HttpTimeouts,
    #[error("region_lease_ms (--region-lease-ms) must be at least {MIN_REGION_LEASE_MS}: pagers report every second")]
    RegionLease,
    #[error("max_body_bytes must be at least {MIN_BODY_BYTES}")]
    BodyTooSmall,
    #[error("unknown placement policy {0:?}")]
    UnknownPolicy(String),
    #[error("default_chunk_bytes must be a positive multiple of 4096")]
    ChunkBytes,
}

impl ControllerConfig {
    /// The bounds of the HTTP front end.
    pub fn http_limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            workers: self.http_workers,
            max_body_bytes: self.max_body_bytes,
            max_connections: self.http_max_connections,
            max_connections_per_client: self.http_max_connections_per_client,
            request_timeout_ms: self.http_request_timeout_ms,
            idle_timeout_ms: self.http_idle_timeout_ms,
        }
    }
}
