//! The JSON bodies of `/v1/broker`: how the controller divides each host's local memory
//! among the regions running there (`docs/api.md`, "Memory broker").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::records::RegionId;

/// The smallest floor a broker keeps for a region, 16 MiB, unless the operator says less.
pub const DEFAULT_FLOOR_BYTES: u64 = 16 << 20;

fn default_floor() -> u64 {
    DEFAULT_FLOOR_BYTES
}

fn default_policy() -> String {
    "static".into()
}

/// `PUT /v1/broker` (and the `config` of its answer): stored with the rack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `static` (budgets stay as set) or `demand` (budget moves to where it saves faults).
    #[serde(default = "default_policy")]
    pub policy: String,
    /// No region on a brokered host is given less than this (or, when the host's total
    /// cannot give every region as much, an equal share).
    #[serde(default = "default_floor")]
    pub floor_bytes: u64,
    /// Hosts whose total is given: host name (as its pagers report it) to bytes.
    #[serde(default)]
    pub hosts: BTreeMap<String, u64>,
    /// For every other host: its total is what its regions' budgets hold plus the memory
    /// the host has available (its pagers report `MemAvailable`) minus this headroom.
    /// None: only the hosts in `hosts` are brokered.
    #[serde(default)]
    pub headroom_bytes: Option<u64>,
}

impl Default for BrokerConfig {
    fn default() -> BrokerConfig {
        BrokerConfig {
            policy: default_policy(),
            floor_bytes: DEFAULT_FLOOR_BYTES,
            hosts: BTreeMap::new(),
            headroom_bytes: None,
        }
    }
}

/// `GET /v1/broker`, and the answer to `PUT`: the configuration and the last round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerStatus {
    pub config: BrokerConfig,
    /// The policies the controller knows.
    pub available: Vec<String>,
    /// The brokered hosts as the last round saw them.
    pub hosts: Vec<BrokerHost>,
    /// Budgets the broker has changed since the controller started.
    pub budget_changes: u64,
}

/// One brokered host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerHost {
    pub host: String,
    pub total_bytes: u64,
    /// `given` (in the configuration) or `derived` (available memory minus headroom).
    pub total_from: String,
    pub regions: Vec<BrokerRegion>,
}

/// One region of a brokered host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerRegion {
    pub id: RegionId,
    pub local_budget_bytes: u64,
    pub resident_bytes: u64,
    pub faults_per_s: f64,
    /// Whether its last report was measured under its current budget (only then does the
    /// broker move its budget).
    pub settled: bool,
}
