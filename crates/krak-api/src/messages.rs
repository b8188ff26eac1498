//! The JSON bodies of the HTTP API (see `docs/api.md`), shared by the controller and its clients.

use serde::{Deserialize, Serialize};

use crate::records::{Move, RegionId, RegionRecord, ServerId, ServerRecord, ServerState};

/// `POST /v1/servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub addr: String,
    pub capacity_bytes: u64,
    pub slab_size_bytes: u64,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub headroom_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterReply {
    pub id: ServerId,
    pub state: ServerState,
    /// Heartbeat at least this often.
    pub heartbeat_interval_ms: u64,
    pub dead_after_ms: u64,
}

/// `POST /v1/servers/{id}/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub lent_bytes: u64,
    pub free_bytes: u64,
    pub slabs: u64,
    #[serde(default)]
    pub host_free_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub state: ServerState,
    /// Bytes the server should give back (its host fell below its headroom); the controller
    /// moves slabs away when the mover exists, the server must not drop them itself.
    pub shed_bytes: u64,
    pub map_epoch: u64,
}

/// `PUT /v1/regions/{id}/budget`: the local budget the region's pager is to keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetRequest {
    pub local_budget_bytes: u64,
}

/// `PUT /v1/regions/{id}/live`: what a region's pager is doing, reported every second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionLive {
    /// The program the region serves (`krak run`), or the pager's own process.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The host the pager runs on.
    #[serde(default)]
    pub host: String,
    /// The budget in force (during a shrink, the old one until eviction reached the new).
    pub local_budget_bytes: u64,
    /// Bytes of the region mapped in local memory (never above the budget in force).
    pub resident_bytes: u64,
    /// Bytes of slabs the region holds on memory servers.
    pub reserved_bytes: u64,
    /// Bytes of the region's pages whose current copy is remote (a fragment of each).
    pub used_bytes: u64,
    /// Faults served per second over the last report's interval.
    pub faults_per_s: f64,
    /// Bytes of the region's pages that hold data, locally, remotely or both (what more
    /// budget than this cannot save faults on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bytes: Option<u64>,
    /// Memory the host has available (its `MemAvailable`), for a broker that derives the
    /// host's total from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_available_bytes: Option<u64>,
}

/// `POST /v1/regions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRegionRequest {
    #[serde(default)]
    pub owner: String,
    pub size_bytes: u64,
    #[serde(default)]
    pub local_budget_bytes: u64,
    /// Defaults to the controller's default chunk size (the memory servers' slab size).
    #[serde(default)]
    pub chunk_bytes: Option<u64>,
    /// Slabs per chunk, on distinct servers (1, the default: no redundancy).
    #[serde(default)]
    pub stripe_width: Option<u32>,
    /// The redundancy scheme's name, for status (default `none`).
    #[serde(default)]
    pub redundancy: Option<String>,
    /// Each slot's slab holds `chunk_bytes / slot_divisor` bytes (K for the fragments of an
    /// `ec:K+M` chunk); placement counts that much per slot. Default 1: a whole chunk.
    #[serde(default)]
    pub slot_divisor: Option<u32>,
}

/// `POST /v1/regions/{id}/place`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceRequest {
    pub chunks: Vec<u64>,
    #[serde(default)]
    pub exclude: Vec<ServerId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkServer {
    pub chunk: u64,
    pub server: ServerId,
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceReply {
    pub policy: String,
    pub placements: Vec<ChunkServer>,
}

/// `POST /v1/regions/{id}/commit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    pub chunks: Vec<CommitChunk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitChunk {
    pub chunk: u64,
    pub server: ServerId,
    pub slab: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitReply {
    pub epoch: u64,
}

/// `POST /v1/regions/{id}/release`: slots the pager gave back (their slabs freed, or about
/// to be); answered with a [`CommitReply`] (the new map epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    pub chunks: Vec<u64>,
}

/// One placed chunk in a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEntry {
    pub chunk: u64,
    pub server: ServerId,
    pub slab: u64,
    pub epoch: u64,
}

/// A server a map refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapServer {
    pub id: ServerId,
    pub addr: String,
    pub state: ServerState,
    /// Bytes the server asks to shed (its host fell below its headroom): pagers move that
    /// much of their chunks elsewhere.
    #[serde(default)]
    pub shed_bytes: u64,
}

/// `GET /v1/regions/{id}/map[?since_epoch=N]`: the entries changed after `since_epoch`
/// (all of them without it), and every server the region has slabs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapReply {
    pub region: RegionRecord,
    /// The region's epoch: the last map epoch at which one of its chunks or one of its
    /// servers' states changed.
    pub epoch: u64,
    pub since_epoch: u64,
    pub entries: Vec<MapEntry>,
    pub servers: Vec<MapServer>,
    /// Moves of this region's slabs the policy asks for (`pack` consolidating servers so
    /// that the emptied ones could sleep); the pager carries them out and commits.
    #[serde(default)]
    pub moves: Vec<MapMove>,
}

/// One move a map asks for: `slabs` of the region's chunks from server `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapMove {
    pub from: ServerId,
    pub to: ServerId,
    pub to_addr: String,
    pub slabs: u32,
}

/// `POST /v1/regions/{id}/moves`: the pager starts moving `slot` from server `from` to
/// `to`; the slot's commit (or `DELETE /v1/regions/{id}/moves/{slot}`) ends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveStartRequest {
    pub slot: u64,
    pub from: ServerId,
    pub to: ServerId,
}

/// `GET /v1/policy`, `PUT /v1/policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    pub name: String,
    #[serde(default)]
    pub available: Vec<String>,
}

/// Bytes of a region on one server, for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteBytes {
    pub server: ServerId,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionStatus {
    #[serde(flatten)]
    pub record: RegionRecord,
    pub epoch: u64,
    /// Slots of the map that are placed (chunks times stripe width, once all are placed).
    pub placed_chunks: u64,
    pub remote_bytes: Vec<RemoteBytes>,
    /// Placed slots on servers that are dead: fragments the pager must re-protect.
    #[serde(default)]
    pub degraded_slots: u64,
    /// What its pager last reported, and how long ago (`None`: nothing reported yet).
    #[serde(default)]
    pub live: Option<RegionLive>,
    #[serde(default)]
    pub live_age_ms: Option<u64>,
}

/// A server in status: its record plus what the map places on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    #[serde(flatten)]
    pub record: ServerRecord,
    /// Slabs the map places on it.
    pub mapped_slabs: u64,
    /// True when the map places nothing on it (with `pack`, it could sleep).
    pub empty: bool,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub policy: String,
    pub map_epoch: u64,
    pub servers: Vec<ServerStatus>,
    pub regions: Vec<RegionStatus>,
    /// Moves pagers are carrying out (started, not yet committed or given up), per region
    /// and pair of servers.
    pub moves_in_flight: Vec<Move>,
    /// Moves the current policy proposes (consolidation).
    pub proposed_moves: Vec<Move>,
    /// Servers with a drain requested.
    pub drains: Vec<ServerId>,
}

/// `GET /v1/servers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServersReply {
    pub servers: Vec<ServerStatus>,
}

/// `POST /v1/regions` reply, `DELETE /v1/regions/{id}` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionReply {
    pub region: RegionRecord,
}

/// Every error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Region id in paths.
pub fn parse_region(s: &str) -> Option<RegionId> {
    s.parse().ok().map(RegionId)
}

/// Server id in paths.
pub fn parse_server(s: &str) -> Option<ServerId> {
    s.parse().ok().map(ServerId)
}
