//! krak memory server: lends slabs of this machine's RAM to pagers over TCP.
//!
//! One thread per connection (bounded), blocking sockets, no async runtime. Clients
//! pipeline requests; each connection answers them in order. Slabs are anonymous
//! mappings owned by the client id that allocated them; when all of a client's
//! connections are gone for longer than the grace period, its slabs are freed.
//! The wire protocol is `krak-proto`, described in `docs/protocol.md`. Clients prove they
//! know the rack secret, every frame carries a MAC, and slab handles are capabilities
//! bound to the client they were lent to (`docs/threat-model.md`). A server that joins a
//! rack registers with its controller and heartbeats ([`membership`]).
//!
//! ```no_run
//! let config = krak_memserver::ServerConfig::new("127.0.0.1:0".parse().unwrap(), 1 << 30);
//! let server = krak_memserver::spawn(config).unwrap();
//! println!("serving on {}", server.addr());
//! server.shutdown().unwrap();
//! ```

mod affinity;
mod config;
mod connection;
mod handshake;
pub mod membership;
mod push;
mod registry;
mod requests;
mod server;
mod slab;

use std::net::SocketAddr;

pub use config::{
    ConfigError, ServerConfig, DEFAULT_GRACE_MS, DEFAULT_HANDSHAKE_TIMEOUT_MS, DEFAULT_IO_TIMEOUT_MS,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_CLIENT, DEFAULT_SLAB_SIZE_BYTES, DEFAULT_SPIN_US, MAX_SPIN_US,
};
pub use krak_proto::ServerStats;
pub use server::{spawn, MemServer, ServerHandle, Stopper};

/// Why a server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid memory server configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
}
