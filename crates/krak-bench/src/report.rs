//! The bench's JSON output and its human and markdown tables.
//!
//! JSON shape (extra fields may be added; readers should ignore unknown ones):
//!
//! ```json
//! {"region_bytes": 268435456, "duration_ms": 2000,
//!  "results": [{"workload": "rand_read", "backend": "swap-zram", "local_fraction": 0.25,
//!               "ops_per_s": 1.2e6, "p50_us": 0.3, "p99_us": 5.1, "mismatches": 0,
//!               "cpu": {"app": {"user_ms": 1.0, "system_ms": 9.0}, ...}, "cpu_per_fault_us": 4.2, ...}],
//!  "limits": {"tcp_rtt_4k_p50_us": 25.0, "uffd_fault_p50_us": null, ...},
//!  "skipped": [{"backend": "krak", "reason": "..."}], "failures": []}
//! ```

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::cpu::PhaseCpu;
use crate::floors::Floors;
use crate::plan::BenchBackend;
use crate::workload::{RunResult, Workload};

/// One run's outcome, as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    /// Access pattern.
    pub workload: Workload,
    /// Backend.
    pub backend: BenchBackend,
    /// Local memory as a fraction of the region (1.0 for `local`).
    pub local_fraction: f64,
    /// Local memory in bytes (the region size for `local`).
    pub local_bytes: u64,
    /// Region size.
    pub region_bytes: u64,
    /// Throughput of the timed phase.
    pub ops_per_s: f64,
    /// Median operation latency.
    pub p50_us: f64,
    /// 99th percentile operation latency.
    pub p99_us: f64,
    /// 99.9th percentile operation latency.
    pub p999_us: f64,
    /// Slowest operation.
    pub max_us: f64,
    /// Operations in the timed phase.
    pub ops: u64,
    /// Reads checked.
    pub verified_ops: u64,
    /// Reads that returned wrong data (must be 0).
    pub mismatches: u64,
    /// Fill phase wall time.
    pub fill_ms: u64,
    /// Final whole-region check wall time.
    pub final_check_ms: u64,
    /// Major faults during the timed phase.
    pub major_faults: u64,
    /// Worker's swapped-out memory at the end of the timed phase.
    pub vm_swap_bytes: u64,
    /// Faults served in the timed phase (pager faults, or kernel major faults for swap).
    #[serde(default)]
    pub faults: u64,
    /// Median latency of the faulting operations, as the application saw it.
    #[serde(default)]
    pub fault_p50_us: Option<f64>,
    /// 99th percentile of the same.
    #[serde(default)]
    pub fault_p99_us: Option<f64>,
    /// Pages the pager wrote back in the timed phase.
    #[serde(default)]
    pub writebacks: Option<u64>,
    /// CPU of the timed phase: the workload's thread, the pager's threads, the memory
    /// servers on this host (kernel threads such as kswapd are not counted).
    #[serde(default)]
    pub cpu: Option<PhaseCpu>,
    /// All of that CPU per operation.
    #[serde(default)]
    pub cpu_per_op_us: Option<f64>,
    /// The fault path's CPU ([`PhaseCpu::fault_path_ms`]) per fault served.
    #[serde(default)]
    pub cpu_per_fault_us: Option<f64>,
    /// The pager's write-back and reclaim threads' CPU per page written back.
    #[serde(default)]
    pub cpu_per_writeback_us: Option<f64>,
}

