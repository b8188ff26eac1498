//! Prometheus metrics on `prometheus-client`: counters and histograms kept here, gauges read
//! from the rack at scrape time, all encoded in the OpenMetrics text format.
//!
//! Each scrape builds a fresh [`Registry`] ([`Scrape`]): the live counters and histograms
//! are registered by handle (they share their atomics), the gauges are built from the rack
//! under its lock, so a gauge never outlives what it describes (a removed server's series
//! goes with it). Label values are bounded: states, outcomes and endpoints come from fixed
//! lists, servers and regions from the rack's bounded tables.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;

use crate::model::ServerState;
use crate::rack::RackState;

/// The content type of `GET /metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the placement decision latency histogram.
pub const DECISION_BUCKETS_S: [f64; 12] =
    [1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 1e-2, 1e-1];
/// Upper bounds (seconds) of the HTTP request latency histogram (long-polls wait up to 30 s).
pub const REQUEST_BUCKETS_S: [f64; 14] =
    [1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.5, 1.0, 5.0, 30.0];
/// Upper bounds (seconds) of the slab move duration histogram (a pager gives up at 600 s).
pub const MOVE_BUCKETS_S: [f64; 12] = [1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 600.0];

/// Labels of one series.
pub type Labels = Vec<(String, String)>;

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS_S)
}

