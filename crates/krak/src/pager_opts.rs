//! Pager settings shared by the commands that make far-memory regions.

use anyhow::{bail, Context};
use krak_pager::{FaultMode, PagerConfig};

/// Who serves a fault, as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultModeArg {
    /// The faulting thread fetches its own page (SIGBUS): no sleep or wake-up per fault.
    Sigbus,
    /// Handler threads serve faults and wake the faulting thread.
    Threads,
}

impl FaultModeArg {
    pub fn mode(self) -> FaultMode {
        match self {
            FaultModeArg::Sigbus => FaultMode::Sigbus,
            FaultModeArg::Threads => FaultMode::Threads,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultModeArg::Sigbus => "sigbus",
            FaultModeArg::Threads => "threads",
        }
    }
}

/// Memory servers an embedded rack starts for `redundancy`: at least `asked`, and one per
/// fragment of a stripe, plus a spare so that re-protection has somewhere to go.
pub fn servers_for(redundancy: krak_pager::Redundancy, asked: usize) -> usize {
    if redundancy.is_none() {
        asked
    } else {
        asked.max(redundancy.width() + 1)
    }
}

/// Applies `key=value` options (as passed to bench workers) to a pager config.
pub fn apply(options: &[String], config: &mut PagerConfig) -> anyhow::Result<()> {
    for opt in options {
        let (key, value) = opt.split_once('=').with_context(|| format!("pager option {opt:?} is not key=value"))?;
        match key {
            "fault_mode" => {
                config.fault_mode = match value {
                    "sigbus" => FaultMode::Sigbus,
                    "threads" => FaultMode::Threads,
                    _ => bail!("fault_mode is sigbus or threads, not {value:?}"),
                }
            }
            "spin_us" => config.spin_us = value.parse().context("spin_us")?,
            "handler_threads" => config.handler_threads = value.parse().context("handler_threads")?,
            "secret_file" => config.secret = Some(krak_auth::load_secret_file(std::path::Path::new(value))?),
            "redundancy" => config.redundancy = value.parse()?,
            _ => bail!("unknown pager option {key:?} (fault_mode, spin_us, handler_threads, secret_file, redundancy)"),
        }
    }
    Ok(())
}
