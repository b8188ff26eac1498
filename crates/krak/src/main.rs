//! The `krak` command: every role of a krak rack in one binary.

mod cmd_bench;
mod cmd_broker;
mod cmd_budget;
mod cmd_controller;
mod cmd_memserver;
mod cmd_pager;
mod cmd_run;
mod cmd_status;
mod ctl;
mod demo;
mod pager_opts;
mod rack;
mod secret_opts;

use clap::{Parser, Subcommand};

/// krak lets a workload use the RAM of other servers in the rack as if it were its own.
#[derive(Debug, Parser)]
#[command(name = "krak", version, about, long_about = None)]
struct Cli {
    /// The CA that signed the controller's TLS certificate (PEM), for https:// controller
    /// URLs: this command and every process it starts (memory servers, pagers) trust it.
    /// Default: $KRAK_TLS_CA, else the public web roots.
    #[arg(long, value_name = "PATH", env = krak_api::tls::CA_ENV, global = true)]
    tls_ca: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Memserver(cmd_memserver::MemserverArgs),
    Controller(cmd_controller::ControllerArgs),
    Status(cmd_status::StatusArgs),
    Policy(cmd_status::PolicyArgs),
    Drain(cmd_status::DrainArgs),
    Budget(cmd_budget::BudgetArgs),
    Broker(cmd_broker::BrokerArgs),
    Demo(demo::DemoArgs),
    Bench(cmd_bench::BenchArgs),
    Secret(secret_opts::SecretCmd),
    Run(cmd_run::RunArgs),
    #[command(hide = true)]
    BenchWorker(krak_bench::WorkerArgs),
    /// The pager process of `krak run --pager separate` (started by it).
    #[command(hide = true)]
    PagerHost(cmd_pager::PagerHostArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The pager process logs only where `krak run --log` says, as the in-process pager does.
    if !matches!(cli.command, Command::PagerHost(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("KRAK_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    if let Some(ca) = &cli.tls_ca {
        if let Err(e) = krak_api::tls::load_ca(ca) {
            eprintln!("krak: error: {e}");
            return std::process::ExitCode::FAILURE;
        }
        // Every client finds the CA here, in this process and the ones it starts. Set before
        // any thread exists, so no one reads the environment while it changes.
        std::env::set_var(krak_api::tls::CA_ENV, ca);
    }
    let result = match cli.command {
        Command::Memserver(args) => cmd_memserver::run(args),
        Command::Controller(args) => cmd_controller::run(args),
        Command::Status(args) => cmd_status::status(args),
        Command::Policy(args) => cmd_status::policy(args),
        Command::Drain(args) => cmd_status::drain(args),
        Command::Budget(args) => cmd_budget::budget(args),
        Command::Broker(args) => cmd_broker::broker(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => cmd_bench::run(args),
        Command::Secret(cmd) => secret_opts::run(cmd),
        Command::BenchWorker(args) => cmd_bench::worker(args),
        Command::PagerHost(args) => cmd_pager::run(args),
        Command::Run(args) => {
            return match cmd_run::run(args) {
                Ok(code) => std::process::ExitCode::from(code),
                Err(e) => {
                    eprintln!("krak: error: {e:#}");
                    std::process::ExitCode::from(krak_arena::contract::EXIT_PAGER_FAILED as u8)
                }
            }
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain on one line: what a user needs, without a backtrace.
            eprintln!("krak: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
