//! What the controller tells its clients about servers and regions: ids, states and records
//! (stored as JSON by the controller, and sent as they are in answers).

use serde::{Deserialize, Serialize};

/// A memory server, as numbered by the controller at registration (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServerId(pub u32);

/// A far-memory region, as numbered by the controller at creation (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RegionId(pub u64);

impl std::fmt::Display for ServerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::fmt::Display for RegionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A server's state as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Heartbeating; placement may choose it.
    Alive,
    /// Missed heartbeats for `suspect_after_ms`; placement avoids it.
    Suspect,
    /// Not heard from for `dead_after_ms`; its slabs are presumed lost.
    Dead,
    /// An operator asked to empty it; placement avoids it, heartbeats keep it draining.
    Draining,
}

impl ServerState {
    pub const ALL: [ServerState; 4] =
        [ServerState::Alive, ServerState::Suspect, ServerState::Dead, ServerState::Draining];

    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Alive => "alive",
            ServerState::Suspect => "suspect",
            ServerState::Dead => "dead",
            ServerState::Draining => "draining",
        }
    }
}

/// Everything known about one memory server (stored under `/krak/servers/<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub id: ServerId,
    /// Where pagers reach it (`host:port` of its krak-proto listener).
    pub addr: String,
    /// Failure domain, e.g. `rack1/host3`: servers with the same string fail together.
    pub domain: String,
    pub state: ServerState,
    pub capacity_bytes: u64,
    /// As last reported by the server.
    pub lent_bytes: u64,
    /// As last reported, less the slabs committed on it since.
    pub free_bytes: u64,
    pub slab_size_bytes: u64,
    /// Slabs the server last reported holding.
    pub slabs: u64,
    /// The host's own free memory, if the server reports it (for the headroom path).
    #[serde(default)]
    pub host_free_bytes: Option<u64>,
    /// The host wants this much free memory for itself (0: no headroom asked).
    #[serde(default)]
    pub headroom_bytes: u64,
    pub registered_unix_ms: u64,
    pub last_heartbeat_unix_ms: u64,
    /// Times this server was declared dead.
    #[serde(default)]
    pub failures: u32,
    /// When a drain was asked, if one was.
    #[serde(default)]
    pub drain_requested_unix_ms: Option<u64>,
}

/// A far-memory region (stored under `/krak/regions/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRecord {
    pub id: RegionId,
    /// Free text naming the pager that owns it (e.g. `host7/pid1234`).
    pub owner: String,
    pub size_bytes: u64,
    pub local_budget_bytes: u64,
    /// Bytes per chunk; one chunk lives in one slab, so only servers with this slab size fit.
    pub chunk_bytes: u64,
    pub created_unix_ms: u64,
    /// Slabs each chunk is kept in (1: no redundancy; N replicas; K+M erasure-coded
    /// fragments). Fragment `f` of chunk `c` is slot `c * stripe_width + f` of the map, and
    /// the fragments of one chunk live on distinct servers.
    #[serde(default = "one")]
    pub stripe_width: u32,
    /// The pager's name for its redundancy scheme (`none`, `replicate:2`, `ec:4+2`), shown in
    /// status; the controller only relies on `stripe_width`.
    #[serde(default = "no_redundancy")]
    pub redundancy: String,
    /// Bytes one slot's slab holds: `chunk_bytes` (0 in older records means that), or a
    /// fragment's share of the chunk under erasure coding (`chunk_bytes / K`).
    #[serde(default)]
    pub slot_bytes: u64,
}

fn one() -> u32 {
    1
}

fn no_redundancy() -> String {
    "none".into()
}

impl RegionRecord {
    /// Chunks in the region (the last one may be partly used).
    pub fn chunks(&self) -> u64 {
        self.size_bytes.div_ceil(self.chunk_bytes.max(1))
    }

    /// Bytes of a server's memory one of its slots costs (a fragment's share under erasure
    /// coding, else the whole chunk).
    pub fn slot_cost_bytes(&self) -> u64 {
        if self.slot_bytes == 0 {
            self.chunk_bytes
        } else {
            self.slot_bytes
        }
    }

    /// Slots in the region's map: every fragment of every chunk.
    pub fn slots(&self) -> u64 {
        self.chunks() * u64::from(self.stripe_width.max(1))
    }

    /// The slots holding the fragments of the chunk that `slot` belongs to.
    pub fn stripe_of(&self, slot: u64) -> std::ops::Range<u64> {
        let w = u64::from(self.stripe_width.max(1));
        let first = slot - slot % w;
        first..first + w
    }
}

/// A proposal to move `slabs` of `region`'s slabs from one server to another (the mover
/// picks which chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub region: RegionId,
    pub from: ServerId,
    pub to: ServerId,
    pub slabs: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_as_json() {
        let r = RegionRecord {
            id: RegionId(4),
            owner: "h/1".into(),
            size_bytes: 100,
            local_budget_bytes: 10,
            chunk_bytes: 64,
            created_unix_ms: 1,
            stripe_width: 3,
            redundancy: "replicate:3".into(),
            slot_bytes: 0,
        };
        let back: RegionRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(r.chunks(), 2);
        assert_eq!(r.slots(), 6);
        assert_eq!(r.stripe_of(4), 3..6);
        // records written before stripes existed read back with none
        let old: RegionRecord = serde_json::from_str(
            r#"{"id":1,"owner":"","size_bytes":10,"local_budget_bytes":0,"chunk_bytes":4096,"created_unix_ms":0}"#,
        )
        .unwrap();
        assert_eq!((old.stripe_width, old.redundancy.as_str()), (1, "none"));
        assert_eq!(serde_json::to_string(&ServerState::Draining).unwrap(), "\"draining\"");
    }
}
