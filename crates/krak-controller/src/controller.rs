//! [`Controller`]: loads the rack from the store, serves the API, and checks liveness.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use krak_meta::MetaStore;
use parking_lot::{Condvar, Mutex};

use crate::config::ControllerConfig;
use crate::http::HttpServer;
use crate::metrics::Metrics;
use crate::persist::LoadError;
use crate::rack::RackState;
use crate::ControllerError;

/// What the API workers and the liveness thread share.
#[derive(Debug)]
pub struct ControllerShared {
    pub(crate) rack: Mutex<RackState>,
    /// Signalled after every change that may move a region's epoch.
    pub(crate) changed: Condvar,
    pub(crate) metrics: Metrics,
    /// Counters of the HTTP front end, for `/metrics`.
    pub(crate) http_stats: Arc<crate::http::HttpStats>,
    pub(crate) config: ControllerConfig,
    pub(crate) stopping: AtomicBool,
    pub(crate) long_polls: AtomicUsize,
    /// Nonces of recently authenticated requests.
    pub(crate) replays: crate::auth::ReplayGuard,
    /// This run's boot id: requests signed for another run are not served (the replay
    /// cache above starts empty with every run).
    pub(crate) boot: u64,
}

/// The rack controller.
#[derive(Debug)]
pub struct Controller;

impl Controller {
    /// Loads the rack from `store` and serves it on `config.listen`.
    pub fn start(config: ControllerConfig, store: Arc<dyn MetaStore>) -> Result<ControllerHandle, ControllerError> {
        config.validate()?;
        let rack = RackState::load(store, config.clone()).map_err(|e| match e {
            LoadError::Meta(m) => ControllerError::Store(m),
            e => ControllerError::Load(e),
        })?;
        let shared = Arc::new(ControllerShared {
            rack: Mutex::new(rack),
            changed: Condvar::new(),
            metrics: Metrics::default(),
            http_stats: Arc::default(),
            replays: Default::default(),
            boot: krak_api::signing::new_boot(),
            config: config.clone(),
            stopping: AtomicBool::new(false),
            long_polls: AtomicUsize::new(0),
        });
        let handler_shared = shared.clone();
        let http = HttpServer::start(
            config.listen,
            config.http_limits(),
            config.tls.clone(),
            shared.http_stats.clone(),
            Arc::new(move |req| crate::api::handle(&handler_shared, req)),
        )
        .map_err(|source| ControllerError::Bind { addr: config.listen, source })?;
        let liveness_shared = shared.clone();
        let liveness = thread::Builder::new()
            .name("krak-ctl-liveness".into())
            .spawn(move || liveness_loop(&liveness_shared))
            .map_err(|source| ControllerError::Bind { addr: config.listen, source })?;
        tracing::info!("krak controller listening on {}", http.addr());
        Ok(ControllerHandle { addr: http.addr(), http: Some(http), liveness: Some(liveness), shared })
    }
}

fn liveness_loop(shared: &ControllerShared) {
    let tick = Duration::from_millis(shared.config.tick_ms);
    let mut rack = shared.rack.lock();
    while !shared.stopping.load(Ordering::SeqCst) {
        let transitions = rack.tick(Instant::now());
        if !transitions.is_empty() {
            for t in &transitions {
                tracing::info!("server {} {} -> {}", t.server, t.from.as_str(), t.to.as_str());
                if t.to == crate::model::ServerState::Dead {
                    shared.metrics.server_failed();
                }
            }
            shared.changed.notify_all();
        }
        let reclaimed = rack.reclaim_expired(Instant::now());
        for r in &reclaimed {
            tracing::warn!(
                "region {} ({}) reclaimed: its pager has not been heard from for {} ms (lease {} ms)",
                r.record.id,
                r.record.owner,
                r.silent_ms,
                shared.config.region_lease_ms
            );
            shared.metrics.region_reclaimed();
        }
        if !reclaimed.is_empty() {
            shared.changed.notify_all();
        }
        let budgets = rack.broker_round(Instant::now());
        for (id, from, to) in &budgets {
            tracing::info!("broker: region {id} local budget {from} -> {to} bytes");
            shared.metrics.budget_changed();
        }
        if !budgets.is_empty() {
            shared.changed.notify_all();
        }
        // the rack lock is released while waiting; shutdown notifies to end the wait
        shared.changed.wait_for(&mut rack, tick);
    }
}

/// A running controller.
#[derive(Debug)]
pub struct ControllerHandle {
    addr: SocketAddr,
    http: Option<HttpServer>,
    liveness: Option<JoinHandle<()>>,
    shared: Arc<ControllerShared>,
}

impl ControllerHandle {
    /// Where the API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL of the API, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches the placement policy (stored in the rack, as `PUT /v1/policy` does).
    pub fn set_policy(&self, name: &str) -> Result<(), crate::rack::RackError> {
        self.shared.rack.lock().set_policy(name)
    }

    /// Stops serving: long-polls answer at once, workers finish their request, the listener
    /// closes. The store keeps everything.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // taking the lock orders this after any waiter's check of `stopping`
        drop(self.shared.rack.lock());
        self.shared.changed.notify_all();
        if let Some(http) = self.http.take() {
            // long-polls wake on the notify above, or at their next deadline check
            http.shutdown();
        }
        if let Some(h) = self.liveness.take() {
            self.shared.changed.notify_all();
            let _ = h.join();
        }
    }
}

impl Drop for ControllerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
