//! Stand-alone worker for tests and manual runs, like the hidden `krak bench-worker`
//! subcommand but without a krak backend:
//!
//! * `krak-bench-worker bench-worker <WorkerArgs>` — one worker run, JSON on stdout;
//! * `krak-bench-worker plan [--quick] [--json FILE]` — the whole plan on local and kernel
//!   swap (krak skipped), table on stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use krak_bench::{BenchPlan, WorkerArgs};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one benchmark worker and print its JSON result.
    BenchWorker(WorkerArgs),
    /// Run the bench plan without the krak backend.
    Plan {
        /// 256 MiB, 2 s per run instead of 1 GiB, 5 s.
        #[arg(long)]
        quick: bool,
        /// Also write the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("krak-bench-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Cmd) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Cmd::BenchWorker(args) => {
            Ok(krak_bench::worker_main(
                args,
                |_| Err("the krak backend is only available in the `krak` binary".into()),
            )?)
        }
        Cmd::Plan { quick, json } => {
            let plan = if quick { BenchPlan::quick() } else { BenchPlan::full() };
            let exe = std::env::current_exe()?;
            let report = krak_bench::plan::run_bench(&plan, &exe, None, |l| eprintln!("{l}"))?;
            print!("{}", report.human_table());
            if let Some(path) = json {
                std::fs::write(path, report.to_json())?;
            }
            if report.has_mismatches() {
                return Err("data mismatches: a backend returned wrong data".into());
            }
            Ok(())
        }
    }
}