/// The controller's live counters and histograms.
#[derive(Debug)]
pub struct Metrics {
    decisions: Histogram,
    requests: Family<Labels, Histogram, fn() -> Histogram>,
    placement_failures: Counter,
    commits: Counter,
    server_failures: Counter,
    regions_reclaimed: Counter,
    broker_budget_changes: Counter,
    http_requests: Counter,
    http_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            decisions: Histogram::new(DECISION_BUCKETS_S),
            requests: Family::new_with_constructor(request_histogram),
            placement_failures: Counter::default(),
            commits: Counter::default(),
            server_failures: Counter::default(),
            regions_reclaimed: Counter::default(),
            broker_budget_changes: Counter::default(),
            http_requests: Counter::default(),
            http_errors: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn observe_decision(&self, took: Duration) {
        self.decisions.observe(took.as_secs_f64());
    }
    pub fn placement_failed(&self) {
        self.placement_failures.inc();
    }
    pub fn committed(&self) {
        self.commits.inc();
    }
    pub fn server_failed(&self) {
        self.server_failures.inc();
    }
    pub fn region_reclaimed(&self) {
        self.regions_reclaimed.inc();
    }
    pub fn budget_changed(&self) {
        self.broker_budget_changes.inc();
    }
    /// A request answered with `status` after `took`; `endpoint` from [`endpoint`].
    pub fn http_request(&self, endpoint: &'static str, status: u16, took: Duration) {
        self.http_requests.inc();
        if status >= 400 {
            self.http_errors.inc();
        }
        let labels = vec![("endpoint".into(), endpoint.into()), ("code".into(), format!("{}xx", status / 100))];
        self.requests.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// The live metrics and the rack's gauges, registered into `s`.
    pub fn register(&self, s: &mut Scrape, rack: &RackState) {
        let mut by_state = [0i64; 4];
        let (mut capacity, mut lent, mut free, mut reported_slabs) = (0u64, 0u64, 0u64, 0u64);
        for srv in rack.servers.values() {
            let i = ServerState::ALL.iter().position(|&x| x == srv.state).unwrap_or(0);
            by_state[i] += 1;
            if srv.state != ServerState::Dead {
                capacity += srv.capacity_bytes;
                lent += srv.lent_bytes;
                free += srv.free_bytes;
                reported_slabs += srv.slabs;
            }
        }
        let states = ServerState::ALL.iter().zip(by_state).map(|(st, n)| (vec![label("state", st.as_str())], n));
        s.gauges("krak_servers", "Memory servers by state.", states);
        s.gauge("krak_capacity_bytes", "Capacity of the servers that are not dead.", capacity);
        s.gauge("krak_lent_bytes", "Bytes lent, as the servers that are not dead report.", lent);
        s.gauge("krak_free_bytes", "Free bytes of the servers that are not dead.", free);
        s.gauge("krak_server_slabs", "Slabs the servers that are not dead report holding.", reported_slabs);
        s.gauge("krak_slabs", "Slabs placed in the slab map.", rack.mapped_slabs());
        s.gauge("krak_degraded_slots", "Slabs in the map on dead servers.", rack.degraded_slots());
        s.gauge("krak_regions", "Regions.", rack.regions.len() as u64);
        s.gauge("krak_map_epoch", "The slab map's global epoch.", rack.map_epoch());
        s.gauge("krak_moves_in_flight", "Slab moves pagers are carrying out.", rack.moves.len() as u64);
        let t = rack.moves.totals;
        let outcomes =
            [("started", t.started), ("committed", t.committed), ("abandoned", t.abandoned), ("expired", t.expired)];
        let outcomes = outcomes.into_iter().map(|(o, n)| (vec![label("outcome", o)], n));
        s.counters("krak_moves", "Slab moves since the controller started, by outcome.", outcomes);
        s.register("krak_move_duration_seconds", "Slab moves from start to commit.", rack.moves.durations.clone());
        s.gauge(
            "krak_moves_proposed",
            "Slabs the policy proposes to move (consolidation).",
            rack.status_proposed_moves(),
        );
        let lent = rack.servers.values().map(|srv| (vec![label("server", srv.id)], srv.lent_bytes as i64));
        s.gauges("krak_server_lent_bytes", "Bytes lent per server.", lent);
        let mapped = rack
            .servers
            .values()
            .map(|srv| (vec![label("server", srv.id)], rack.view.server(srv.id).map_or(0, |v| v.slabs) as i64));
        s.gauges("krak_server_mapped_slabs", "Slabs the map places per server.", mapped);
        region_live(s, rack);
        s.gauges("krak_policy", "The placement policy in force.", [(vec![label("name", rack.policy_name())], 1)]);
        s.counter("krak_server_failures", "Servers declared dead.", &self.server_failures);
        s.counter(
            "krak_regions_reclaimed",
            "Regions reclaimed because their pager was silent for the lease.",
            &self.regions_reclaimed,
        );
        let broker = [(vec![label("name", rack.broker_policy())], 1)];
        s.gauges("krak_broker_policy", "The memory broker's policy in force.", broker);
        s.counter(
            "krak_broker_budget_changes",
            "Local budgets the memory broker changed.",
            &self.broker_budget_changes,
        );
        s.counter("krak_placement_failures", "Placements refused.", &self.placement_failures);
        s.counter("krak_commits", "Commits of placements.", &self.commits);
        s.counter("krak_http_requests", "HTTP requests answered.", &self.http_requests);
        s.counter("krak_http_errors", "HTTP requests answered with 4xx or 5xx.", &self.http_errors);
        s.register(
            "krak_http_request_duration_seconds",
            "HTTP requests from their head read to their answer, by endpoint and status class.",
            self.requests.clone(),
        );
        s.register("krak_placement_decision_seconds", "Placement decision latency.", self.decisions.clone());
    }
}

fn label(key: &str, value: impl std::fmt::Display) -> (String, String) {
    (key.to_string(), value.to_string())
}

/// What each region's pager last reported (`live.rs`), one series per region.
fn region_live(s: &mut Scrape, rack: &RackState) {
    type Field = fn(&krak_api::messages::RegionLive) -> f64;
    let fields: [(&str, &str, Field); 5] = [
        ("krak_region_local_budget_bytes", "Local budget in force, per region.", |l| l.local_budget_bytes as f64),
        ("krak_region_resident_bytes", "Bytes resident locally, per region.", |l| l.resident_bytes as f64),
        ("krak_region_reserved_bytes", "Bytes of slabs held on memory servers, per region.", |l| {
            l.reserved_bytes as f64
        }),
        ("krak_region_used_bytes", "Bytes of pages whose copy is remote, per region.", |l| l.used_bytes as f64),
        ("krak_region_faults_per_second", "Faults served per second, per region.", |l| l.faults_per_s),
    ];
    for (name, text, value) in fields {
        let integral = name.ends_with("_bytes");
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let ints = Family::<Labels, Gauge>::default();
        for id in rack.regions.keys() {
            if let Some((live, _)) = rack.live_of(*id) {
                let labels = vec![label("region", id)];
                if integral {
                    ints.get_or_create(&labels).set(value(&live) as i64);
                } else {
                    family.get_or_create(&labels).set(value(&live));
                }
            }
        }
        if integral {
            s.register(name, text, ints);
        } else {
            s.register(name, text, family);
        }
    }
}

/// One scrape's registry.
#[derive(Debug, Default)]
pub struct Scrape {
    registry: Registry,
}

impl Scrape {
    /// Registers any metric (a live handle, or one built for this scrape).
    pub fn register(
        &mut self,
        name: &str,
        help: &str,
        metric: impl EncodeMetric + TypedMetric + Send + Sync + std::fmt::Debug + 'static,
    ) {
        self.registry.register(name, help, metric);
    }
    /// A gauge of one value.
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.register(name, help, ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)));
    }
    /// A counter of one value (`_total` is appended to `name`).
    pub fn count(&mut self, name: &str, help: &str, value: u64) {
        self.register(name, help, ConstCounter::new(value));
    }
    /// A live counter (`_total` is appended to `name`).
    pub fn counter(&mut self, name: &str, help: &str, counter: &Counter) {
        self.register(name, help, counter.clone());
    }
    /// A gauge with one series per label set.
    pub fn gauges(&mut self, name: &str, help: &str, series: impl IntoIterator<Item = (Labels, i64)>) {
        let family = Family::<Labels, Gauge>::default();
        for (labels, v) in series {
            family.get_or_create(&labels).set(v);
        }
        self.register(name, help, family);
    }
    /// A counter with one series per label set (`_total` is appended to `name`).
    pub fn counters(&mut self, name: &str, help: &str, series: impl IntoIterator<Item = (Labels, u64)>) {
        let family = Family::<Labels, Counter>::default();
        for (labels, v) in series {
            family.get_or_create(&labels).inc_by(v);
        }
        self.register(name, help, family);
    }
    /// The OpenMetrics text of everything registered.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail; an encoder error would be a bug in a metric.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}

