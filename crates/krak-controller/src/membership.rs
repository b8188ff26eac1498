//! Membership: registration, heartbeats, liveness (alive → suspect → dead), drains, and the
//! headroom hook.
//!
//! A server's record is stored on registration and on every change of state; the figures of
//! a heartbeat (lent, free, slabs) only in memory, since the next heartbeat brings them again.
//! Every change of state bumps the map epoch and the epochs of the regions with slabs on the
//! server, so pagers long-polling a map hear of it.

use std::time::Instant;

use crate::config::MAX_SERVERS;
use crate::model::{now_unix_ms, ServerId, ServerRecord, ServerState};
use crate::persist;
use crate::rack::{validate_name, RackError, RackState};
use krak_api::messages::{HeartbeatReply, HeartbeatRequest, RegisterReply, RegisterRequest};

/// A change of state seen by [`RackState::tick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub server: ServerId,
    pub from: ServerState,
    pub to: ServerState,
}

/// Bytes a server should shed so that its host keeps `headroom_bytes` free, in whole slabs.
pub fn shed_bytes(host_free_bytes: Option<u64>, headroom_bytes: u64, slab_size_bytes: u64, lent_bytes: u64) -> u64 {
    match host_free_bytes {
        Some(free) if headroom_bytes > free => {
            let short = headroom_bytes - free;
            short.div_ceil(slab_size_bytes.max(1)).saturating_mul(slab_size_bytes).min(lent_bytes)
        }
        _ => 0,
    }
}

impl RackState {
    /// Registers a server, or re-registers one known by its address (same id; alive again
    /// unless it is draining).
    pub fn register(&mut self, req: &RegisterRequest) -> Result<RegisterReply, RackError> {
        validate_name("addr", &req.addr)?;
        validate_name("domain", &req.domain)?;
        if req.addr.is_empty() {
            return Err(RackError::BadRequest("addr must not be empty".into()));
        }
        if req.slab_size_bytes == 0
            || !req.slab_size_bytes.is_multiple_of(4096)
            || req.capacity_bytes < req.slab_size_bytes
        {
            return Err(RackError::BadRequest(
                "slab_size_bytes must be a positive multiple of 4096 and capacity_bytes at least one slab".into(),
            ));
        }
        let now = now_unix_ms();
        let mut counters = self.counters;
        let record = match self.by_addr.get(&req.addr).and_then(|id| self.servers.get(id)) {
            Some(old) => {
                let state = if old.state == ServerState::Draining { ServerState::Draining } else { ServerState::Alive };
                if state != old.state {
                    counters.map_epoch += 1;
                }
                ServerRecord {
                    domain: req.domain.clone(),
                    state,
                    capacity_bytes: req.capacity_bytes,
                    slab_size_bytes: req.slab_size_bytes,
                    headroom_bytes: req.headroom_bytes,
                    last_heartbeat_unix_ms: now,
                    ..old.clone()
                }
            }
            None => {
                if self.servers.len() >= MAX_SERVERS {
                    return Err(RackError::Conflict(format!("the rack already has {MAX_SERVERS} servers")));
                }
                let id = ServerId(counters.next_server_id);
                counters.next_server_id += 1;
                ServerRecord {
                    id,
                    addr: req.addr.clone(),
                    domain: req.domain.clone(),
                    state: ServerState::Alive,
                    capacity_bytes: req.capacity_bytes,
                    lent_bytes: 0,
                    free_bytes: req.capacity_bytes,
                    slab_size_bytes: req.slab_size_bytes,
                    slabs: 0,
                    host_free_bytes: None,
                    headroom_bytes: req.headroom_bytes,
                    registered_unix_ms: now,
                    last_heartbeat_unix_ms: now,
                    failures: 0,
                    drain_requested_unix_ms: None,
                }
            }
        };
        persist::write(&*self.store, vec![persist::put(persist::server_key(record.id), &record)], &counters)?;
        let changed = counters.map_epoch != self.counters.map_epoch;
        self.counters = counters;
        let id = record.id;
        self.view.upsert_server(
            id,
            &record.domain,
            record.state,
            record.capacity_bytes,
            record.free_bytes,
            record.slab_size_bytes,
        );
        self.by_addr.insert(record.addr.clone(), id);
        self.last_seen.insert(id, Instant::now());
        let state = record.state;
        self.servers.insert(id, record);
        if changed {
            self.touch_regions_of(id);
        }
        Ok(RegisterReply {
            id,
            state,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            dead_after_ms: self.config.dead_after_ms,
        })
    }

