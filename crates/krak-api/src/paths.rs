//! Every path of the controller's API, built in one place (`docs/api.md` lists them): a
//! client never spells a `/v1/...` literal of its own.

use crate::records::{RegionId, ServerId};

pub const STATUS: &str = "/v1/status";
pub const SERVERS: &str = "/v1/servers";
pub const REGIONS: &str = "/v1/regions";
pub const POLICY: &str = "/v1/policy";
pub const BROKER: &str = "/v1/broker";
pub const METRICS: &str = "/metrics";

pub fn heartbeat(server: ServerId) -> String {
    format!("/v1/servers/{server}/heartbeat")
}

pub fn drain(server: ServerId) -> String {
    format!("/v1/servers/{server}/drain")
}

pub fn region(region: RegionId) -> String {
    format!("/v1/regions/{region}")
}

pub fn place(region: RegionId) -> String {
    format!("/v1/regions/{region}/place")
}

pub fn commit(region: RegionId) -> String {
    format!("/v1/regions/{region}/commit")
}

pub fn release(region: RegionId) -> String {
    format!("/v1/regions/{region}/release")
}

pub fn budget(region: RegionId) -> String {
    format!("/v1/regions/{region}/budget")
}

pub fn live(region: RegionId) -> String {
    format!("/v1/regions/{region}/live")
}

pub fn moves(region: RegionId) -> String {
    format!("/v1/regions/{region}/moves")
}

pub fn a_move(region: RegionId, slot: u64) -> String {
    format!("/v1/regions/{region}/moves/{slot}")
}

/// The whole map (`since_epoch` `None`), or a long-poll for the entries changed after
/// `since_epoch`, answered at the latest after `wait_ms`.
pub fn map(region: RegionId, since_epoch: Option<u64>, wait_ms: u64) -> String {
    match since_epoch {
        None => format!("/v1/regions/{region}/map"),
        Some(since) => format!("/v1/regions/{region}/map?since_epoch={since}&wait_ms={wait_ms}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_the_documented_ones() {
        assert_eq!(heartbeat(ServerId(3)), "/v1/servers/3/heartbeat");
        assert_eq!(a_move(RegionId(2), 70), "/v1/regions/2/moves/70");
        assert_eq!(budget(RegionId(2)), "/v1/regions/2/budget");
        assert_eq!(live(RegionId(2)), "/v1/regions/2/live");
        assert_eq!(map(RegionId(9), None, 5), "/v1/regions/9/map");
        assert_eq!(map(RegionId(9), Some(4), 500), "/v1/regions/9/map?since_epoch=4&wait_ms=500");
    }
}
