//! What a memory server is told at start, and the checks that make it usable.

use std::net::SocketAddr;

use krak_proto::units::ByteSize;
use krak_proto::{RackSecret, PAGE_SIZE};

/// Default slab: large enough that a pager needs few allocations, small enough to share.
pub const DEFAULT_SLAB_SIZE_BYTES: u64 = 64 << 20;
/// How long a vanished client's slabs survive, so a pager can reconnect after a blip.
pub const DEFAULT_GRACE_MS: u64 = 10_000;
/// Bound on threads: one per connection.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Bound on reading one frame once its first byte arrived, and on writing an answer.
pub const DEFAULT_IO_TIMEOUT_MS: u64 = 30_000;
/// Default bound on a connection's whole handshake (hello and proof), however its bytes
/// are spread.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// How long a connection busy-waits for the next request before it sleeps in a read: by
/// default not at all. A memory server lends memory because its CPUs are sold out, and a
/// connection that sleeps on the CPU its requests arrive on (`ServerConfig::follow_cpu`)
/// is woken there in a few microseconds; spinning as well bought nothing measurable
/// (BENCHMARKS.md, issue 13) and takes a core from the host's tenants.
pub const DEFAULT_SPIN_US: u64 = 0;
/// Longest spin a config may ask for.
pub const MAX_SPIN_US: u64 = 100_000;
/// Connections one client id may hold at once (a pager uses one per handler thread and a
/// few more), so one client cannot take every connection slot.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 64;

/// Everything a [`crate::MemServer`] needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address to listen on; port 0 lets the OS choose (see `MemServer::local_addr`).
    pub listen: SocketAddr,
    /// Most memory lent at once, over all clients.
    pub capacity_bytes: u64,
    /// Size of every slab; a multiple of the page size and at most the capacity.
    pub slab_size_bytes: u64,
    /// Slabs of a client with no connection left are freed after this long.
    pub grace_ms: u64,
    /// Most connections served at once; more are refused with `TooManyConnections`.
    pub max_connections: usize,
    /// Bound on reading a frame once its first byte arrived, and on writing an answer.
    /// Idle connections (between frames) may wait forever.
    pub io_timeout_ms: u64,
    /// Bound on a connection's whole handshake, from its accept to its proof of the secret:
    /// a peer that drips its hello a byte at a time is cut when it runs out.
    pub handshake_timeout_ms: u64,
    /// Lock slab memory into RAM (`mlock`) so it is never swapped; a failure only warns.
    pub mlock: bool,
    /// The rack secret clients must prove they know; `None` accepts only clients without
    /// one (the well-known insecure key): for tests and `--insecure` racks.
    pub secret: Option<RackSecret>,
    /// Most connections of one client id at once; more are refused with `ClientLimit`.
    pub max_connections_per_client: usize,
    /// Most bytes lent to one client id; `None`: up to the whole capacity.
    pub max_bytes_per_client: Option<u64>,
    /// Busy-wait of each connection for its next request (0: sleep at once).
    pub spin_us: u64,
    /// Before each sleep between requests, move the connection's thread to the CPU its
    /// requests' packets are processed on, so its wake-up is local (`affinity.rs`).
    pub follow_cpu: bool,
    /// Serve `PushPages` (copy a client's units to another server). Off for a server that
    /// cannot reach its peers: pushes are then refused and pagers relay the copy.
    pub push: bool,
}

impl ServerConfig {
    /// A config with every optional field at its default.
    pub fn new(listen: SocketAddr, capacity_bytes: u64) -> ServerConfig {
        ServerConfig {
            listen,
            capacity_bytes,
            slab_size_bytes: DEFAULT_SLAB_SIZE_BYTES,
            grace_ms: DEFAULT_GRACE_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            io_timeout_ms: DEFAULT_IO_TIMEOUT_MS,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            mlock: false,
            secret: None,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            max_bytes_per_client: None,
            spin_us: DEFAULT_SPIN_US,
            follow_cpu: true,
            push: true,
        }
    }

