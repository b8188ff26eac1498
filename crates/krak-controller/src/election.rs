//! A controller among several on one store: it serves the API only while it holds the
//! leader key (a lease of `lease_ms`), answers 503 naming the leader while it stands by
//! ([`crate::standby`]), and every write of a term is fenced by the leader key's revision,
//! so a deposed leader's late writes are refused by the store. A leader that cannot renew
//! its lease stops serving and stands by again.

use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use krak_meta::{FencedStore, Leadership, MetaStore};

use crate::config::ControllerConfig;
use crate::controller::{Controller, ControllerHandle};
use crate::standby::Standby;
use crate::ControllerError;

/// How long a standby waits between attempts to become leader.
const ACQUIRE_EVERY: Duration = Duration::from_millis(500);
/// How long starting the API may retry binding an address a standby just released.
const BIND_RETRY: Duration = Duration::from_secs(3);
/// Pause before trying again after the store could not be loaded at the start of a term.
const LOAD_RETRY: Duration = Duration::from_secs(1);

/// This controller's part in the election.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its name in the election (a standby reports the leader's).
    pub id: String,
    /// The leader's lease: a dead leader is replaced after about this long.
    pub lease_ms: u64,
    /// A placement policy to switch to once, when this controller first leads.
    pub policy: Option<String>,
    /// Log becoming leader and standby at warn level (several controllers share a store).
    pub announce_terms: bool,
}

/// Why an elected controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("starting the controller: {0}")]
    Start(#[source] ControllerError),
    #[error("setting the policy to {name}: {source}")]
    Policy { name: String, source: crate::rack::RackError },
    #[error("announcing the API's address: {0}")]
    Announce(#[source] std::io::Error),
}

/// `listen` with port 0 resolved to a free port now, so that the leader's id and a
/// standby's API name the same port.
pub fn resolve_port(listen: SocketAddr) -> Result<SocketAddr, ElectionError> {
    if listen.port() != 0 {
        return Ok(listen);
    }
    let bound = TcpListener::bind(listen).and_then(|l| l.local_addr());
    bound.map_err(|source| ElectionError::Listen { addr: listen, source })
}

/// The default election name of a controller listening on `listen`: `http://HOST:PORT`, or
/// `https://` when it serves TLS (this host's name for a wildcard address).
pub fn default_id(listen: SocketAddr, tls: bool) -> String {
    let host = if listen.ip().is_unspecified() { hostname() } else { listen.ip().to_string() };
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
    format!("{}://{host}:{}", if tls { "https" } else { "http" }, listen.port())
}

fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    if name.is_empty() {
        "localhost".into()
    } else {
        name.to_string()
    }
}

/// Serves `config.listen` (a resolved port) as leader or standby until `stop` gets a
/// message or hangs up; a leader resigns on the way out, so a standby takes over at once.
/// `on_listening` is told the API's address once, when it first listens (as either).
pub fn serve_elected(
    config: &ControllerConfig,
    store: Arc<dyn MetaStore>,
    candidate: &Candidate,
    stop: &Receiver<()>,
    on_listening: &mut dyn FnMut(SocketAddr) -> std::io::Result<()>,
) -> Result<(), ElectionError> {
    let mut listening = false;
    let mut announce = |addr| -> Result<(), ElectionError> {
        if !listening {
            on_listening(addr).map_err(ElectionError::Announce)?;
            listening = true;
        }
        Ok(())
    };
    let mut policy_to_set = candidate.policy.clone();
    let id = &candidate.id;
    loop {
        let Some(leadership) = stand_by(&*store, config, candidate, stop, &mut announce)? else {
            return Ok(());
        };
        if candidate.announce_terms {
            tracing::warn!("controller {id} is the leader");
        }
        let fenced: Arc<dyn MetaStore> = Arc::new(FencedStore::new(store.clone(), leadership.revision()));
        let handle = match start(config.clone(), fenced) {
            Ok(h) => h,
            Err(ControllerError::Store(e)) => {
                tracing::warn!("cannot load the rack from the store: {e}; retrying");
                let _ = leadership.resign(&*store);
                if wait_or_stop(stop, LOAD_RETRY) {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(ElectionError::Start(e)),
        };
        announce(handle.addr())?;
        if let Some(name) = policy_to_set.take() {
            handle.set_policy(&name).map_err(|source| ElectionError::Policy { name, source })?;
        }
        let renew_every = Duration::from_millis((candidate.lease_ms / 3).max(50));
        loop {
            if wait_or_stop(stop, renew_every) {
                handle.shutdown();
                let _ = leadership.resign(&*store);
                return Ok(());
            }
            if let Err(e) = leadership.renew(&*store) {
                tracing::warn!("controller {id} lost the leadership ({e}); stopping the API and standing by");
                handle.shutdown();
                break;
            }
        }
    }
}

/// Waits up to `d`; true when asked to stop.
fn wait_or_stop(stop: &Receiver<()>, d: Duration) -> bool {
    !matches!(stop.recv_timeout(d), Err(RecvTimeoutError::Timeout))
}

/// Tries to become leader until it does (`Some`) or is asked to stop (`None`), serving 503
/// from a standby API meanwhile.
fn stand_by(
    store: &dyn MetaStore,
    config: &ControllerConfig,
    candidate: &Candidate,
    stop: &Receiver<()>,
    announce: &mut dyn FnMut(SocketAddr) -> Result<(), ElectionError>,
) -> Result<Option<Leadership>, ElectionError> {
    let mut standby: Option<Standby> = None;
    let mut last_error = None;
    loop {
        let leader = match Leadership::try_acquire(store, &candidate.id, candidate.lease_ms) {
            Ok(Some(l)) => {
                drop(standby);
                return Ok(Some(l));
            }
            Ok(None) => {
                last_error = None;
                Leadership::current(store).ok().flatten().unwrap_or_else(|| "unknown".into())
            }
            Err(e) => {
                let message = e.to_string();
                if last_error.as_ref() != Some(&message) {
                    tracing::warn!("cannot reach the metadata store to elect a leader: {message}; retrying");
                    last_error = Some(message);
                }
                "unknown (the metadata store cannot be reached)".into()
            }
        };
        match &standby {
            Some(s) => s.set_leader(leader),
            None => {
                let s = Standby::start(config, config.listen, leader.clone(), config.secret)
                    .map_err(|source| ElectionError::Listen { addr: config.listen, source })?;
                tracing::warn!("controller {} is a standby; the leader is {leader}", candidate.id);
                announce(s.addr)?;
                standby = Some(s);
            }
        }
        if wait_or_stop(stop, ACQUIRE_EVERY) {
            return Ok(None);
        }
    }
}

/// Starts the API, retrying a bind that fails while a standby's listener is being closed.
fn start(config: ControllerConfig, store: Arc<dyn MetaStore>) -> Result<ControllerHandle, ControllerError> {
    let deadline = Instant::now() + BIND_RETRY;
    loop {
        match Controller::start(config.clone(), store.clone()) {
            Err(ControllerError::Bind { .. }) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_name_the_api() {
        assert_eq!(default_id("10.0.0.7:7080".parse().unwrap(), false), "http://10.0.0.7:7080");
        assert_eq!(default_id("[::1]:7080".parse().unwrap(), true), "https://[::1]:7080");
        let any = default_id("0.0.0.0:7080".parse().unwrap(), false);
        assert!(any.starts_with("http://") && any.ends_with(":7080") && !any.contains("0.0.0.0"), "{any}");
        let resolved = resolve_port("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(resolved.port(), 0);
    }
}
