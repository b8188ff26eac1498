//! krak rack controller: membership of memory servers, slab placement behind switchable
//! policies, the slab map with epochs, an HTTP/JSON API (`docs/api.md`) and Prometheus
//! metrics (the API's bodies, paths and client: `krak-api`), with all state in a [`krak_meta::MetaStore`] so a restarted controller loses
//! nothing.
//!
//! Std threads and blocking I/O: a bounded HTTP front end (connections in all and per
//! client, request deadlines, at most `http_workers` requests answered at once), one
//! liveness thread (which also runs the memory broker's rounds), one mutex over the rack state. Placement decisions (`krak-placement`) read
//! incrementally kept aggregates ([`PlacementView`]), never the whole slab map.
//!
//! ```no_run
//! # fn store() -> std::sync::Arc<dyn krak_meta::MetaStore> { unimplemented!() }
//! use krak_controller::{Controller, ControllerConfig};
//! let config = ControllerConfig::new("127.0.0.1:7080".parse().unwrap());
//! let controller = Controller::start(config, store()).unwrap();
//! println!("controller on {}", controller.url());
//! controller.shutdown();
//! ```

mod api;
pub mod auth;
pub mod broker;
pub mod config;
mod controller;
pub mod election;
pub mod http;
mod http_conn;
mod http_gate;
mod http_service;
pub mod lease;
pub mod live;
pub mod membership;
pub mod metrics;
pub mod model;
pub mod moves;
pub mod persist;
pub mod rack;
mod standby;
mod stripe;
pub mod tls;

use std::net::SocketAddr;

pub use config::{ConfigError, ControllerConfig};
pub use controller::{Controller, ControllerHandle};
pub use election::{serve_elected, Candidate, ElectionError};
pub use krak_placement::{Move, PlacementError, PlacementPolicy, PlacementView};
pub use model::{Placement, RegionId, RegionRecord, ServerId, ServerRecord, ServerState};
pub use rack::{RackError, RackState};
pub use stripe::StripeClash;

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("invalid controller configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("metadata store: {0}")]
    Store(#[from] krak_meta::MetaError),
    /// The stored state is not what this controller wrote (a store failure while loading
    /// is [`ControllerError::Store`]).
    #[error(transparent)]
    Load(persist::LoadError),
}

#[cfg(test)]
#[path = "../tests/common/memstore.rs"]
pub(crate) mod memstore;