impl ResultRow {
    /// A row from a worker's result.
    pub fn new(backend: BenchBackend, local_fraction: f64, local_bytes: u64, r: RunResult) -> Self {
        let local_bytes = if backend == BenchBackend::Local { r.region_bytes } else { local_bytes };
        ResultRow {
            workload: r.workload,
            backend,
            local_fraction,
            local_bytes,
            region_bytes: r.region_bytes,
            ops_per_s: r.ops_per_s,
            p50_us: r.p50_us,
            p99_us: r.p99_us,
            p999_us: r.p999_us,
            max_us: r.max_us,
            ops: r.ops,
            verified_ops: r.verified_ops,
            mismatches: r.mismatches,
            fill_ms: r.fill_ms,
            final_check_ms: r.final_check_ms,
            major_faults: r.major_faults,
            vm_swap_bytes: r.vm_swap_bytes,
            faults: r.faults,
            fault_p50_us: r.fault_p50_us,
            fault_p99_us: r.fault_p99_us,
            writebacks: r.writebacks,
            cpu: r.cpu,
            cpu_per_op_us: r.cpu.filter(|_| r.ops > 0).map(|c| c.total_ms() * 1000.0 / r.ops as f64),
            cpu_per_fault_us: r.cpu.filter(|_| r.faults > 0).map(|c| c.fault_path_ms() * 1000.0 / r.faults as f64),
            cpu_per_writeback_us: r
                .cpu
                .zip(r.writebacks.filter(|w| *w > 0))
                .map(|(c, w)| c.pager_writeback.total_ms() * 1000.0 / w as f64),
        }
    }
}

/// A backend that did not run, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    /// Backend.
    pub backend: BenchBackend,
    /// Why.
    pub reason: String,
}

impl Skipped {
    /// A skipped backend.
    pub fn new(backend: BenchBackend, reason: &str) -> Self {
        Skipped { backend, reason: reason.to_string() }
    }
}

/// A run that failed (worker error, timeout, OOM kill).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Access pattern.
    pub workload: Workload,
    /// Backend.
    pub backend: BenchBackend,
    /// Local fraction.
    pub local_fraction: f64,
    /// The error.
    pub error: String,
}

/// Everything one `krak bench` measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Region size of every run.
    pub region_bytes: u64,
    /// Timed phase of every run.
    pub duration_ms: u64,
    /// Threads running each workload at once.
    #[serde(default = "one")]
    pub threads: usize,
    /// One row per run.
    pub results: Vec<ResultRow>,
    /// The physical floors measured in the same run (the report's key is `limits`, as
    /// scripts have read it).
    #[serde(rename = "limits")]
    pub floors: Option<Floors>,
    /// Backends that did not run.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// Runs that failed.
    #[serde(default)]
    pub failures: Vec<Failure>,
    /// Pager options of the krak runs (`key=value`, e.g. `fault_mode=sigbus`,
    /// `redundancy=ec:4+2`).
    #[serde(default)]
    pub krak_options: Vec<String>,
}

const HEADERS: [&str; 11] = [
    "workload",
    "backend",
    "local",
    "ops/s",
    "p50 us",
    "p99 us",
    "vs local",
    "vs swap-disk",
    "cpu/op us",
    "cpu/fault us",
    "mismatches",
];