/// The route of a request as a fixed label (`/v1/regions/{id}/map`), or `other`: a client
/// cannot add series by sending new paths.
pub fn endpoint(method: &str, path: &str) -> &'static str {
    const ROUTES: [(&str, &str); 20] = [
        ("GET", "/metrics"),
        ("GET", "/v1/status"),
        ("GET", "/v1/servers"),
        ("POST", "/v1/servers"),
        ("POST", "/v1/servers/{id}/heartbeat"),
        ("POST", "/v1/servers/{id}/drain"),
        ("GET", "/v1/policy"),
        ("PUT", "/v1/policy"),
        ("GET", "/v1/broker"),
        ("PUT", "/v1/broker"),
        ("POST", "/v1/regions"),
        ("DELETE", "/v1/regions/{id}"),
        ("GET", "/v1/regions/{id}/map"),
        ("POST", "/v1/regions/{id}/place"),
        ("POST", "/v1/regions/{id}/commit"),
        ("POST", "/v1/regions/{id}/release"),
        ("POST", "/v1/regions/{id}/moves"),
        ("DELETE", "/v1/regions/{id}/moves/{id}"),
        ("PUT", "/v1/regions/{id}/budget"),
        ("PUT", "/v1/regions/{id}/live"),
    ];
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    ROUTES
        .iter()
        .find(|(m, route)| {
            let pattern: Vec<&str> = route.split('/').skip(1).collect();
            *m == method
                && pattern.len() == parts.len()
                && pattern.iter().zip(&parts).all(|(p, s)| *p == "{id}" || p == s)
        })
        .map_or("other", |(_, route)| route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_text() {
        let m = Metrics::default();
        m.observe_decision(Duration::from_nanos(800));
        m.observe_decision(Duration::from_micros(20));
        m.observe_decision(Duration::from_secs(1));
        let mut s = Scrape::default();
        s.register("krak_placement_decision_seconds", "x", m.decisions.clone());
        let text = s.encode();
        assert!(text.contains("krak_placement_decision_seconds_count 3\n"), "{text}");
        assert!(text.contains("krak_placement_decision_seconds_bucket{le=\"0.000001\"} 1\n"), "{text}");
        assert!(text.contains("krak_placement_decision_seconds_bucket{le=\"0.000025\"} 2\n"), "{text}");
        assert!(text.contains("krak_placement_decision_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn endpoints_are_a_fixed_set() {
        assert_eq!(endpoint("GET", "/v1/regions/12/map"), "/v1/regions/{id}/map");
        assert_eq!(endpoint("DELETE", "/v1/regions/1/moves/7"), "/v1/regions/{id}/moves/{id}");
        assert_eq!(endpoint("GET", "/metrics/"), "/metrics");
        assert_eq!(endpoint("GET", "/v1/regions/12/anything"), "other");
        assert_eq!(endpoint("PATCH", "/v1/status"), "other");
        let m = Metrics::default();
        for i in 0..1000 {
            m.http_request(endpoint("GET", &format!("/x{i}")), 404, Duration::from_millis(1));
        }
        let mut s = Scrape::default();
        s.register("r", "x", m.requests.clone());
        assert_eq!(s.encode().matches("r_count").count(), 1, "random paths share one series");
    }
}
