//! `krak budget`: change the local budget of a running region.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use krak_api::messages::{RegionStatus, StatusReply};
use krak_api::Api;
use krak_proto::units::ByteSize;

use crate::ctl::ControllerArg;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Change how much of a running region stays in local memory: shrinking evicts at once
/// (pages go to the memory servers), growing lets the region keep more. The region's pager
/// takes the new budget within a second and confirms it in its next report.
///
/// TARGET is a region id (as in `krak status`) or pid:N, the process a region serves (a
/// `krak run` program, or the process that made the region), as its pager reports it.
/// Without a controller (no --controller, no $KRAK_CONTROLLER), pid:N names a `krak run`
/// program, whose pager process is asked directly over its socket.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  krak budget 3 512MiB\n  krak budget pid:4242 128MiB --json")]
pub struct BudgetArgs {
    /// The region: its id, or pid:N.
    target: String,
    /// The new local budget (e.g. 256MiB; at least 64KiB).
    size: ByteSize,
    #[command(flatten)]
    controller: ControllerArg,
    /// How long to wait for the region's pager to confirm the new budget, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    wait_ms: u64,
    /// Print the outcome as JSON: `region`, `previous_local_budget_bytes`,
    /// `local_budget_bytes`, `confirmed`, and the pager's last report (`live`).
    #[arg(long)]
    json: bool,
}

pub fn budget(args: BudgetArgs) -> anyhow::Result<()> {
    if args.controller.controller.as_deref().is_none_or(|c| c.trim().is_empty()) {
        return budget_of_program(&args);
    }
    let mut client = args.controller.client(TIMEOUT)?;
    let status = client.status().context("asking the controller for its regions")?;
    let region = find(&status, &args.target)?;
    let (id, previous) = (region.record.id, region.record.local_budget_bytes);
    client.set_budget(id, args.size.0).with_context(|| format!("setting the local budget of region {id}"))?;
    // The pager rounds the budget down to whole pages.
    let wanted = args.size.0 / 4096 * 4096;
    let deadline = Instant::now() + Duration::from_millis(args.wait_ms);
    let (confirmed, live) = loop {
        let now = client.status().context("asking the controller for the region's report")?;
        let live = now.regions.iter().find(|r| r.record.id == id).and_then(|r| r.live.clone());
        let fresh = live.as_ref().is_some_and(|l| l.local_budget_bytes == wanted);
        if fresh || Instant::now() >= deadline {
            break (fresh, live);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if args.json {
        let out = serde_json::json!({
            "region": id.0,
            "previous_local_budget_bytes": previous,
            "local_budget_bytes": args.size.0,
            "confirmed": confirmed,
            "live": live,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let who = live
            .as_ref()
            .map(|l| format!(" (pid {} on {})", l.pid.map_or("?".into(), |p| p.to_string()), l.host))
            .unwrap_or_default();
        print!("region {id}{who}: local budget {} -> {}", ByteSize(previous), args.size);
        match (&live, confirmed) {
            (Some(l), true) => println!("; in force, {} resident", ByteSize(l.resident_bytes)),
            _ => println!(
                "; set, but its pager has not confirmed it within {} ms (is it running and following the \
                 controller? watch `krak status`)",
                args.wait_ms
            ),
        }
    }
    Ok(())
}

/// Without a controller: program `pid:N`'s pager process, over its socket.
fn budget_of_program(args: &BudgetArgs) -> anyhow::Result<()> {
    let Some(pid) = args.target.trim().strip_prefix("pid:") else {
        bail!(
            "{:?}: without a controller, name a `krak run` program as pid:N (a region id needs --controller URL \
             or $KRAK_CONTROLLER)",
            args.target
        );
    };
    let pid: u32 = pid.parse().with_context(|| format!("{:?}: pid:N needs a process id", args.target))?;
    let socket = krak_arena::budget::pager_socket_of(pid)?;
    let stats = krak_arena::budget::set_budget(&socket, pid, args.size.0)
        .with_context(|| format!("changing the local budget of pid {pid}"))?;
    let stats: serde_json::Value = serde_json::from_str(&stats).context("the pager's stats")?;
    if args.json {
        let out = serde_json::json!({
            "pid": pid,
            "local_budget_bytes": args.size.0,
            "confirmed": true,
            "stats": stats,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let bytes = |k: &str| stats[k].as_u64().map_or("?".into(), |b| ByteSize(b).to_string());
        println!(
            "pid {pid}: local budget {} in force, {} resident (its pager, pid {})",
            bytes("local_budget_bytes"),
            bytes("resident_bytes"),
            stats["pager_pid"]
        );
    }
    Ok(())
}

/// The region `target` names: an id, or `pid:N`.
fn find<'a>(status: &'a StatusReply, target: &str) -> anyhow::Result<&'a RegionStatus> {
    let target = target.trim();
    let found = match target.strip_prefix("pid:") {
        Some(pid) => {
            let pid: u32 = pid.parse().with_context(|| format!("{target:?}: pid:N needs a process id"))?;
            status.regions.iter().find(|r| r.live.as_ref().is_some_and(|l| l.pid == Some(pid)))
        }
        None => {
            let id: u64 = target.parse().with_context(|| format!("{target:?} is neither a region id nor pid:N"))?;
            status.regions.iter().find(|r| r.record.id.0 == id)
        }
    };
    let Some(region) = found else {
        let known: Vec<String> = status
            .regions
            .iter()
            .map(|r| match r.live.as_ref().and_then(|l| l.pid) {
                Some(pid) => format!("{} (pid:{pid})", r.record.id),
                None => r.record.id.to_string(),
            })
            .collect();
        bail!(
            "the controller knows no region {target:?}; known: {}",
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        );
    };
    Ok(region)
}