impl BenchReport {
    /// An empty report.
    pub fn new(region_bytes: u64, duration_ms: u64) -> Self {
        BenchReport { region_bytes, duration_ms, threads: 1, ..Default::default() }
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Whether any run read back wrong data.
    pub fn has_mismatches(&self) -> bool {
        self.results.iter().any(|r| r.mismatches > 0)
    }

    /// Rows sorted for display: per workload, `local` first, then by fraction and backend.
    fn sorted_rows(&self) -> Vec<&ResultRow> {
        let order = |r: &ResultRow| {
            let w = Workload::ALL.iter().position(|w| *w == r.workload).unwrap_or(9);
            let b = BenchBackend::ALL.iter().position(|b| *b == r.backend).unwrap_or(9);
            let local_first = u8::from(r.backend != BenchBackend::Local);
            (w, local_first, (r.local_fraction * 1000.0) as u64, b)
        };
        let mut rows: Vec<&ResultRow> = self.results.iter().collect();
        rows.sort_by_key(|r| order(r));
        rows
    }

    fn cells(&self) -> Vec<[String; 11]> {
        let find = |w: Workload, b: BenchBackend, f: Option<f64>| {
            self.results
                .iter()
                .find(|r| r.workload == w && r.backend == b && f.map_or(true, |f| (r.local_fraction - f).abs() < 1e-9))
        };
        let ratio = |num: f64, den: Option<&ResultRow>| match den {
            Some(d) if d.ops_per_s > 0.0 => {
                let r = num / d.ops_per_s;
                if r >= 0.1 {
                    format!("{r:.2}x")
                } else {
                    format!("{r:.4}x")
                }
            }
            _ => "-".into(),
        };
        self.sorted_rows()
            .into_iter()
            .map(|r| {
                let local = find(r.workload, BenchBackend::Local, None);
                let disk = find(r.workload, BenchBackend::SwapDisk, Some(r.local_fraction));
                [
                    r.workload.to_string(),
                    r.backend.to_string(),
                    format!("{:.0}%", r.local_fraction * 100.0),
                    human_rate(r.ops_per_s),
                    format!("{:.2}", r.p50_us),
                    format!("{:.2}", r.p99_us),
                    ratio(r.ops_per_s, local),
                    ratio(r.ops_per_s, disk),
                    r.cpu_per_op_us.map_or("-".into(), |v| format!("{v:.2}")),
                    r.cpu_per_fault_us.map_or("-".into(), |v| format!("{v:.1}")),
                    r.mismatches.to_string(),
                ]
            })
            .collect()
    }

    fn footer(&self, out: &mut String, bullet: &str) {
        if let Some(l) = &self.floors {
            let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}"));
            let _ = writeln!(
                out,
                "{bullet}limits: tcp rtt 4 KiB p50 {:.2} us / p99 {:.2} us (both ends spinning: p50 {} us); uffd fault p50 {} us / p99 {} us (self-served: p50 {} us); memcpy 4 KiB p50 {} us",
                l.tcp_rtt_4k_p50_us,
                l.tcp_rtt_4k_p99_us,
                opt(l.tcp_rtt_4k_spinning_p50_us),
                opt(l.uffd_fault_p50_us),
                opt(l.uffd_fault_p99_us),
                opt(l.uffd_fault_self_served_p50_us),
                opt(l.memcpy_4k_p50_us)
            );
        }
        for s in &self.skipped {
            let _ = writeln!(out, "{bullet}skipped {}: {}", s.backend, s.reason);
        }
        for f in &self.failures {
            let _ = writeln!(
                out,
                "{bullet}FAILED {} on {} at {:.0}%: {}",
                f.workload,
                f.backend,
                f.local_fraction * 100.0,
                f.error
            );
        }
    }

    /// An aligned plain-text table for the terminal.
    pub fn human_table(&self) -> String {
        let rows = self.cells();
        let mut widths = HEADERS.map(str::len);
        for row in &rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.len());
            }
        }
        let mut out = format!(
            "region {} MiB, {} ms per run, {} thread(s)\n",
            self.region_bytes >> 20,
            self.duration_ms,
            self.threads
        );
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
                // Text columns left-aligned, numbers right-aligned.
                if i < 2 {
                    let _ = write!(s, "{c:<w$}  ");
                } else {
                    let _ = write!(s, "{c:>w$}  ");
                }
            }
            s.trim_end().to_string() + "\n"
        };
        out += &line(&HEADERS.map(String::from));
        for row in &rows {
            out += &line(row);
        }
        self.footer(&mut out, "");
        out
    }

    /// A GitHub-flavoured markdown table for BENCHMARKS.md.
    pub fn markdown_table(&self) -> String {
        let mut out = format!(
            "Region {} MiB, {} ms per run, {} thread(s).\n\n| {} |\n|{}\n",
            self.region_bytes >> 20,
            self.duration_ms,
            self.threads,
            HEADERS.join(" | "),
            HEADERS.iter().enumerate().map(|(i, _)| if i < 2 { " --- |" } else { " ---: |" }).collect::<String>()
        );
        for row in self.cells() {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out.push('\n');
        self.footer(&mut out, "- ");
        out
    }
}

fn one() -> usize {
    1
}

fn human_rate(ops_per_s: f64) -> String {
    if ops_per_s >= 1e6 {
        format!("{:.2}M", ops_per_s / 1e6)
    } else if ops_per_s >= 1e3 {
        format!("{:.1}k", ops_per_s / 1e3)
    } else {
        format!("{ops_per_s:.0}")
    }
}
