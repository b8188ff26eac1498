//! Prometheus metrics: counters kept here, gauges read from the rack at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::model::ServerState;
use crate::rack::RackState;

/// Upper bounds (seconds) of the placement decision latency histogram.
pub const DECISION_BUCKETS_S: [f64; 12] =
    [1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 1e-2, 1e-1];

#[derive(Debug, Default)]
pub struct Metrics {
    buckets: [AtomicU64; DECISION_BUCKETS_S.len()],
    decisions: AtomicU64,
    decision_ns: AtomicU64,
    placement_failures: AtomicU64,
    commits: AtomicU64,
    server_failures: AtomicU64,
    regions_reclaimed: AtomicU64,
    broker_budget_changes: AtomicU64,
    http_requests: AtomicU64,
    http_errors: AtomicU64,
}

impl Metrics {
    pub fn observe_decision(&self, took: Duration) {
        let s = took.as_secs_f64();
        if let Some(i) = DECISION_BUCKETS_S.iter().position(|&b| s <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.decisions.fetch_add(1, Ordering::Relaxed);
        self.decision_ns.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }
    pub fn placement_failed(&self) {
        self.placement_failures.fetch_add(1, Ordering::Relaxed);
    }
    pub fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }
    pub fn server_failed(&self) {
        self.server_failures.fetch_add(1, Ordering::Relaxed);
    }
    pub fn region_reclaimed(&self) {
        self.regions_reclaimed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn budget_changed(&self) {
        self.broker_budget_changes.fetch_add(1, Ordering::Relaxed);
    }
    pub fn http_request(&self, status: u16) {
        self.http_requests.fetch_add(1, Ordering::Relaxed);
        if status >= 400 {
            self.http_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self, rack: &RackState) -> String {
        let mut out = String::with_capacity(4096);
        let mut by_state = [0u64; 4];
        let (mut capacity, mut lent, mut free, mut reported_slabs) = (0u64, 0u64, 0u64, 0u64);
        for s in rack.servers.values() {
            let i = ServerState::ALL.iter().position(|&x| x == s.state).unwrap_or(0);
            by_state[i] += 1;
            if s.state != ServerState::Dead {
                capacity += s.capacity_bytes;
                lent += s.lent_bytes;
                free += s.free_bytes;
                reported_slabs += s.slabs;
            }
        }
        let moves = rack.status_proposed_moves();
        help(&mut out, "krak_servers", "gauge", "Memory servers by state.");
        for (state, n) in ServerState::ALL.iter().zip(by_state) {
            let _ = writeln!(out, "krak_servers{{state=\"{}\"}} {n}", state.as_str());
        }
        gauge(&mut out, "krak_capacity_bytes", "Capacity of the servers that are not dead.", capacity);
        gauge(&mut out, "krak_lent_bytes", "Bytes lent, as the servers that are not dead report.", lent);
        gauge(&mut out, "krak_free_bytes", "Free bytes of the servers that are not dead.", free);
        gauge(&mut out, "krak_server_slabs", "Slabs the servers that are not dead report holding.", reported_slabs);
        gauge(&mut out, "krak_slabs", "Slabs placed in the slab map.", rack.mapped_slabs());
        gauge(&mut out, "krak_degraded_slots", "Slabs in the map on dead servers.", rack.degraded_slots());
        gauge(&mut out, "krak_regions", "Regions.", rack.regions.len() as u64);
        gauge(&mut out, "krak_map_epoch", "The slab map's global epoch.", rack.map_epoch());
        gauge(&mut out, "krak_moves_in_flight", "Slab moves pagers are carrying out.", rack.moves.len() as u64);
        let totals = rack.moves.totals;
        help(&mut out, "krak_moves_total", "counter", "Slab moves since the controller started, by outcome.");
        for (outcome, n) in [
            ("started", totals.started),
            ("committed", totals.committed),
            ("abandoned", totals.abandoned),
            ("expired", totals.expired),
        ] {
            let _ = writeln!(out, "krak_moves_total{{outcome=\"{outcome}\"}} {n}");
        }
        gauge(&mut out, "krak_moves_proposed", "Slabs the policy proposes to move (consolidation).", moves);
        help(&mut out, "krak_server_lent_bytes", "gauge", "Bytes lent per server.");
        for s in rack.servers.values() {
            let _ = writeln!(out, "krak_server_lent_bytes{{server=\"{}\"}} {}", s.id, s.lent_bytes);
        }
        help(&mut out, "krak_server_mapped_slabs", "gauge", "Slabs the map places per server.");
        for s in rack.servers.values() {
            let n = rack.view.server(s.id).map_or(0, |v| v.slabs);
            let _ = writeln!(out, "krak_server_mapped_slabs{{server=\"{}\"}} {n}", s.id);
        }
        region_live(&mut out, rack);
        let _ = writeln!(out, "# HELP krak_policy The placement policy in force.\n# TYPE krak_policy gauge");
        let _ = writeln!(out, "krak_policy{{name=\"{}\"}} 1", rack.policy_name());
        counter(&mut out, "krak_server_failures_total", "Servers declared dead.", &self.server_failures);
        counter(
            &mut out,
            "krak_regions_reclaimed_total",
            "Regions reclaimed because their pager was silent for the lease.",
            &self.regions_reclaimed,
        );
        let _ = writeln!(
            out,
            "# HELP krak_broker_policy The memory broker's policy in force.\n# TYPE krak_broker_policy gauge"
        );
        let _ = writeln!(out, "krak_broker_policy{{name=\"{}\"}} 1", rack.broker_policy());
        counter(
            &mut out,
            "krak_broker_budget_changes_total",
            "Local budgets the memory broker changed.",
            &self.broker_budget_changes,
        );
        counter(&mut out, "krak_placement_failures_total", "Placements refused.", &self.placement_failures);
        counter(&mut out, "krak_commits_total", "Commits of placements.", &self.commits);
        counter(&mut out, "krak_http_requests_total", "HTTP requests answered.", &self.http_requests);
        counter(&mut out, "krak_http_errors_total", "HTTP requests answered with 4xx or 5xx.", &self.http_errors);
        help(&mut out, "krak_placement_decision_seconds", "histogram", "Placement decision latency.");
        let mut cumulative = 0;
        for (b, n) in DECISION_BUCKETS_S.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "krak_placement_decision_seconds_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.decisions.load(Ordering::Relaxed);
        let _ = writeln!(out, "krak_placement_decision_seconds_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.decision_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "krak_placement_decision_seconds_sum {sum}");
        let _ = writeln!(out, "krak_placement_decision_seconds_count {count}");
        out
    }
}

/// What each region's pager last reported (`live.rs`), one series per region.
fn region_live(out: &mut String, rack: &RackState) {
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
        help(out, name, "gauge", text);
        for id in rack.regions.keys() {
            if let Some((live, _)) = rack.live_of(*id) {
                let _ = writeln!(out, "{name}{{region=\"{id}\"}} {}", value(&live));
            }
        }
    }
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, text: &str, value: u64) {
    help(out, name, "gauge", text);
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, text: &str, value: &AtomicU64) {
    help(out, name, "counter", text);
    let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe_decision(Duration::from_nanos(800));
        m.observe_decision(Duration::from_micros(20));
        m.observe_decision(Duration::from_secs(1));
        assert_eq!(m.decisions.load(Ordering::Relaxed), 3);
        assert_eq!(m.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(m.buckets[4].load(Ordering::Relaxed), 1);
    }
}
