//! The key scheme in the metadata store, and loading it back.
//!
//! | key | value (JSON) |
//! | --- | --- |
//! | `/krak/servers/<id>` | [`ServerRecord`] |
//! | `/krak/regions/<id>` | [`RegionRecord`] |
//! | `/krak/slabs/<region>/<chunk>` | [`Placement`] (`server`, `slab`, `epoch`) |
//! | `/krak/policy` | [`PolicyRecord`] (`name`) |
//! | `/krak/broker` | [`BrokerConfig`] (`policy`, `floor_bytes`, `hosts`, `headroom_bytes`) |
//! | `/krak/counters` | [`Counters`] (`map_epoch`, `next_server_id`, `next_region_id`) |
//!
//! Ids and chunk indices are plain decimal. Writes go out in transactions of at most
//! [`MAX_OPS_PER_TXN`] operations (etcd refuses more than 128 by default), each carrying the
//! counters, so a crash between two of them leaves every key valid and the counters ahead of
//! every epoch written.

use krak_api::broker::BrokerConfig;
use krak_meta::{MetaError, MetaStore, Op};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{Counters, Placement, PolicyRecord, RegionId, RegionRecord, ServerId, ServerRecord};

pub const SERVERS_PREFIX: &str = "/krak/servers/";
pub const REGIONS_PREFIX: &str = "/krak/regions/";
pub const SLABS_PREFIX: &str = "/krak/slabs/";
pub const POLICY_KEY: &str = "/krak/policy";
pub const BROKER_KEY: &str = "/krak/broker";
pub const COUNTERS_KEY: &str = "/krak/counters";
/// Most operations in one store transaction (one of them is the counters).
pub const MAX_OPS_PER_TXN: usize = 100;
const _: () = assert!(MAX_OPS_PER_TXN <= krak_meta::MAX_TXN_OPS);

pub fn server_key(id: ServerId) -> String {
    format!("{SERVERS_PREFIX}{}", id.0)
}
pub fn region_key(id: RegionId) -> String {
    format!("{REGIONS_PREFIX}{}", id.0)
}
pub fn slabs_prefix(region: RegionId) -> String {
    format!("{SLABS_PREFIX}{}/", region.0)
}
pub fn slab_key(region: RegionId, chunk: u64) -> String {
    format!("{SLABS_PREFIX}{}/{chunk}", region.0)
}

/// A put of `value` as JSON.
pub fn put<T: Serialize>(key: String, value: &T) -> Op {
    // serializing these plain structs cannot fail; an empty value would be refused on load
    let value = serde_json::to_vec(value).unwrap_or_default();
    Op::Put { key, value, lease: None }
}

pub fn delete(key: String) -> Op {
    Op::Delete { key }
}

/// Writes `ops` in transactions of at most [`MAX_OPS_PER_TXN`], each with `counters`.
pub fn write(store: &dyn MetaStore, ops: Vec<Op>, counters: &Counters) -> Result<(), MetaError> {
    let mut ops = ops.into_iter().peekable();
    loop {
        let mut batch: Vec<Op> = ops.by_ref().take(MAX_OPS_PER_TXN - 1).collect();
        batch.push(put(COUNTERS_KEY.to_string(), counters));
        if !store.txn(&[], &batch)? {
            return Err(MetaError::unavailable("an unconditional transaction was not applied"));
        }
        if ops.peek().is_none() {
            return Ok(());
        }
    }
}

/// Everything read back from the store.
#[derive(Debug, Default)]
pub struct Loaded {
    pub servers: Vec<ServerRecord>,
    pub regions: Vec<(RegionRecord, Vec<(u64, Placement)>)>,
    pub policy: Option<String>,
    pub broker: Option<BrokerConfig>,
    pub counters: Counters,
}

/// Why the stored state could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("stored key {key} is unreadable: {source}")]
    Json {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// A record stored under another record's key.
    #[error("stored key {key} is unreadable: holds {what}")]
    Mismatch { key: String, what: String },
    #[error("stored key {key} is unreadable: not a chunk index: {source}")]
    ChunkIndex {
        key: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("stored key {key} is unreadable: {reason}")]
    Broker { key: String, reason: String },
    #[error("stored key {key} is unreadable: unknown policy {name:?}")]
    UnknownPolicy { key: String, name: String },
    #[error("stored key {key} is unreadable: chunk {chunk} out of range (the region has {slots} slots)")]
    ChunkOutOfRange { key: String, chunk: u64, slots: u64 },
    #[error("stored key {key} is unreadable: unknown server {server}")]
    UnknownServer { key: String, server: ServerId },
}

fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, LoadError> {
    serde_json::from_slice(value).map_err(|source| LoadError::Json { key: key.to_string(), source })
}

/// Reads the whole state back; one list per region for the slab map, so no more than one
/// region's keys are held at once.
pub fn load(store: &dyn MetaStore) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded::default();
    if let Some(kv) = store.get(COUNTERS_KEY)? {
        loaded.counters = decode(&kv.key, &kv.value)?;
    }
    if let Some(kv) = store.get(POLICY_KEY)? {
        loaded.policy = Some(decode::<PolicyRecord>(&kv.key, &kv.value)?.name);
    }
    if let Some(kv) = store.get(BROKER_KEY)? {
        loaded.broker = Some(decode(&kv.key, &kv.value)?);
    }
    for kv in store.list(SERVERS_PREFIX)? {
        let server: ServerRecord = decode(&kv.key, &kv.value)?;
        if kv.key != server_key(server.id) {
            return Err(LoadError::Mismatch { key: kv.key, what: format!("server {}", server.id) });
        }
        loaded.counters.next_server_id = loaded.counters.next_server_id.max(server.id.0 + 1);
        loaded.servers.push(server);
    }
    for kv in store.list(REGIONS_PREFIX)? {
        let region: RegionRecord = decode(&kv.key, &kv.value)?;
        if kv.key != region_key(region.id) {
            return Err(LoadError::Mismatch { key: kv.key, what: format!("region {}", region.id) });
        }
        loaded.counters.next_region_id = loaded.counters.next_region_id.max(region.id.0 + 1);
        let prefix = slabs_prefix(region.id);
        let mut chunks = Vec::new();
        for kv in store.list(&prefix)? {
            let chunk: u64 = kv.key[prefix.len()..]
                .parse()
                .map_err(|source| LoadError::ChunkIndex { key: kv.key.clone(), source })?;
            let placement: Placement = decode(&kv.key, &kv.value)?;
            loaded.counters.map_epoch = loaded.counters.map_epoch.max(placement.epoch);
            chunks.push((chunk, placement));
        }
        loaded.regions.push((region, chunks));
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_scheme() {
        assert_eq!(server_key(ServerId(3)), "/krak/servers/3");
        assert_eq!(region_key(RegionId(7)), "/krak/regions/7");
        assert_eq!(slab_key(RegionId(7), 12), "/krak/slabs/7/12");
        assert!(slab_key(RegionId(7), 12).starts_with(&slabs_prefix(RegionId(7))));
        assert!(!slab_key(RegionId(70), 1).starts_with(&slabs_prefix(RegionId(7))));
    }
}
