//! `krak broker`: show or change how the controller divides each host's local memory among
//! the regions running there.

use std::time::Duration;

use anyhow::{bail, Context};
use krak_api::broker::BrokerStatus;
use krak_api::Api;
use krak_proto::units::ByteSize;

use crate::ctl::ControllerArg;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Show or change the memory broker: how the controller divides each host's local memory
/// among the regions running there, every second, while they run.
///
/// A host is brokered when it is given a total (--host NAME=SIZE; NAME is the host its
/// pagers report, the HOST column of `krak status`), or, with --headroom, every other host
/// too: its total is then what its regions hold plus the memory it has available, minus the
/// headroom. The `static` policy keeps every budget as set (at creation or by `krak
/// budget`); `demand` moves budget to the regions where it saves the most faults, never
/// below the floor, and overrides budgets set by hand on the hosts it brokers.
///
/// Without options, prints the configuration and what the last round saw. Changes are
/// stored with the rack and used from the next round.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  krak broker\n  krak broker --policy demand --host node7=8GiB --floor 64MiB\n  \
                        krak broker --policy demand --headroom 2GiB\n  krak broker --policy static --json")]
pub struct BrokerArgs {
    /// static or demand.
    #[arg(long, value_name = "NAME")]
    policy: Option<String>,
    /// Broker host NAME with a total of SIZE for its regions (repeat for more hosts).
    #[arg(long = "host", value_name = "NAME=SIZE")]
    hosts: Vec<String>,
    /// Stop brokering host NAME by a given total (repeatable).
    #[arg(long = "forget-host", value_name = "NAME")]
    forget: Vec<String>,
    /// No region is given less than SIZE (default 16MiB).
    #[arg(long, value_name = "SIZE")]
    floor: Option<ByteSize>,
    /// Broker every other host too, with a total of its available memory minus SIZE (plus
    /// what its regions hold); `none` brokers only the hosts given.
    #[arg(long, value_name = "SIZE|none")]
    headroom: Option<String>,
    #[command(flatten)]
    controller: ControllerArg,
    /// Print the configuration and the last round as JSON (`config`, `available`, `hosts`
    /// with their `total_bytes` and `regions`, `budget_changes`).
    #[arg(long)]
    json: bool,
}

pub fn broker(args: BrokerArgs) -> anyhow::Result<()> {
    let mut client = args.controller.client(TIMEOUT)?;
    let mut status = client.broker().context("asking the controller for its broker")?;
    let changing = args.policy.is_some()
        || !args.hosts.is_empty()
        || !args.forget.is_empty()
        || args.floor.is_some()
        || args.headroom.is_some();
    if changing {
        let mut config = status.config.clone();
        if let Some(policy) = &args.policy {
            config.policy = policy.trim().to_string();
        }
        for name in &args.forget {
            if config.hosts.remove(name.trim()).is_none() {
                bail!("host {name:?} has no given total; given: {}", names(&config.hosts));
            }
        }
        for host in &args.hosts {
            let Some((name, size)) = host.split_once('=') else {
                bail!("--host {host:?}: give NAME=SIZE, e.g. --host node7=8GiB");
            };
            let size: ByteSize = size.trim().parse().map_err(|e| anyhow::anyhow!("--host {host:?}: {e}"))?;
            config.hosts.insert(name.trim().to_string(), size.0);
        }
        if let Some(floor) = args.floor {
            config.floor_bytes = floor.0;
        }
        match args.headroom.as_deref().map(str::trim) {
            None => {}
            Some("none") => config.headroom_bytes = None,
            Some(size) => {
                let size: ByteSize = size.parse().map_err(|e| anyhow::anyhow!("--headroom {size:?}: {e}"))?;
                config.headroom_bytes = Some(size.0);
            }
        }
        status = client.set_broker(&config).context("changing the broker's configuration")?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print(&status, changing);
    }
    Ok(())
}

fn names(hosts: &std::collections::BTreeMap<String, u64>) -> String {
    if hosts.is_empty() {
        "none".into()
    } else {
        hosts.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

fn print(status: &BrokerStatus, changed: bool) {
    let c = &status.config;
    let others = match c.headroom_bytes {
        Some(h) => format!("every other host derived, {} headroom", ByteSize(h)),
        None => "no other host".into(),
    };
    println!(
        "broker{}: policy {} (available: {}), floor {}, hosts given: {}; {others}",
        if changed { " changed" } else { "" },
        c.policy,
        status.available.join(", "),
        ByteSize(c.floor_bytes),
        if c.hosts.is_empty() {
            "none".to_string()
        } else {
            c.hosts.iter().map(|(h, t)| format!("{h}={}", ByteSize(*t))).collect::<Vec<_>>().join(", ")
        },
    );
    if changed {
        println!("(in force from the next round, within a second)");
        return;
    }
    if status.hosts.is_empty() {
        println!("no brokered host has regions reporting");
    }
    for host in &status.hosts {
        println!("host {}: total {} ({})", host.host, ByteSize(host.total_bytes), host.total_from);
        println!("  {:>6}  {:>10}  {:>10}  {:>9}  SETTLED", "REGION", "BUDGET", "RESIDENT", "FAULTS/S");
        for r in &host.regions {
            println!(
                "  {:>6}  {:>10}  {:>10}  {:>9.0}  {}",
                r.id.0,
                ByteSize(r.local_budget_bytes).to_string(),
                ByteSize(r.resident_bytes).to_string(),
                r.faults_per_s,
                if r.settled { "yes" } else { "no" }
            );
        }
    }
    println!("budgets changed by the broker since the controller started: {}", status.budget_changes);
}
