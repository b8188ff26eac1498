//! The krak controller's API as both ends share it (`docs/api.md`): ids and records, the
//! JSON bodies, every path, the bounds on one request, the request-signing scheme, and a
//! small blocking client with one typed call per endpoint.
//!
//! Memory servers, pagers, the CLI and the controller itself depend on this crate; it has no
//! server, placement or store, so nothing loaded into a program (`libkrak.so`,
//! `libkrak_preload.so`) links the controller through it.
//!
//! ```no_run
//! use krak_api::{Api, ControllerClient};
//! let mut rack = ControllerClient::new("http://127.0.0.1:7080", std::time::Duration::from_secs(5)).unwrap();
//! let status = rack.status().unwrap();
//! println!("policy {}, {} servers", status.policy, status.servers.len());
//! ```

pub mod broker;
pub mod calls;
pub mod client;
pub mod controller_client;
pub mod limits;
pub mod messages;
pub mod paths;
pub mod records;
pub mod signing;
pub mod tls;

pub use calls::{Ack, Api, Transport};
pub use client::{ApiError, Client};
pub use controller_client::ControllerClient;
pub use records::{Move, RegionId, RegionRecord, ServerId, ServerRecord, ServerState};