    /// A heartbeat: refreshes the figures; a suspect or dead server is alive again.
    pub fn heartbeat(&mut self, id: ServerId, req: &HeartbeatRequest) -> Result<HeartbeatReply, RackError> {
        let Some(old) = self.servers.get(&id) else {
            return Err(RackError::NotFound(format!("no server {id}; register again")));
        };
        let revived = matches!(old.state, ServerState::Suspect | ServerState::Dead);
        if revived {
            let mut record = old.clone();
            record.state = ServerState::Alive;
            self.store_state_change(record)?;
        }
        let s = self.servers.get_mut(&id).expect("present above");
        s.lent_bytes = req.lent_bytes;
        s.free_bytes = req.free_bytes.min(s.capacity_bytes);
        s.slabs = req.slabs;
        s.host_free_bytes = req.host_free_bytes;
        s.last_heartbeat_unix_ms = now_unix_ms();
        let shed = shed_bytes(s.host_free_bytes, s.headroom_bytes, s.slab_size_bytes, s.lent_bytes);
        let state = s.state;
        let free = s.free_bytes;
        self.view.set_free(id, free);
        self.last_seen.insert(id, Instant::now());
        let before = self.shedding.get(&id).copied().unwrap_or(0);
        if shed != before {
            // A new epoch wakes the pagers long-polling maps that use this server.
            let mut counters = self.counters;
            counters.map_epoch += 1;
            persist::write(&*self.store, Vec::new(), &counters)?;
            self.counters = counters;
            self.shedding.insert(id, shed);
            self.touch_regions_of(id);
        }
        Ok(HeartbeatReply { state, shed_bytes: shed, map_epoch: self.counters.map_epoch })
    }

    /// Marks a server draining: placement stops choosing it (moving its slabs away is the
    /// mover's job; the request is recorded and shown in status).
    pub fn drain(&mut self, id: ServerId) -> Result<ServerRecord, RackError> {
        let Some(old) = self.servers.get(&id) else {
            return Err(RackError::NotFound(format!("no server {id}")));
        };
        if old.state == ServerState::Dead {
            return Err(RackError::Conflict(format!("server {id} is dead")));
        }
        let mut record = old.clone();
        record.state = ServerState::Draining;
        record.drain_requested_unix_ms.get_or_insert(now_unix_ms());
        self.store_state_change(record.clone())?;
        Ok(record)
    }

    /// Applies the liveness rules at `now`; returns the changes of state made. A store
    /// error leaves the server as it was, to be tried again at the next tick.
    pub fn tick(&mut self, now: Instant) -> Vec<Transition> {
        let mut out = Vec::new();
        let ids: Vec<ServerId> = self.servers.keys().copied().collect();
        for id in ids {
            let (Some(s), Some(seen)) = (self.servers.get(&id), self.last_seen.get(&id)) else { continue };
            let silent_ms = now.saturating_duration_since(*seen).as_millis() as u64;
            let to = match s.state {
                ServerState::Dead => continue,
                _ if silent_ms >= self.config.dead_after_ms => ServerState::Dead,
                ServerState::Alive if silent_ms >= self.config.suspect_after_ms => ServerState::Suspect,
                _ => continue,
            };
            let mut record = s.clone();
            let from = record.state;
            record.state = to;
            if to == ServerState::Dead {
                record.failures = record.failures.saturating_add(1);
            }
            match self.store_state_change(record) {
                Ok(()) => out.push(Transition { server: id, from, to }),
                Err(e) => tracing::warn!("cannot store server {id} becoming {}: {e}", to.as_str()),
            }
        }
        out
    }

    /// Stores a server's new state with a new map epoch, then applies it.
    fn store_state_change(&mut self, record: ServerRecord) -> Result<(), RackError> {
        let mut counters = self.counters;
        counters.map_epoch += 1;
        persist::write(&*self.store, vec![persist::put(persist::server_key(record.id), &record)], &counters)?;
        self.counters = counters;
        let id = record.id;
        self.view.set_state(id, record.state);
        self.servers.insert(id, record);
        self.touch_regions_of(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shed_is_whole_slabs_and_never_more_than_lent() {
        assert_eq!(shed_bytes(None, 100, 10, 50), 0);
        assert_eq!(shed_bytes(Some(200), 100, 10, 50), 0);
        assert_eq!(shed_bytes(Some(95), 100, 10, 50), 10);
        assert_eq!(shed_bytes(Some(0), 100, 10, 50), 50);
    }
}
