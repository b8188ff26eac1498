//! `krak status`, `krak policy`, `krak drain`: the operator's view of a rack and its levers.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use krak_api::messages::{PolicyBody, ServerStatus, StatusReply};
use krak_api::ServerRecord;
use krak_api::{Api, Transport};
use krak_proto::units::ByteSize;

use crate::ctl::ControllerArg;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Show the rack: memory servers, regions, the placement policy, moves and drains.
///
/// The table lists each server's address, failure domain, state (alive, suspect, dead,
/// draining), capacity, lent and free memory and slabs held ("empty" when the slab map places
/// nothing on it: with the `pack` policy it could sleep), then each region with its owner,
/// size, local budget, what its pager last reported (the process it serves and its host,
/// bytes resident locally, slabs reserved on servers, bytes whose copy is remote, faults
/// per second; refreshed every second) and remote bytes per server.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  krak status --controller http://10.0.0.1:7080\n  \
                        KRAK_CONTROLLER=http://10.0.0.1:7080 krak status --json | jq '.servers[].state'")]
pub struct StatusArgs {
    #[command(flatten)]
    controller: ControllerArg,
    /// Print the controller's status as JSON (GET /v1/status, see docs/api.md): `policy`,
    /// `map_epoch`, `servers` (each with `id`, `addr`, `domain`, `state`, `capacity_bytes`,
    /// `lent_bytes`, `free_bytes`, `slabs`, ...), `regions`, `moves_in_flight`,
    /// `proposed_moves`, `drains`.
    #[arg(long)]
    json: bool,
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mut client = args.controller.client(TIMEOUT)?;
    if args.json {
        // Print what the controller said, field for field (typed decoding would drop fields
        // this binary does not know).
        let value: serde_json::Value = client
            .send::<(), _>("GET", krak_api::paths::STATUS, None, Duration::ZERO)
            .context("asking the controller for status")?;
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let status = client.status().context("asking the controller for status")?;
    print!("{}", render(&status, client.url(), now_ms()));
    Ok(())
}

/// A figure of the region's last report, or `-` without one (or one over 10 s old: its
/// pager is gone or cannot reach the controller).
fn live(r: &krak_api::messages::RegionStatus, f: impl Fn(&krak_api::messages::RegionLive) -> String) -> String {
    match (&r.live, r.live_age_ms) {
        (Some(l), Some(age)) if age <= 10_000 => f(l),
        _ => "-".into(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    let d = now_ms.saturating_sub(then_ms);
    if d < 10_000 {
        format!("{:.1}s ago", d as f64 / 1000.0)
    } else {
        format!("{}s ago", d / 1000)
    }
}

fn server_name(servers: &[ServerStatus], id: krak_api::ServerId) -> String {
    match servers.iter().find(|s| s.record.id == id) {
        Some(s) => format!("{} ({})", id.0, s.record.addr),
        None => id.0.to_string(),
    }
}

/// The human-readable status.
fn render(s: &StatusReply, url: &str, now_ms: u64) -> String {
    let mut out = String::new();
    let alive = s.servers.iter().filter(|x| x.record.state == krak_api::ServerState::Alive).count();
    let _ = writeln!(
        out,
        "rack at {url}: policy {}, map epoch {}, {} servers ({alive} alive), {} regions",
        s.policy,
        s.map_epoch,
        s.servers.len(),
        s.regions.len()
    );
    let sum = |f: fn(&ServerRecord) -> u64| -> u64 {
        s.servers.iter().filter(|x| x.record.state != krak_api::ServerState::Dead).map(|x| f(&x.record)).sum()
    };
    let _ = writeln!(
        out,
        "capacity {}, lent {}, free {} (servers not dead)",
        ByteSize(sum(|r| r.capacity_bytes)),
        ByteSize(sum(|r| r.lent_bytes)),
        ByteSize(sum(|r| r.free_bytes))
    );
    out.push('\n');
    if s.servers.is_empty() {
        out.push_str("no memory servers registered\n");
    } else {
        let mut rows = vec![[
            "ID",
            "ADDR",
            "DOMAIN",
            "STATE",
            "CAPACITY",
            "LENT",
            "FREE",
            "SLABS",
            "MAPPED",
            "HOST FREE",
            "HEARTBEAT",
        ]
        .map(String::from)
        .to_vec()];
        for x in &s.servers {
            let r = &x.record;
            rows.push(vec![
                r.id.0.to_string(),
                r.addr.clone(),
                if r.domain.is_empty() { "-".into() } else { r.domain.clone() },
                r.state.as_str().to_string(),
                ByteSize(r.capacity_bytes).to_string(),
                ByteSize(r.lent_bytes).to_string(),
                ByteSize(r.free_bytes).to_string(),
                r.slabs.to_string(),
                if x.empty { "0 (empty)".into() } else { x.mapped_slabs.to_string() },
                r.host_free_bytes.map(|b| ByteSize(b).to_string()).unwrap_or_else(|| "-".into()),
                ago(now_ms, r.last_heartbeat_unix_ms),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out.push('\n');
    if s.regions.is_empty() {
        out.push_str("no regions\n");
    } else {
        let mut rows = vec![[
            "REGION",
            "OWNER",
            "SIZE",
            "LOCAL BUDGET",
            "PID@HOST",
            "RESIDENT",
            "RESERVED",
            "USED",
            "FAULTS/S",
            "CHUNK",
            "REDUNDANCY",
            "PLACED",
            "DEGRADED",
            "REMOTE BYTES PER SERVER",
        ]
        .map(String::from)
        .to_vec()];
        for r in &s.regions {
            let remote: Vec<String> =
                r.remote_bytes.iter().map(|b| format!("{}:{}", b.server.0, ByteSize(b.bytes))).collect();
            rows.push(vec![
                r.record.id.0.to_string(),
                if r.record.owner.is_empty() { "-".into() } else { r.record.owner.clone() },
                ByteSize(r.record.size_bytes).to_string(),
                ByteSize(r.record.local_budget_bytes).to_string(),
                live(r, |l| format!("{}@{}", l.pid.map_or("?".into(), |p| p.to_string()), l.host)),
                live(r, |l| ByteSize(l.resident_bytes).to_string()),
                live(r, |l| ByteSize(l.reserved_bytes).to_string()),
                live(r, |l| ByteSize(l.used_bytes).to_string()),
                live(r, |l| format!("{:.0}", l.faults_per_s)),
                ByteSize(r.record.chunk_bytes).to_string(),
                r.record.redundancy.clone(),
                r.placed_chunks.to_string(),
                r.degraded_slots.to_string(),
                if remote.is_empty() { "-".into() } else { remote.join(" ") },
            ]);
        }
        out.push_str(&table(&rows));
    }
    out.push('\n');
    let moves = |label: &str, moves: &[krak_api::Move], out: &mut String| {
        if moves.is_empty() {
            let _ = writeln!(out, "{label}: none");
        } else {
            let _ = writeln!(out, "{label}:");
            for m in moves {
                let _ = writeln!(
                    out,
                    "  region {}: {} slabs from server {} to server {}",
                    m.region.0,
                    m.slabs,
                    server_name(&s.servers, m.from),
                    server_name(&s.servers, m.to)
                );
            }
        }
    };
    moves("moves in flight", &s.moves_in_flight, &mut out);
    moves("proposed moves", &s.proposed_moves, &mut out);
    if s.drains.is_empty() {
        out.push_str("drains: none\n");
    } else {
        let names: Vec<String> = s.drains.iter().map(|&id| server_name(&s.servers, id)).collect();
        let _ = writeln!(out, "drains: {}", names.join(", "));
    }
    out
}

/// Show or change the rack's placement policy.
///
/// Policies: `spread` (power of two choices on free memory), `pack` (fill the fewest servers,
/// and propose consolidation moves that empty lightly used ones), `domain-spread` (spread a
/// region's chunks over failure domains). The choice is stored by the controller and applies
/// to placements from then on.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  krak policy get\n  krak policy set pack")]
pub struct PolicyArgs {
    #[command(subcommand)]
    action: PolicyAction,
    #[command(flatten)]
    controller: ControllerArg,
}

#[derive(Debug, clap::Subcommand)]
enum PolicyAction {
    /// Print the current policy's name (and, on stderr, the available ones).
    Get,
    /// Switch to policy NAME while the rack runs.
    Set {
        /// spread, pack or domain-spread.
        name: String,
    },
}

pub fn policy(args: PolicyArgs) -> anyhow::Result<()> {
    let mut client = args.controller.client(TIMEOUT)?;
    let answer: PolicyBody = match args.action {
        PolicyAction::Get => client.policy().context("asking for the policy")?,
        PolicyAction::Set { name } => {
            client.set_policy(&name).with_context(|| format!("setting the policy to {name}"))?
        }
    };
    println!("{}", answer.name);
    eprintln!("available policies: {}", answer.available.join(", "));
    Ok(())
}

/// Ask the controller to empty a memory server: it becomes `draining`, placement stops
/// choosing it, and the pagers move its slabs to other servers while their workloads run.
///
/// SERVER is the server's id (as in `krak status`) or its address (HOST:PORT). This command
/// returns once the drain is requested; `krak status` shows the server's slabs going to 0.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  krak drain 3\n  krak drain 10.0.0.3:7070")]
pub struct DrainArgs {
    /// The server's id or address.
    server: String,
    #[command(flatten)]
    controller: ControllerArg,
}

pub fn drain(args: DrainArgs) -> anyhow::Result<()> {
    let mut client = args.controller.client(TIMEOUT)?;
    let servers = client.servers().context("asking the controller for its servers")?;
    let wanted = args.server.trim();
    let found = match wanted.parse::<u32>() {
        Ok(id) => servers.servers.iter().find(|s| s.record.id.0 == id),
        Err(_) => servers.servers.iter().find(|s| s.record.addr == wanted),
    };
    let Some(server) = found else {
        let known: Vec<String> =
            servers.servers.iter().map(|s| format!("{} ({})", s.record.id.0, s.record.addr)).collect();
        bail!(
            "the controller knows no server {wanted:?}; known: {}",
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        );
    };
    let id = server.record.id.0;
    let record = client
        .drain(server.record.id)
        .with_context(|| format!("asking to drain server {id} ({})", server.record.addr))?;
    println!(
        "drain of server {id} ({}) requested: state {}, {} slabs held; the pagers move them away \
         (watch `krak status`)",
        record.addr,
        record.state.as_str(),
        record.slabs
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_empty_and_a_busy_rack() {
        let empty: StatusReply = serde_json::from_value(serde_json::json!({
            "policy": "spread", "map_epoch": 0, "servers": [], "regions": [],
            "moves_in_flight": [], "proposed_moves": [], "drains": []
        }))
        .unwrap();
        let text = render(&empty, "http://x:1", 0);
        assert!(text.contains("policy spread") && text.contains("no memory servers") && text.contains("no regions"));

        let busy: StatusReply = serde_json::from_value(serde_json::json!({
            "policy": "pack", "map_epoch": 13,
            "servers": [{"id": 1, "addr": "10.0.0.1:7070", "domain": "rack1/host3", "state": "draining",
                "capacity_bytes": 17179869184u64, "lent_bytes": 134217728, "free_bytes": 17045651456u64,
                "slab_size_bytes": 67108864, "slabs": 2, "host_free_bytes": null, "headroom_bytes": 0,
                "registered_unix_ms": 1000, "last_heartbeat_unix_ms": 2000, "failures": 0,
                "drain_requested_unix_ms": 1500, "mapped_slabs": 2, "empty": false}],
            "regions": [{"id": 1, "owner": "host9/pid42", "size_bytes": 1073741824, "local_budget_bytes": 268435456,
                "chunk_bytes": 67108864, "created_unix_ms": 1000, "epoch": 13, "placed_chunks": 2,
                "remote_bytes": [{"server": 1, "bytes": 134217728}]}],
            "moves_in_flight": [], "proposed_moves": [{"region": 1, "from": 1, "to": 1, "slabs": 1}], "drains": [1]
        }))
        .unwrap();
        let text = render(&busy, "http://x:1", 3000);
        for want in ["10.0.0.1:7070", "rack1/host3", "draining", "16GiB", "128MiB", "host9/pid42", "1:128MiB"] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        assert!(text.contains("drains: 1 (10.0.0.1:7070)"), "{text}");
        assert!(text.contains("1.0s ago"), "{text}");
    }
}
