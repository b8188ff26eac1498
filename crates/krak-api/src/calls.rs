//! The API's endpoints as typed calls: one method per endpoint, with its request and answer
//! types, for anything that can send a request ([`Transport`]: one controller's [`Client`]
//! or a [`ControllerClient`] failing over across URLs).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::{ApiError, Client};
use crate::controller_client::ControllerClient;
use crate::messages::{
    BudgetRequest, CommitReply, CommitRequest, CreateRegionRequest, HeartbeatReply, HeartbeatRequest, MapReply,
    MoveStartRequest, PlaceReply, PlaceRequest, PolicyBody, RegionLive, RegionReply, RegisterReply, RegisterRequest,
    ReleaseRequest, ServersReply, StatusReply,
};
use crate::paths;
use crate::records::{RegionId, ServerId, ServerRecord};

/// Sends one JSON request and decodes its 2xx answer.
pub trait Transport {
    /// `wait` is how long the controller may hold the request (a long-poll) on top of the
    /// transport's own timeout.
    fn send<B: Serialize, T: DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&B>,
        wait: Duration,
    ) -> Result<T, ApiError>;
}

/// Both clients send through their own `call_waiting`.
macro_rules! transport_by_call_waiting {
    ($($client:ty),*) => {$(
        impl Transport for $client {
            fn send<B: Serialize, T: DeserializeOwned>(
                &mut self,
                method: &str,
                path: &str,
                body: Option<&B>,
                wait: Duration,
            ) -> Result<T, ApiError> {
                self.call_waiting(method, path, body, wait)
            }
        }
    )*};
}

transport_by_call_waiting!(Client, ControllerClient);

/// An empty JSON object: the answer of endpoints that only acknowledge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ack {}

/// The endpoints of `docs/api.md`.
pub trait Api: Transport {
    fn status(&mut self) -> Result<StatusReply, ApiError> {
        self.send::<(), _>("GET", paths::STATUS, None, Duration::ZERO)
    }

    fn servers(&mut self) -> Result<ServersReply, ApiError> {
        self.send::<(), _>("GET", paths::SERVERS, None, Duration::ZERO)
    }

    fn register(&mut self, request: &RegisterRequest) -> Result<RegisterReply, ApiError> {
        self.send("POST", paths::SERVERS, Some(request), Duration::ZERO)
    }

    fn heartbeat(&mut self, server: ServerId, request: &HeartbeatRequest) -> Result<HeartbeatReply, ApiError> {
        self.send("POST", &paths::heartbeat(server), Some(request), Duration::ZERO)
    }

    fn drain(&mut self, server: ServerId) -> Result<ServerRecord, ApiError> {
        self.send::<(), _>("POST", &paths::drain(server), None, Duration::ZERO)
    }

    fn policy(&mut self) -> Result<PolicyBody, ApiError> {
        self.send::<(), _>("GET", paths::POLICY, None, Duration::ZERO)
    }

    fn set_policy(&mut self, name: &str) -> Result<PolicyBody, ApiError> {
        let body = PolicyBody { name: name.to_string(), available: Vec::new() };
        self.send("PUT", paths::POLICY, Some(&body), Duration::ZERO)
    }

    fn broker(&mut self) -> Result<crate::broker::BrokerStatus, ApiError> {
        self.send::<(), _>("GET", paths::BROKER, None, Duration::ZERO)
    }

    /// Replaces the broker's configuration (policy, floor, hosts' totals).
    fn set_broker(&mut self, config: &crate::broker::BrokerConfig) -> Result<crate::broker::BrokerStatus, ApiError> {
        self.send("PUT", paths::BROKER, Some(config), Duration::ZERO)
    }

    fn create_region(&mut self, request: &CreateRegionRequest) -> Result<RegionReply, ApiError> {
        self.send("POST", paths::REGIONS, Some(request), Duration::ZERO)
    }

    /// Sets the local budget the region's pager keeps (it follows within a map round).
    fn set_budget(&mut self, region: RegionId, local_budget_bytes: u64) -> Result<RegionReply, ApiError> {
        let body = BudgetRequest { local_budget_bytes };
        self.send("PUT", &paths::budget(region), Some(&body), Duration::ZERO)
    }

    /// Reports what the region's pager is doing.
    fn report_live(&mut self, region: RegionId, live: &RegionLive) -> Result<Ack, ApiError> {
        self.send("PUT", &paths::live(region), Some(live), Duration::ZERO)
    }

    fn delete_region(&mut self, region: RegionId) -> Result<RegionReply, ApiError> {
        self.send::<(), _>("DELETE", &paths::region(region), None, Duration::ZERO)
    }

    fn place(&mut self, region: RegionId, request: &PlaceRequest) -> Result<PlaceReply, ApiError> {
        self.send("POST", &paths::place(region), Some(request), Duration::ZERO)
    }

    fn commit(&mut self, region: RegionId, request: &CommitRequest) -> Result<CommitReply, ApiError> {
        self.send("POST", &paths::commit(region), Some(request), Duration::ZERO)
    }

    /// Takes slots out of the region's map (the pager gave their slabs back).
    fn release(&mut self, region: RegionId, request: &ReleaseRequest) -> Result<CommitReply, ApiError> {
        self.send("POST", &paths::release(region), Some(request), Duration::ZERO)
    }

    /// The region's whole map.
    fn map(&mut self, region: RegionId) -> Result<MapReply, ApiError> {
        self.send::<(), _>("GET", &paths::map(region, None, 0), None, Duration::ZERO)
    }

    /// Waits up to `wait` for the region's map to pass `since_epoch`, then answers what
    /// changed since (or nothing new, at the deadline).
    fn map_since(&mut self, region: RegionId, since_epoch: u64, wait: Duration) -> Result<MapReply, ApiError> {
        let path = paths::map(region, Some(since_epoch), wait.as_millis() as u64);
        self.send::<(), _>("GET", &path, None, wait)
    }

    fn start_move(&mut self, region: RegionId, request: &MoveStartRequest) -> Result<Ack, ApiError> {
        self.send("POST", &paths::moves(region), Some(request), Duration::ZERO)
    }

    fn abandon_move(&mut self, region: RegionId, slot: u64) -> Result<Ack, ApiError> {
        self.send::<(), _>("DELETE", &paths::a_move(region, slot), None, Duration::ZERO)
    }
}

impl<T: Transport> Api for T {}