    /// Pages in one slab; only meaningful after [`ServerConfig::validate`].
    pub fn slab_pages(&self) -> u32 {
        (self.slab_size_bytes / PAGE_SIZE as u64) as u32
    }

    /// Refuses configs the server could not honour, with a message naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let page = PAGE_SIZE as u64;
        let slab = self.slab_size_bytes;
        if self.spin_us > MAX_SPIN_US {
            return Err(ConfigError::SpinTooLong { spin_us: self.spin_us });
        }
        if slab == 0 || !slab.is_multiple_of(page) {
            return Err(ConfigError::SlabSize { slab_bytes: slab });
        }
        // Page indexes are u32 on the wire, and a slab must be addressable as one mapping.
        if slab / page > u64::from(u32::MAX) || slab > isize::MAX as u64 {
            return Err(ConfigError::SlabTooLarge { slab_bytes: slab });
        }
        if self.capacity_bytes < slab {
            return Err(ConfigError::CapacityBelowSlab { capacity_bytes: self.capacity_bytes, slab_bytes: slab });
        }
        if self.max_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        if self.max_connections_per_client == 0 {
            return Err(ConfigError::NoConnectionsPerClient);
        }
        if self.max_bytes_per_client.is_some_and(|b| b < slab) {
            return Err(ConfigError::ClientLimitBelowSlab { slab_bytes: slab });
        }
        if self.io_timeout_ms == 0 {
            return Err(ConfigError::IoTimeout);
        }
        if self.handshake_timeout_ms == 0 {
            return Err(ConfigError::HandshakeTimeout);
        }
        Ok(())
    }
}

/// What is wrong with a [`ServerConfig`], one variant per check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("spin of {spin_us} us is more than the {MAX_SPIN_US} us allowed")]
    SpinTooLong { spin_us: u64 },
    #[error("slab size {slab_bytes} must be a non-zero multiple of {PAGE_SIZE} bytes")]
    SlabSize { slab_bytes: u64 },
    #[error("slab size {} is too large", ByteSize(*.slab_bytes))]
    SlabTooLarge { slab_bytes: u64 },
    #[error("capacity {} is smaller than one slab of {}", ByteSize(*.capacity_bytes), ByteSize(*.slab_bytes))]
    CapacityBelowSlab { capacity_bytes: u64, slab_bytes: u64 },
    #[error("max connections must be at least 1")]
    NoConnections,
    #[error("max connections per client must be at least 1")]
    NoConnectionsPerClient,
    #[error("a client's limit must hold at least one slab of {}", ByteSize(*.slab_bytes))]
    ClientLimitBelowSlab { slab_bytes: u64 },
    #[error("io timeout must be at least 1 ms")]
    IoTimeout,
    #[error("handshake timeout must be at least 1 ms")]
    HandshakeTimeout,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(capacity: u64, slab: u64) -> ServerConfig {
        ServerConfig { slab_size_bytes: slab, ..ServerConfig::new("127.0.0.1:0".parse().unwrap(), capacity) }
    }

    #[test]
    fn defaults_are_valid() {
        let c = ServerConfig::new("127.0.0.1:0".parse().unwrap(), 1 << 30);
        c.validate().unwrap();
        assert_eq!(c.slab_pages(), 16384);
        assert_eq!((c.grace_ms, c.max_connections, c.mlock), (10_000, 256, false));
    }

    #[test]
    fn refuses_unusable_sizes() {
        let msg = |c: ServerConfig| c.validate().unwrap_err().to_string();
        assert!(msg(config(1 << 30, 4095)).contains("multiple of 4096"));
        assert!(msg(config(1 << 30, 0)).contains("multiple of 4096"));
        assert!(msg(config(32 << 20, 64 << 20)).contains("capacity 32MiB is smaller than one slab of 64MiB"));
        assert!(msg(config(u64::MAX, 1 << 60)).contains("too large"));
        config(64 << 20, 64 << 20).validate().unwrap();
        let c = ServerConfig { max_connections: 0, ..config(1 << 30, 1 << 20) };
        assert!(msg(c).contains("max connections"));
    }
}
